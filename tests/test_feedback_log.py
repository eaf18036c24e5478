"""The feedback log on a local directory and on a real S3 endpoint (moto_server): batches are
create-only objects read back in acceptance order, corrupted objects are skipped and reported,
relabels are replayed with their history, and only resolved labels are accepted."""
from __future__ import annotations

import datetime as dt
import json
import logging
import re

import pytest
from pydantic import ValidationError

from registry import FeedbackItem, FeedbackLog, RegistryUnavailable
from registry.feedback import MAX_BATCH_ITEMS, CorruptBatch
from registry.stores import LocalStore, PreconditionFailed

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
KEY = re.compile(r"^feedback/\d{4}/\d{2}/\d{2}/\d{19}-[0-9a-f]{16}\.json$")


def item(ref: str, label: str = "CONFIRMED", kind: str = "koi", **extra) -> FeedbackItem:
    return FeedbackItem(ref_kind=kind, ref=ref, label=label, **extra)


def test_round_trip(any_store):
    log = FeedbackLog(any_store)
    items = [item("K00752.01", source="archive-2025", principal="curator@example.org"),
             item("3f2a9c1e-0d4b-4c57-9a51-7b3e2f8c6d10", "FALSE_POSITIVE", kind="request_id")]
    key = log.append(items, T0)
    assert KEY.match(key) and key.startswith("feedback/2025/03/14/")
    assert any_store.list("feedback") == [key]
    document = json.loads(any_store.get(key))
    assert document["schema"] == 1 and len(document["sha256"]) == 64
    [(read_key, batch)] = list(log.read_all())
    assert read_key == key == batch.key
    assert batch.accepted_at == T0
    assert list(batch.items) == items


def test_accepted_at_in_another_zone_is_filed_by_utc(any_store):
    log = FeedbackLog(any_store)
    local = dt.datetime(2025, 1, 1, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=3)))  # 2024-12-31 22:30 UTC
    key = log.append([item("K00001.01")], local)
    assert key.startswith("feedback/2024/12/31/")
    [(_, batch)] = list(log.read_all())
    assert batch.accepted_at == local and batch.accepted_at.tzinfo == UTC


def test_writes_are_create_only(any_store):
    log = FeedbackLog(any_store)
    key = log.append([item("K00752.01")], T0)
    original = any_store.get(key)
    with pytest.raises(PreconditionFailed):
        any_store.put_if_absent(key, original.replace(b"CONFIRMED", b"FALSE_POSITIVE"))
    with pytest.raises(PreconditionFailed):  # not even the same bytes again
        any_store.put_if_absent(key, original)
    assert any_store.get(key) == original
    # The same feedback appended again (a client's retry) is a new object; nothing is rewritten.
    second = log.append([item("K00752.01")], T0)
    assert second != key and any_store.get(key) == original
    assert [k for k, _ in log.read_all()] == sorted([key, second])


class _AnswerLost:
    """A store whose create-only put lands but whose answer is lost, so the client retries and
    finds the object there: what an S3 client's automatic retry of a PUT sees."""

    def __init__(self, store):
        self.store, self.retried = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put_if_absent(self, key, data):
        self.store.put_if_absent(key, data)
        self.retried += 1
        self.store.put_if_absent(key, data)  # raises PreconditionFailed: our own object


def test_a_retried_write_that_finds_its_own_object_is_acknowledged(any_store):
    store = _AnswerLost(any_store)
    key = FeedbackLog(store).append([item("K00752.01")], T0)
    assert store.retried == 1 and any_store.list("feedback") == [key]
    assert len(list(FeedbackLog(any_store).read_all())) == 1


def test_a_name_taken_by_another_batch_is_never_overwritten(any_store, monkeypatch):
    log = FeedbackLog(any_store)
    taken = log.append([item("K00001.01")], T0)
    before = any_store.get(taken)
    suffixes = iter([taken.rsplit("-", 1)[1][:-5], "0123456789abcdef"])
    monkeypatch.setattr("registry.feedback.secrets.token_hex", lambda n: next(suffixes))
    key = log.append([item("K00002.01", "FALSE_POSITIVE")], T0)
    assert key != taken and key.endswith("-0123456789abcdef.json")
    assert any_store.get(taken) == before
    assert {b.items[0].ref for _, b in log.read_all()} == {"K00001.01", "K00002.01"}


