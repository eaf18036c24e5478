"""`kepler-train`: train the three model families on both snapshots and register them.

Version history: 1.0.0 learns the 2019-01-20 labels, 1.1.0 the 2025-09-18 labels; `stable`
points at 1.0.0 and `latest` at 1.1.0 when those aliases are not set yet. Versions already in the
registry are skipped, so running it twice (or on every quickstart) is harmless.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from registry import RegistryConfig, RegistryError
from registry.errors import AliasConflict, VersionExists
from registry.registry import ModelRegistry
from runtimes import MODEL_NAMES, runtime_class
from runtimes.schema import input_schema, output_schema

from .data import CURRENT, Snapshot, dataset_version, load_snapshot
from .evaluate import evaluate
from .plots import evaluation_plot

VERSION_PLAN = {"1.0.0": "2019-01-20", "1.1.0": "2025-09-18"}
DEFAULT_ALIASES = {"stable": "1.0.0", "latest": "1.1.0"}
SPLIT = "test: KOIs whose host star has int(sha256(str(kepid)), 16) % 100 < 20; validation: 20..29; train: the rest"


class Progress:
    def __init__(self, stream=None):
        self.start = time.monotonic()
        self.stream = stream

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=self.stream or sys.stderr, flush=True)


def train_version(registry: ModelRegistry, name: str, version: str, snapshot: Snapshot, current: Snapshot,
                  seed: int, fast: bool, progress: Progress) -> dict | None:
    if registry.exists(name, version):
        progress(f"{name} {version}: already registered, skipping")
        return None
    train, validation, test = snapshot.masks()
    X, y = snapshot.X, snapshot.y
    runtime_type = runtime_class(name)
    progress(f"{name} {version}: training on the {snapshot.name} labels ({train.sum()} train, "
             f"{validation.sum()} validation stars' KOIs)")
    runtime = runtime_type()
    facts = runtime.fit(X[train], y[train], X[validation], y[validation], seed=seed, fast=fast, progress=progress)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        runtime.save(directory)
        # Evaluate what was saved, exactly as serving will load it.
        probabilities = runtime_type.load(directory).predict_proba(X[test])
        evaluations = {dataset_version(s.name): evaluate(s.y[test], probabilities, dataset_version(s.name))
                       for s in {snapshot.name: snapshot, current.name: current}.values()}
        own = evaluations[dataset_version(snapshot.name)]
        evaluation_plot(snapshot.y[test], probabilities,
                        f"{name} {version}, test stars, {snapshot.name} labels", directory / "evaluation.png")
        metadata = {
            "model_name": name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "framework": runtime_type.framework, "framework_version": runtime_type.framework_version(),
            "model_file": runtime_type.model_file, "preprocessing_file": "preprocessing.json",
            "training": {"dataset_version": dataset_version(snapshot.name), "training_samples": facts.pop("training_samples"),
                         "epochs": facts.pop("epochs"), "seed": seed, "fast": fast, "split": SPLIT, **facts},
            "performance": {k: own[k] for k in ("accuracy", "precision", "recall", "f1_score", "roc_auc",
                                                "averaging", "evaluated_against", "test_samples")},
            "evaluations": evaluations,
            "input_schema": input_schema(), "output_schema": output_schema(),
        }
        (directory / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
        try:
            registry.publish(name, version, directory)
        except VersionExists:
            progress(f"{name} {version}: registered meanwhile by another publisher, skipping")
            return None
    p = metadata["performance"]
    progress(f"{name} {version}: registered; against {p['evaluated_against']}: accuracy {p['accuracy']:.3f} "
             f"macro-F1 {p['f1_score']:.3f} ROC-AUC {p['roc_auc']:.3f}")
    return metadata


def set_default_aliases(registry: ModelRegistry, name: str, progress: Progress) -> None:
    for alias, version in DEFAULT_ALIASES.items():
        if not registry.exists(name, version):
            continue
        try:
            registry.set_alias(name, alias, version, create_only=True)
            progress(f"{name}: {alias} -> {version}")
        except AliasConflict:
            progress(f"{name}: {alias} already points at {registry.get_alias(name, alias).version}, left as is")


def train_all(registry: ModelRegistry, models=MODEL_NAMES, versions=tuple(VERSION_PLAN), seed: int = 0,
              fast: bool = False, progress: Progress | None = None) -> list[dict]:
    progress = progress or Progress()
    current = load_snapshot(CURRENT)
    published = []
    for version in versions:
        snapshot = load_snapshot(VERSION_PLAN[version])
        for name in models:
            metadata = train_version(registry, name, version, snapshot, current, seed, fast, progress)
            if metadata:
                published.append(metadata)
    for name in models:
        set_default_aliases(registry, name, progress)
    progress(f"done: {len(published)} version(s) registered in {registry.store.description}")
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kepler-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", help="registry URI (directory, file://, s3://bucket/prefix)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint URL")
    parser.add_argument("--signing-key", help="Ed25519 private key (PEM) signing each version (default: "
                                              "$KEPLER_SIGNING_KEY)")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated model names")
    parser.add_argument("--versions", default=",".join(VERSION_PLAN), help="comma-separated versions to train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="few trees and epochs: for tests")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    bad = [m for m in models if m not in MODEL_NAMES] + [v for v in versions if v not in VERSION_PLAN]
    if bad:
        print(f"kepler-train: unknown model or version: {', '.join(bad)} "
              f"(models: {', '.join(MODEL_NAMES)}; versions: {', '.join(VERSION_PLAN)})", file=sys.stderr)
        return 2
    try:
        registry = RegistryConfig.from_env(uri=args.registry, endpoint_url=args.endpoint_url,
                                           signing_key=args.signing_key).open()
        train_all(registry, models, versions, seed=args.seed, fast=args.fast)
    except RegistryError as e:
        print(f"kepler-train: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
