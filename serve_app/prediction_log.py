"""What a router remembers of each answered row, so that a true label sent later with the request's
id can be joined to the prediction it grades: the model, variant and concrete version that answered,
the probabilities it gave (float32, in LABELS order) and when. Ray-free; one per router replica,
called from its event loop (not thread-safe).

Bounded twice: records older than `retention_s` and, past `max_entries` rows, the oldest records
are evicted. A record (one `record` call: a request's rows from one model) is kept or evicted
whole, so a lookup never returns part of a record's rows. Storage is columnar: rows and
per-record fields live in fixed-size numpy blocks; the only Python objects per record are the
request id (the index's key) and its index slot. Measured with `measure_bytes_per_entry`
(tracemalloc, 100,000 single-row requests with 36-character ids): 213 bytes per entry, so about
213 MB per million single-row predictions, most of it the id string and its dict slot; in
100-row requests a row costs 22 bytes (about 22 MB per million rows). Persisted with `to_bytes`,
a row takes about 47 bytes (47 MB per million single-row predictions).

Request ids carry no time, so the log remembers a 64-bit digest of each evicted request id (8
bytes each, for as many records as it holds): an id among them is "expired", any other is
"unknown" (never answered, answered too recently to have reached the log, or a typo). Past
that memory, an expired id reads as unknown.

For persistence a router may call `drain_since(cursor)` every second and store `to_bytes(...)` of
what it returns (a compressed .npz): a crash loses at most the last interval.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
import tracemalloc
from collections import deque
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np

from registry.feedback import MAX_REF_CHARS
from runtimes.schema import N_CLASSES

BLOCK = 4096  # records per numpy block: small enough that a nearly empty block costs little
FORMAT_VERSION = 2
_RECORD = np.dtype([("time", "<f8"), ("first_row_seq", "<i8"), ("rows", "<u4"), ("first_row", "<u4"),
                    ("meta", "<u4")])  # 28 bytes, packed
_NPZ_FILES = {"format", "request_ids", "request", "metas", "meta", "row", "time", "probabilities", "row_key"}


class Entry(NamedTuple):
    request_id: str
    row: int
    model: str
    version: str
    variant: str | None  # "stable" or "candidate" in an experiment, None outside one
    probabilities: tuple[float, ...]  # float32 values, exactly
    time: float  # seconds since the epoch
    row_key: int = 0  # serve_app/quality.py row_digest of the row as the version computed it (0: unknown)


class Drain(NamedTuple):
    entries: list[Entry]
    cursor: int  # pass it to the next drain_since
    missed: int  # records evicted before they could be drained (the interval was too long)


class _Blocks:
    """A FIFO of numpy records numbered by sequence, in fixed-size blocks: appends fill the tail
    block, and a head block is freed once every record in it is dropped. Memory follows the live
    count (within a block at each end) and nothing is copied to grow or compact."""

    def __init__(self, dtype, shape: tuple[int, ...] = ()):
        self.dtype, self.shape = np.dtype(dtype), shape
        self.blocks: deque[np.ndarray] = deque()
        self.first = 0  # sequence number of blocks[0][0]
        self.end = 0  # sequence number the next record gets

    def append(self, records: np.ndarray) -> int:
        start, done = self.end, 0
        while done < len(records):
            used = self.end - self.first - (len(self.blocks) - 1) * BLOCK if self.blocks else BLOCK
            if used == BLOCK:
                self.blocks.append(np.empty((BLOCK, *self.shape), self.dtype))
                used = 0
            take = min(BLOCK - used, len(records) - done)
            self.blocks[-1][used:used + take] = records[done:done + take]
            done += take
            self.end += take
        return start

    def push(self, record: tuple) -> int:
        """append() of one record, without building an array for it."""
        if not self.blocks or self.end - self.first == len(self.blocks) * BLOCK:
            self.blocks.append(np.empty((BLOCK, *self.shape), self.dtype))
        self.blocks[-1][self.end - self.first - (len(self.blocks) - 1) * BLOCK] = record
        self.end += 1
        return self.end - 1

    def get(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        while start < stop:
            block, offset = divmod(start - self.first, BLOCK)
            take = min(BLOCK - offset, stop - start)
            pieces.append(self.blocks[block][offset:offset + take])
            start += take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else \
            np.empty((0, *self.shape), self.dtype)

    def at(self, seq: int):
        block, offset = divmod(seq - self.first, BLOCK)
        return self.blocks[block][offset]

    def drop_before(self, seq: int) -> None:
        while self.blocks and self.first + BLOCK <= seq:
            self.blocks.popleft()
            self.first += BLOCK


class PredictionLog:
    def __init__(self, retention_s: float, max_entries: int, clock: Callable[[], float] = time.time):
        if retention_s <= 0 or max_entries <= 0:
            raise ValueError("retention_s and max_entries must be positive")
        self.retention_s, self.max_entries, self.clock = retention_s, max_entries, clock
        self._rows = _Blocks(np.float32, (N_CLASSES,))
        self._row_keys = _Blocks(np.uint64)  # numbered like _rows
        self._expired = _Blocks(np.uint64)  # digests of evicted request ids, the newest max_entries
        self._records = _Blocks(_RECORD)
        self._request_ids: deque[str] = deque()  # the request id of each live record, oldest first
        self._index: dict[str, int | tuple[int, ...]] = {}  # request id -> its records' sequence numbers
        # (model, version, variant) interned: a handful per router, from its configuration.
        self._metas: list[tuple[str, str, str | None]] = []
        self._meta_codes: dict[tuple[str, str, str | None], int] = {}
        self._head = 0  # sequence number of the oldest live record
        self._rows_held = 0
        self.evicted = 0  # records evicted, for expiry or room
        self.refused = 0  # records not kept: an unusable request id, or more rows than max_entries

    def __len__(self) -> int:
        """Rows held."""
        return self._rows_held

    def record(self, request_id: str, model: str, version: str, variant: str | None,
               probabilities: np.ndarray, now: float | None = None, first_row: int = 0,
               row_keys: np.ndarray | None = None) -> bool:
        """Remembers the answered rows [n, 3] of one request from one model (rows numbered from
        `first_row`). False when not kept: the request id is empty or longer than feedback can
        reference, or there are more rows than the log holds. Never raises for a client's input."""
        rows = np.asarray(probabilities, dtype=np.float32)
        rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != N_CLASSES or not len(rows):
            raise ValueError(f"probabilities must be [n, {N_CLASSES}] with n >= 1, not {rows.shape}")
        if not 0 <= first_row < 2**32 - len(rows):
            raise ValueError(f"first_row {first_row} out of range")
        if not request_id or len(request_id) > MAX_REF_CHARS or len(rows) > self.max_entries:
            self.refused += 1
            return False
        now = self.clock() if now is None else now
        self._evict(now, room=len(rows))
        meta = (model, version, variant)
        code = self._meta_codes.get(meta)
        if code is None:
            code = self._meta_codes[meta] = len(self._metas)
            self._metas.append(meta)
        row_seq = self._rows.append(rows)
        keys = np.zeros(len(rows), np.uint64) if row_keys is None else np.asarray(row_keys, np.uint64)
        if keys.shape != (len(rows),):
            raise ValueError(f"row_keys must be one per row, not {keys.shape}")
        self._row_keys.append(keys)
        seq = self._records.push((now, row_seq, len(rows), first_row, code))
        self._request_ids.append(request_id)
        held = self._index.get(request_id)
        # A plain int for the usual single record: a tuple per request would cost 48 bytes more.
        self._index[request_id] = seq if held is None else (*_seqs(held), seq)
        self._rows_held += len(rows)
        return True

    def _evict(self, now: float, room: int = 0) -> None:
        # Records are appended in time order, so the expired ones are at the head. A time stamped
        # earlier than its predecessor (a wall clock stepped back) leaves with its neighbours.
        cutoff, head, gone = now - self.retention_s, self._head, []
        while self._head < self._records.end:
            record = self._records.at(self._head)
            if record["time"] >= cutoff and self._rows_held + room <= self.max_entries:
                break
            request_id = self._request_ids.popleft()
            gone.append(_id_digest(request_id))
            seqs = _seqs(self._index[request_id])[1:]  # the oldest record is the one going
            if seqs:
                self._index[request_id] = seqs if len(seqs) > 1 else seqs[0]
            else:
                del self._index[request_id]
            self._rows_held -= int(record["rows"])
            self._head += 1
        if self._head != head:
            self.evicted += self._head - head
            self._records.drop_before(self._head)
            first_row = (self._rows.end if self._head == self._records.end
                         else int(self._records.at(self._head)["first_row_seq"]))
            self._rows.drop_before(first_row)
            self._row_keys.drop_before(first_row)
            self._expired.append(np.array(gone, np.uint64))
            self._expired.drop_before(self._expired.end - self.max_entries)

    def lookup(self, request_id: str, now: float | None = None) -> list[Entry] | None:
        """Every retained row answered for the request, oldest record first; None when not held."""
        self._evict(self.clock() if now is None else now)
        held = self._index.get(request_id)
        if held is None:
            return None
        return [entry for seq in _seqs(held)
                for entry in self._entries(self._records.get(seq, seq + 1), [request_id])]

    def status(self, request_id: str, now: float | None = None) -> Literal["found", "unknown", "expired"]:
        if self.lookup(request_id, now) is not None:
            return "found"
        return "expired" if self.expired_among([request_id]) else "unknown"

    def expired_among(self, request_ids: Sequence[str]) -> set[str]:
        """Which of these ids were evicted (as far as the log remembers): one pass for a batch."""
        if not request_ids or self._expired.end == self._expired.first:
            return set()
        held = self._expired.get(max(self._expired.first, self._expired.end - self.max_entries), self._expired.end)
        digests = np.array([_id_digest(r) for r in request_ids], np.uint64)
        return {r for r, hit in zip(request_ids, np.isin(digests, held)) if hit}

    def oldest_time(self) -> float | None:
        """When the oldest retained record was answered: feedback for anything older cannot join here."""
        if self._head == self._records.end:
            return None
        return float(self._records.at(self._head)["time"])

    def drain_since(self, cursor: int = 0) -> Drain:
        """Every row recorded since `cursor` (0: everything retained) and the cursor for the next call.
        Draining removes nothing: lookups still find the rows until they are evicted."""
        start, end = max(cursor, self._head), self._records.end
        ids = list(itertools.islice(reversed(self._request_ids), end - start))[::-1]  # the newest are at the tail
        return Drain(self._entries(self._records.get(start, end), ids), end, start - cursor if cursor < start else 0)

    def _entries(self, records: np.ndarray, request_ids: Sequence[str]) -> list[Entry]:
        if not len(records):
            return []
        first = int(records[0]["first_row_seq"])
        last = int(records[-1]["first_row_seq"] + records[-1]["rows"])
        rows, keys = self._rows.get(first, last).tolist(), self._row_keys.get(first, last).tolist()
        entries = []
        for record, request_id in zip(records.tolist(), request_ids):
            when, row_seq, n, first_row, code = record
            model, version, variant = self._metas[code]
            entries.extend(Entry(request_id, first_row + i, model, version, variant, tuple(rows[row_seq - first + i]),
                                 when, keys[row_seq - first + i]) for i in range(n))
        return entries


