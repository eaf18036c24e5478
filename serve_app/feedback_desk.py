"""The experiment controller's side of delayed ground truth: the prediction record that labels
join by request id, the feedback log they are persisted to before they are acknowledged, and the
quality figures they feed. Ray-free and not thread-safe: the controller calls it from its event
loop and hands only the store writes to a thread.

Durability:
  * feedback: `accept` writes one create-only object per batch (registry/feedback.py) and only
    then returns, so whatever the router acknowledges survives any crash after the write;
  * the prediction record: routers hand over their answered rows every sync (about a second),
    and `persist_predictions` writes what arrived since its last call as one object under
    predictions/ (also about every second). A crash loses at most the rows answered in the
    last second or two, and their labels are then reported as unknown, never silently dropped.

On start, `restore` reads back the prediction objects within the retention window and replays
the feedback log (each stored item carries the predictions it graded), so the quality figures
and current labels survive restarts; prediction objects past the window are deleted.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
from typing import Callable, Iterable

import numpy as np

from registry.feedback import MAX_TEXT_CHARS, FeedbackItem, FeedbackLog, GradedPrediction, check_text
from registry.stores import ObjectStore
from runtimes.schema import LABELS

from .config import FeedbackSettings
from .feedback import Parsed, item_outcome
from .prediction_log import PredictionLog, from_bytes, to_bytes
from .quality import QualityBook

logger = logging.getLogger("ray.serve")
PREDICTIONS = "predictions"
_PREDICTION_KEY = re.compile(rf"{PREDICTIONS}/\d{{4}}/\d{{2}}/\d{{2}}/(\d{{19}})-[0-9a-f]{{8}}\.npz")
# What a router hands over per answered request and model: (request_id, model, version, variant,
# probabilities [n, 3], row digests [n], time).
Answered = tuple[str, str, str, "str | None", np.ndarray, np.ndarray, float]


class FeedbackDesk:
    def __init__(self, store: ObjectStore, settings: FeedbackSettings, clock: Callable[[], float] | None = None):
        import time

        self.store, self.settings = store, settings
        self.clock = clock or time.time
        self.log = FeedbackLog(store)
        self.predictions = PredictionLog(settings.retention_s, settings.max_predictions, self.clock)
        self.quality = QualityBook()
        self.labels: dict[tuple[str, str], str] = {}  # (ref_kind, ref) -> its current label
        self._drained = 0  # the prediction log's cursor: what is persisted

    # ---- the prediction record ----------------------------------------------------------------
    def record(self, answered: Iterable[Answered]) -> None:
        for request_id, model, version, variant, probabilities, row_keys, when in answered:
            self.predictions.record(request_id, model, version, variant, probabilities, when, row_keys=row_keys)

    def persist_predictions(self) -> int:
        """Writes the rows recorded since the last call as one object; the rows written."""
        entries, cursor = self.unpersisted()
        if entries:
            self.write_predictions(entries)  # raises while the store is down: retried next call
        self.persisted(cursor)
        return len(entries)

    # The controller runs these three apart, so that only the write leaves its event loop.
    def unpersisted(self) -> tuple[list, int]:
        drain = self.predictions.drain_since(self._drained)
        return drain.entries, drain.cursor

    def write_predictions(self, entries: list) -> None:
        now = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)
        key = f"{PREDICTIONS}/{now:%Y/%m/%d}/{int(self.clock() * 1e9):019d}-{secrets.token_hex(4)}.npz"
        self.store.put(key, to_bytes(entries))

    def persisted(self, cursor: int) -> None:
        self._drained = cursor

    # ---- labels --------------------------------------------------------------------------------
    def accept(self, items: list[Parsed], scored: dict[str, list[GradedPrediction]], source: str | None,
               principal: str | None) -> tuple[list[dict], str | None]:
        """Each item's outcome and the stored batch's key (None: nothing joined, nothing stored).
        Raises when the store cannot take the batch: then nothing is acknowledged or counted."""
        joined, outcomes = self.join(items, scored, source, principal)
        key = self.store_batch(joined)
        return outcomes + self.count(joined), key

    # The controller runs these three apart too: join and count on its loop, the write in a thread.
    def join(self, items: list[Parsed], scored: dict[str, list[GradedPrediction]], source: str | None,
             principal: str | None) -> tuple[list[tuple[Parsed, FeedbackItem]], list[dict]]:
        """The items that grade something, as they will be stored, and the others' outcomes."""
        unjoined = [i.ref for i in items if i.ref_kind == "request_id" and self.predictions.lookup(i.ref) is None]
        expired = self.predictions.expired_among(unjoined)
        joined, outcomes = [], []
        for item in items:
            graded = self._graded(item, scored)
            if not graded:
                kind = ("expired" if item.ref in expired else "unknown_request_id") \
                    if item.ref_kind == "request_id" else "unknown_koi"
                outcomes.append(item_outcome(item.index, kind, _why(kind, item)))
                continue
            joined.append((item, FeedbackItem(ref_kind=item.ref_kind, ref=item.ref, label=item.label, source=source,
                                              principal=_storable(principal), graded=tuple(graded))))
        return joined, outcomes

    def store_batch(self, joined: list[tuple[Parsed, FeedbackItem]]) -> str | None:
        return self.log.append([stored for _, stored in joined], self._now()) if joined else None

    def count(self, joined: list[tuple[Parsed, FeedbackItem]]) -> list[dict]:
        """The stored items' outcomes, once they count."""
        return [{**item_outcome(item.index, self._apply(stored)),
                 "graded": [_graded_view(g, item.label) for g in stored.graded]} for item, stored in joined]

    def _graded(self, item: Parsed, scored: dict[str, list[GradedPrediction]]) -> list[GradedPrediction]:
        if item.ref_kind == "koi":
            return scored.get(item.ref, [])
        return [GradedPrediction(model=e.model, version=e.version, variant=e.variant, row=e.row, row_key=e.row_key,
                                 probabilities=e.probabilities) for e in self.predictions.lookup(item.ref) or ()]

    def _apply(self, item: FeedbackItem) -> str:
        """Counts a stored item: its label replaces any earlier one for the same reference."""
        before = self.labels.get((item.ref_kind, item.ref))
        self.labels[(item.ref_kind, item.ref)] = item.label
        for g in item.graded:
            # One unit per (row, version): the same KOI asked by request and by name counts once.
            unit = g.row_key or (item.ref_kind, item.ref, g.row)
            self.quality.add(g.model, g.version, unit, item.label, g.probabilities)
        return "joined" if before is None else "unchanged" if before == item.label else "relabelled"

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)

    # ---- restart -------------------------------------------------------------------------------
    def restore(self) -> dict:
        """Reads back what a previous controller persisted; what it found."""
        cutoff = self.clock() - self.settings.retention_s
        rows = deleted = 0
        for key in self.store.list(PREDICTIONS):
            match = _PREDICTION_KEY.fullmatch(key)
            if match is None:
                continue
            if int(match.group(1)) / 1e9 < cutoff:
                self.store.delete(key)
                deleted += 1
                continue
            try:
                entries = from_bytes(self.store.get(key))
            except ValueError as e:
                logger.warning("skipping prediction record %s: %s", key, e)
                continue
            for e in entries:  # one record per row: a request's rows come back one by one
                self.predictions.record(e.request_id, e.model, e.version, e.variant, np.array([e.probabilities]),
                                        e.time, first_row=e.row, row_keys=np.array([e.row_key], np.uint64))
                rows += 1
        self._drained = self.predictions.drain_since(0).cursor  # already stored
        batches = labels = 0
        for _, batch in self.log.read_all():
            batches += 1
            for item in batch.items:
                self._apply(item)
                labels += 1
        return {"prediction_rows": rows, "expired_objects_deleted": deleted, "feedback_batches": batches,
                "labels": labels}


def _storable(principal: str | None) -> str | None:
    """The caller's name as the log can hold it: a JWT subject may be any text, so one the log's
    printable-ASCII rule refuses is kept as its digest (the log line of the request names it)."""
    try:
        return check_text(principal, MAX_TEXT_CHARS, "principal")
    except ValueError:
        return "sha256:" + hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _why(kind: str, item: Parsed) -> str:
    return {"expired": "answered longer ago than the retention window: send it by KOI name instead",
            "unknown_request_id": "no answered request has this id (answered in the last second or two? send it "
                                  "again shortly)",
            "unknown_koi": "no version could score this KOI now; send it again later"}[kind]


def _graded_view(graded: GradedPrediction, label: str) -> dict:
    predicted = LABELS[int(np.argmax(graded.probabilities))]
    return {"model": graded.model, "version": graded.version, "variant": graded.variant, "predicted": predicted,
            "correct": predicted == label}
