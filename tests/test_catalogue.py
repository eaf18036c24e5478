"""The KOI catalogue: built from the bundled tables, deterministic, and looked up by every accepted
name form. Values are checked against the source CSVs read independently here."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from runtimes.schema import DIAGNOSTICS, FEATURES, LABELS, WITH_DIAGNOSTICS
from runtimes.catalogue import Catalogue, InvalidCatalogue, MalformedName, UnknownKOI
from training.catalogue import build_catalogue
from training.data import SNAPSHOTS, data_dir

LABEL = {"CONFIRMED": "CONFIRMED", "CANDIDATE": "CANDIDATE", "FALSE POSITIVE": "FALSE_POSITIVE"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def catalogue(built) -> Catalogue:
    return Catalogue.load(built, "1.0.0")


@pytest.fixture(scope="module")
def source_table(built) -> pd.DataFrame:
    return pd.read_csv(built / "catalogue.csv.gz").iloc[:200]  # enough rows, quicker to rewrite


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    """The bundled tables as the archive wrote them, indexed by kepoi_name."""
    read = lambda name: pd.read_csv(data_dir() / name, comment="#").set_index("kepoi_name")  # noqa: E731
    tables = {snapshot: read(file) for snapshot, file in SNAPSHOTS.items()}
    tables["diagnostics"] = read("koi_diagnostics_2022-12-28.csv.gz")
    return tables


def _kepler_227_b(sources) -> str:
    current = sources["2025-09-18"]
    return current.index[current["kepler_name"] == "Kepler-227 b"].item()


def test_kepler_227_b_is_koi_752_01_in_the_data(sources):
    assert _kepler_227_b(sources) == "K00752.01"
    assert sources["2025-09-18"].loc["K00752.01", "kepid"] == 10797460


@pytest.mark.parametrize("name", ["K00752.01", "k00752.01", "KOI-752.01", "KOI 752.01", "koi752.01", "Koi-752.01",
                                  "752.01", "  K00752.01 ", "KOI-00752.01", "\tkoi 752.01\n"])
def test_koi_name_forms(catalogue, name):
    assert catalogue.resolve(name) == ["K00752.01"]


@pytest.mark.parametrize("name", ["Kepler-227 b", "kepler-227b", "KEPLER-227 B", "Kepler-227   b", " Kepler-227 b ",
                                  "kepler 227 b", "Kepler227b"])
def test_kepler_name_forms(catalogue, sources, name):
    assert catalogue.resolve(name) == [_kepler_227_b(sources)]


def test_a_kepler_name_with_a_host_star_letter(catalogue, sources):
    koi = sources["2025-09-18"].index[sources["2025-09-18"]["kepler_name"] == "Kepler-410 A b"].item()
    assert catalogue.resolve("Kepler-410 A b") == catalogue.resolve("kepler-410ab") == [koi]


def test_every_name_in_the_data_resolves_to_its_koi(catalogue, sources):
    current = sources["2025-09-18"]
    for koi, kepler_name in current["kepler_name"].dropna().items():
        assert catalogue.resolve(kepler_name) == [koi]
    assert all(catalogue.resolve(koi) == [koi] for koi in current.index)
    assert len(catalogue) == len(current) == 9564


@pytest.mark.parametrize("kepid", [10797460, np.int64(10797460), "10797460", "KIC 10797460", "kic10797460",
                                   " KIC-10797460 "])
def test_a_kepid_gives_every_koi_of_the_star(catalogue, kepid):
    assert catalogue.resolve(kepid) == ["K00752.01", "K00752.02"]


def test_the_star_with_most_kois(catalogue, sources):
    counts = sources["2025-09-18"]["kepid"].value_counts()
    kepid = int(counts.index[0])
    expected = sorted(sources["2025-09-18"].index[sources["2025-09-18"]["kepid"] == kepid])
    assert len(expected) == counts.iloc[0] >= 7
    assert catalogue.resolve(kepid) == catalogue.resolve(f"KIC {kepid}") == expected


@pytest.mark.parametrize("name", [
    "", "   ", "x" * 65, "K00752.01" + " " * 60, "hello", "Kepler-227", "Kepler-b", "KOI-752", "K00752", "-5",
    "-10797460", "752.1", "752.001", "1e5", "7.5e2", "nan", "inf", "0x1F", "752.01.02", "K00752.01x",
    "KOI--752.01", "K 752.01", "KIC", "1234567890", "١٢٣", "Kepler-227 bbb", "Kepler-227 b; drop",
    -5, -10797460, 10 ** 9, 10 ** 30, pytest.param(10 ** 5000, id="int-of-5001-digits"), 752.01, float("nan"),
    None, True, ["K00752.01"], b"K00752.01",
])
def test_malformed_names(catalogue, name):
    with pytest.raises(MalformedName) as raised:
        catalogue.resolve(name)
    message = str(raised.value)
    assert "malformed KOI name" in message and "Kepler-227 b" in message and "KIC 10797460" in message
    if isinstance(name, str) and len(name) <= 64:
        assert repr(name) in message
    assert len(message) < 400  # a huge input is never echoed in full


@pytest.mark.parametrize("name, named", [
    ("K09999.01", "K09999.01"), ("KOI-752.09", "K00752.09"), ("99999.99", "K99999.99"),
    ("Kepler-9999 b", "Kepler-9999 b"), ("Kepler-227 z", "Kepler-227 z"), ("kepler-227 b b", "kepler-227 b b"),
    ("KIC 1", "KIC 1"), (1, "KIC 1"), ("0", "KIC 0"), (999_999_999, "KIC 999999999"),
])
def test_unknown_well_formed_names(catalogue, name, named):
    with pytest.raises(UnknownKOI) as raised:
        catalogue.resolve(name)
    assert isinstance(raised.value, KeyError)
    assert named in str(raised.value) and "1.0.0" in str(raised.value)
    assert not str(raised.value).startswith(("'", '"'))


def test_rows_equal_the_source_tables(catalogue, sources):
    current, older = sources["2025-09-18"], sources["2019-01-20"].reindex(sources["2025-09-18"].index)
    features = current[list(FEATURES)].join(sources["diagnostics"][list(DIAGNOSTICS)]).to_numpy().tolist()
    columns = zip(current.index, current["kepid"], current["kepler_name"], current["koi_disposition"],
                  older["koi_disposition"], features)
    for koi, kepid, kepler_name, disposition, disposition_2019, expected in columns:
        row = catalogue.row(koi)
        assert (row["kepoi_name"], row["kepid"]) == (koi, kepid)
        assert row["kepler_name"] == (None if pd.isna(kepler_name) else kepler_name)
        assert row["disposition_2025_09_18"] == row["disposition"] == LABEL[disposition]
        assert row["disposition_2019_01_20"] == LABEL[disposition_2019]
        assert list(row["features"]) == list(WITH_DIAGNOSTICS)
        assert list(row["features"].values()) == [None if math.isnan(v) else v for v in expected], koi


def test_a_row_is_json_ready_and_shows_changed_dispositions(catalogue):
    row = catalogue.row("K03138.02")  # FALSE POSITIVE in 2019, CONFIRMED since
    assert (row["disposition_2019_01_20"], row["disposition"]) == ("FALSE_POSITIVE", "CONFIRMED")
    missing = catalogue.row("K00005.02")  # no stellar density in the diagnostics
    assert missing["features"]["koi_srho"] is None
    json.dumps(missing, allow_nan=False)
    with pytest.raises(UnknownKOI):
        catalogue.row("KOI-752.01")  # rows are looked up by canonical name only


def test_features_in_the_order_asked_with_nan_for_missing(catalogue, sources):
    kois = ["K00752.01", "K00005.02", "K00001.01"]
    names = ("koi_srho", "koi_period", "koi_impact")
    matrix = catalogue.features(kois, names)
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)
    assert math.isnan(matrix[1, 0])
    assert matrix[0, 0] == np.float32(sources["diagnostics"].loc["K00752.01", "koi_srho"])
    assert matrix[2, 1] == np.float32(sources["2025-09-18"].loc["K00001.01", "koi_period"])
    full = catalogue.features(kois, WITH_DIAGNOSTICS)
    assert full.shape == (3, 69)
    np.testing.assert_array_equal(full[:, [WITH_DIAGNOSTICS.index(n) for n in names]], matrix)
    assert catalogue.features([], FEATURES).shape == (0, 36)
    with pytest.raises(KeyError, match="koi_score"):
        catalogue.features(kois, ("koi_score",))


def test_candidates_and_kepids(catalogue, sources):
    current = sources["2025-09-18"]
    candidates = catalogue.candidates()
    assert len(candidates) == 1979 and candidates == sorted(candidates)
    assert set(candidates) == set(current.index[current["koi_disposition"] == "CANDIDATE"])
    kepids = catalogue.kepids(candidates[:5])
    assert kepids.tolist() == current.loc[candidates[:5], "kepid"].tolist()
    assert catalogue.version == "1.0.0" and catalogue.current_disposition == "disposition_2025_09_18"


def test_build_is_deterministic_and_described(built, tmp_path, sources):
    again = build_catalogue(tmp_path / "again")
    data = (built / "catalogue.csv.gz").read_bytes()
    assert (again / "catalogue.csv.gz").read_bytes() == data
    assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0
    table = pd.read_csv(built / "catalogue.csv.gz")
    assert table["kepoi_name"].tolist() == sorted(sources["2025-09-18"].index)
    assert set(table["disposition_2019_01_20"]) == set(LABELS)
    metadata = json.loads((built / "metadata.json").read_text())
    assert metadata["name"] == "koi_catalogue" and metadata["version"] == "1.0.0"
    assert metadata["files"]["catalogue.csv.gz"] == {"rows": 9564, "columns": list(table.columns)}
    assert list(table.columns[5:]) == list(WITH_DIAGNOSTICS)
    assert metadata["current_disposition"] == "disposition_2025_09_18"
    for source in metadata["sources"]:
        assert source["sha256"] == hashlib.sha256((data_dir() / source["file"]).read_bytes()).hexdigest()
    assert {s["file"] for s in metadata["sources"]} == {*SNAPSHOTS.values(), "koi_diagnostics_2022-12-28.csv.gz"}


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns="koi_srho"), "lacks the columns koi_srho"),
    (lambda t: t.assign(koi_period="fast"), "koi_period hold non-numeric"),
    (lambda t: t.assign(kepid=t["kepid"].where(t.index > 0)), "kepid must hold an integer"),
    (lambda t: t.assign(disposition_2019_01_20="MAYBE"), "unexpected dispositions"),
    (lambda t: t.drop(columns=["disposition_2019_01_20", "disposition_2025_09_18"]), "no disposition_"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "unique and sorted"),
    (lambda t: t.iloc[::-1], "unique and sorted"),
    (lambda t: t.assign(kepoi_name=t["kepoi_name"].where(t.index > 0, "")), "names of the form K00752.01"),
    (lambda t: t.assign(kepler_name="Kepler-1 b"), "are both named 'Kepler-1 b'"),
])
def test_a_malformed_catalogue_is_refused(source_table, tmp_path, change, message):
    (tmp_path / "catalogue.csv.gz").write_bytes(gzip.compress(change(source_table).to_csv(index=False).encode(), 1))
    with pytest.raises(InvalidCatalogue, match=message):
        Catalogue.load(tmp_path, "9.9.9")


def test_an_unreadable_catalogue_is_refused(built, tmp_path):
    for garbage in (b"not gzip at all", gzip.compress(b""), (built / "catalogue.csv.gz").read_bytes()[:1000]):
        (tmp_path / "catalogue.csv.gz").write_bytes(garbage)
        with pytest.raises(InvalidCatalogue, match="not a readable catalogue"):
            Catalogue.load(tmp_path, "9.9.9")


def test_lookup_imports_no_ray():
    code = "import sys, runtimes.catalogue; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_disposition_is_the_current_one_of_the_row(catalogue):
    for koi in ("K00752.01", catalogue.candidates()[0]):
        assert catalogue.disposition(koi) == catalogue.row(koi)["disposition"]
    with pytest.raises(UnknownKOI):
        catalogue.disposition("K99999.01")
