"""Domain errors of the serving path. They carry a message fit for the client and nothing about
HTTP: `serve_app/http/errors.py` maps each class to a status, once, for REST and V2 alike.
They cross the handle boundary from a model replica to the router, so they pickle by message.

A message says what went wrong in the client's terms, never where the service keeps things: a
registry's path, bucket or endpoint and an exception's own text go to the log (`withheld`)."""
from __future__ import annotations

import logging
import re

logger = logging.getLogger("ray.serve")


class ServingError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # survive Ray's serialization with the message intact
        return (type(self), (self.message,))


class BadRequest(ServingError):
    """The request itself is wrong (a field, a version string, a row that does not fit)."""


class NotFoundError(ServingError):
    """A model, version or experiment that does not exist."""


class Conflict(ServingError):
    """An action the current state does not allow (promote without a candidate)."""


class ModelUnavailable(ServingError):
    """A version that cannot be pulled, loaded or answered now (registry down, corrupt, failing)."""

    retry_after_s = 1


class Overloaded(ModelUnavailable):
    """The model's queue is full: load is shed, and it is not a model failure."""


class RetryAfter:
    """Mixed into an error that says when to try again (the Retry-After header)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))


class BreakerOpen(RetryAfter, ModelUnavailable):
    """A deployment's circuit breaker is turning calls away; retry when it half-opens."""


class RateLimited(RetryAfter, ServingError):
    """The caller's rate limit is spent (an explanation costs more than a prediction)."""


class ReplicaGone(Exception):
    """Raised by a model-call function when the replica died under the call: the dispatcher
    retries such a call once, since predictions are idempotent."""


def withheld(kind: type[ServingError], public: str, error: BaseException) -> ServingError:
    """`kind(public)` for the client; the detail it leaves out (a registry store's path, bucket or
    endpoint, a file name, the exception's own text) is logged at warning level instead."""
    logger.warning("%s (%s: %s)", public, type(error).__name__, error)
    return kind(public)


# The registry's NotFound messages end in "<what> not found in <store description>" when they name
# the store (a local path, or s3://bucket/prefix at an endpoint URL); any other path or URL left in
# one means the message as a whole is not the client's to read.
_STORE_TAIL = re.compile(r" not found in .*\Z", re.DOTALL)
_LOCATION = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|(?:^|[\s'\"(=])(?:/|~/|[A-Za-z]:\\)")


_PATHS_AND_URLS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+|(?<![\w.])(?:~|[A-Za-z]:)?[/\\][^\s'\",;)]+")


def scrubbed(error: BaseException, limit: int = 300) -> str:
    """An exception's own words for the client (a framework's "Feature shape mismatch, expected 10,
    got 36", a registry's "not signed: refused"), with every path and URL in them cut out: its
    first line, bounded."""
    lines = str(error).strip().splitlines()
    text = _PATHS_AND_URLS.sub("…", lines[0] if lines else "")
    return f"{type(error).__name__}: {text[:limit]}" if text else type(error).__name__


def not_found(error: BaseException) -> NotFoundError:
    """A registry NotFound for the client: what is missing, never where the registry keeps it."""
    message = str(error)
    public = _STORE_TAIL.sub(" not found in the registry", message)
    if _LOCATION.search(public):
        public = "not found in the registry"
    if public != message:
        logger.warning("%s (%s: %s)", public, type(error).__name__, message)
    return NotFoundError(public)
