"""The bundled KOI tables, the feature matrix, the labels and the star-hash split."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from runtimes.schema import ARCHIVE_DISPOSITIONS, DIAGNOSTICS, FEATURES
from runtimes.split import SPLIT, TEST_PERCENT, VALIDATION_PERCENT, is_test_star, is_validation_star, star_bucket  # noqa: F401

SNAPSHOTS = {
    "2019-01-20": "koi_cumulative_2019-01-20.csv.gz",
    "2025-09-18": "koi_cumulative_2025-09-18.csv.gz",
}
CURRENT = "2025-09-18"
DIAGNOSTICS_FILE = "koi_diagnostics_2022-12-28.csv.gz"  # joined onto either snapshot by kepoi_name


def data_dir() -> Path:
    configured = os.environ.get("KEPLER_DATA_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "data"


def dataset_version(snapshot: str) -> str:
    return f"koi_cumulative_{snapshot}"


@dataclass
class Snapshot:
    name: str
    table: pd.DataFrame

    @property
    def X(self) -> np.ndarray:
        return self.table[list(FEATURES)].to_numpy(dtype=np.float32)

    def matrix(self, features: tuple[str, ...]) -> np.ndarray:
        return self.table[list(features)].to_numpy(dtype=np.float32)

    @property
    def complete_diagnostics(self) -> np.ndarray:
        """Rows with every diagnostic measured: where a diagnostic's absence can tell no model
        which pipeline cohort a KOI belongs to."""
        return self.table[list(DIAGNOSTICS)].notna().all(axis=1).to_numpy()

    @property
    def y(self) -> np.ndarray:
        return self.table["koi_disposition"].map(ARCHIVE_DISPOSITIONS).to_numpy(dtype=np.int64)

    @property
    def kepid(self) -> np.ndarray:
        return self.table["kepid"].to_numpy()

    def masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks (train, validation, test) over rows, by host star."""
        buckets = np.array([star_bucket(k) for k in self.kepid])
        test = buckets < TEST_PERCENT
        validation = (buckets >= TEST_PERCENT) & (buckets < TEST_PERCENT + VALIDATION_PERCENT)
        return ~test & ~validation, validation, test


def load_snapshot(snapshot: str = CURRENT, directory: Path | None = None) -> Snapshot:
    if snapshot not in SNAPSHOTS:
        raise ValueError(f"unknown snapshot {snapshot!r}: expected one of {', '.join(SNAPSHOTS)}")
    path = (directory or data_dir()) / SNAPSHOTS[snapshot]
    table = pd.read_csv(path, comment="#").sort_values("kepoi_name", kind="stable").reset_index(drop=True)
    diagnostics = pd.read_csv((directory or data_dir()) / DIAGNOSTICS_FILE)
    if list(diagnostics.columns[2:]) != list(DIAGNOSTICS):
        raise ValueError(f"{DIAGNOSTICS_FILE}: columns differ from runtimes.schema.DIAGNOSTICS")
    table = table.merge(diagnostics.drop(columns="kepid"), on="kepoi_name", how="left", validate="1:1")
    unknown = set(table["koi_disposition"]) - set(ARCHIVE_DISPOSITIONS)
    if unknown:
        raise ValueError(f"{path.name}: unexpected dispositions {sorted(unknown)}")
    return Snapshot(snapshot, table)
