"""Where the registry lives. Nothing configured means a local directory under ~/.kepler-serve."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from . import signing
from .registry import ModelRegistry
from .stores import LocalStore, ObjectStore, S3Store

DEFAULT_HOME = Path(os.environ.get("KEPLER_HOME", "~/.kepler-serve")).expanduser()


class RegistryConfig(BaseModel):
    """`uri` is a directory path, file:///path, or s3://bucket/prefix."""

    uri: str = Field(default=str(DEFAULT_HOME / "registry"))
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    cache_dir: str = Field(default=str(DEFAULT_HOME / "cache"))
    signing_key: str | None = Field(default=None, description="Ed25519 private key (PEM path): publishers only")
    verify_key: str | None = Field(default=None, description="Ed25519 public key (PEM path or text): readers "
                                                             "refuse unsigned or wrongly signed versions")

    @classmethod
    def from_env(cls, **overrides) -> "RegistryConfig":
        values = {
            "uri": os.environ.get("KEPLER_REGISTRY_URI"),
            "endpoint_url": os.environ.get("KEPLER_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            "cache_dir": os.environ.get("KEPLER_CACHE_DIR"),
            "signing_key": os.environ.get("KEPLER_SIGNING_KEY"),
            "verify_key": os.environ.get("KEPLER_VERIFY_KEY"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None})

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def store(self) -> ObjectStore:
        if self.is_s3:
            parsed = urlparse(self.uri)
            return S3Store(parsed.netloc, parsed.path, endpoint_url=self.endpoint_url)
        path = urlparse(self.uri).path if self.uri.startswith("file://") else self.uri
        return LocalStore(path)

    def open(self) -> ModelRegistry:
        return ModelRegistry(self.store(), self.cache_dir,
                             signing_key=signing.load_private_key(self.signing_key) if self.signing_key else None,
                             verify_key=signing.load_public_key(self.verify_key) if self.verify_key else None)
