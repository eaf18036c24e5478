"""The checksum manifest (`checksum.sha256`, in sha256sum's format) and its verification."""
from __future__ import annotations

import hashlib
import re

from .errors import IntegrityError

MANIFEST = "checksum.sha256"
_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9][A-Za-z0-9._-]*)$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render(files: dict[str, bytes]) -> bytes:
    return render_from({name: sha256(data) for name, data in files.items()})


def parse(manifest: bytes, where: str) -> dict[str, str]:
    """File name -> sha256. Names are plain file names: no paths can escape the version."""
    entries: dict[str, str] = {}
    try:
        lines = manifest.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise IntegrityError(f"{where}/{MANIFEST} is not a checksum manifest") from None
    for line in lines:
        match = _LINE.match(line)
        if not match or match.group(2) == MANIFEST:
            raise IntegrityError(f"{where}/{MANIFEST}: malformed line {line!r}")
        entries[match.group(2)] = match.group(1)
    if not entries:
        raise IntegrityError(f"{where}/{MANIFEST} lists no files")
    return entries


def verify(name: str, data: bytes, expected: str, where: str) -> None:
    actual = sha256(data)
    if actual != expected:
        raise IntegrityError(
            f"checksum mismatch for {where}/{name}: manifest says {expected[:12]}..., file has {actual[:12]}...")


def render_from(manifest: dict[str, str]) -> bytes:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.items())).encode()
