"""Batching in the router: concurrent requests for the same model deployment and version share one
handle call.

Every handle call costs both replicas a Ray task (serialisation, scheduling, a reply) whatever its
size; on a few cores that, not the model, is what bounds throughput once the model is cheap. A
key has at most `calls_in_flight` calls out at once; rows that arrive meanwhile wait and leave
together, up to `max_rows`, when one of those calls returns. There is no timer: a request that
finds a free slot goes at once, so a lone request waits for nothing.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable

import numpy as np

Send = Callable[[Hashable, np.ndarray, list[str]], Awaitable[np.ndarray]]


@dataclass
class _Waiting:
    rows: np.ndarray
    request_id: str
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Coalescer:
    def __init__(self, send: Send, calls_in_flight: int, max_rows: int):
        """`send(key, rows, request_ids)` makes the one call for a batch; `calls_in_flight` 0 sends
        each request on its own."""
        self.send = send
        self.calls_in_flight = calls_in_flight
        self.max_rows = max_rows
        self._queues: dict[Hashable, deque[_Waiting]] = defaultdict(deque)
        self._senders: dict[Hashable, int] = defaultdict(int)
        self._tasks: set[asyncio.Task] = set()  # the loop holds tasks weakly: keep them until done
        self.calls = 0  # handle calls made, for the tests

    async def __call__(self, key: Hashable, rows: np.ndarray, request_id: str) -> np.ndarray:
        if self.calls_in_flight <= 0:
            self.calls += 1
            return await self.send(key, rows, [request_id])
        waiting = _Waiting(rows, request_id)
        self._queues[key].append(waiting)
        if self._senders[key] < self.calls_in_flight:
            self._senders[key] += 1
            task = asyncio.ensure_future(self._send_while_waiting(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiting.answer

    async def _send_while_waiting(self, key: Hashable) -> None:
        try:
            await asyncio.sleep(0)  # requests parsed in this turn of the event loop join the call
            while self._queues[key]:
                await self._send_batch(key, self._take(key))
        finally:
            self._senders[key] -= 1
            if not self._queues[key] and not self._senders[key]:
                del self._queues[key], self._senders[key]

    def _take(self, key: Hashable) -> list[_Waiting]:
        queue, batch, rows = self._queues[key], [], 0
        while queue and (not batch or rows + len(queue[0].rows) <= self.max_rows):
            batch.append(queue.popleft())
            rows += len(batch[-1].rows)
        return batch

    async def _send_batch(self, key: Hashable, batch: list[_Waiting]) -> None:
        self.calls += 1
        try:
            stacked = batch[0].rows if len(batch) == 1 else np.concatenate([w.rows for w in batch])
            answers = await self.send(key, stacked, [w.request_id for w in batch])
        except BaseException as error:  # every request of the call shares its fate
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        offset = 0
        for waiting in batch:
            if not waiting.answer.done():  # its caller may have gone
                waiting.answer.set_result(answers[offset:offset + len(waiting.rows)])
            offset += len(waiting.rows)
