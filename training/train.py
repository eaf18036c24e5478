"""`kepler-train`: train the three model families on both snapshots and register them.

Version history: 1.0.0 learns the 2019-01-20 labels and 1.1.0 the 2025-09-18 labels from the 36
table features; 2.0.0 and 2.1.0 learn the same labels from those plus the 33 vetting diagnostics,
and each 2.x tree model also stores out-of-fold predictions for every KOI (five star folds), from
which the version's ensemble is fitted. By default it registers 2.0.0 and 2.1.0 (ask for 1.x with
--versions), points `stable` and `latest` at 2.1.0 where unset, and publishes the KOI catalogue.
Versions already in the registry are skipped, so running it twice (or on every quickstart) is
harmless.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry import RegistryConfig, RegistryError
from registry.errors import AliasConflict
from registry.registry import ModelRegistry
from runtimes import MODEL_NAMES, runtime_class
from runtimes.schema import FEATURE_SETS, input_schema, output_schema

from .catalogue import publish_catalogue
from .data import SNAPSHOTS, SPLIT, Snapshot, dataset_version, load_snapshot
from .ensembles import NAME as ENSEMBLE, publish_ensemble
from .evaluate import evaluate
from .folds import FOLD_MODELS, write_out_of_fold
from .publishing import performance, publish_version
from .plots import evaluation_plot


@dataclass(frozen=True)
class Plan:
    snapshot: str  # whose labels the version learns
    feature_set: str  # a runtimes.schema.FEATURE_SETS key
    folds: bool = False  # also store out-of-fold predictions (tree families)


VERSION_PLAN = {
    "1.0.0": Plan("2019-01-20", "table"),
    "1.1.0": Plan("2025-09-18", "table"),
    "2.0.0": Plan("2019-01-20", "table+diagnostics", folds=True),
    "2.1.0": Plan("2025-09-18", "table+diagnostics", folds=True),
}
# What a bootstrap registers: the current generation. 1.x stays in the plan, trained on request.
DEFAULT_VERSIONS = ("2.0.0", "2.1.0")
# Requests that name no version get the best validated version: 2.1.0 (diagnostics, 2025 labels).
DEFAULT_ALIASES = {"stable": "2.1.0", "latest": "2.1.0"}
MISSING_VALUES = ("missing diagnostics are replaced by their training-star medians in every family, so no model "
                  "learns from a diagnostic's absence (which marks KOIs outside the DR25 run, or without a "
                  "Robovetter score); missing table values: XGBoost routes NaN natively, the forest and the CNN "
                  "impute training medians")


class Progress:
    def __init__(self, stream=None):
        self.start = time.monotonic()
        self.stream = stream

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=self.stream or sys.stderr, flush=True)


def train_version(registry: ModelRegistry, name: str, version: str, snapshots: dict[str, Snapshot],
                  seed: int, fast: bool, progress: Progress) -> dict | None:
    if registry.exists(name, version):
        progress(f"{name} {version}: already registered, skipping")
        return None
    plan = VERSION_PLAN[version]
    snapshot, features = snapshots[plan.snapshot], FEATURE_SETS[plan.feature_set]
    train, validation, test = snapshot.masks()
    X, y = snapshot.matrix(features), snapshot.y
    runtime_type = runtime_class(name)
    progress(f"{name} {version}: training on the {snapshot.name} labels, {len(features)} features "
             f"({train.sum()} train, {validation.sum()} validation stars' KOIs)")
    runtime = runtime_type()
    facts = runtime.fit(X[train], y[train], X[validation], y[validation], seed=seed, fast=fast, progress=progress,
                        features=features)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        runtime.save(directory)
        # Evaluate what was saved, exactly as serving will load it.
        probabilities = runtime_type.load(directory).predict_proba(X[test])
        evaluations, complete = evaluate_versions(snapshots, test, probabilities)
        own = evaluations[dataset_version(snapshot.name)]
        evaluation_plot(snapshot.y[test], probabilities,
                        f"{name} {version}, test stars, {snapshot.name} labels", directory / "evaluation.png")
        extra = {}
        if plan.folds and name in FOLD_MODELS:
            def fit_predict(train_rows: np.ndarray, predict_rows: np.ndarray) -> np.ndarray:
                """The version's own recipe on fewer stars (XGBoost keeps its tuned rounds)."""
                fold = runtime_type()
                fold.fit(X[train_rows], y[train_rows], X[:0], y[:0], seed=seed, fast=fast, progress=lambda _: None,
                         features=features, rounds=facts.get("num_boost_round"))
                return fold.predict_proba(X[predict_rows])

            extra["out_of_fold"] = write_out_of_fold(directory, snapshot, probabilities, fit_predict,
                                                     f"{name} {version}", progress)
        metadata = {
            "model_name": name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "framework": runtime_type.framework, "framework_version": runtime_type.framework_version(),
            "model_file": runtime_type.model_file, "preprocessing_file": "preprocessing.json",
            "training": {"dataset_version": dataset_version(snapshot.name), "training_samples": facts.pop("training_samples"),
                         "epochs": facts.pop("epochs"), "seed": seed, "fast": fast, "split": SPLIT,
                         "feature_set": plan.feature_set, "missing_values": MISSING_VALUES, **facts, **extra},
            "performance": performance(own),
            "evaluations": evaluations,
            "evaluations_complete_diagnostics": complete,
            "input_schema": input_schema(features), "output_schema": output_schema(),
        }
        if not publish_version(registry, directory, metadata, progress):
            return None
    p = metadata["performance"]
    progress(f"{name} {version}: registered; against {p['evaluated_against']}: accuracy {p['accuracy']:.3f} "
             f"macro-F1 {p['f1_score']:.3f} ROC-AUC {p['roc_auc']:.3f}")
    return metadata


