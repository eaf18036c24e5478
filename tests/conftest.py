"""Shared fixtures: a real moto_server S3 endpoint on loopback and registries of trained models,
each started or trained once per test session."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from registry import ModelRegistry, S3Store
from registry.stores import LocalStore

from . import marker_guard

BIN = Path(sys.executable).parent
RUNNING: dict = {}  # session-wide Ray instances, so a multi-node cluster can stop the single node first
_RAY_BEFORE = pytest.StashKey[bool]()  # whether this process was connected to Ray when a test began


def pytest_addoption(parser):
    parser.addoption("--soak-seconds", type=float, default=100.0,
                     help="how long the chaos soak (tests/test_cluster.py::test_chaos_soak) injects faults")


def pytest_sessionstart(session):
    """pytest-randomly's seed on the first line of a quiet run too (`-q` hides the header it is in),
    so that any run's order can be replayed with --randomly-seed=N."""
    seed = session.config.getoption("randomly_seed", None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if seed is not None and reporter is not None and reporter.verbosity < 0:
        reporter.write_line(f"Using --randomly-seed={seed}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Tests run in groups: those with neither Ray nor trained models first (a fast first signal),
    then those needing the trained registry alone, then the single-node application's, and the
    multi-node cluster's last: they stop the shared single-node application (one Ray instance on
    the machine at a time, since every Serve proxy binds port 8000). This runs after
    pytest-randomly's shuffle, and the sort is stable, so the random order holds within each group."""
    items.sort(key=lambda item: marker_guard.run_group(marker_guard.marker_names(item)))


def pytest_runtest_setup(item):
    """Before any fixture is set up (a conftest hook runs before pytest's own, which sets them up;
    skip marks are evaluated first): a test whose fixtures start Ray or train the models must say so
    with its markers, or it fails here, having started nothing."""
    marker_guard.set_current(item)
    item.stash[_RAY_BEFORE] = marker_guard.ray_initialized()
    missing = marker_guard.missing_markers(item.fixturenames, marker_guard.marker_names(item))
    if missing:
        pytest.fail(marker_guard.missing_message(item.nodeid, missing, "uses fixtures that need them"),
                    pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """A test without the `ray` marker that connected this process to Ray (ray.init) fails, once
    its fixtures are torn down."""
    connected = (not item.stash.get(_RAY_BEFORE, True) and marker_guard.ray_initialized()
                 and "ray" not in marker_guard.marker_names(item))
    result = yield
    if connected:
        pytest.fail(marker_guard.missing_message(item.nodeid, ["ray"], "initialized Ray"), pytrace=False)
    return result


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    marker_guard.set_current(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """Fake AWS credentials and a private KEPLER_HOME: tests never touch a user's registry."""
    home = tmp_path_factory.mktemp("kepler-home")
    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "KEPLER_HOME": str(home),
                       "KEPLER_CACHE_DIR": str(home / "cache"), "KEPLER_REGISTRY_URI": str(home / "registry"),
                       "TF_CPP_MIN_LOG_LEVEL": "2"})
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "KEPLER_S3_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


class MotoServer:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.tmp / f"moto-{self.port}.log", "ab")
        self.process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def store(self, prefix: str = "registry") -> S3Store:
        """A fresh bucket on this server."""
        store = S3Store(f"kepler-{uuid.uuid4().hex[:12]}", prefix, endpoint_url=self.url)
        store.create_bucket()
        return store


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _answers_are_distributions():
    """Every probability any test reads from the service is finite and every row sums to 1."""
    from . import answer_checks

    uninstall = answer_checks.install()
    yield
    uninstall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Debian's redis-server on a free loopback port, with a password and a memory limit."""
    from .redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path, moto_server):
    if request.param == "local":
        return LocalStore(tmp_path / "registry")
    return moto_server.store()


@pytest.fixture
def any_registry(any_store, tmp_path) -> ModelRegistry:
    return ModelRegistry(any_store, tmp_path / "cache")


