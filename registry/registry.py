"""The model registry: versioned, checksummed artifacts and movable aliases over an object store.

Layout (identical on a local directory and on S3; datasets use the same layout under `datasets/`,
see datasets.py):

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
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from . import checksums, signing
from .errors import AliasConflict, InvalidName, NotFound, RegistryError, RegistryUnavailable, VersionExists
from .metadata import ModelMetadata
from .pulling import CachedCopies, verify_directory
from .stores import ObjectStore, PreconditionFailed
from .versions import check_alias, check_model_name, check_version, is_version, version_key

if TYPE_CHECKING:
    from .datasets import DatasetRegistry

METADATA = "metadata.json"
CLAIM = ".claim"
ARCHIVED = "ARCHIVED"
_NOT_ARTIFACTS = {checksums.MANIFEST, CLAIM, ARCHIVED, signing.SIGNATURE}

__all__ = ["ArtifactRegistry", "ModelRegistry", "VersionInfo", "Alias", "ModelSummary", "verify_directory"]


M = TypeVar("M", bound=BaseModel)  # a kind's metadata.json type


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class VersionInfo:
    name: str
    version: str
    archived: bool
    metadata: BaseModel


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


class ArtifactRegistry(CachedCopies, Generic[M]):
    """Versions and aliases of one kind of artifact, under one top-level namespace of the store.

    Subclasses name the namespace and the metadata type and say what a version must contain; every
    guarantee (create-only claim, manifest last, signatures, aliases, verified pulls) is shared.
    """

    NAMESPACE: ClassVar[str]  # the store's top-level folder: "models", "datasets"
    KIND: ClassVar[str]  # for messages: "model", "dataset"
    METADATA_TYPE: ClassVar[type[BaseModel]]  # M itself
    CACHE_SUBDIR: ClassVar[str] = ""  # below the store's cache folder; kept apart from model names

    def __init__(self, store: ObjectStore, cache_dir: Path | str, signing_key=None, verify_key=None):
        """`signing_key` (Ed25519 private key) signs what this registry publishes; with
        `verify_key` (the public key) every read refuses unsigned or wrongly signed versions."""
        self.store = store
        self.signing_key = signing_key
        self.verify_key = verify_key
        self.cache_root = Path(cache_dir).expanduser()
        # One cache subtree per store, so two registries never share a cached version.
        store_hash = hashlib.sha256(store.description.encode()).hexdigest()[:12]
        self.cache_dir = self.cache_root / store_hash / self.CACHE_SUBDIR

    # ---- what a version must hold (per kind) --------------------------------------------------
    @staticmethod
    def _describes(metadata: M) -> tuple[str, str]:
        """The (name, version) a metadata document claims to be."""
        raise NotImplementedError

    @staticmethod
    def _needs(metadata: M) -> list[str]:
        """The files a metadata document says the version contains."""
        raise NotImplementedError

    # ---- keys -----------------------------------------------------------------------------
    def _name(self, name: str) -> str:
        try:
            return check_model_name(name)
        except InvalidName:
            message = f"invalid {self.KIND} name {name!r}: expected lowercase letters, digits and '_'"
            raise InvalidName(message) from None

    def _version_prefix(self, name: str, version: str) -> str:
        return f"{self.NAMESPACE}/{self._name(name)}/v{check_version(version)}"

    def _alias_key(self, name: str, alias: str) -> str:
        return f"{self.NAMESPACE}/{self._name(name)}/{check_alias(alias)}"

    # ---- reading --------------------------------------------------------------------------
    def names(self) -> list[str]:
        names = {key.split("/")[1] for key in self.store.list(self.NAMESPACE) if key.count("/") >= 2}
        return sorted(names)

    def versions(self, name: str, include_archived: bool = False) -> list[str]:
        """Published versions, oldest first. A version is published once its manifest exists."""
        found, archived = set(), set()
        for key in self.store.list(f"{self.NAMESPACE}/{self._name(name)}"):
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
                raise NotFound(f"{self.KIND} {name!r} not found in {self.store.description}")
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

    def metadata(self, name: str, version: str) -> M:
        """The version's metadata, verified against its manifest (from the cache if the store is down)."""
        try:
            return self._stored_metadata(name, version)
        except RegistryUnavailable:
            directory = self._cached_copy(name, check_version(version))
            return self.METADATA_TYPE.model_validate_json((directory / METADATA).read_bytes())

    def _stored_metadata(self, name: str, version: str) -> M:
        version = self._require_version(name, version)
        prefix = self._version_prefix(name, version)
        manifest = self.manifest(name, version)
        data = self.store.get(f"{prefix}/{METADATA}")
        checksums.verify(METADATA, data, manifest[METADATA], prefix)
        return self.METADATA_TYPE.model_validate_json(data)

    def info(self, name: str, version: str) -> VersionInfo:
        return VersionInfo(name, check_version(version), self.is_archived(name, version), self.metadata(name, version))

    def aliases(self, name: str) -> dict[str, str]:
        result = {}
        for key in self.store.list(f"{self.NAMESPACE}/{self._name(name)}"):
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
            raise NotFound(f"alias {alias!r} of {self.KIND} {name!r} is not set") from None
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

    # ---- writing --------------------------------------------------------------------------
    def publish(self, name: str, version: str, source: Path | str, signature: bytes | None = None) -> M:
        """Publish the files of `source` as name/version; returns its metadata.

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

    def _check_publishable(self, name: str, version: str, files: dict[str, bytes]) -> M:
        refused = f"cannot publish {name} {version}"
        if METADATA not in files:
            raise RegistryError(f"{refused}: {METADATA} is missing")
        try:
            metadata = self.METADATA_TYPE.model_validate_json(files[METADATA])
        except ValueError as e:
            raise RegistryError(f"{refused}: invalid {METADATA}: {e}") from None
        described_name, described_version = self._describes(metadata)
        if described_name != name or check_version(described_version) != version:
            raise RegistryError(f"{refused}: {METADATA} describes {described_name} {described_version}")
        for needed in self._needs(metadata):
            if needed not in files:
                raise RegistryError(f"{refused}: {needed} is missing")
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


class ModelRegistry(ArtifactRegistry[ModelMetadata]):
    """Models under `models/`, the JSON documents beside them, and the datasets under `datasets/`."""

    NAMESPACE, KIND, METADATA_TYPE = "models", "model", ModelMetadata

    @staticmethod
    def _describes(metadata: ModelMetadata) -> tuple[str, str]:
        return metadata.model_name, metadata.version

    @staticmethod
    def _needs(metadata: ModelMetadata) -> list[str]:
        return [f for f in (metadata.model_file, metadata.preprocessing_file) if f]

    def models(self) -> list[str]:
        return self.names()

    @property
    def datasets(self) -> DatasetRegistry:
        """The datasets in the same store, with the same keys and the same cache root."""
        from .datasets import DatasetRegistry  # datasets.py builds on this module

        return DatasetRegistry(self.store, self.cache_root, self.signing_key, self.verify_key)

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
