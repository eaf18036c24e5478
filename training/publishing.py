"""The last steps every trained version shares: its metadata and model card written beside the
files, then one publish that loses a race gracefully."""
from __future__ import annotations

import json
from pathlib import Path

from registry.errors import VersionExists
from registry.registry import ModelRegistry

from .model_card import model_card

HEADLINE = ("accuracy", "precision", "recall", "f1_score", "roc_auc", "averaging", "evaluated_against", "test_samples")


def performance(evaluation: dict) -> dict:
    """The headline metrics, against the version's own labels."""
    return {k: evaluation[k] for k in HEADLINE}


def publish_version(registry: ModelRegistry, directory: Path, metadata: dict, progress) -> bool:
    """Write metadata.json and MODEL_CARD.md into `directory` and publish it; False when another
    publisher registered the version meanwhile."""
    name, version = metadata["model_name"], metadata["version"]
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    (directory / "MODEL_CARD.md").write_text(model_card(metadata))
    try:
        registry.publish(name, version, directory)
    except VersionExists:
        progress(f"{name} {version}: registered meanwhile by another publisher, skipping")
        return False
    return True