@pytest.fixture(scope="session")
def publisher_keys(tmp_path_factory) -> dict[str, Path]:
    """The session's Ed25519 key pair: training signs with the private key, serving holds the public one."""
    from registry.signing import generate_keypair

    root = tmp_path_factory.mktemp("keys")
    generate_keypair(root / "publisher.pem", root / "publisher.pub")
    return {"private": root / "publisher.pem", "public": root / "publisher.pub"}


class JwtIssuer:
    """Signs test tokens with an Ed25519 key whose public half the application trusts, for the
    issuer and audience the test application is configured with (KEPLER_JWT_ISSUER/_AUDIENCE)."""

    ISSUER, AUDIENCE = "https://issuer.test", "kepler-serve"

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.key = Ed25519PrivateKey.generate()
        self.public_pem = self.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    def token(self, key=None, alg: str = "EdDSA", **claims) -> str:
        """`iss` and `aud` default to the configured ones; a claim given as None is left out."""
        import base64
        import json

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        claims = {k: v for k, v in {"iss": self.ISSUER, "aud": self.AUDIENCE, **claims}.items() if v is not None}
        signing_input = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64((key or self.key).sign(signing_input.encode()))}"


@pytest.fixture(scope="session")
def jwt_issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory, publisher_keys) -> ModelRegistry:
    """All three families, versions 1.0.0 to 2.1.0, the fitted ensembles and the KOI catalogue,
    trained and published in full from the real data and signed, once."""
    marker_guard.require_marker("trained", "needs the trained registry")
    from registry.signing import SIGNATURE, load_private_key, sign
    from runtimes import MODEL_NAMES
    from training.train import VERSION_PLAN, train_all

    root = tmp_path_factory.mktemp("trained")
    key = load_private_key(publisher_keys["private"])
    registry = ModelRegistry(LocalStore(root / "registry"), root / "cache", signing_key=key)
    reuse = os.environ.get("KEPLER_TEST_TRAINED_REGISTRY")  # a developer's shortcut; CI always trains
    if reuse:
        shutil.copytree(reuse, root / "registry")
        for kind, names in (("models", registry.models()), ("datasets", registry.datasets.names())):
            for name in names:
                for version in (registry if kind == "models" else registry.datasets).versions(name):
                    manifest = registry.store.get(f"{kind}/{name}/v{version}/checksum.sha256")
                    registry.store.put(f"{kind}/{name}/v{version}/{SIGNATURE}", sign(manifest, key))
    else:
        train_all(registry, versions=tuple(VERSION_PLAN))
    # The serving tests compare two versions of one schema as stable and latest (canaries, alias
    # moves); the bootstrap's own defaults (both 2.1.0) are asserted in test_models_2x.py.
    for name in MODEL_NAMES:
        registry.set_alias(name, "stable", "1.0.0")
        registry.set_alias(name, "latest", "1.1.0")
    return registry


@pytest.fixture(scope="session")
def serve_app(trained_registry, publisher_keys, jwt_issuer, tmp_path_factory):
    """One real Ray node running the Serve application from serve_config.yaml, for the session."""
    from .ray_cluster import single_node, serve_test_config

    node = single_node()
    try:
        config = serve_test_config(str(trained_registry.store.root), str(tmp_path_factory.mktemp("serve-cache")),
                                   verify_key=str(publisher_keys["public"]), jwt_public_key=jwt_issuer.public_pem)
        node.deploy(config)
        node.wait_running()
        node.config = config
        RUNNING["serve_app"] = node
        yield node
    finally:
        node.stop(grace_s=5)
        # Nothing the node started outlives it (HAProxy would keep port 8000 from the next cluster).
        from .ray_cluster import local_cluster

        left = [pid for n in node.nodes for pid in local_cluster._session_members(n["pid"])]
        assert not left, f"processes left by the stopped node: {left}"
