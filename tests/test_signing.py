"""Signed versions: the attacks named, each refused before anything is deserialized, with the
other versions still readable. Against both backends (a local directory, a real S3 endpoint)."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from registry import IntegrityError, ModelRegistry
from registry import checksums, signing
from registry.stores import LocalStore

from .helpers import make_version_dir, publish_copy


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    signing.generate_keypair(root / "publisher.pem", root / "publisher.pub")
    signing.generate_keypair(root / "other.pem", root / "other.pub")
    return {name: root / name for name in ("publisher.pem", "publisher.pub", "other.pem", "other.pub")}


@pytest.fixture
def signed(any_store, tmp_path, keys):
    """(publisher's registry, a serving reader holding only the public key)."""
    publisher = ModelRegistry(any_store, tmp_path / "publisher-cache",
                              signing_key=signing.load_private_key(keys["publisher.pem"]))
    reader = ModelRegistry(any_store, tmp_path / "reader-cache",
                           verify_key=signing.load_public_key(keys["publisher.pub"]))
    for version in ("1.0.0", "1.1.0"):
        publisher.publish("random_forest", version, make_version_dir(tmp_path, "random_forest", version, version.encode()))
    return publisher, reader


def test_signed_versions_verify(signed):
    publisher, reader = signed
    assert (reader.pull("random_forest", "1.1.0") / "model.bin").read_bytes() == b"1.1.0"
    assert publisher.signature("random_forest", "1.1.0")


def test_object_replaced_after_publish_is_refused(signed):
    _, reader = signed
    reader.store.put("models/random_forest/v1.1.0/model.bin", b"replaced")
    with pytest.raises(IntegrityError, match="checksum mismatch.*model.bin"):
        reader.pull("random_forest", "1.1.0")
    assert reader.pull("random_forest", "1.0.0")  # the other version still serves


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_recomputed_checksum_but_no_valid_signature_is_refused(signed, tmp_path):
    """An attacker with write access replaces the model with a pickle that would create a file if
    unpickled, and rewrites the manifest to match it; they cannot re-sign it."""
    _, reader = signed
    marker = tmp_path / "executed"
    payload = io.BytesIO()
    np.save(payload, np.array([_CreatesFile(str(marker))], dtype=object), allow_pickle=True)
    prefix = "models/random_forest/v1.1.0"
    files = {name: reader.store.get(f"{prefix}/{name}") for name in ("metadata.json", "preprocessing.json")}
    files["model.bin"] = payload.getvalue()
    reader.store.put(f"{prefix}/model.bin", files["model.bin"])
    reader.store.put(f"{prefix}/{checksums.MANIFEST}", checksums.render(files))
    with pytest.raises(IntegrityError, match="signature"):
        reader.pull("random_forest", "1.1.0")
    assert not marker.exists()
    assert not (reader.cache_dir / "random_forest" / "1.1.0").exists()
    assert reader.pull("random_forest", "1.0.0")


def test_unsigned_version_is_refused(signed, tmp_path):
    _, reader = signed
    unsigned = ModelRegistry(reader.store, tmp_path / "unsigned-cache")  # no signing key
    unsigned.publish("random_forest", "2.0.0", make_version_dir(tmp_path, "random_forest", "2.0.0"))
    with pytest.raises(IntegrityError, match="not signed"):
        reader.pull("random_forest", "2.0.0")
    with pytest.raises(IntegrityError, match="not signed"):
        reader.metadata("random_forest", "2.0.0")


def test_signature_from_another_key_is_refused(signed, tmp_path, keys):
    _, reader = signed
    impostor = ModelRegistry(reader.store, tmp_path / "impostor-cache",
                             signing_key=signing.load_private_key(keys["other.pem"]))
    impostor.publish("random_forest", "3.0.0", make_version_dir(tmp_path, "random_forest", "3.0.0"))
    with pytest.raises(IntegrityError, match="another key"):
        reader.pull("random_forest", "3.0.0")
    assert reader.pull("random_forest", "1.0.0")


def test_cli_keygen_sign_and_verify(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "training.registry_cli", *args], capture_output=True,
                              text=True, timeout=120)

    assert cli("keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pub")).returncode == 0
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    registry = ["--registry", str(tmp_path / "r")]
    source = make_version_dir(tmp_path, "xgboost", "1.0.0")
    signed = cli(*registry, "--signing-key", str(tmp_path / "k.pem"), "register", "xgboost", "1.0.0", str(source))
    assert signed.returncode == 0, signed.stderr
    ok = cli(*registry, "--verify-key", str(tmp_path / "k.pub"), "pull", "xgboost", "1.0.0")
    assert ok.returncode == 0, ok.stderr
    LocalStore(tmp_path / "r").delete("models/xgboost/v1.0.0/signature.ed25519")
    refused = cli(*registry, "--verify-key", str(tmp_path / "k.pub"), "pull", "xgboost", "1.0.0")
    assert refused.returncode == 1 and "not signed" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.ray
@pytest.mark.trained
def test_serving_refuses_an_unsigned_version_and_keeps_serving(serve_app, trained_registry, tmp_path):
    """The application is deployed with the publisher's public key: a version published without
    the private key is refused with a clear error, and the signed versions keep serving."""
    import requests

    from .ray_cluster import SERVE_URL

    unsigned = ModelRegistry(trained_registry.store, tmp_path / "cache")  # write access, no key
    publish_copy(unsigned, "xgboost", "1.1.0", "9.2.0", tmp_path)
    row = [1.0] * 36
    try:
        response = requests.post(f"{SERVE_URL}/api/v1/predict", timeout=60,
                                 json={"features": row, "model": "xgboost", "version": "9.2.0"})
        assert response.status_code == 503 and "not signed" in response.json()["error"], response.text
        assert requests.post(f"{SERVE_URL}/api/v1/predict", json={"features": row, "model": "xgboost"},
                             timeout=60).status_code == 200
    finally:
        trained_registry.archive("xgboost", "9.2.0")
