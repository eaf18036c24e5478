"""The registry against both backends: a local directory and a real S3 endpoint (moto_server)."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from registry import AliasConflict, IntegrityError, InvalidName, ModelRegistry, NotFound, RegistryUnavailable, S3Store, VersionExists
from registry.stores import LocalStore

from .helpers import make_version_dir


def test_publish_then_pull_round_trip(any_registry, tmp_path):
    source = make_version_dir(tmp_path, "xgboost", "1.0.0", b"abc")
    any_registry.publish("xgboost", "1.0.0", source)
    assert any_registry.versions("xgboost") == ["1.0.0"]
    pulled = any_registry.pull("xgboost", "1.0.0")
    for name in ("model.bin", "metadata.json", "preprocessing.json"):
        assert (pulled / name).read_bytes() == (source / name).read_bytes()
    assert any_registry.metadata("xgboost", "1.0.0").model_name == "xgboost"
    assert any_registry.pull("xgboost", "1.0.0") == pulled  # verified cache hit


def test_versions_are_immutable(any_registry, tmp_path):
    any_registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path, "xgboost", "1.0.0", b"first"))
    before = any_registry.store.list("models")
    with pytest.raises(VersionExists):
        any_registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path, "xgboost", "1.0.0", b"second"))
    assert any_registry.store.list("models") == before
    assert any_registry.read_file("xgboost", "1.0.0", "model.bin") == b"first"


def test_aliases_move_and_resolve(any_registry, tmp_path):
    for version in ("1.0.0", "1.1.0"):
        any_registry.publish("xgboost", version, make_version_dir(tmp_path, "xgboost", version, version.encode()))
    any_registry.set_alias("xgboost", "stable", "1.0.0", create_only=True)
    assert any_registry.resolve("xgboost", "stable") == "1.0.0"
    previous, alias = any_registry.promote("xgboost", "stable", "1.1.0")
    assert (previous, alias.version) == ("1.0.0", "1.1.0")
    assert any_registry.resolve("xgboost", "stable") == "1.1.0"
    assert any_registry.aliases("xgboost") == {"stable": "1.1.0"}
    with pytest.raises(NotFound, match="alias 'latest'"):
        any_registry.resolve("xgboost", "latest")
    with pytest.raises(NotFound, match="version 2.0.0"):
        any_registry.set_alias("xgboost", "stable", "2.0.0")


def test_stale_alias_write_is_refused(any_registry, tmp_path):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        any_registry.publish("xgboost", version, make_version_dir(tmp_path, "xgboost", version, version.encode()))
    any_registry.set_alias("xgboost", "stable", "1.0.0")
    seen = any_registry.get_alias("xgboost", "stable")
    any_registry.set_alias("xgboost", "stable", "1.1.0", expected_etag=seen.etag)
    with pytest.raises(AliasConflict):
        any_registry.set_alias("xgboost", "stable", "1.2.0", expected_etag=seen.etag)
    assert any_registry.resolve("xgboost", "stable") == "1.1.0"


def _race(count: int, action) -> tuple[list, list]:
    """Run `action(i)` in `count` threads released together; (winners, losers' exceptions)."""
    barrier, winners, losers = threading.Barrier(count), [], []

    def run(i):
        barrier.wait()
        try:
            winners.append(action(i))
        except Exception as e:  # noqa: BLE001 - collected and asserted on below
            losers.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return winners, losers


def test_concurrent_publishers_exactly_one_wins(any_registry, tmp_path):
    sources = [make_version_dir(tmp_path, "random_forest", "2.0.0", f"publisher-{i}".encode(), size=200_000)
               for i in range(6)]
    winners, losers = _race(6, lambda i: (i, any_registry.publish("random_forest", "2.0.0", sources[i])))
    assert len(winners) == 1, (winners, losers)
    assert len(losers) == 5 and all(isinstance(e, VersionExists) for e in losers), losers
    winner = winners[0][0]
    assert any_registry.read_file("random_forest", "2.0.0", "model.bin") == (sources[winner] / "model.bin").read_bytes()


def test_racing_promotes_exactly_one_wins(any_registry, tmp_path):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        any_registry.publish("keras_cnn", version, make_version_dir(tmp_path, "keras_cnn", version, version.encode()))
    any_registry.set_alias("keras_cnn", "stable", "1.0.0")
    etag = any_registry.get_alias("keras_cnn", "stable").etag  # both promoters read the same state
    targets = ["1.1.0", "1.2.0"]
    winners, losers = _race(2, lambda i: any_registry.set_alias("keras_cnn", "stable", targets[i], expected_etag=etag))
    assert len(winners) == 1 and len(losers) == 1 and isinstance(losers[0], AliasConflict), (winners, losers)
    assert any_registry.resolve("keras_cnn", "stable") == winners[0].version


def test_reader_never_sees_a_partial_version(any_registry, tmp_path):
    versions = [f"3.{i}.0" for i in range(8)]
    sources = {v: make_version_dir(tmp_path, "xgboost", v, v.encode(), size=300_000) for v in versions}
    done, seen, problems = threading.Event(), set(), []

    def read():
        while not done.is_set():
            for version in any_registry.versions("xgboost"):
                try:
                    any_registry.pull("xgboost", version)
                    seen.add(version)
                except Exception as e:  # noqa: BLE001
                    problems.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in versions:
            any_registry.publish("xgboost", version, sources[version])
    finally:
        done.set()
        reader.join(60)
    assert not problems
    assert seen  # the reader did overlap the publisher


def test_a_version_without_manifest_is_absent(any_registry, tmp_path):
    source = make_version_dir(tmp_path, "xgboost", "1.0.0")
    for path in source.iterdir():  # a publisher that died before writing the manifest
        any_registry.store.put(f"models/xgboost/v1.0.0/{path.name}", path.read_bytes())
    assert any_registry.versions("xgboost") == []
    assert not any_registry.exists("xgboost", "1.0.0")
    with pytest.raises(NotFound):
        any_registry.pull("xgboost", "1.0.0")


def test_tampered_object_is_refused_and_never_cached(any_registry, tmp_path):
    any_registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path, "xgboost", "1.0.0", b"genuine"))
    any_registry.store.put("models/xgboost/v1.0.0/model.bin", b"replaced after publish")
    with pytest.raises(IntegrityError, match="model.bin"):
        any_registry.pull("xgboost", "1.0.0")
    assert not (any_registry.cache_dir / "xgboost" / "1.0.0").exists()


