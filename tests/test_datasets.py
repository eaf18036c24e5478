"""Datasets in the registry, beside the models, with every guarantee a model version has: against a
local directory and a real S3 endpoint (moto_server). Then publishing the KOI catalogue, and the
`kepler-registry` dataset verbs."""
from __future__ import annotations

import gzip
import json
import shutil

import pytest

from registry import (AliasConflict, DatasetMetadata, IntegrityError, ModelRegistry, NotFound, RegistryError,
                      RegistryUnavailable, S3Store, VersionExists, signing, verify_directory)
from registry.stores import LocalStore
from runtimes.catalogue import Catalogue
from training.catalogue import build_catalogue, publish_catalogue
from training.registry_cli import main

from .helpers import make_version_dir

NAME, PREFIX, FILE = "koi_catalogue", "datasets/koi_catalogue/v1.0.0", "catalogue.csv.gz"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("dataset-keys")
    signing.generate_keypair(root / "publisher.pem", root / "publisher.pub")
    signing.generate_keypair(root / "other.pem", root / "other.pub")
    return {"private": signing.load_private_key(root / "publisher.pem"),
            "public": signing.load_public_key(root / "publisher.pub"),
            "other": signing.load_private_key(root / "other.pem"), "public_path": root / "publisher.pub"}


def small_dataset(root, name: str = "toy", version: str = "1.0.0", payload: bytes = b"a,b\n1,2\n", **changes):
    directory = root / f"{name}-{version}-{abs(hash(payload)) % 10**6}"
    directory.mkdir(parents=True)
    (directory / "table.csv").write_bytes(payload)
    metadata = {"name": name, "version": version, "created_at": "2026-01-01T00:00:00+00:00",
                "files": {"table.csv": {"rows": 1, "columns": ["a", "b"]}}, **changes}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def test_publish_pull_and_load_the_catalogue(any_registry, built):
    datasets = any_registry.datasets
    metadata = datasets.publish(NAME, "1.0.0", built)
    assert isinstance(metadata, DatasetMetadata) and metadata.files[FILE].rows == 9564
    assert datasets.names() == [NAME] and datasets.versions(NAME) == ["1.0.0"] and datasets.exists(NAME, "1.0.0")
    assert any_registry.models() == []  # datasets are not models
    keys = {key for key in any_registry.store.list("datasets") if not key.endswith("/.claim")}
    assert keys == {f"{PREFIX}/{f}" for f in (FILE, "metadata.json", "checksum.sha256")}
    assert datasets.metadata(NAME, "1.0.0").model_extra["current_disposition"] == "disposition_2025_09_18"
    pulled = datasets.pull(NAME, "1.0.0")
    assert (pulled / FILE).read_bytes() == (built / FILE).read_bytes()
    assert pulled.is_relative_to(datasets.cache_dir) and datasets.cache_dir != any_registry.cache_dir
    verify_directory(pulled)
    assert datasets.pull(NAME, "1.0.0") == pulled  # verified cache hit
    assert Catalogue.load(pulled, "1.0.0").resolve("Kepler-227 b") == ["K00752.01"]


def test_versions_are_immutable_and_aliases_move(any_registry, tmp_path):
    datasets = any_registry.datasets
    for version in ("1.0.0", "1.1.0"):
        datasets.publish("toy", version, small_dataset(tmp_path, version=version, payload=version.encode()))
    before = any_registry.store.list("datasets")
    with pytest.raises(VersionExists):
        datasets.publish("toy", "1.0.0", small_dataset(tmp_path, payload=b"other"))
    assert any_registry.store.list("datasets") == before
    assert datasets.read_file("toy", "1.0.0", "table.csv") == b"1.0.0"
    datasets.set_alias("toy", "stable", "1.0.0", create_only=True)
    with pytest.raises(AliasConflict):
        datasets.set_alias("toy", "stable", "1.1.0", create_only=True)
    assert datasets.promote("toy", "latest", "1.1.0")[0] is None
    assert datasets.aliases("toy") == {"stable": "1.0.0", "latest": "1.1.0"}
    assert datasets.resolve("toy", "stable") == "1.0.0" and datasets.resolve("toy", "latest") == "1.1.0"
    with pytest.raises(NotFound, match="alias 'beta' of dataset 'toy'"):
        datasets.resolve("toy", "beta")


