"""The feedback log: true labels that arrive long after a prediction (a KOI is CONFIRMED or ruled a
FALSE_POSITIVE years later), kept so that nothing acknowledged is ever lost or rewritten.

Each accepted batch is one object, written create-only and never touched again:

    feedback/<YYYY>/<MM>/<DD>/<accepted_at, ns since the epoch, 19 digits>-<16 random hex>.json

The date path and the fixed-width timestamp make key order the order of acceptance, across days
and on any store's listing. A batch is acknowledged once `append` returns; a failed `append` wrote
nothing the caller can count on, so the caller retries and at worst a batch is stored twice, which
replaying tolerates (the same label twice is not a relabel). Each object carries a schema version
and a sha256 of its content: an object whose bytes changed is skipped and reported on reading,
never trusted and never fatal. Knows nothing of Ray.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import NotFound
from .stores import ObjectStore, PreconditionFailed

logger = logging.getLogger(__name__)

PREFIX = "feedback"
SCHEMA_VERSION = 1
MAX_REF_CHARS = 64  # request ids and KOI names are far shorter; the bound keeps a batch's size predictable
MAX_TEXT_CHARS = 128  # source and principal (a JWT subject, a pipeline's name)
MAX_BATCH_ITEMS = 10_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_KEY = re.compile(rf"{PREFIX}/(\d{{4}})/(\d{{2}})/(\d{{2}})/(\d{{19}})-([0-9a-f]{{16}})\.json")
# Printable ASCII with no space at either end: no control characters, nothing that renders as
# something else, and a ref that compares equal to itself however a client spelled its padding.
_PRINTABLE = re.compile(r"[!-~](?:[ -~]*[!-~])?")


def check_text(value: str | None, limit: int, what: str) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    if not _PRINTABLE.fullmatch(value):
        raise ValueError(f"{what} must be printable ASCII, not empty and without leading or trailing spaces")
    return value


def check_label(value):
    """A resolved label, or ValueError saying why not."""
    # CANDIDATE is what a KOI is while it is unresolved: it says nothing about whether the
    # prediction was right, and stored as truth it would teach a model to predict "undecided".
    if value == "CANDIDATE":
        raise ValueError("CANDIDATE is not ground truth: feedback takes resolved labels only "
                         "(CONFIRMED or FALSE_POSITIVE); send it once the KOI is resolved")
    if value not in ("CONFIRMED", "FALSE_POSITIVE"):
        raise ValueError("expected CONFIRMED or FALSE_POSITIVE")
    return value


class GradedPrediction(BaseModel):
    """One prediction a label grades, as the service answered it: stored with the label so the
    quality figures can be rebuilt from the feedback log alone, after the predictions expired."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(max_length=MAX_REF_CHARS)
    version: str = Field(max_length=MAX_REF_CHARS)
    variant: Literal["stable", "candidate"] | None = None
    row: int = Field(0, ge=0, lt=2**32)
    row_key: int = Field(0, ge=0, lt=2**64)  # the row's digest as the version computed it (0: unknown)
    probabilities: tuple[float, float, float]