def test_tampered_cache_is_refetched(any_registry, tmp_path):
    any_registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path, "xgboost", "1.0.0", b"genuine"))
    cached = any_registry.pull("xgboost", "1.0.0")
    (cached / "model.bin").write_bytes(b"edited in the cache")
    assert (any_registry.pull("xgboost", "1.0.0") / "model.bin").read_bytes().startswith(b"genuine")


def test_archive_hides_a_version_but_not_an_aliased_one(any_registry, tmp_path):
    for version in ("1.0.0", "1.1.0"):
        any_registry.publish("xgboost", version, make_version_dir(tmp_path, "xgboost", version, version.encode()))
    any_registry.set_alias("xgboost", "stable", "1.1.0")
    with pytest.raises(Exception, match="move the alias first"):
        any_registry.archive("xgboost", "1.1.0")
    any_registry.archive("xgboost", "1.0.0")
    assert any_registry.versions("xgboost") == ["1.1.0"]
    assert any_registry.versions("xgboost", include_archived=True) == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0-rc1", "latest", "../1.0.0", ""])
def test_bad_versions_are_refused_before_io(bad, tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    with pytest.raises(InvalidName):
        registry.publish("xgboost", bad, make_version_dir(tmp_path, "xgboost", "1.0.0"))
    assert not (tmp_path / "r").exists()


def test_metadata_must_match_the_version(any_registry, tmp_path):
    with pytest.raises(Exception, match="describes xgboost 1.0.0"):
        any_registry.publish("xgboost", "9.9.9", make_version_dir(tmp_path, "xgboost", "1.0.0"))
    broken = make_version_dir(tmp_path, "xgboost", "1.0.0")
    (broken / "model.bin").unlink()
    with pytest.raises(Exception, match="model.bin is missing"):
        any_registry.publish("xgboost", "1.0.0", broken)
    assert any_registry.versions("xgboost") == []


def _pull_in_process(args) -> str:
    root, cache = args
    registry = ModelRegistry(LocalStore(root), cache)
    return str(registry.pull("xgboost", "1.0.0"))


def test_concurrent_pulls_from_several_processes(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "cache")
    registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path, "xgboost", "1.0.0", b"x", size=2_000_000))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_pull_in_process, [(tmp_path / "r", tmp_path / "cache")] * 8)
    assert len(set(paths)) == 1
    from registry import verify_directory

    verify_directory(Path(paths[0]))
    leftovers = [p for p in Path(paths[0]).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_unreachable_endpoint_gives_a_clear_error(tmp_path):
    from .conftest import free_port

    store = S3Store("kepler-down", "registry", endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)
    registry = ModelRegistry(store, tmp_path / "cache")
    with pytest.raises(RegistryUnavailable, match="cannot reach the registry"):
        registry.versions("xgboost")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.registry_cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    from .conftest import free_port

    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path, "xgboost", "1.0.0"))
    local = ["--registry", str(tmp_path / "r")]
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = [
        (local + ["info", "nosuchmodel", "1.0.0"], "model 'nosuchmodel' not found"),
        (local + ["info", "xgboost", "7.0.0"], "version 7.0.0 of 'xgboost' not found"),
        (local + ["promote", "xgboost", "1.0"], "invalid version '1.0'"),
        (local + ["register", "xgboost", "2.0.0", str(empty_dir)], "metadata.json is missing"),
        (local + ["list", "nosuchmodel"], "not found"),
        (["--registry", "s3://kepler-down/r", "--endpoint-url", f"http://127.0.0.1:{free_port()}", "list"],
         "cannot reach the registry"),
    ]
    for argv, message in cases:
        result = _cli(*argv)
        assert result.returncode != 0, argv
        assert message in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr


