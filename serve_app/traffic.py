"""A router's side of the experiments: which variant answers a request, and shadow copies.

The router follows the controller's book (refreshed in the background) and its own configured
experiments: a candidate gets traffic only while both agree on it and the book says `running`.
Until the router has heard from the controller, everything goes to the stable variant.

Sticky assignment is keyed: a client's point is an HMAC under a secret only the servers hold, so
no client can compute which header value lands where, and every router replica (handed the same
secret by the controller) assigns a client the same way. Ray-free."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

import numpy as np

from .config import ExperimentSettings
from .variant_stats import Recorder

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Route:
    experiment: str
    variant: str  # "stable" or "candidate"
    candidate_version: str | None
    shadow_version: str | None
    compares: bool  # a candidate is running: the stable variant's answers are its baseline


SECRET_ENV = "KEPLER_ASSIGNMENT_SECRET"
MIN_SECRET_CHARS = 32


def assignment_secret() -> bytes:
    """The key of sticky assignment: KEPLER_ASSIGNMENT_SECRET when set (assignment then survives a
    restart of the controller), else 32 random bytes for this controller's lifetime. A short
    configured secret is refused: a guessable key would let clients compute their variant."""
    configured = os.environ.get(SECRET_ENV, "").strip()
    if not configured:
        return secrets.token_bytes(32)
    if len(configured) < MIN_SECRET_CHARS:
        raise ValueError(f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters (e.g. openssl rand -hex 32)")
    return configured.encode()


def sticky_draw(secret: bytes, experiment: str, principal: str | None, client: str) -> float:
    """A client's fixed point in [0, 1) for one experiment: below the weight means candidate, so
    raising the weight only ever moves clients onto the candidate, never back and forth. The
    credential is part of the key, so one credential's header values say nothing of another's.
    The fields are JSON-encoded so that no two (principal, client) pairs share a message."""
    message = json.dumps([experiment, principal or "", client]).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Traffic:
    def __init__(self, rng: random.Random | None = None):
        self.specs: dict[str, ExperimentSettings] = {}
        self.book: dict[str, dict] = {}
        self.generation = -1
        self.recorder = Recorder()
        self.rng = rng or random.Random()
        self.secret: bytes | None = None  # the controller's assignment secret, from its snapshots

    def configure(self, specs: dict[str, ExperimentSettings]) -> None:
        self.specs = dict(specs)

    def adopt(self, snapshot: dict) -> None:
        # The secret is the controller's whatever the generation: a restarted controller whose
        # persisted book lags must not leave this router keying clients differently from the others.
        self.secret = snapshot.get("assignment_secret") or self.secret
        if snapshot["generation"] >= self.generation:
            self.generation, self.book = snapshot["generation"], snapshot["experiments"]

    def route(self, model: str, headers: Mapping[str, str], principal: str | None = None) -> Route | None:
        spec, record = self.specs.get(model), self.book.get(model)
        if spec is None or record is None or (record["candidate"], record["shadow"]) != (spec.candidate, spec.shadow):
            return None  # not configured here, or the book has not caught up with this configuration
        running = record["state"] == "running" and bool(record["candidate_version"])
        shadow = record["shadow_version"] if record["shadow_ready"] else None
        if not running and not shadow:
            return None
        candidate = False
        if running and record["weight"] > 0:
            client = headers.get(spec.sticky_header) if spec.sticky_header and self.secret else None
            # Without a header value (or before a secret arrived) each request draws at random.
            draw = (sticky_draw(self.secret, record["experiment_id"], principal, client) if client
                    else self.rng.random())
            candidate = draw < record["weight"]
        return Route(record["experiment_id"], "candidate" if candidate else "stable",
                     record["candidate_version"], shadow, running)


Send = Callable[[str, str, np.ndarray], Awaitable[np.ndarray]]


class ShadowCopies:
    """Fire-and-forget copies to shadow variants through a bounded queue: when it is full the
    copy is dropped and counted, never waited for. Answers are compared, never returned. Copies
    that arrive within `gather_s` of each other go to the shadow in one call, so the primary's
    router pays one handle call per gathering instead of one per request."""

    def __init__(self, send: Send, recorder: Recorder, on_drop: Callable[[str], None], workers: int = 2,
                 gather_s: float = 0.5, max_rows: int = 512):
        self.send, self.recorder, self.on_drop, self.workers = send, recorder, on_drop, workers
        self.gather_s, self.max_rows = gather_s, max_rows
        self.queue: asyncio.Queue | None = None
        self.capacity = 64
        self._tasks: list[asyncio.Task] = []

    def resize(self, capacity: int) -> None:
        if capacity != self.capacity:
            self.capacity, self.queue = capacity, None  # the next offer starts a queue of the new size

    def offer(self, model: str, route: Route, rows: np.ndarray, primary: np.ndarray) -> None:
        if self.queue is None:  # first copy, or resized: the old workers would wait on the old queue forever
            for task in self._tasks:
                task.cancel()
            self.queue = asyncio.Queue(self.capacity)
            self._tasks = [asyncio.ensure_future(self._work(self.queue)) for _ in range(self.workers)]
        try:
            self.queue.put_nowait((model, route, rows, primary.argmax(axis=1)))
        except asyncio.QueueFull:
            self.recorder.dropped(route.experiment)
            self.on_drop(model)

    async def _gather(self, queue: asyncio.Queue) -> list[tuple]:
        copies = [await queue.get()]
        deadline = time.monotonic() + self.gather_s
        while sum(len(c[2]) for c in copies) < self.max_rows:
            try:
                copies.append(await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                break
        return copies

    async def _work(self, queue: asyncio.Queue) -> None:
        while queue is self.queue:
            copies = await self._gather(queue)
            groups: dict[tuple[str, str], list[tuple]] = {}
            for copy in copies:
                groups.setdefault((copy[0], copy[1].shadow_version), []).append(copy)
            await asyncio.gather(*(self._compare(model, version, group) for (model, version), group in groups.items()))

    async def _compare(self, model: str, version: str, copies: list[tuple]) -> None:
        started = time.perf_counter()
        try:
            answer = await self.send(model, version, np.concatenate([c[2] for c in copies]))
        except Exception as e:  # noqa: BLE001 - a failing shadow never touches a response
            for copy in copies:
                self.recorder.failed(copy[1].experiment, "shadow")
            logger.debug("shadow copies for %s failed: %s", model, e)
            return
        per_row, offset = (time.perf_counter() - started) / len(answer), 0
        for _, route, rows, primary in copies:
            classes = answer[offset:offset + len(rows)].argmax(axis=1)
            offset += len(rows)
            self.recorder.answered(route.experiment, "shadow", per_row, classes.tolist())
            self.recorder.compared(route.experiment, int((classes == primary).sum()), len(rows))
