"""The router's prediction log without Ray: lookups by request id, expiry by an injected clock,
eviction by count (whole records, oldest first), large requests across storage blocks, draining for
persistence and the stored form's round trip, and the memory an entry costs."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from serve_app.prediction_log import (BLOCK, Entry, PredictionLog, from_bytes, measure_bytes_per_entry,
                                      to_bytes)

THIRD = np.float32(1 / 3)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def probabilities(n: int, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).random((n, 3)).astype(np.float32) + np.float32(0.01)
    return (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)


def test_record_and_lookup():
    clock = Clock()
    log = PredictionLog(retention_s=3600, max_entries=1000, clock=clock)
    answer = probabilities(2)
    assert log.record("req-1", "mlp", "1.2.0", "stable", answer)
    assert log.record("req-2", "xgboost", "2.0.1", None, np.array([THIRD, THIRD, THIRD]))  # one row, flat
    assert log.lookup("req-1") == [
        Entry("req-1", 0, "mlp", "1.2.0", "stable", tuple(answer[0].tolist()), clock.now),
        Entry("req-1", 1, "mlp", "1.2.0", "stable", tuple(answer[1].tolist()), clock.now)]
    [entry] = log.lookup("req-2")
    assert entry.variant is None and entry.probabilities == (float(THIRD),) * 3
    assert np.array(entry.probabilities, dtype=np.float32).tobytes() == np.full(3, THIRD).tobytes()
    assert log.lookup("req-3") is None
    assert (log.status("req-1"), log.status("req-3")) == ("found", "unknown")
    assert len(log) == 3 and log.oldest_time() == clock.now


def test_several_records_under_one_request_id():
    clock = Clock()
    log = PredictionLog(retention_s=60, max_entries=1000, clock=clock)
    log.record("req-1", "mlp", "1.2.0", "stable", probabilities(1, 1))
    clock.now += 30
    log.record("req-1", "mlp", "1.3.0", "candidate", probabilities(1, 2), first_row=1)
    assert [(e.version, e.variant, e.row) for e in log.lookup("req-1")] == [("1.2.0", "stable", 0),
                                                                           ("1.3.0", "candidate", 1)]
    clock.now += 31  # the first record expires, the second stays
    assert [e.version for e in log.lookup("req-1")] == ["1.3.0"]


def test_retention_expiry_with_an_injected_clock():
    clock = Clock(1000.0)
    log = PredictionLog(retention_s=60, max_entries=1000, clock=clock)
    log.record("old", "mlp", "1.2.0", "stable", probabilities(1))
    clock.now += 45
    log.record("newer", "mlp", "1.2.0", "stable", probabilities(1))
    clock.now += 15  # "old" is exactly retention_s old: still held
    assert log.status("old") == "found"
    clock.now += 0.001
    assert log.lookup("old") is None and log.status("old") == "expired"
    assert log.status("never-seen") == "unknown"  # evicted ids are remembered by digest
    assert log.expired_among(["never-seen", "old", "newer"]) == {"old"}
    assert log.status("newer") == "found" and log.oldest_time() == 1045.0
    assert log.lookup("newer", now=1045.0 + 61) is None  # an explicit time works as the clock does
    assert len(log) == 0 and log.evicted == 2 and log.oldest_time() is None


def test_max_entries_evicts_the_oldest_records_whole():
    clock = Clock()
    log = PredictionLog(retention_s=3600, max_entries=10, clock=clock)
    for i in range(12):
        clock.now += 1
        log.record(f"req-{i}", "mlp", "1.2.0", "stable", probabilities(1, i))
    assert len(log) == 10 and log.evicted == 2
    assert log.lookup("req-0") is None and log.lookup("req-1") is None and log.lookup("req-2") is not None
    log.record("wide", "mlp", "1.2.0", "stable", probabilities(4))  # room for 4 rows: the 4 oldest go
    assert len(log) == 10 and log.lookup("req-5") is None and log.lookup("req-6") is not None
    # Room for 8 rows: the six single rows are not enough, so "wide" goes too: whole, not in part.
    log.record("wider", "mlp", "1.2.0", "stable", probabilities(8))
    assert len(log) == 8 and log.lookup("wide") is None and log.evicted == 13
    assert not log.record("too-wide", "mlp", "1.2.0", "stable", probabilities(11))  # never fits: refused
    assert log.refused == 1 and len(log) == 8 and log.lookup("wider") is not None  # and evicts nothing


def test_request_ids_feedback_cannot_reference_are_not_kept():
    log = PredictionLog(retention_s=60, max_entries=10, clock=Clock())
    assert not log.record("", "mlp", "1.2.0", "stable", probabilities(1))
    assert not log.record("r" * 65, "mlp", "1.2.0", "stable", probabilities(1))
    assert log.record("r" * 64, "mlp", "1.2.0", "stable", probabilities(1))
    assert log.refused == 2 and len(log) == 1
    for bad in (np.zeros((0, 3)), np.zeros((2, 4)), np.zeros((2, 3, 1))):
        with pytest.raises(ValueError):
            log.record("req", "mlp", "1.2.0", "stable", bad)
    with pytest.raises(ValueError):
        log.record("req", "mlp", "1.2.0", "stable", probabilities(1), first_row=-1)


def test_a_thousand_rows_under_one_request_id_across_blocks():
    clock = Clock()
    log = PredictionLog(retention_s=3600, max_entries=10_000, clock=clock)
    answers = [probabilities(1000, seed) for seed in range(6)]
    for i, answer in enumerate(answers):  # the fifth (rows 4000..4999) straddles the first block's end
        log.record(f"batch-{i}", "mlp", "1.2.0", "stable", answer)
    assert 4000 < BLOCK < 5000
    for i, answer in enumerate(answers):
        entries = log.lookup(f"batch-{i}")
        assert [e.row for e in entries] == list(range(1000))
        assert np.array([e.probabilities for e in entries], dtype=np.float32).tobytes() == answer.tobytes()


def test_memory_follows_what_is_held():
    """Records keep arriving into a full log: evicted blocks and index slots are given back. Where
    the blocks stand when memory is read moves the figure by up to a block of rows and one of
    records at each end (2 x 4096 x 40 bytes); a leak of the evicted rows or their ids would
    add over 3 MB here."""
    log = PredictionLog(retention_s=3600, max_entries=2000, clock=Clock())
    answer = probabilities(1)
    tracemalloc.start()
    try:
        for i in range(BLOCK):
            log.record(f"warm-{i:06d}", "mlp", "1.2.0", "stable", answer)
        held = tracemalloc.get_traced_memory()[0]
        for i in range(5 * BLOCK):
            log.record(f"req-{i:06d}", "mlp", "1.2.0", "stable", answer)
        grown = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert len(log) == 2000 and grown < 400_000


def test_drain_since_returns_each_record_once():
    clock = Clock()
    log = PredictionLog(retention_s=3600, max_entries=100, clock=clock)
    log.record("a", "mlp", "1.2.0", "stable", probabilities(2))
    log.record("b", "mlp", "1.2.0", "candidate", probabilities(1))
    first = log.drain_since(0)
    assert [(e.request_id, e.row) for e in first.entries] == [("a", 0), ("a", 1), ("b", 0)] and first.missed == 0
    assert log.drain_since(first.cursor).entries == []
    log.record("c", "xgboost", "2.0.1", None, probabilities(1))
    second = log.drain_since(first.cursor)
    assert [e.request_id for e in second.entries] == ["c"] and second.missed == 0
    assert log.lookup("a") is not None  # draining removes nothing
    for i in range(150):  # the next interval overflows the log before it is drained
        log.record(f"r{i}", "mlp", "1.2.0", "stable", probabilities(1))
    third = log.drain_since(second.cursor)
    assert third.missed == 50 and len(third.entries) == 100 and third.entries[0].request_id == "r50"


def test_round_trip_through_bytes():
    clock = Clock()
    log = PredictionLog(retention_s=3600, max_entries=10_000, clock=clock)
    log.record("req-1", "mlp", "1.2.0", "stable", probabilities(1000))
    clock.now += 0.25
    log.record("req-2", "ensemble", "1.0.0", None, probabilities(3, 7))
    log.record("req-1", "mlp", "1.3.0", "candidate", probabilities(2, 8), first_row=1000)
    entries = log.drain_since(0).entries
    data = to_bytes(entries)
    assert from_bytes(data) == entries  # exact: float32 probabilities and float64 times bit for bit
    assert len(data) < 20 * len(entries)  # ids and model names are stored once, columns compressed
    assert from_bytes(to_bytes([])) == []


@pytest.mark.parametrize("data", [b"", b"not an npz", b"PK\x03\x04" + b"\x00" * 40])
def test_bytes_that_are_not_a_stored_batch_are_refused(data):
    with pytest.raises(ValueError, match="not a stored prediction log batch"):
        from_bytes(data)


def test_a_stored_batch_with_inconsistent_columns_is_refused():
    import io

    entries = [Entry("req-1", 0, "mlp", "1.2.0", "stable", (0.25, 0.25, 0.5), 1.0)]
    with np.load(io.BytesIO(to_bytes(entries)), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["request"] = np.array([5])  # points past the stored ids
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError, match="inconsistent columns"):
        from_bytes(buffer.getvalue())


def test_bytes_per_entry():
    """The figure in serve_app/prediction_log.py's docstring. The bound: a row's columns are 12
    bytes of probabilities, an 8-byte row digest and a 28-byte record; the 36-character id string
    (85 bytes) and its dict slot are most of the rest, about 213 bytes in all. 400 leaves room for
    other Python builds' string and dict layouts, and fails if a per-entry Python object (a tuple and an array per
    record, about 200 bytes) creeps in."""
    single = measure_bytes_per_entry(100_000, 1)
    batched = measure_bytes_per_entry(10_000, 100)
    print(f"\nprediction log, single-row requests: {single:.0f} bytes per entry, "
          f"{single * 1e6:,.0f} bytes per million predictions")
    print(f"prediction log, 100-row requests: {batched:.1f} bytes per row, "
          f"{batched * 1e6:,.0f} bytes per million predictions")
    assert single < 400
    assert batched < 40  # 12 + 28 / 100 + the id's share: the columns, not Python objects, per row


def test_row_keys_travel_with_their_rows_and_expired_ids_are_remembered_for_max_entries_records():
    log = PredictionLog(retention_s=10**10, max_entries=3)
    log.record("a", "mlp", "1.2.0", "stable", probabilities(2), now=1.0, row_keys=np.array([7, 2**64 - 1], np.uint64))
    assert [e.row_key for e in log.lookup("a")] == [7, 2**64 - 1]
    assert from_bytes(to_bytes(log.lookup("a"))) == log.lookup("a")
    with pytest.raises(ValueError, match="one per row"):
        log.record("b", "mlp", "1.2.0", "stable", probabilities(2), row_keys=np.array([1], np.uint64))
    for i in range(6):  # each evicts the oldest: "a", then r0, r1, r2 (three records held)
        log.record(f"r{i}", "mlp", "1.2.0", "stable", probabilities(1), now=2.0 + i)
    assert log.status("a") == "unknown"  # past the last max_entries evicted ids: forgotten
    assert log.expired_among(["r0", "r1", "r2", "r3", "zz"]) == {"r0", "r1", "r2"}
