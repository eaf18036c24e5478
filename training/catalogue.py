"""The KOI catalogue: every KOI's names, its disposition in each bundled snapshot and its 69
features, built from the bundled tables and published to the registry as dataset `koi_catalogue`.

Serving looks KOIs up by name in it (runtimes/catalogue.py), so a client can ask about
"Kepler-227 b" without sending 69 numbers. The bytes are deterministic: the same inputs always
give the same catalogue.csv.gz, whoever builds it.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from registry import DatasetMetadata
from registry.errors import AliasConflict, VersionExists
from registry.registry import ModelRegistry
from runtimes.catalogue import CATALOGUE_FILE, DATASET, IDENTITY
from runtimes.schema import ARCHIVE_DISPOSITIONS, DIAGNOSTICS, FEATURES, LABELS, WITH_DIAGNOSTICS

from .data import CURRENT, DIAGNOSTICS_FILE as DIAGNOSTICS_SOURCE, SNAPSHOTS, data_dir

NAME = DATASET
VERSION = "1.0.0"
DEFAULT_ALIASES = ("stable", "latest")
_NOTES = {
    "2019-01-20": "NASA Exoplanet Archive KOI cumulative table, export of 2019-01-20: disposition_2019_01_20",
    "2025-09-18": "NASA Exoplanet Archive KOI cumulative table, export of 2025-09-18: names, table features, "
                  "disposition_2025_09_18",
}


def disposition_column(snapshot: str) -> str:
    return f"disposition_{snapshot.replace('-', '_')}"


def columns() -> list[str]:
    """The catalogue's columns, in order."""
    return [*IDENTITY, *(disposition_column(s) for s in sorted(SNAPSHOTS)), *WITH_DIAGNOSTICS]


def _read(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, comment="#")
    if table["kepoi_name"].duplicated().any():
        raise ValueError(f"{path.name}: duplicate kepoi_name")
    return table.set_index("kepoi_name").sort_index()


def _dispositions(table: pd.DataFrame, path: Path) -> pd.Series:
    unknown = set(table["koi_disposition"]) - set(ARCHIVE_DISPOSITIONS)
    if unknown:
        raise ValueError(f"{path.name}: unexpected dispositions {sorted(unknown)}")
    return table["koi_disposition"].map(lambda d: LABELS[ARCHIVE_DISPOSITIONS[d]])


def catalogue_table(data: Path | None = None) -> pd.DataFrame:
    """One row per KOI, sorted by kepoi_name. Names and features come from the current snapshot;
    the KOI sets and host stars of all inputs must agree, or nothing is built."""
    data = data or data_dir()
    current = _read(data / SNAPSHOTS[CURRENT])
    table = current[["kepid", "kepler_name", *FEATURES]].copy()
    for snapshot in sorted(SNAPSHOTS):
        path = data / SNAPSHOTS[snapshot]
        source = current if snapshot == CURRENT else _read(path)
        _check_same_kois(current, source, path)
        table[disposition_column(snapshot)] = _dispositions(source, path)
    diagnostics = _read(data / DIAGNOSTICS_SOURCE)
    if list(diagnostics.columns[1:]) != list(DIAGNOSTICS):
        raise ValueError(f"{DIAGNOSTICS_SOURCE}: columns differ from runtimes.schema.DIAGNOSTICS")
    _check_same_kois(current, diagnostics, data / DIAGNOSTICS_SOURCE)
    table = table.join(diagnostics[list(DIAGNOSTICS)])
    return table.reset_index()[columns()]


def _check_same_kois(current: pd.DataFrame, other: pd.DataFrame, path: Path) -> None:
    if not current.index.equals(other.index) or not (current["kepid"] == other["kepid"]).all():
        raise ValueError(f"{path.name}: its KOIs or their host stars differ from {SNAPSHOTS[CURRENT]}")


def _gzip_csv(table: pd.DataFrame) -> bytes:
    # mtime 0 and no file name in the gzip header: the bytes depend on the table alone.
    text = io.StringIO()
    table.to_csv(text, index=False, lineterminator="\n")
    return gzip.compress(text.getvalue().encode(), compresslevel=6, mtime=0)


def _sources(data: Path) -> list[dict]:
    files = [(SNAPSHOTS[s], _NOTES.get(s, "")) for s in sorted(SNAPSHOTS)]
    files.append((DIAGNOSTICS_SOURCE, "NASA Exoplanet Archive KOI diagnostics, 2022-12-28: the 33 diagnostics"))
    return [{"file": name, "sha256": hashlib.sha256((data / name).read_bytes()).hexdigest(), "note": note}
            for name, note in files]


def build_catalogue(directory: Path, data: Path | None = None, version: str = VERSION) -> Path:
    """Write catalogue.csv.gz and metadata.json into `directory` (created if needed); returns it."""
    data = data or data_dir()
    table = catalogue_table(data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CATALOGUE_FILE).write_bytes(_gzip_csv(table))
    metadata = DatasetMetadata(
        name=NAME, version=version, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        description="Every Kepler Object of Interest: names, host star, disposition in each bundled archive "
                    "snapshot (CONFIRMED, CANDIDATE, FALSE_POSITIVE) and the 69 features in "
                    "runtimes.schema.WITH_DIAGNOSTICS order; empty cells are missing values.",
        files={CATALOGUE_FILE: {"rows": len(table), "columns": list(table.columns)}},
        sources=_sources(data), current_disposition=disposition_column(CURRENT), key="kepoi_name",
    )
    (directory / "metadata.json").write_text(metadata.model_dump_json(indent=1) + "\n")
    return directory


def publish_catalogue(registry: ModelRegistry, version: str = VERSION,
                      progress: Callable[[str], object] = print) -> bool:
    """Build and publish the bundled catalogue as koi_catalogue/`version` unless it is there already,
    then set `stable` and `latest` where unset. True when this call published it."""
    datasets = registry.datasets
    published = False
    if datasets.exists(NAME, version):
        progress(f"{NAME} {version}: already in {datasets.store.description}, skipped")
    else:
        published = _build_and_publish(registry, version, progress)
    if not datasets.exists(NAME, version):
        progress(f"{NAME} {version}: not complete yet (another publisher is writing it), aliases left as they are")
        return published
    for alias in DEFAULT_ALIASES:
        try:
            datasets.set_alias(NAME, alias, version, create_only=True)
            progress(f"{NAME}: {alias} -> {version}")
        except AliasConflict:
            progress(f"{NAME}: {alias} already points at {datasets.get_alias(NAME, alias).version}, left as is")
    return published


def _build_and_publish(registry: ModelRegistry, version: str, progress: Callable[[str], object]) -> bool:
    with tempfile.TemporaryDirectory(prefix="koi-catalogue-") as tmp:
        progress(f"{NAME} {version}: building from {data_dir()}")
        build_catalogue(Path(tmp), version=version)
        metadata = DatasetMetadata.model_validate_json((Path(tmp) / "metadata.json").read_bytes())
        rows = metadata.files[CATALOGUE_FILE].rows
        progress(f"{NAME} {version}: {rows} KOIs, {len(metadata.files[CATALOGUE_FILE].columns)} columns; publishing")
        try:
            registry.datasets.publish(NAME, version, tmp)
        except VersionExists:
            progress(f"{NAME} {version}: being published by someone else, skipped")
            return False
    progress(f"{NAME} {version}: published to {registry.datasets.store.description}")
    return True
