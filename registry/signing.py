"""Ed25519 signatures over a version's checksum manifest.

Checksums prove integrity, signatures prove origin: the publisher (training or CI) signs
`checksum.sha256` with a private key only it holds; readers configured with the public key
refuse versions that are unsigned or signed by another key, before any file is deserialized.
"""
from __future__ import annotations

import base64
from pathlib import Path

from .errors import IntegrityError, RegistryError

SIGNATURE = "signature.ed25519"


def generate_keypair(private_path: Path, public_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_path = Path(private_path)
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    Path(public_path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))


def _pem(source: str | Path) -> bytes:
    text = str(source)
    return text.encode() if text.lstrip().startswith("-----BEGIN") else Path(text).expanduser().read_bytes()


def load_private_key(source: str | Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(_pem(source), password=None)
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read the signing key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RegistryError("the signing key is not an Ed25519 private key")
    return key


def load_public_key(source: str | Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(_pem(source))
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read the verification key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RegistryError("the verification key is not an Ed25519 public key")
    return key


def sign(manifest: bytes, private_key) -> bytes:
    return base64.b64encode(private_key.sign(manifest)) + b"\n"


def verify(manifest: bytes, signature: bytes | None, public_key, where: str) -> None:
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise IntegrityError(f"{where} is not signed: refused (a verification key is configured)")
    try:
        public_key.verify(base64.b64decode(signature.strip(), validate=True), manifest)
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"{where}: the signature does not match the manifest or was made with "
                             "another key: refused") from None
