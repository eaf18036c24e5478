"""Per-variant request statistics over a sliding window, mergeable across router replicas.

Routers record into one-second buckets and hand the controller what accumulated since their
last report; the controller merges every router's buckets and answers window queries. Latency
goes into fixed log-spaced buckets (15% wide), so percentiles of merged data stay within one
bucket of the truth without keeping every sample. Ray-free."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from runtimes.schema import LABELS

_FIRST_MS, _GROWTH = 0.05, 1.15
VARIANTS = ("stable", "candidate", "shadow")


def latency_bucket(seconds: float) -> int:
    ms = max(seconds * 1000, _FIRST_MS)
    return int(math.log(ms / _FIRST_MS, _GROWTH))


def bucket_upper_ms(index: int) -> float:
    return _FIRST_MS * _GROWTH ** (index + 1)


@dataclass
class Bucket:
    """What one variant did in one second."""

    requests: int = 0
    errors: int = 0
    classes: list[int] = field(default_factory=lambda: [0] * len(LABELS))
    latency: dict[int, int] = field(default_factory=dict)
    compared: int = 0  # shadow answers compared with the primary's
    agreed: int = 0
    dropped: int = 0  # shadow copies dropped because the queue was full

    def add(self, other: "Bucket") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.classes = [a + b for a, b in zip(self.classes, other.classes)]
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count
        self.compared += other.compared
        self.agreed += other.agreed
        self.dropped += other.dropped

    def as_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "classes": self.classes,
                "latency": self.latency, "compared": self.compared, "agreed": self.agreed, "dropped": self.dropped}

    @classmethod
    def from_dict(cls, data: dict) -> "Bucket":
        return cls(data["requests"], data["errors"], list(data["classes"]),
                   {int(k): v for k, v in data["latency"].items()}, data["compared"], data["agreed"], data["dropped"])


@dataclass
class Summary:
    requests: int
    errors: int
    classes: list[int]
    p50_ms: float | None
    p95_ms: float | None
    compared: int
    agreed: int
    dropped: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict:
        answered = sum(self.classes)
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 4),
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "class_distribution": {label: round(n / answered, 4) if answered else 0.0
                                       for label, n in zip(LABELS, self.classes)},
                **({"agreement_rate": round(self.agreed / self.compared, 4) if self.compared else None,
                    "compared": self.compared, "dropped": self.dropped} if self.compared or self.dropped else {})}


def _percentile(latency: dict[int, int], q: float) -> float | None:
    total = sum(latency.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for index in sorted(latency):
        seen += latency[index]
        if seen >= rank:
            return round(bucket_upper_ms(index), 3)
    return round(bucket_upper_ms(max(latency)), 3)


def summarize(buckets: list[Bucket]) -> Summary:
    total = Bucket()
    for bucket in buckets:
        total.add(bucket)
    return Summary(total.requests, total.errors, total.classes, _percentile(total.latency, 0.5),
                   _percentile(total.latency, 0.95), total.compared, total.agreed, total.dropped)


class Recorder:
    """A router's side: buckets since the last report, keyed (experiment, variant, second)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.pending: dict[tuple[str, str, int], Bucket] = {}

    def _bucket(self, experiment: str, variant: str) -> Bucket:
        key = (experiment, variant, int(self.clock()))
        if key not in self.pending:
            self.pending[key] = Bucket()
        return self.pending[key]

    def answered(self, experiment: str, variant: str, seconds: float, classes: list[int]) -> None:
        bucket = self._bucket(experiment, variant)
        bucket.requests += 1
        for index in classes:
            bucket.classes[index] += 1
        index = latency_bucket(seconds)
        bucket.latency[index] = bucket.latency.get(index, 0) + 1

    def failed(self, experiment: str, variant: str) -> None:
        bucket = self._bucket(experiment, variant)
        bucket.requests += 1
        bucket.errors += 1

    def compared(self, experiment: str, agreed: int, total: int) -> None:
        bucket = self._bucket(experiment, "shadow")
        bucket.compared += total
        bucket.agreed += agreed

    def dropped(self, experiment: str) -> None:
        self._bucket(experiment, "shadow").dropped += 1

    def drain(self) -> list[tuple[str, str, int, dict]]:
        pending, self.pending = self.pending, {}
        return [(experiment, variant, second, bucket.as_dict())
                for (experiment, variant, second), bucket in pending.items()]

    def restore(self, drained: list[tuple[str, str, int, dict]]) -> None:
        """Put back a report the controller never received, so no sample is lost."""
        for experiment, variant, second, data in drained:
            key = (experiment, variant, second)
            self.pending.setdefault(key, Bucket()).add(Bucket.from_dict(data))


class Window:
    """The controller's side: every router's buckets, queried over a trailing window."""

    def __init__(self, keep_s: float = 3600, clock=time.time):
        self.keep_s = keep_s
        self.clock = clock
        self.buckets: dict[tuple[str, str], dict[int, Bucket]] = {}

    def merge(self, drained: list[tuple[str, str, int, dict]]) -> None:
        for experiment, variant, second, data in drained:
            seconds = self.buckets.setdefault((experiment, variant), {})
            seconds.setdefault(second, Bucket()).add(Bucket.from_dict(data))
        self._expire()

    def _expire(self) -> None:
        oldest = self.clock() - self.keep_s
        for seconds in self.buckets.values():
            for second in [s for s in seconds if s < oldest]:
                del seconds[second]

    def summary(self, experiment: str, variant: str, window_s: float, since: float | None = None) -> Summary:
        start = max(self.clock() - window_s, since or 0)
        seconds = self.buckets.get((experiment, variant), {})
        return summarize([bucket for second, bucket in seconds.items() if second >= int(start)])