def test_models_and_datasets_of_one_name_stay_apart(any_registry, tmp_path):
    any_registry.publish("toy", "1.0.0", make_version_dir(tmp_path, "toy", "1.0.0", b"model"))
    any_registry.datasets.publish("toy", "2.0.0", small_dataset(tmp_path, version="2.0.0"))
    assert any_registry.versions("toy") == ["1.0.0"] and any_registry.datasets.versions("toy") == ["2.0.0"]
    assert not any_registry.datasets.exists("toy", "1.0.0")
    with pytest.raises(NotFound, match="dataset 'nothing' not found"):
        any_registry.datasets.pull("nothing", "1.0.0")
    assert (any_registry.pull("toy", "1.0.0") / "model.bin").read_bytes() == b"model"
    assert (any_registry.datasets.pull("toy", "2.0.0") / "table.csv").exists()


@pytest.mark.parametrize("changes, message", [
    ({"name": "other"}, "describes other 1.0.0"),
    ({"files": {"table.csv": {"rows": 1, "columns": []}, "more.csv": {"rows": 0, "columns": []}}},
     "more.csv is missing"),
    ({"files": "table.csv"}, "invalid metadata.json"),
])
def test_a_dataset_must_hold_what_its_metadata_says(tmp_path, changes, message):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    with pytest.raises(RegistryError, match=message):
        registry.datasets.publish("toy", "1.0.0", small_dataset(tmp_path, **changes))
    assert registry.datasets.versions("toy") == []


def test_a_tampered_catalogue_in_s3_is_refused_and_never_cached(moto_server, tmp_path, built):
    registry = ModelRegistry(moto_server.store(), tmp_path / "cache")
    registry.datasets.publish(NAME, "1.0.0", built)
    registry.store.put(f"{PREFIX}/{FILE}", (built / FILE).read_bytes()[:-10] + b"0123456789")
    with pytest.raises(IntegrityError, match=f"checksum mismatch.*{FILE}"):
        registry.datasets.pull(NAME, "1.0.0")
    cached = registry.datasets.cache_dir / NAME
    assert not (cached / "1.0.0").exists() and list(cached.iterdir()) == []  # no partial download left


def test_the_cached_copy_serves_while_the_store_is_down(moto_server, tmp_path):
    from .conftest import free_port
    from .tcp_proxy import TcpProxy

    proxy = TcpProxy(moto_server.port, free_port()).start()
    try:
        store = S3Store(moto_server.store().bucket, "registry", endpoint_url=f"http://127.0.0.1:{proxy.port}",
                        connect_timeout=1)
        datasets = ModelRegistry(store, tmp_path / "cache").datasets
        datasets.publish("toy", "1.0.0", small_dataset(tmp_path))
        datasets.set_alias("toy", "stable", "1.0.0")
        assert datasets.resolve("toy", "stable") == "1.0.0"
        datasets.pull("toy", "1.0.0")
        proxy.stop()
        assert datasets.resolve("toy", "stable") == "1.0.0"  # the last answer seen here
        assert (datasets.pull("toy", "1.0.0") / "table.csv").read_bytes() == b"a,b\n1,2\n"
        assert datasets.metadata("toy", "1.0.0").files["table.csv"].rows == 1
        (datasets.cache_dir / "toy" / "1.0.0" / "table.csv").write_bytes(b"edited")
        with pytest.raises(IntegrityError):
            datasets.pull("toy", "1.0.0")
        with pytest.raises(RegistryUnavailable):
            datasets.resolve("toy", "latest")
    finally:
        proxy.stop()


