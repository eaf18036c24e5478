"""The model registry: versioned, checksummed artifacts and movable aliases over an object store.

Layout (identical on a local directory and on S3):

    models/<name>/v<semver>/<model file>, metadata.json, preprocessing.json, ...
    models/<name>/v<semver>/checksum.sha256   written last: a version without it does not exist
    models/<name>/v<semver>/.claim            the publisher's create-only claim on the version
    models/<name>/v<semver>/ARCHIVED          present when the version is archived
    models/<name>/<alias>                     {"version": "1.0.0", ...}; moved with If-Match
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import checksums, signing
from .errors import (AliasConflict, IntegrityError, InvalidName, NotFound, RegistryError, RegistryUnavailable,
                     VersionExists)
from .metadata import ModelMetadata
from .stores import ObjectStore, PreconditionFailed
from .versions import check_alias, check_model_name, check_version, is_version, version_key

METADATA = "metadata.json"
CLAIM = ".claim"
ARCHIVED = "ARCHIVED"
_NOT_ARTIFACTS = {checksums.MANIFEST, CLAIM, ARCHIVED, signing.SIGNATURE}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class VersionInfo:
    name: str
    version: str
    archived: bool
    metadata: ModelMetadata


@dataclass
class Alias:
    version: str
    etag: str
    updated_at: str = ""


@dataclass
class ModelSummary:
    name: str
    versions: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    archived: list[str] = field(default_factory=list)


class ModelRegistry:
    def __init__(self, store: ObjectStore, cache_dir: Path | str, signing_key=None, verify_key=None):
        """`signing_key` (Ed25519 private key) signs what this registry publishes; with
        `verify_key` (the public key) every read refuses unsigned or wrongly signed versions."""
        self.store = store
        self.signing_key = signing_key
        self.verify_key = verify_key
        # One cache subtree per store, so two registries never share a cached version.
        self.cache_dir = Path(cache_dir).expanduser() / hashlib.sha256(store.description.encode()).hexdigest()[:12]

    # ---- keys -----------------------------------------------------------------------------
    @staticmethod
    def _version_prefix(name: str, version: str) -> str:
        return f"models/{check_model_name(name)}/v{check_version(version)}"

    @staticmethod
    def _alias_key(name: str, alias: str) -> str:
        return f"models/{check_model_name(name)}/{check_alias(alias)}"

    # ---- reading --------------------------------------------------------------------------
    def models(self) -> list[str]:
        names = {key.split("/")[1] for key in self.store.list("models") if key.count("/") >= 2}
        return sorted(names)

    def versions(self, name: str, include_archived: bool = False) -> list[str]:
        """Published versions, oldest first. A version is published once its manifest exists."""
        found, archived = set(), set()
        for key in self.store.list(f"models/{check_model_name(name)}"):
            parts = key.split("/")
            if len(parts) == 4 and parts[2].startswith("v") and is_version(parts[2][1:]):
                if parts[3] == checksums.MANIFEST:
                    found.add(parts[2][1:])
                elif parts[3] == ARCHIVED:
                    archived.add(parts[2][1:])
        if not include_archived:
            found -= archived
        return sorted(found, key=version_key)

    def exists(self, name: str, version: str) -> bool:
        return self.store.exists(f"{self._version_prefix(name, version)}/{checksums.MANIFEST}")

    def is_archived(self, name: str, version: str) -> bool:
        return self.store.exists(f"{self._version_prefix(name, version)}/{ARCHIVED}")

    def _require_version(self, name: str, version: str) -> str:
        version = check_version(version)
        if not self.exists(name, version):
            known = self.versions(name, include_archived=True)
            if not known:
                raise NotFound(f"model {name!r} not found in {self.store.description}")
            raise NotFound(f"version {version} of {name!r} not found (known: {', '.join(known)})")
        return version

    def manifest(self, name: str, version: str) -> dict[str, str]:
        """The version's checksums; its signature verified first when a verification key is set."""
        version = self._require_version(name, version)
        prefix = self._version_prefix(name, version)
        manifest = self.store.get(f"{prefix}/{checksums.MANIFEST}")
        if self.verify_key is not None:
            signing.verify(manifest, self.signature(name, version), self.verify_key, f"{name} {version}")
        return checksums.parse(manifest, prefix)

    def signature(self, name: str, version: str) -> bytes | None:
        try:
            return self.store.get(f"{self._version_prefix(name, version)}/{signing.SIGNATURE}")
        except NotFound:
            return None

    def metadata(self, name: str, version: str) -> ModelMetadata:
        """The version's metadata, verified against its manifest (from the cache if the store is down)."""
        try:
            return self._stored_metadata(name, version)
        except RegistryUnavailable:
            directory = self._cached_copy(name, check_version(version))
            return ModelMetadata.model_validate_json((directory / METADATA).read_bytes())

    def _stored_metadata(self, name: str, version: str) -> ModelMetadata:
        version = self._require_version(name, version)
        prefix = self._version_prefix(name, version)
        manifest = self.manifest(name, version)
        data = self.store.get(f"{prefix}/{METADATA}")
        checksums.verify(METADATA, data, manifest[METADATA], prefix)
        return ModelMetadata.model_validate_json(data)

    def info(self, name: str, version: str) -> VersionInfo:
        return VersionInfo(name, check_version(version), self.is_archived(name, version), self.metadata(name, version))

    def aliases(self, name: str) -> dict[str, str]:
        result = {}
        for key in self.store.list(f"models/{check_model_name(name)}"):
            parts = key.split("/")
            if len(parts) == 3:
                try:
                    result[parts[2]] = self.get_alias(name, parts[2]).version
                except (RegistryError, ValueError):
                    continue
        return result

    def summary(self, name: str) -> ModelSummary:
        all_versions = self.versions(name, include_archived=True)
        active = self.versions(name)
        return ModelSummary(name, active, self.aliases(name), [v for v in all_versions if v not in active])

    def get_alias(self, name: str, alias: str) -> Alias:
        try:
            data, etag = self.store.get_with_etag(self._alias_key(name, alias))
        except NotFound:
            raise NotFound(f"alias {alias!r} of model {name!r} is not set") from None
        body = json.loads(data)
        return Alias(check_version(body["version"]), etag, body.get("updated_at", ""))

    def resolve(self, name: str, ref: str) -> str:
        """A version or an alias -> a concrete, published version."""
        if is_version(ref):
            return self._require_version(name, ref)
        try:
            check_alias(ref)
        except InvalidName:
            raise InvalidName(f"invalid version or alias {ref!r}: expected e.g. 1.0.0, stable or latest") from None
        try:
            version = self._require_version(name, self.get_alias(name, ref).version)
        except RegistryUnavailable:
            known = self._known_aliases(name).get(ref)
            if known is None:
                raise
            return known  # the store is down: the last answer it gave this machine
        self._remember_alias(name, ref, version)
        return version

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

    # ---- writing --------------------------------------------------------------------------
    def publish(self, name: str, version: str, source: Path | str, signature: bytes | None = None) -> ModelMetadata:
        """Publish the files of `source` as name/version.

        The claim is a create-only write decided by the store, so of two publishers of one
        version exactly one proceeds and the other is refused before it writes anything. The
        signature (made with `signing_key`, or an existing one passed in when copying a version)
        goes before the manifest, and the manifest goes last: readers never see a partial version.
        """
        version = check_version(version)
        prefix = self._version_prefix(name, version)
        files = {p.name: p.read_bytes() for p in sorted(Path(source).iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.name not in _NOT_ARTIFACTS}
        metadata = self._check_publishable(name, version, files)
        claim = json.dumps({"publisher": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                            "claimed_at": _now()}).encode()
        try:
            self.store.put_if_absent(f"{prefix}/{CLAIM}", claim)
        except PreconditionFailed:
            raise VersionExists(f"version {version} of {name!r} already exists (or is being published)") from None
        for file_name, data in files.items():
            self.store.put(f"{prefix}/{file_name}", data)
        manifest = checksums.render(files)
        if self.signing_key is not None:
            signature = signing.sign(manifest, self.signing_key)
        if signature is not None:
            self.store.put(f"{prefix}/{signing.SIGNATURE}", signature)
        self.store.put(f"{prefix}/{checksums.MANIFEST}", manifest)
        return metadata

    @staticmethod
    def _check_publishable(name: str, version: str, files: dict[str, bytes]) -> ModelMetadata:
        if METADATA not in files:
            raise RegistryError(f"cannot publish {name} {version}: {METADATA} is missing")
        try:
            metadata = ModelMetadata.model_validate_json(files[METADATA])
        except ValueError as e:
            raise RegistryError(f"cannot publish {name} {version}: invalid {METADATA}: {e}") from None
        if metadata.model_name != name or check_version(metadata.version) != version:
            raise RegistryError(f"cannot publish {name} {version}: {METADATA} describes "
                                f"{metadata.model_name} {metadata.version}")
        for needed in filter(None, (metadata.model_file, metadata.preprocessing_file)):
            if needed not in files:
                raise RegistryError(f"cannot publish {name} {version}: {needed} is missing")
        return metadata

    def set_alias(self, name: str, alias: str, version: str, expected_etag: str | None = None,
                  create_only: bool = False) -> Alias:
        """Point `alias` at `version`.

        With `expected_etag` the move succeeds only if nobody moved the alias since it was read
        (If-Match); with `create_only` only if the alias does not exist yet.
        """
        version = self._require_version(name, version)
        if self.is_archived(name, version):
            raise RegistryError(f"version {version} of {name!r} is archived: unarchive it before aliasing it")
        key = self._alias_key(name, alias)
        body = json.dumps({"version": version, "updated_at": _now()}).encode()
        try:
            if create_only:
                self.store.put_if_absent(key, body)
            elif expected_etag is not None:
                self.store.put_if_match(key, body, expected_etag)
            else:
                self.store.put(key, body)
        except PreconditionFailed:
            raise AliasConflict(f"alias {alias!r} of {name!r} was moved by someone else; read it again") from None
        return self.get_alias(name, alias)

    def promote(self, name: str, alias: str, version: str) -> tuple[str | None, Alias]:
        """Move an alias from whatever it points at now, refusing if it moves meanwhile."""
        try:
            current = self.get_alias(name, alias)
        except NotFound:
            return None, self.set_alias(name, alias, version, create_only=True)
        return current.version, self.set_alias(name, alias, version, expected_etag=current.etag)

    def archive(self, name: str, version: str) -> None:
        version = self._require_version(name, version)
        pointing = [a for a, v in self.aliases(name).items() if v == version]
        if pointing:
            raise RegistryError(f"version {version} of {name!r} is the target of {', '.join(pointing)}: "
                                "move the alias first")
        self.store.put(f"{self._version_prefix(name, version)}/{ARCHIVED}", _now().encode())

    # ---- documents: small JSON state written with compare-and-swap ----------------------------
    @staticmethod
    def _document_key(kind: str, name: str) -> str:
        return f"{check_alias(kind)}/{check_model_name(name)}.json"

    def read_document(self, kind: str, name: str) -> tuple[dict | None, str | None]:
        """A JSON document and its ETag, or (None, None) when it was never written."""
        try:
            data, etag = self.store.get_with_etag(self._document_key(kind, name))
        except NotFound:
            return None, None
        return json.loads(data), etag

    def write_document(self, kind: str, name: str, document: dict, expected_etag: str | None) -> str:
        """Write only over the version read (`expected_etag`; None: only if absent). Returns the new ETag."""
        key = self._document_key(kind, name)
        body = json.dumps(document, sort_keys=True).encode()
        try:
            if expected_etag is None:
                self.store.put_if_absent(key, body)
            else:
                self.store.put_if_match(key, body, expected_etag)
        except PreconditionFailed:
            raise AliasConflict(f"{kind}/{name} was written by someone else; read it again") from None
        return self.store.get_with_etag(key)[1]

    # ---- pulling --------------------------------------------------------------------------
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
        prefix = self._version_prefix(name, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}-"))
        try:
            for file_name, expected in manifest.items():
                data = self.store.get(f"{prefix}/{file_name}")
                checksums.verify(file_name, data, expected, prefix)
                (tmp / file_name).write_bytes(data)
            (tmp / checksums.MANIFEST).write_bytes(checksums.render_from(manifest))
            signature = self.signature(name, version) if self.verify_key is not None else None
            if signature is not None:
                (tmp / signing.SIGNATURE).write_bytes(signature)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _matches(final, manifest):  # lost a race to a bad copy: should not happen
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

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
