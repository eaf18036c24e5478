"""Per-variant request statistics over a sliding window, mergeable across router replicas.

Routers record into one-second buckets and hand the controller what accumulated since their
last report; the controller merges every router's buckets and answers window queries. Latency
is per computed row (a 1,000-row batch is not 1,000 times slower a model) and goes into fixed
log-spaced buckets (15% wide), so percentiles of merged data stay within one bucket of the truth
without keeping every sample.

Buckets are also kept per principal (the credential's name; requests without one, as with
authentication off, are the one anonymous principal ""), so that a window's summary can cap any
one principal's share of a variant's samples: a single credential flooding a variant then dilutes
a failing candidate's statistics by at most that share, cannot supply a rollout's evidence on its
own, and (at the default half) never outweighs everyone else's traffic together. Memory stays
bounded: each second keeps the busiest PRINCIPALS_PER_SECOND principals and merges the rest into
OTHERS, which is never capped (it is many small principals; a flood is always among the busiest
of its seconds). Ray-free."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from runtimes.schema import LABELS

_FIRST_MS, _GROWTH = 0.05, 1.15
VARIANTS = ("stable", "candidate", "shadow")
ANONYMOUS = ""  # no credential: authentication off, or shadow copies
OTHERS = "*"  # the less busy principals of a second, merged; no credential is named "*"
PRINCIPALS_PER_SECOND = 8


def latency_bucket(seconds: float) -> int:
    ms = max(seconds * 1000, _FIRST_MS)
    return int(math.log(ms / _FIRST_MS, _GROWTH))


def bucket_upper_ms(index: int) -> float:
    return _FIRST_MS * _GROWTH ** (index + 1)


@dataclass
class Bucket:
    """What one variant did in one second (for one principal), or over a window. Counts are whole
    numbers as recorded, fractional once a capped principal's share is scaled down."""

    requests: float = 0
    errors: float = 0
    classes: list[float] = field(default_factory=lambda: [0] * len(LABELS))
    latency: dict[int, float] = field(default_factory=dict)  # per-row latency bucket -> requests
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

    def scaled(self, factor: float) -> "Bucket":
        """This principal's outcomes counted at `factor` of their weight, in the same proportions."""
        return Bucket(self.requests * factor, self.errors * factor, [n * factor for n in self.classes],
                      {index: n * factor for index, n in self.latency.items()}, self.compared, self.agreed,
                      self.dropped)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "classes": self.classes,
                "latency": self.latency, "compared": self.compared, "agreed": self.agreed, "dropped": self.dropped}

    @classmethod
    def from_dict(cls, data: dict) -> "Bucket":
        return cls(data["requests"], data["errors"], list(data["classes"]),
                   {int(k): v for k, v in data["latency"].items()}, data["compared"], data["agreed"], data["dropped"])


@dataclass
class Summary:
    requests: float  # counted: after the per-principal cap
    errors: float
    classes: list[float]
    p50_ms: float | None
    p95_ms: float | None
    compared: int
    agreed: int
    dropped: int
    uncounted: float = 0  # requests served but over their principal's share

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict:
        answered = sum(self.classes)
        return {"requests": _count(self.requests), "errors": _count(self.errors),
                "error_rate": round(self.error_rate, 4), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                **({"uncounted_requests": _count(self.uncounted)} if self.uncounted else {}),
                "class_distribution": {label: round(n / answered, 4) if answered else 0.0
                                       for label, n in zip(LABELS, self.classes)},
                **({"agreement_rate": round(self.agreed / self.compared, 4) if self.compared else None,
                    "compared": self.compared, "dropped": self.dropped} if self.compared or self.dropped else {})}


def _count(n: float) -> float:
    return int(n) if float(n).is_integer() else round(n, 1)


def _percentile(latency: dict[int, float], q: float) -> float | None:
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


def principal_limit(requests: dict[str, float], max_share: float) -> float | None:
    """The most requests any one principal may count for in a window, or None when none exceeds it.

    Water-filling: the busiest principals are lowered to a common level c at which each holds
    exactly `max_share` of what counts, c = max_share * (k * c + rest), the k busiest capped and
    the rest counted in full. Where fewer than 1 / max_share principals contributed (and none
    merged into OTHERS, which stands for many), nobody can stay under the share and the busiest
    are lowered to an equal split instead. A lone principal (every request anonymous with
    authentication off, or one credential's traffic alone) counts in full: there is no one else's
    traffic for it to outweigh. OTHERS is never lowered."""
    others = requests.get(OTHERS, 0)
    named = sorted((n for who, n in requests.items() if who != OTHERS and n > 0), reverse=True)
    if max_share >= 1 or len(named) + (others > 0) < 2:
        return None
    share = max_share if others > 0 else max(max_share, 1 / len(named))
    rest = others + sum(named)
    for k, busiest in enumerate(named, 1):
        rest -= busiest
        if share * k >= 1:  # the k busiest alone would hold everything: an equal split among them
            return named[k - 1] if named[k - 1] < named[0] else None
        level = share * rest / (1 - share * k)
        if k == len(named) or level >= named[k]:
            return level if level < named[0] * (1 - 1e-9) else None  # (rounding: none is over)
    return None