class FeedbackItem(BaseModel):
    """One resolved label for an earlier prediction, referenced by the request that got it or by
    the KOI's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref_kind: Literal["request_id", "koi"]
    ref: str
    label: Literal["CONFIRMED", "FALSE_POSITIVE"]
    source: str | None = None
    principal: str | None = None
    graded: tuple[GradedPrediction, ...] = ()

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        return check_text(value, MAX_REF_CHARS, "ref")

    @field_validator("source", "principal")
    @classmethod
    def _text(cls, value: str | None, info) -> str | None:
        return check_text(value, MAX_TEXT_CHARS, info.field_name)

    @field_validator("label", mode="before")
    @classmethod
    def _resolved_only(cls, value):
        return check_label(value)


@dataclass(frozen=True)
class FeedbackBatch:
    key: str
    accepted_at: dt.datetime
    items: tuple[FeedbackItem, ...]


@dataclass(frozen=True)
class CorruptBatch:
    """An object under feedback/ that was skipped: unreadable, failing its checksum or its schema."""

    key: str
    reason: str


@dataclass(frozen=True)
class LabelChange:
    label: str
    accepted_at: dt.datetime
    key: str


@dataclass
class LabelState:
    """The current label of one referenced prediction, and every label it was given, oldest first."""

    ref_kind: str
    ref: str
    label: str
    accepted_at: dt.datetime
    key: str
    source: str | None = None
    principal: str | None = None
    history: list[LabelChange] = field(default_factory=list)
    relabels: int = 0  # how many times the label changed (the same label sent again is not a change)


def _ns(moment: dt.datetime) -> int:
    # Exact integer arithmetic: a float timestamp would round the microseconds.
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _checksum(schema: int, accepted_at: str, items: list) -> str:
    # Covers everything the batch says, not only the items: a changed timestamp is corruption too.
    return hashlib.sha256(_canonical({"schema": schema, "accepted_at": accepted_at, "items": items})).hexdigest()


class FeedbackLog:
    def __init__(self, store: ObjectStore):
        self.store = store

    # ---- writing ------------------------------------------------------------------------------------

    def append(self, items: list[FeedbackItem], accepted_at: dt.datetime) -> str:
        """Persists one accepted batch as a new object and returns its key. The feedback is
        acknowledged only once this returns; RegistryUnavailable means it may not be stored."""
        if not items:
            raise ValueError("a feedback batch needs at least one item")
        if len(items) > MAX_BATCH_ITEMS:
            raise ValueError(f"a feedback batch holds at most {MAX_BATCH_ITEMS} items, not {len(items)}")
        if not all(isinstance(item, FeedbackItem) for item in items):
            raise TypeError("feedback items must be FeedbackItem instances")
        if accepted_at.tzinfo is None:
            raise ValueError("accepted_at must be timezone-aware (UTC)")
        accepted_at = accepted_at.astimezone(dt.timezone.utc)
        if accepted_at < _EPOCH:  # the key's fixed-width timestamp counts from the epoch
            raise ValueError(f"accepted_at {accepted_at.isoformat()} is before 1970")
        when = accepted_at.isoformat(timespec="microseconds")
        stored = [item.model_dump(mode="json") for item in items]
        data = _canonical({"schema": SCHEMA_VERSION, "accepted_at": when, "items": stored,
                           "sha256": _checksum(SCHEMA_VERSION, when, stored)})
        for _ in range(3):
            key = f"{PREFIX}/{accepted_at:%Y/%m/%d}/{_ns(accepted_at):019d}-{secrets.token_hex(8)}.json"
            try:
                self.store.put_if_absent(key, data)
                return key
            except PreconditionFailed:
                # S3 clients retry a PUT whose answer was lost; the retry then finds our own object.
                # The same bytes under the key are this batch, stored; anything else is another
                # batch (a 64-bit collision) that must stay as it is, so try a fresh name.
                try:
                    if self.store.get(key) == data:
                        return key
                except NotFound:
                    pass
        raise PreconditionFailed(f"no free key for a feedback batch accepted at {when}")

    # ---- reading ------------------------------------------------------------------------------------

    def read_all(self, since: str | dt.datetime | None = None,
                 corrupt: list[CorruptBatch] | None = None) -> Iterator[tuple[str, FeedbackBatch]]:
        """Every intact batch in key order (the order of acceptance). `since`: a key already read
        (the batches after it) or a time (the batches accepted at or after it). Objects that fail
        their checksum or schema are logged, appended to `corrupt` when given, and skipped; a store
        that cannot be reached raises, since skipping would silently drop labels."""
        if isinstance(since, dt.datetime):
            if since.tzinfo is None:
                raise ValueError("since must be timezone-aware (UTC)")
            since = since.astimezone(dt.timezone.utc)
            bound, inclusive = f"{PREFIX}/{since:%Y/%m/%d}/{_ns(since):019d}", True
        else:
            bound, inclusive = since, False
        for key in self.store.list(PREFIX):
            if bound is not None and (key < bound if inclusive else key <= bound):
                continue
            try:
                batch = self._read(key)
            except _Corrupt as e:
                logger.warning("skipping feedback object %s: %s", key, e)
                if corrupt is not None:
                    corrupt.append(CorruptBatch(key, str(e)))
                continue
            yield key, batch

    def _read(self, key: str) -> FeedbackBatch:
        match = _KEY.fullmatch(key)
        if match is None:
            raise _Corrupt("not a feedback batch name")
        try:
            data = self.store.get(key)
        except NotFound:
            raise _Corrupt("listed but gone when read") from None
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Corrupt("not JSON") from None
        if not isinstance(document, dict) or set(document) != {"schema", "accepted_at", "items", "sha256"}:
            raise _Corrupt("not a feedback batch document")
        if document["schema"] != SCHEMA_VERSION:
            raise _Corrupt(f"schema {document['schema']!r}, this reader knows {SCHEMA_VERSION}")
        if not isinstance(document["accepted_at"], str) or not isinstance(document["items"], list):
            raise _Corrupt("not a feedback batch document")
        if _checksum(SCHEMA_VERSION, document["accepted_at"], document["items"]) != document["sha256"]:
            raise _Corrupt("checksum mismatch: the object's bytes changed after it was written")
        try:
            accepted_at = dt.datetime.fromisoformat(document["accepted_at"])
            items = tuple(FeedbackItem.model_validate(item) for item in document["items"])
        except (ValueError, TypeError, ValidationError) as e:
            raise _Corrupt(f"invalid content: {e}") from None
        if accepted_at.tzinfo is None or _ns(accepted_at) != int(match.group(4)) \
                or f"{accepted_at.astimezone(dt.timezone.utc):%Y/%m/%d}" != "/".join(match.group(1, 2, 3)):
            raise _Corrupt("the acceptance time inside does not match the object's name")
        if not items:
            raise _Corrupt("no items")
        return FeedbackBatch(key, accepted_at.astimezone(dt.timezone.utc), items)

    def latest_labels(self, corrupt: list[CorruptBatch] | None = None) -> dict[tuple[str, str], LabelState]:
        """(ref_kind, ref) -> its current label, replaying every batch in order: a later label
        replaces an earlier one and the change stays in the state's history."""
        states: dict[tuple[str, str], LabelState] = {}
        for key, batch in self.read_all(corrupt=corrupt):
            for item in batch.items:  # within a batch, a later item for the same ref wins too
                change = LabelChange(item.label, batch.accepted_at, key)
                state = states.get((item.ref_kind, item.ref))
                if state is None:
                    state = states[(item.ref_kind, item.ref)] = LabelState(
                        item.ref_kind, item.ref, item.label, batch.accepted_at, key)
                elif state.label != item.label:
                    state.relabels += 1
                state.label, state.accepted_at, state.key = item.label, batch.accepted_at, key
                state.source, state.principal = item.source, item.principal
                state.history.append(change)
        return states


class _Corrupt(Exception):
    """Why an object under feedback/ cannot be trusted."""
