"""The router's side of delayed ground truth (POST /api/v1/feedback): each item of a batch checked
on its own (one bad item never fails the others), KOI names canonicalised, and a KOI's row scored
again by every version a label should grade. Models are deterministic and versions immutable, so
scoring a KOI now gives exactly what that version answered, or would have answered, for it.
The controller (serve_app/feedback_desk.py) joins request ids, persists and counts. Ray-free."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from registry.feedback import MAX_REF_CHARS, MAX_TEXT_CHARS, GradedPrediction, check_label, check_text
from runtimes.catalogue import Catalogue, MalformedName, UnknownKOI

from .errors import ServingError
from .feature_rows import FeatureRows
from .quality import row_digest

MAX_ITEMS = 1000
OUTCOMES = ("joined", "relabelled", "unchanged", "unknown_request_id", "expired", "unknown_koi", "bad_label",
            "invalid")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Any] = Field(..., min_length=1, max_length=MAX_ITEMS, description=(
        "each {\"request_id\": ..., \"label\": ...} or {\"koi\": ..., \"label\": ...}; labels CONFIRMED or "
        "FALSE_POSITIVE"))
    source: StrictStr | None = Field(None, max_length=MAX_TEXT_CHARS, description="where the labels come from, "
                                                                                 "e.g. an archive release")

    @field_validator("source")
    @classmethod
    def _printable(cls, source: str | None) -> str | None:
        return check_text(source, MAX_TEXT_CHARS, "source")


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: StrictStr | None = None
    koi: StrictStr | StrictInt | None = None
    label: StrictStr


@dataclass(frozen=True)
class Parsed:
    index: int
    ref_kind: str
    ref: Any  # a request id, or a KOI name as the client wrote it (canonicalised later)
    label: str


def parse_items(body: FeedbackRequest) -> tuple[list[Parsed], dict[int, dict]]:
    """The well-formed items, and an outcome for each of the others, naming the field."""
    parsed, outcomes = [], {}
    for i, raw in enumerate(body.items):
        where = f"items[{i}]"
        try:
            item = _Item.model_validate(raw)
        except ValidationError as e:
            error = e.errors()[0]
            field = ".".join(str(p) for p in error["loc"])
            outcomes[i] = item_outcome(i, "invalid", f"{where}{'.' + field if field else ''}: {error['msg']}")
            continue
        if (item.request_id is None) == (item.koi is None):
            outcomes[i] = item_outcome(i, "invalid", f"{where}: give exactly one of request_id and koi")
            continue
        kind, ref = ("request_id", item.request_id) if item.request_id is not None else ("koi", item.koi)
        try:  # the feedback log's own rules; a KOI name is the catalogue's to check (canonical_kois)
            check_label(item.label)
        except ValueError as e:
            outcomes[i] = item_outcome(i, "bad_label", f"{where}.label: {e}")
            continue
        try:
            if kind == "request_id":
                check_text(ref, MAX_REF_CHARS, "request_id")
        except ValueError as e:
            outcomes[i] = item_outcome(i, "invalid", f"{where}.request_id: {e}")
            continue
        parsed.append(Parsed(i, kind, ref, item.label))
    return parsed, outcomes


def item_outcome(index: int, outcome: str, reason: str | None = None) -> dict:
    return {"index": index, "outcome": outcome, **({"reason": reason} if reason else {})}


def canonical_kois(catalogue: Catalogue, parsed: list[Parsed]) -> tuple[list[Parsed], dict[int, dict]]:
    """KOI items under their catalogue names (K00752.01 and Kepler-227 b are one item)."""
    kept, outcomes = [], {}
    for item in parsed:
        if item.ref_kind != "koi":
            kept.append(item)
            continue
        where = f"items[{item.index}].koi"
        try:
            kois = catalogue.resolve(item.ref)
        except MalformedName as e:
            outcomes[item.index] = item_outcome(item.index, "invalid", f"{where}: {e}")
            continue
        except UnknownKOI as e:
            outcomes[item.index] = item_outcome(item.index, "unknown_koi", f"{where}: {e.args[0]}")
            continue
        if len(kois) != 1:
            outcomes[item.index] = item_outcome(item.index, "invalid", f"{where}: {item.ref!r} is a star with {len(kois)} "
                                            "KOIs; a label is for one KOI")
            continue
        kept.append(Parsed(item.index, "koi", kois[0], item.label))
    return kept, outcomes


@dataclass(frozen=True)
class Grading:
    """A version a KOI label grades: each model's default (its stable variant in an experiment) and
    a running experiment's candidate."""

    model: str
    version: str
    variant: str | None
    deployment: str  # where that version is served


Project = Callable[[str, str, FeatureRows], Awaitable[tuple[np.ndarray, tuple[str, ...]]]]
Call = Callable[[str, str, np.ndarray], Awaitable[np.ndarray]]


async def score_kois(catalogue: Catalogue, kois: list[str], gradings: list[Grading], project: Project,
                     call: Call) -> dict[str, list[GradedPrediction]]:
    """Each KOI's predictions by every grading version, scored in one call per version. A version
    that cannot answer now grades nothing in this batch (its figures simply get fewer labels)."""
    if not kois:
        return {}
    rows = FeatureRows(catalogue.features(kois), frozenset())

    async def one(grading: Grading):
        try:
            matrix, _ = await project(grading.model, grading.version, rows)
            return grading, matrix, await call(grading.deployment, grading.version, matrix)
        except ServingError:
            return None
    graded: dict[str, list[GradedPrediction]] = {koi: [] for koi in kois}
    for result in await asyncio.gather(*(one(g) for g in gradings)):
        if result is None:
            continue
        grading, matrix, probabilities = result
        for koi, key, p in zip(kois, row_digest(matrix).tolist(), probabilities.tolist()):
            graded[koi].append(GradedPrediction(model=grading.model, version=grading.version, variant=grading.variant,
                                                row_key=key, probabilities=tuple(p)))
    return graded


class AnsweredRows:
    """A router's answered rows since its last sync, handed to the controller's prediction record.
    Bounded: past `max_rows` (the controller unreachable for long) the oldest are dropped and counted."""

    def __init__(self, max_rows: int = 200_000, clock: Callable[[], float] = time.time):
        self.max_rows, self.clock = max_rows, clock
        self.pending: deque[tuple] = deque()
        self.rows = self.dropped = 0

    def add(self, request_id: str, model: str, version: str, variant: str | None, probabilities: np.ndarray,
            matrix: np.ndarray) -> None:
        self._append([(request_id, model, version, variant, np.asarray(probabilities, np.float32), row_digest(matrix),
                       self.clock())])

    def drain(self) -> list[tuple]:
        drained, self.pending, self.rows = list(self.pending), deque(), 0
        return drained

    def restore(self, drained: list[tuple]) -> None:
        """Puts back what a failed sync took, ahead of what arrived meanwhile."""
        newer, self.pending, self.rows = list(self.pending), deque(), 0
        self._append(drained + newer)

    def _append(self, answered: list[tuple]) -> None:
        for item in answered:
            self.pending.append(item)
            self.rows += len(item[4])
        while self.rows > self.max_rows and len(self.pending) > 1:
            self.rows -= len(self.pending.popleft()[4])
            self.dropped += 1
