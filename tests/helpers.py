"""Small builders shared by tests."""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

from runtimes.schema import input_schema, output_schema


def make_version_dir(root: Path, name: str, version: str, payload: bytes = b"model-bytes", size: int = 0) -> Path:
    """A publishable version directory with valid metadata and a model file of `size` extra bytes."""
    directory = root / f"{name}-{version}-{abs(hash(payload)) % 10**8}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.bin").write_bytes(payload + b"\0" * size)
    (directory / "preprocessing.json").write_text("{}")
    metadata = {
        "model_name": name, "version": version, "created_at": "2026-01-01T00:00:00+00:00",
        "framework": "test", "framework_version": "0", "model_file": "model.bin",
        "preprocessing_file": "preprocessing.json",
        "training": {"dataset_version": "test", "training_samples": 1, "epochs": 1},
        "performance": {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1_score": 0.5, "roc_auc": 0.5},
        "input_schema": input_schema(), "output_schema": output_schema(),
    }
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def publish_copy(registry, name: str, source_version: str, new_version: str, tmp_path: Path) -> None:
    """Publish a copy of an existing version's files under a new version number."""
    target = tmp_path / f"{name}-{new_version}"
    shutil.copytree(registry.pull(name, source_version), target)
    (target / "checksum.sha256").unlink()
    metadata = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps({**metadata, "version": new_version}))
    registry.publish(name, new_version, target)


def with_router(node, **changes) -> dict:
    """The node's application config with the Router's user_config changed."""
    config = copy.deepcopy(node.config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":
            deployment["user_config"].update(changes)
    return config


def until(condition, timeout: float = 30) -> None:
    """Waits for `condition()` to hold, polling; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")