def test_signed_datasets_verify_and_others_are_refused(any_store, tmp_path, keys):
    publisher = ModelRegistry(any_store, tmp_path / "p", signing_key=keys["private"]).datasets
    reader = ModelRegistry(any_store, tmp_path / "r", verify_key=keys["public"]).datasets
    publisher.publish("toy", "1.0.0", small_dataset(tmp_path))
    assert publisher.signature("toy", "1.0.0") and (reader.pull("toy", "1.0.0") / "table.csv").exists()
    ModelRegistry(any_store, tmp_path / "u").datasets.publish("toy", "2.0.0", small_dataset(tmp_path, version="2.0.0"))
    with pytest.raises(IntegrityError, match="not signed"):
        reader.pull("toy", "2.0.0")
    with pytest.raises(IntegrityError, match="not signed"):
        reader.metadata("toy", "2.0.0")
    impostor = ModelRegistry(any_store, tmp_path / "i", signing_key=keys["other"]).datasets
    impostor.publish("toy", "3.0.0", small_dataset(tmp_path, version="3.0.0"))
    with pytest.raises(IntegrityError, match="another key"):
        reader.pull("toy", "3.0.0")
    assert not (reader.cache_dir / "toy" / "2.0.0").exists() and not (reader.cache_dir / "toy" / "3.0.0").exists()


def test_publish_catalogue_is_idempotent(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    first, second = [], []
    assert publish_catalogue(registry, progress=first.append) is True
    assert publish_catalogue(registry, progress=second.append) is False
    assert any("9564 KOIs" in line for line in first) and "koi_catalogue: stable -> 1.0.0" in first
    assert second[0].startswith("koi_catalogue 1.0.0: already in") and "left as is" in second[-1]
    assert registry.datasets.aliases(NAME) == {"stable": "1.0.0", "latest": "1.0.0"}


def test_publish_catalogue_lost_race_is_skipped(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    registry.store.put_if_absent(f"{PREFIX}/.claim", b"{}")  # another publisher claimed it, not done yet
    lines = []
    assert publish_catalogue(registry, progress=lines.append) is False
    assert any("being published by someone else" in line for line in lines)
    assert registry.datasets.aliases(NAME) == {}


def test_cli_dataset_verbs(tmp_path, capsys, keys):
    registry = ["--registry", str(tmp_path / "r")]
    assert main([*registry, "datasets"]) == 0 and "no datasets in" in capsys.readouterr().out
    assert main([*registry, "dataset-publish"]) == 0
    assert "koi_catalogue: latest -> 1.0.0" in capsys.readouterr().out
    assert main([*registry, "dataset-publish"]) == 0 and "already in" in capsys.readouterr().out
    assert main([*registry, "datasets"]) == 0
    assert "1.0.0     catalogue.csv.gz 9564 rows x 74 columns  <- latest, stable" in capsys.readouterr().out
    assert main([*registry, "dataset-validate", NAME, "stable"]) == 0
    out = capsys.readouterr().out
    assert "koi_catalogue 1.0.0: checksums verified" in out and "9564 KOIs x 74 columns" in out
    assert "1979 candidates" in out
    assert main([*registry, "dataset-pull", NAME, "latest", "--to", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    verify_directory(tmp_path / "out")
    refused = main([*registry, "--verify-key", str(keys["public_path"]), "dataset-validate", NAME, "1.0.0"])
    assert refused == 1 and "not signed" in capsys.readouterr().err


def test_cli_dataset_errors_are_messages(tmp_path, capsys, built):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    (broken / FILE).write_bytes(gzip.compress(b"kepoi_name\n"))  # publishable bytes, but no catalogue
    registry.datasets.publish(NAME, "1.0.0", broken)
    local = ["--registry", str(tmp_path / "r")]
    for argv, code, message in [
        ([*local, "dataset-pull", "nothing", "stable"], 1, "dataset 'nothing' not found"),
        ([*local, "dataset-pull", NAME, "2.0.0"], 1, "version 2.0.0 of 'koi_catalogue' not found"),
        ([*local, "dataset-pull", "Bad-Name", "1.0.0"], 2, "invalid dataset name 'Bad-Name'"),
        ([*local, "dataset-validate", NAME, "1.0.0"], 1, "koi_catalogue 1.0.0 does not load"),
    ]:
        assert main(argv) == code, argv
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err, captured.err
