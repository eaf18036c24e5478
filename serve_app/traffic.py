"""A router's side of the experiments: which variant answers a request, and shadow copies.

The router follows the controller's book (refreshed in the background) and its own configured
experiments: a candidate gets traffic only while both agree on it and the book says `running`.
Until the router has heard from the controller, everything goes to the stable variant. Ray-free."""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from .config import ExperimentSettings
from .variant_stats import Recorder

logger = logging.getLogger("ray.serve")
# The request's headers, for sticky assignment deep in the call path (tasks inherit a copy). It
# lives here rather than in the router module, whose FastAPI app Serve pickles by value.
REQUEST_HEADERS: contextvars.ContextVar = contextvars.ContextVar("request_headers", default={})


@dataclass(frozen=True)
class Route:
    experiment: str
    variant: str  # "stable" or "candidate"
    candidate_version: str | None
    shadow_version: str | None
    compares: bool  # a candidate is running: the stable variant's answers are its baseline


def sticky_draw(experiment: str, client: str) -> float:
    """A client's fixed point in [0, 1) for one experiment: below the weight means candidate, so
    raising the weight only ever moves clients onto the candidate, never back and forth."""
    digest = hashlib.sha256(f"{experiment}|{client}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Traffic:
    def __init__(self, rng: random.Random | None = None):
        self.specs: dict[str, ExperimentSettings] = {}
        self.book: dict[str, dict] = {}
        self.generation = -1
        self.recorder = Recorder()
        self.rng = rng or random.Random()

    def configure(self, specs: dict[str, ExperimentSettings]) -> None:
        self.specs = dict(specs)

    def adopt(self, snapshot: dict) -> None:
        if snapshot["generation"] >= self.generation:
            self.generation, self.book = snapshot["generation"], snapshot["experiments"]

    def route(self, model: str, headers: dict[str, str]) -> Route | None:
        spec, record = self.specs.get(model), self.book.get(model)
        if spec is None or record is None or (record["candidate"], record["shadow"]) != (spec.candidate, spec.shadow):
            return None  # not configured here, or the book has not caught up with this configuration
        running = record["state"] == "running" and bool(record["candidate_version"])
        shadow = record["shadow_version"] if record["shadow_ready"] else None
        if not running and not shadow:
            return None
        candidate = False
        if running and record["weight"] > 0:
            client = headers.get(spec.sticky_header) if spec.sticky_header else None
            draw = sticky_draw(record["experiment_id"], client) if client else self.rng.random()
            candidate = draw < record["weight"]
        return Route(record["experiment_id"], "candidate" if candidate else "stable",
                     record["candidate_version"], shadow, running)


Send = Callable[[str, str, np.ndarray], Awaitable[np.ndarray]]


class ShadowCopies:
    """Fire-and-forget copies to shadow variants through a bounded queue: when it is full the
    copy is dropped and counted, never waited for. Answers are compared, never returned."""

    def __init__(self, send: Send, recorder: Recorder, on_drop: Callable[[str], None], workers: int = 4):
        self.send, self.recorder, self.on_drop, self.workers = send, recorder, on_drop, workers
        self.queue: asyncio.Queue | None = None
        self.capacity = 64
        self._tasks: list[asyncio.Task] = []

    def resize(self, capacity: int) -> None:
        if capacity != self.capacity:
            self.capacity, self.queue = capacity, None  # the next offer starts a queue of the new size

    def offer(self, model: str, route: Route, rows: np.ndarray, primary: np.ndarray) -> None:
        if self.queue is None:
            self.queue = asyncio.Queue(self.capacity)
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks += [asyncio.ensure_future(self._work(self.queue)) for _ in range(self.workers)]
        try:
            self.queue.put_nowait((model, route, rows, primary.argmax(axis=1)))
        except asyncio.QueueFull:
            self.recorder.dropped(route.experiment)
            self.on_drop(model)

    async def _work(self, queue: asyncio.Queue) -> None:
        while queue is self.queue:
            model, route, rows, primary = await queue.get()
            started = time.perf_counter()
            try:
                answer = await self.send(model, route.shadow_version, rows)
            except Exception as e:  # noqa: BLE001 - a failing shadow never touches the response
                self.recorder.failed(route.experiment, "shadow")
                logger.debug("shadow copy for %s failed: %s", model, e)
                continue
            classes = answer.argmax(axis=1)
            self.recorder.answered(route.experiment, "shadow", time.perf_counter() - started, classes.tolist())
            self.recorder.compared(route.experiment, int((classes == primary).sum()), len(rows))