def test_corrupted_objects_are_skipped_and_reported(any_store, caplog):
    log = FeedbackLog(any_store)
    keys = [log.append([item(f"K0000{i}.01")], T0 + dt.timedelta(seconds=i)) for i in range(5)]
    intact = any_store.get(keys[0])
    any_store.put(keys[1], any_store.get(keys[1]).replace(b"K00001.01", b"K00009.01"))  # bytes changed
    any_store.put(keys[2], intact[: len(intact) // 2])  # truncated
    document = json.loads(any_store.get(keys[3]))
    document["schema"] = 2
    any_store.put(keys[3], json.dumps(document).encode())  # from a newer writer
    any_store.put("feedback/2025/03/14/notes.txt", b"not a batch")  # a stray object
    corrupt: list[CorruptBatch] = []
    with caplog.at_level(logging.WARNING, logger="registry.feedback"):
        read = [k for k, _ in log.read_all(corrupt=corrupt)]
    assert read == [keys[0], keys[4]]
    reasons = {c.key: c.reason for c in corrupt}
    assert set(reasons) == {keys[1], keys[2], keys[3], "feedback/2025/03/14/notes.txt"}
    assert "checksum mismatch" in reasons[keys[1]] and "JSON" in reasons[keys[2]]
    assert "schema 2" in reasons[keys[3]] and "name" in reasons["feedback/2025/03/14/notes.txt"]
    assert sum("skipping feedback object" in r.message for r in caplog.records) == 4
    assert set(log.latest_labels()) == {("koi", "K00000.01"), ("koi", "K00004.01")}


def test_a_batch_filed_under_another_time_is_reported(any_store):
    log = FeedbackLog(any_store)
    key = log.append([item("K00752.01")], T0)
    moved = key.replace("/14/", "/15/")
    any_store.put(moved, any_store.get(key))
    corrupt: list[CorruptBatch] = []
    assert [k for k, _ in log.read_all(corrupt=corrupt)] == [key]
    assert corrupt == [CorruptBatch(moved, "the acceptance time inside does not match the object's name")]


class _Unreachable(LocalStore):
    def get(self, key):
        raise RegistryUnavailable("cannot reach the store")


def test_an_unreachable_store_raises_rather_than_dropping_labels(tmp_path):
    FeedbackLog(LocalStore(tmp_path)).append([item("K00752.01")], T0)
    with pytest.raises(RegistryUnavailable):
        FeedbackLog(_Unreachable(tmp_path)).latest_labels()


def test_relabelling_is_replayed_in_order_with_its_history(any_store):
    log = FeedbackLog(any_store)
    first = log.append([item("K00752.01", "CONFIRMED"), item("K00001.01", "CONFIRMED")], T0)
    second = log.append([item("K00752.01", "FALSE_POSITIVE", source="re-vetting")], T0 + dt.timedelta(days=400))
    third = log.append([item("K00752.01", "FALSE_POSITIVE")], T0 + dt.timedelta(days=500))  # sent again
    labels = log.latest_labels()
    state = labels[("koi", "K00752.01")]
    assert (state.label, state.key, state.relabels) == ("FALSE_POSITIVE", third, 1)
    assert [(c.label, c.key) for c in state.history] == [("CONFIRMED", first), ("FALSE_POSITIVE", second),
                                                          ("FALSE_POSITIVE", third)]
    assert state.history[1].accepted_at == T0 + dt.timedelta(days=400)
    unchanged = labels[("koi", "K00001.01")]
    assert (unchanged.label, unchanged.relabels, len(unchanged.history)) == ("CONFIRMED", 0, 1)
    # A request id and a KOI name are different references even when spelled alike.
    log.append([item("K00001.01", "FALSE_POSITIVE", kind="request_id")], T0 + dt.timedelta(days=600))
    assert log.latest_labels()[("koi", "K00001.01")].label == "CONFIRMED"


def test_within_a_batch_the_later_item_wins(any_store):
    log = FeedbackLog(any_store)
    log.append([item("K00752.01", "CONFIRMED"), item("K00752.01", "FALSE_POSITIVE")], T0)
    state = log.latest_labels()[("koi", "K00752.01")]
    assert (state.label, state.relabels, len(state.history)) == ("FALSE_POSITIVE", 1, 2)


def test_candidate_is_refused_as_not_ground_truth():
    with pytest.raises(ValueError, match="CANDIDATE is not ground truth"):
        item("K00752.01", "CANDIDATE")


@pytest.mark.parametrize("fields", [
    {"ref": "K" * 65},
    {"ref": ""},
    {"ref": " K00752.01"},
    {"ref": "K00752.01\n"},
    {"ref": "K00752\x00.01"},
    {"ref": "K00752.01é"},
    {"label": "confirmed"},
    {"label": "NOT_DISPOSITIONED"},
    {"ref_kind": "kepler_name"},
    {"source": "x" * 129},
    {"principal": "a\tb"},
    {"weight": 2},
])
def test_items_out_of_bounds_are_refused(fields):
    with pytest.raises(ValidationError):
        FeedbackItem(**{"ref_kind": "koi", "ref": "K00752.01", "label": "CONFIRMED", **fields})


def test_items_within_bounds_are_accepted():
    assert item("K" * 64).ref == "K" * 64
    assert item("Kepler-227 b").ref == "Kepler-227 b"  # an inner space is printable
    with pytest.raises(ValidationError):
        item("K00752.01").label = "FALSE_POSITIVE"  # frozen


def test_batches_are_refused_when_empty_too_large_or_without_a_zone(tmp_path):
    log = FeedbackLog(LocalStore(tmp_path))
    with pytest.raises(ValueError, match="at least one"):
        log.append([], T0)
    with pytest.raises(ValueError, match="at most"):
        log.append([item("K00752.01")] * (MAX_BATCH_ITEMS + 1), T0)
    with pytest.raises(ValueError, match="timezone"):
        log.append([item("K00752.01")], T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="before 1970"):
        log.append([item("K00752.01")], dt.datetime(1969, 12, 31, 23, 59, tzinfo=UTC))
    with pytest.raises(TypeError):
        log.append([{"ref_kind": "koi", "ref": "K00752.01", "label": "CONFIRMED"}], T0)
    assert LocalStore(tmp_path).list("feedback") == []


def test_a_thousand_items_in_one_batch(any_store):
    log = FeedbackLog(any_store)
    items = [item(f"K{i:05d}.01", "CONFIRMED" if i % 3 else "FALSE_POSITIVE",
                  kind="koi" if i % 2 else "request_id", principal="bulk-import") for i in range(1000)]
    key = log.append(items, T0)
    assert any_store.list("feedback") == [key]
    [(_, batch)] = list(log.read_all())
    assert list(batch.items) == items
    labels = log.latest_labels()
    assert len(labels) == 1000 and labels[("koi", "K00001.01")].label == "CONFIRMED"
    assert labels[("request_id", "K00000.01")].label == "FALSE_POSITIVE"


def test_key_order_is_acceptance_order_across_days_and_digit_counts(any_store):
    log = FeedbackLog(any_store)
    # 2001-09-09T01:46:40Z is 10**18 ns: keys on either side differ in digit count unless padded.
    moments = [dt.datetime(2001, 9, 9, 1, 46, 39, tzinfo=UTC), dt.datetime(2001, 9, 9, 1, 46, 41, tzinfo=UTC),
               dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), T0, T0 + dt.timedelta(microseconds=1),
               T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=31), dt.datetime(2024, 12, 31, 23, 59, tzinfo=UTC)]
    for i, moment in enumerate(moments):
        log.append([item(f"K{i:05d}.01")], moment)
    batches = [batch for _, batch in log.read_all()]
    assert [b.accepted_at for b in batches] == sorted(moments)
    assert [b.key for b in batches] == sorted(b.key for b in batches)
    # Reading on from a key, or from a time (inclusive).
    keys = [b.key for b in batches]
    assert [k for k, _ in log.read_all(since=keys[3])] == keys[4:]
    assert [k for k, _ in log.read_all(since=sorted(moments)[5])] == keys[5:]
    assert [k for k, _ in log.read_all(since=T0 + dt.timedelta(days=3650))] == []
