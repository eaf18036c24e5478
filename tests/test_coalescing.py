"""Batching in the router (serve_app/coalescing.py), against a downstream that records its calls."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.coalescing import Coalescer


class Downstream:
    """Answers each row with its own first value times 10, after `delay` s; records every call."""

    def __init__(self, delay: float = 0.01, fail_on: int | None = None):
        self.delay, self.fail_on = delay, fail_on
        self.calls: list[tuple[object, int, list[str]]] = []
        self.out, self.most_out = 0, 0

    async def __call__(self, key, rows: np.ndarray, request_ids: list[str]) -> np.ndarray:
        self.calls.append((key, len(rows), request_ids))
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_on is not None and len(self.calls) == self.fail_on:
                raise RuntimeError("model failed")
            return rows[:, :1] * 10
        finally:
            self.out -= 1


def rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3), value)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_lone_request_is_sent_at_once_and_alone():
    downstream = Downstream()
    answer = run(Coalescer(downstream, calls_in_flight=2, max_rows=64)(("xgboost", "1.0.0"), rows(4), "r1"))
    assert answer.tolist() == [[40.0]]
    assert downstream.calls == [(("xgboost", "1.0.0"), 1, ["r1"])]


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows():
    downstream = Downstream()
    coalescer = Coalescer(downstream, calls_in_flight=2, max_rows=64)

    async def many():
        return await asyncio.gather(*(coalescer("k", rows(i, n=1 + i % 3), f"r{i}") for i in range(40)))

    answers = run(many())
    for i, answer in enumerate(answers):
        assert answer.shape == (1 + i % 3, 1) and (answer == i * 10).all()
    assert downstream.most_out <= 2
    assert len(downstream.calls) < 10  # 40 requests, a handful of calls
    assert sorted(r for call in downstream.calls for r in call[2]) == sorted(f"r{i}" for i in range(40))
    assert coalescer.calls == len(downstream.calls)


def test_calls_hold_at_most_max_rows_unless_one_request_is_larger():
    downstream = Downstream()
    coalescer = Coalescer(downstream, calls_in_flight=1, max_rows=8)

    async def many():
        return await asyncio.gather(coalescer("k", rows(1, 20), "big"),
                                    *(coalescer("k", rows(i, 3), f"r{i}") for i in range(10)))

    big, *small = run(many())
    assert big.shape == (20, 1) and all(a.shape == (3, 1) for a in small)
    assert [n for _, n, _ in downstream.calls if n > 8] == [20]
    assert downstream.most_out == 1


def test_keys_are_batched_apart():
    downstream = Downstream()
    coalescer = Coalescer(downstream, calls_in_flight=1, max_rows=64)

    async def many():
        return await asyncio.gather(*(coalescer(("xgboost", v), rows(i), f"r{i}")
                                      for i, v in enumerate(["1.0.0", "1.1.0"] * 5)))

    run(many())
    assert {key for key, _, _ in downstream.calls} == {("xgboost", "1.0.0"), ("xgboost", "1.1.0")}
    for key, _, ids in downstream.calls:
        assert all(int(r[1:]) % 2 == (key[1] == "1.1.0") for r in ids)


def test_a_failed_call_fails_its_own_requests_only():
    downstream = Downstream(fail_on=1)
    coalescer = Coalescer(downstream, calls_in_flight=1, max_rows=64)

    async def many():
        first = asyncio.ensure_future(coalescer("k", rows(1), "first"))
        await asyncio.sleep(0.001)  # the first call is out; these wait and go together after it
        rest = [coalescer("k", rows(i), f"r{i}") for i in range(5)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    first, *rest = run(many())
    assert isinstance(first, RuntimeError)
    assert [a.tolist() for a in rest] == [[[i * 10.0]] for i in range(5)]
    assert len(downstream.calls) == 2


def test_zero_calls_in_flight_sends_each_request_on_its_own():
    downstream = Downstream()
    coalescer = Coalescer(downstream, calls_in_flight=0, max_rows=64)

    async def many():
        return await asyncio.gather(*(coalescer("k", rows(i), f"r{i}") for i in range(6)))

    run(many())
    assert len(downstream.calls) == 6 and downstream.most_out == 6


def test_a_caller_that_goes_away_leaves_the_others_answered():
    downstream = Downstream(delay=0.05)
    coalescer = Coalescer(downstream, calls_in_flight=1, max_rows=64)

    async def many():
        first = asyncio.ensure_future(coalescer("k", rows(1), "first"))
        await asyncio.sleep(0.001)
        leaver = asyncio.ensure_future(coalescer("k", rows(2), "leaver"))
        stayer = asyncio.ensure_future(coalescer("k", rows(3), "stayer"))
        await asyncio.sleep(0.001)
        leaver.cancel()
        return await asyncio.gather(first, stayer), leaver.cancelled()

    (first, stayer), cancelled = run(many())
    assert cancelled and first.tolist() == [[10.0]] and stayer.tolist() == [[30.0]]


@pytest.mark.parametrize("field, value", [("calls_in_flight", -1), ("max_rows", 0)])
def test_router_batching_settings_are_validated(field, value):
    from pydantic import ValidationError

    from serve_app.config import RouterSettings

    with pytest.raises(ValidationError, match=field):
        RouterSettings(batching={field: value})