def test_cli_push_local_to_s3_and_pull_back(tmp_path, moto_server):
    registry = ModelRegistry(LocalStore(tmp_path / "r"), tmp_path / "c")
    for version in ("1.0.0", "1.1.0"):
        registry.publish("xgboost", version, make_version_dir(tmp_path, "xgboost", version, version.encode()))
    registry.set_alias("xgboost", "stable", "1.0.0")
    registry.set_alias("xgboost", "latest", "1.1.0")
    bucket = moto_server.store().bucket
    target = ["--registry", f"s3://{bucket}/models-prod", "--endpoint-url", moto_server.url]
    pushed = _cli("--registry", str(tmp_path / "r"), "push", "--to", f"s3://{bucket}/models-prod",
                  "--to-endpoint-url", moto_server.url)
    assert pushed.returncode == 0, pushed.stderr
    listing = _cli(*target, "list")
    assert listing.returncode == 0, listing.stderr
    assert "1.0.0" in listing.stdout and "<- stable" in listing.stdout and "<- latest" in listing.stdout
    pulled = _cli(*target, "pull", "xgboost", "stable", "--dest", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"1.0.0"
    again = _cli("--registry", str(tmp_path / "r"), "push", "--to", f"s3://{bucket}/models-prod",
                 "--to-endpoint-url", moto_server.url)
    assert again.returncode == 0 and "already in" in again.stdout


def test_store_outage_falls_back_to_the_verified_cache(moto_server, tmp_path):
    from .conftest import free_port
    from .tcp_proxy import TcpProxy

    proxy = TcpProxy(moto_server.port, free_port()).start()
    try:
        store = S3Store(moto_server.store().bucket, "registry", endpoint_url=f"http://127.0.0.1:{proxy.port}",
                        connect_timeout=1)
        registry = ModelRegistry(store, tmp_path / "cache")
        for version in ("1.0.0", "1.1.0"):
            registry.publish("xgboost", version, make_version_dir(tmp_path, "xgboost", version, version.encode()))
        registry.set_alias("xgboost", "stable", "1.0.0")
        assert registry.resolve("xgboost", "stable") == "1.0.0"
        registry.pull("xgboost", "1.0.0")  # warm cache for 1.0.0 only
        proxy.stop()
        assert registry.resolve("xgboost", "stable") == "1.0.0"  # the last answer seen
        assert (registry.pull("xgboost", "1.0.0") / "model.bin").read_bytes() == b"1.0.0"
        assert registry.metadata("xgboost", "1.0.0").version == "1.0.0"
        with pytest.raises(RegistryUnavailable, match="not in the local cache"):
            registry.pull("xgboost", "1.1.0")
        with pytest.raises(RegistryUnavailable):
            registry.resolve("xgboost", "latest")  # never resolved here before
        (registry.cache_dir / "xgboost" / "1.0.0" / "model.bin").write_bytes(b"tampered")
        with pytest.raises(IntegrityError):
            registry.pull("xgboost", "1.0.0")  # the cached copy is verified too
        proxy.start()
        assert (registry.pull("xgboost", "1.1.0") / "model.bin").read_bytes() == b"1.1.0"
    finally:
        proxy.stop()
