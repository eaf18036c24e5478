"""The fitted ensemble of a version, published in the registry as model `ensemble` at the same
version: `ensemble.json` (the EnsembleRecord: member temperatures and weights), its test metrics,
its out-of-fold predictions, a model card, all under one checksummed manifest. Promoting
`ensemble` therefore moves weights and calibration together, and ensemble version V is served by
calling the members' version V."""
from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np

from registry.registry import ModelRegistry
from runtimes.ensemble import NAME, RECORD_FILE, combine
from runtimes.out_of_fold import FILE_NAME as OUT_OF_FOLD, read_out_of_fold
from runtimes.schema import output_schema

from .data import Snapshot, dataset_version
from .ensemble_fit import fit_record
from .folds import FOLD_MODELS, write_rows
from .publishing import performance, publish_version
from .plots import evaluation_plot

EXCLUDED = {"keras_cnn": "no out-of-fold predictions: five more CNN fits per version would double the bootstrap"}


def member_out_of_fold(registry: ModelRegistry, name: str, version: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A member's stored out-of-fold file, verified against its version's manifest."""
    return read_out_of_fold(registry.read_file(name, version, OUT_OF_FOLD))


def publish_ensemble(registry: ModelRegistry, version: str, snapshot: Snapshot, snapshots: dict[str, Snapshot],
                     split: str, progress) -> dict | None:
    if registry.exists(NAME, version):
        progress(f"{NAME} {version}: already registered, skipping")
        return None
    members = [m for m in FOLD_MODELS if registry.exists(m, version)]
    if not members:
        return None
    from .train import evaluate_versions  # train imports this module

    names, folds, _ = member_out_of_fold(registry, members[0], version)
    if names != list(snapshot.table["kepoi_name"]):
        raise ValueError(f"{members[0]} {version}: {OUT_OF_FOLD} rows differ from the {snapshot.name} table")
    test = folds == "test"
    oof = {m: member_out_of_fold(registry, m, version)[2] for m in members}
    fitting = {m: np.where(test[:, None], np.nan, p) for m, p in oof.items()}
    record = fit_record(version, fitting, snapshot.y, excluded=EXCLUDED)
    combined = combine(record, oof)  # test rows: the refit members' own predictions, combined
    evaluations, complete = evaluate_versions(snapshots, test, combined[test])
    own = evaluations[dataset_version(snapshot.name)]
    member_meta = registry.metadata(members[0], version)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / RECORD_FILE).write_bytes(record.to_json())
        write_rows(directory, snapshot, folds, combined)
        evaluation_plot(snapshot.y[test], combined[test], f"ensemble {version}, test stars, {snapshot.name} labels",
                        directory / "evaluation.png")
        metadata = {
            "model_name": NAME, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "framework": "ensemble", "framework_version": "EnsembleRecord 1", "model_file": RECORD_FILE,
            "preprocessing_file": None,
            "training": {"dataset_version": dataset_version(snapshot.name), "training_samples": record.fitted_on["rows"],
                         "epochs": 0, "split": split, "members": {m: version for m in record.members},
                         "feature_set": member_meta.training.model_extra.get("feature_set"),
                         "method": record.method, "fitted_on": record.fitted_on,
                         "out_of_fold": {"file": OUT_OF_FOLD, "rule": "the members' out-of-fold predictions, "
                                         "combined with this record"}},
            "performance": performance(own),
            "evaluations": evaluations, "evaluations_complete_diagnostics": complete,
            "input_schema": member_meta.input_schema.model_dump(), "output_schema": output_schema(),
        }
        if not publish_version(registry, directory, metadata, progress):
            return None
    weights = ", ".join(f"{m} {w:.2f} (T={record.temperatures[m]:.2f})" for m, w in record.weights.items())
    progress(f"{NAME} {version}: registered ({weights}); against {own['evaluated_against']}: accuracy "
             f"{own['accuracy']:.3f} macro-F1 {own['f1_score']:.3f} ROC-AUC {own['roc_auc']:.3f} "
             f"ECE {own['expected_calibration_error']:.3f}")
    return metadata

