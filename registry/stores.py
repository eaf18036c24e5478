"""Object stores: the few primitives the registry needs, with the store deciding every race.

Keys are '/'-separated relative paths. Each store offers plain puts, create-only puts and
compare-and-swap puts keyed by an ETag; the local directory gives the same guarantees as S3 with
atomic renames, hard links and a lock file.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

from .errors import NotFound, RegistryUnavailable


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (create-only) or changed (If-Match)."""


class ObjectStore(Protocol):
    description: str

    def get(self, key: str) -> bytes: ...
    def get_with_etag(self, key: str) -> tuple[bytes, str]: ...
    def exists(self, key: str) -> bool: ...
    def put(self, key: str, data: bytes) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> None: ...
    def put_if_match(self, key: str, data: bytes, etag: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStore:
    """A directory on this machine. ETags are content hashes."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.description = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.description}") from None
        return data, hashlib.sha256(data).hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; artifacts are meant to be readable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Path(tmp)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
        except FileExistsError:
            raise PreconditionFailed(key) from None
        finally:
            tmp.unlink()

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock = self._path(key).with_name(f".{Path(key).name}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put_if_match(self, key: str, data: bytes, etag: str) -> None:
        with self._locked(key):
            try:
                _, current = self.get_with_etag(key)
            except NotFound:
                raise PreconditionFailed(key) from None
            if current != etag:
                raise PreconditionFailed(key)
            self.put(key, data)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """An S3 bucket (or any S3-compatible endpoint) through boto3.

    Conditional writes use S3's own If-None-Match / If-Match on PutObject, so concurrent
    publishers and alias moves are decided by the store, not by a check-then-put.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, connect_timeout: float = 3.0, read_timeout: float = 20.0):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.description = f"s3://{bucket}/{self.prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"max_attempts": 2, "mode": "standard"})
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url, config=config,
                                region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise PreconditionFailed(key) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{key} not found in {self.description}") from None
            if code == "NoSuchBucket":
                raise RegistryUnavailable(f"bucket {self.bucket!r} does not exist ({self.description})") from None
            raise RegistryUnavailable(f"S3 error {code or status} on {key} ({self.description}): {e}") from None
        except BotoCoreError as e:
            raise RegistryUnavailable(f"cannot reach the registry at {self.description}: {e}") from None

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except NotFound:
            return False

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, etag: str) -> None:
        try:
            with self._errors(key):
                self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=etag)
        except NotFound:
            raise PreconditionFailed(key) from None

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        keys: list[str] = []
        with self._errors(prefix or "/"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) + 1:] if self.prefix else item["Key"]
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def create_bucket(self) -> None:
        with self._errors("/"):
            self._s3.create_bucket(Bucket=self.bucket)