def evaluate_versions(snapshots: dict[str, Snapshot], test: np.ndarray, probabilities: np.ndarray
                      ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Test-star metrics against every label snapshot: on all test KOIs, and on those whose
    diagnostics are all measured (where no missing value can hint at a KOI's pipeline cohort)."""
    complete = next(iter(snapshots.values())).complete_diagnostics[test]
    every, subset = {}, {}
    for s in snapshots.values():
        labels = dataset_version(s.name)
        every[labels] = evaluate(s.y[test], probabilities, labels)
        subset[labels] = evaluate(s.y[test][complete], probabilities[complete], labels)
    return every, subset


def set_default_aliases(registry: ModelRegistry, name: str, progress: Progress) -> None:
    for alias, version in DEFAULT_ALIASES.items():
        if not registry.exists(name, version):
            continue
        try:
            registry.set_alias(name, alias, version, create_only=True)
            progress(f"{name}: {alias} -> {version}")
        except AliasConflict:
            progress(f"{name}: {alias} already points at {registry.get_alias(name, alias).version}, left as is")


def train_all(registry: ModelRegistry, models=MODEL_NAMES, versions=DEFAULT_VERSIONS, seed: int = 0,
              fast: bool = False, progress: Progress | None = None) -> list[dict]:
    progress = progress or Progress()
    snapshots = {name: load_snapshot(name) for name in SNAPSHOTS}
    published = []
    for version in versions:
        for name in models:
            metadata = train_version(registry, name, version, snapshots, seed, fast, progress)
            if metadata:
                published.append(metadata)
        plan = VERSION_PLAN[version]
        if plan.folds and set(FOLD_MODELS) <= set(models):
            metadata = publish_ensemble(registry, version, snapshots[plan.snapshot], snapshots, SPLIT, progress)
            if metadata:
                published.append(metadata)
    for name in models:
        set_default_aliases(registry, name, progress)
    if set(FOLD_MODELS) <= set(models):
        set_default_aliases(registry, ENSEMBLE, progress)
    publish_catalogue(registry, progress=progress)  # the KOIs by name, beside the models that score them
    progress(f"done: {len(published)} version(s) registered in {registry.store.description}")
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kepler-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", help="registry URI (directory, file://, s3://bucket/prefix)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint URL")
    parser.add_argument("--signing-key", help="Ed25519 private key (PEM) signing each version (default: "
                                              "$KEPLER_SIGNING_KEY)")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated model names")
    parser.add_argument("--versions", default=",".join(DEFAULT_VERSIONS),
                        help=f"comma-separated versions to train, of {', '.join(VERSION_PLAN)} (default: "
                             f"{', '.join(DEFAULT_VERSIONS)})")
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