def capped(per_principal: dict[str, Bucket], max_share: float = 1.0) -> Summary:
    """A window's summary with each principal's outcomes scaled down to its share, in proportion:
    its error rate, classes and latencies keep their shape, only their weight shrinks."""
    limit = principal_limit({who: b.requests for who, b in per_principal.items()}, max_share)
    counted, served = [], 0.0
    for who, bucket in per_principal.items():
        served += bucket.requests
        if limit is not None and who != OTHERS and bucket.requests > limit:
            bucket = bucket.scaled(limit / bucket.requests)
        counted.append(bucket)
    summary = summarize(counted)
    summary.uncounted = served - summary.requests
    return summary


def busiest(by_principal: dict[str, Bucket], keep: int = PRINCIPALS_PER_SECOND) -> dict[str, Bucket]:
    """The `keep` principals with the most requests, and the others merged into OTHERS."""
    named = [who for who in by_principal if who != OTHERS]
    if len(named) <= keep:
        return by_principal
    named.sort(key=lambda who: by_principal[who].requests, reverse=True)
    kept = {who: by_principal[who] for who in named[:keep]}
    others = kept[OTHERS] = Bucket()
    for who in [*named[keep:], OTHERS]:
        if who in by_principal:
            others.add(by_principal[who])
    return kept


Drained = list[tuple[str, str, int, str, dict]]  # (experiment, variant, second, principal, bucket)


class Recorder:
    """A router's side: buckets since the last report, keyed (experiment, variant, second,
    principal). Within a report every principal is kept (at most one entry per request);
    `drain` keeps the busiest of each second."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.pending: dict[tuple[str, str, int, str], Bucket] = {}

    def _bucket(self, experiment: str, variant: str, principal: str | None = None) -> Bucket:
        key = (experiment, variant, int(self.clock()), principal or ANONYMOUS)
        if key not in self.pending:
            self.pending[key] = Bucket()
        return self.pending[key]

    def answered(self, experiment: str, variant: str, seconds_per_row: float, classes: list[int],
                 principal: str | None = None) -> None:
        bucket = self._bucket(experiment, variant, principal)
        bucket.requests += 1
        for index in classes:
            bucket.classes[index] += 1
        index = latency_bucket(seconds_per_row)
        bucket.latency[index] = bucket.latency.get(index, 0) + 1

    def failed(self, experiment: str, variant: str, principal: str | None = None) -> None:
        bucket = self._bucket(experiment, variant, principal)
        bucket.requests += 1
        bucket.errors += 1

    def compared(self, experiment: str, agreed: int, total: int) -> None:
        bucket = self._bucket(experiment, "shadow")
        bucket.compared += total
        bucket.agreed += agreed

    def dropped(self, experiment: str) -> None:
        self._bucket(experiment, "shadow").dropped += 1

    def drain(self) -> Drained:
        pending, self.pending = self.pending, {}
        seconds: dict[tuple[str, str, int], dict[str, Bucket]] = {}
        for (experiment, variant, second, principal), bucket in pending.items():
            seconds.setdefault((experiment, variant, second), {})[principal] = bucket
        return [(experiment, variant, second, principal, bucket.as_dict())
                for (experiment, variant, second), by_principal in seconds.items()
                for principal, bucket in busiest(by_principal).items()]

    def restore(self, drained: Drained) -> None:
        """Put back a report the controller never received, so no sample is lost."""
        for experiment, variant, second, principal, data in drained:
            key = (experiment, variant, second, principal)
            self.pending.setdefault(key, Bucket()).add(Bucket.from_dict(data))


class Window:
    """The controller's side: every router's buckets, queried over a trailing window."""

    def __init__(self, keep_s: float = 3600, clock=time.time):
        self.keep_s = keep_s
        self.clock = clock
        self.buckets: dict[tuple[str, str], dict[int, dict[str, Bucket]]] = {}

    def merge(self, drained: Drained) -> None:
        touched = set()
        for experiment, variant, second, principal, data in drained:
            by_principal = self.buckets.setdefault((experiment, variant), {}).setdefault(second, {})
            by_principal.setdefault(principal, Bucket()).add(Bucket.from_dict(data))
            touched.add((experiment, variant, second))
        for experiment, variant, second in touched:  # several routers' busiest: keep the busiest of all
            seconds = self.buckets[(experiment, variant)]
            seconds[second] = busiest(seconds[second])
        self._expire()

    def _expire(self) -> None:
        oldest = self.clock() - self.keep_s
        for seconds in self.buckets.values():
            for second in [s for s in seconds if s < oldest]:
                del seconds[second]

    def summary(self, experiment: str, variant: str, window_s: float, since: float | None = None,
                max_principal_share: float = 1.0) -> Summary:
        start = int(max(self.clock() - window_s, since or 0))
        per_principal: dict[str, Bucket] = {}
        for second, by_principal in self.buckets.get((experiment, variant), {}).items():
            if second >= start:
                for principal, bucket in by_principal.items():
                    per_principal.setdefault(principal, Bucket()).add(bucket)
        return capped(per_principal, max_principal_share)