def _seqs(held: int | tuple[int, ...]) -> tuple[int, ...]:
    return held if isinstance(held, tuple) else (held,)


def _id_digest(request_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")


# ---- persisted form ---------------------------------------------------------------------------------

def to_bytes(entries: Sequence[Entry]) -> bytes:
    """A compressed .npz: request ids and (model, version, variant) stored once each, probabilities
    as float32 (bit for bit), no pickles."""
    request_ids, request = np.unique(np.array([e.request_id for e in entries], dtype=str), return_inverse=True)
    metas, meta = np.unique(np.array([json.dumps([e.model, e.version, e.variant]) for e in entries], dtype=str),
                            return_inverse=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, format=np.array(FORMAT_VERSION), request_ids=request_ids, request=request.astype(np.int64),
        metas=metas, meta=meta.astype(np.int64), row=np.array([e.row for e in entries], dtype=np.int64),
        time=np.array([e.time for e in entries], dtype=np.float64),
        probabilities=np.array([e.probabilities for e in entries], dtype=np.float32).reshape(-1, N_CLASSES),
        row_key=np.array([e.row_key for e in entries], dtype=np.uint64))
    return buffer.getvalue()


def from_bytes(data: bytes) -> list[Entry]:
    """The entries to_bytes stored; ValueError for anything else."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if set(npz.files) != _NPZ_FILES or int(npz["format"]) != FORMAT_VERSION:
                raise ValueError("unknown layout or format version")
            arrays = {name: npz[name] for name in _NPZ_FILES}
        metas = [tuple(json.loads(m)) for m in arrays["metas"].tolist()]
    except Exception as e:  # a zip, npy or JSON error: all mean the bytes are not a stored batch
        raise ValueError(f"not a stored prediction log batch: {e}") from None
    n = len(arrays["row"])
    probabilities = arrays["probabilities"]
    if (any(len(arrays[name]) != n or arrays[name].ndim != 1 for name in ("request", "meta", "time", "row", "row_key"))
            or any(arrays[name].dtype.kind not in "iu" for name in ("request", "meta", "row"))
            or arrays["time"].dtype != np.float64 or arrays["row_key"].dtype != np.uint64
            or probabilities.shape != (n, N_CLASSES)
            or probabilities.dtype != np.float32 or any(len(m) != 3 for m in metas)
            or (n and (arrays["request"].min() < 0 or arrays["request"].max() >= len(arrays["request_ids"])
                       or arrays["meta"].min() < 0 or arrays["meta"].max() >= len(metas)))):
        raise ValueError("not a stored prediction log batch: inconsistent columns")
    request_ids = arrays["request_ids"].tolist()
    return [Entry(request_ids[r], row, *metas[m], tuple(p), t, k) for r, row, m, p, t, k in zip(
        arrays["request"].tolist(), arrays["row"].tolist(), arrays["meta"].tolist(), probabilities.tolist(),
        arrays["time"].tolist(), arrays["row_key"].tolist())]


def measure_bytes_per_entry(requests: int = 100_000, rows_per_request: int = 1) -> float:
    """Bytes the log holds per row, traced with tracemalloc while it records `requests` requests
    with fresh random 36-character ids, as long as the uuid4 strings Serve gives requests (the log
    keeps them as its index keys, so they count)."""
    log = PredictionLog(retention_s=10**9, max_entries=requests * rows_per_request)
    probabilities = np.full((rows_per_request, N_CLASSES), 1 / N_CLASSES, dtype=np.float32)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(requests):
            log.record(os.urandom(18).hex(), "mlp", "1.2.0", "stable", probabilities, now=float(i))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        if started:
            tracemalloc.stop()
    assert len(log) == requests * rows_per_request
    return held / (requests * rows_per_request)
