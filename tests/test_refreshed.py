"""Open probes read state refreshed at most once per period, without Ray."""
from __future__ import annotations

import asyncio

import pytest

from serve_app.refreshed import Refreshed


def test_calls_within_a_period_share_one_computation_and_concurrent_ones_one_refresh():
    now, calls = [0.0], []

    async def compute():
        calls.append(now[0])
        await asyncio.sleep(0.01)
        return len(calls)

    async def scenario():
        state = Refreshed(compute, period_s=1.0, clock=lambda: now[0])
        first = await asyncio.gather(*(state.get() for _ in range(50)))  # a burst of probes
        assert first == [1] * 50 and len(calls) == 1
        now[0] = 0.9
        assert await state.get() == 1 and len(calls) == 1  # still fresh
        now[0] = 1.5
        assert await state.get() == 2 and len(calls) == 2
    asyncio.run(scenario())


def test_a_failed_refresh_is_not_kept():
    outcomes = [OSError("agent down"), "text"]

    async def compute():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def scenario():
        state = Refreshed(compute)
        with pytest.raises(OSError):
            await state.get()
        assert await state.get() == "text"
    asyncio.run(scenario())
