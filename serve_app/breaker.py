"""The circuit breaker in front of each model deployment. Ray-free, single-threaded (asyncio)."""
from __future__ import annotations

import time
from enum import Enum


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `cooldown_s` lets one probe
    through (half-open): its success closes the breaker, its failure opens it again."""

    def __init__(self, failure_threshold: int, cooldown_s: float, clock=time.monotonic):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return State.CLOSED
        return State.HALF_OPEN if self.clock() - self.opened_at >= self.cooldown_s else State.OPEN

    def retry_after_s(self) -> int:
        if self.opened_at is None:
            return 0
        return max(1, int(self.cooldown_s - (self.clock() - self.opened_at) + 0.999))

    def allow(self) -> bool:
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def release_probe(self) -> None:
        """The probe's call ended without saying anything of the model (its request was bad, or
        load was shed): let the next call probe instead of holding the breaker half-open."""
        self.probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.failure_threshold:
            self.opened_at, self.probing = self.clock(), False
