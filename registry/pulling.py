"""Verified local copies of versions: pulling into the cache, reading the cache while the store is
down, and remembering the aliases the store last resolved on this machine."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from . import checksums, signing
from .errors import IntegrityError, NotFound, RegistryUnavailable
from .versions import check_model_name, check_version


class CachedCopies:
    """Mixed into a registry namespace, which provides `store`, `cache_dir`, `verify_key`,
    `manifest`, `signature` and `_version_prefix`. The cache holds `<cache_dir>/<name>/<version>/`."""

    cache_dir: Path

    def pull(self, name: str, version: str) -> Path:
        """A verified local copy of name/version in the cache, safe under concurrent pulls.

        Files are downloaded into a private temporary directory, verified against the manifest
        and only then renamed into place, so the cache never holds a corrupt or partial version.
        """
        version = check_version(version)
        final = self.cache_dir / name / version
        try:
            manifest = self.manifest(name, version)
        except RegistryUnavailable:
            return self._cached_copy(name, version)  # the store is down: a verified cached copy will do
        if final.is_dir():
            if _matches(final, manifest):
                return final
            shutil.rmtree(final, ignore_errors=True)  # tampered or stale: fetch afresh
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}-"))
        try:
            self._download(name, version, manifest, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _matches(final, manifest):  # lost a race to a bad copy: should not happen
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _download(self, name: str, version: str, manifest: dict[str, str], into: Path) -> None:
        prefix = self._version_prefix(name, version)
        for file_name, expected in manifest.items():
            data = self.store.get(f"{prefix}/{file_name}")
            checksums.verify(file_name, data, expected, prefix)
            (into / file_name).write_bytes(data)
        (into / checksums.MANIFEST).write_bytes(checksums.render_from(manifest))
        signature = self.signature(name, version) if self.verify_key is not None else None
        if signature is not None:
            (into / signing.SIGNATURE).write_bytes(signature)

    def _cached_copy(self, name: str, version: str) -> Path:
        """The cached copy of a version, verified against its own cached manifest (and signature,
        when a verification key is set), for when the store cannot be reached."""
        final = self.cache_dir / name / version
        if not (final / checksums.MANIFEST).is_file():
            raise RegistryUnavailable(f"{name} {version} is not in the local cache and the registry "
                                      f"({self.store.description}) cannot be reached")
        manifest_bytes = (final / checksums.MANIFEST).read_bytes()
        if self.verify_key is not None:
            signature_path = final / signing.SIGNATURE
            signature = signature_path.read_bytes() if signature_path.is_file() else None
            signing.verify(manifest_bytes, signature, self.verify_key, f"cached {name} {version}")
        verify_directory(final)
        return final

    def read_file(self, name: str, version: str, file_name: str) -> bytes:
        """One verified file of a version, straight from the store."""
        manifest = self.manifest(name, version)
        if file_name not in manifest:
            raise NotFound(f"{file_name} is not part of {name} {version}")
        prefix = self._version_prefix(name, version)
        data = self.store.get(f"{prefix}/{file_name}")
        checksums.verify(file_name, data, manifest[file_name], prefix)
        return data

    # ---- aliases last resolved here, for when the store is down ----------------------------
    def _aliases_file(self, name: str) -> Path:
        return self.cache_dir / check_model_name(name) / "aliases.json"

    def _known_aliases(self, name: str) -> dict[str, str]:
        try:
            return json.loads(self._aliases_file(name).read_text())
        except (OSError, ValueError):
            return {}

    def _remember_alias(self, name: str, alias: str, version: str) -> None:
        known = self._known_aliases(name)
        if known.get(alias) == version:
            return
        path = self._aliases_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".aliases-{uuid.uuid4().hex}.json")
        tmp.write_text(json.dumps({**known, alias: version}))
        os.replace(tmp, path)


def _matches(directory: Path, manifest: dict[str, str]) -> bool:
    for file_name, expected in manifest.items():
        try:
            if checksums.sha256((directory / file_name).read_bytes()) != expected:
                return False
        except OSError:
            return False
    return True


def verify_directory(directory: Path) -> dict[str, str]:
    """Check a pulled or local version directory against its own manifest."""
    manifest = checksums.parse((directory / checksums.MANIFEST).read_bytes(), str(directory))
    for file_name, expected in manifest.items():
        path = directory / file_name
        if not path.is_file():
            raise IntegrityError(f"{directory}/{file_name} is listed in the manifest but missing")
        checksums.verify(file_name, path.read_bytes(), expected, str(directory))
    return manifest
