"""Prometheus metrics through Ray Serve's metrics API, so every replica on every node is exported
by its node's metrics agent (Ray prefixes each name with `ray_`). Event counters are created at
zero when a replica starts, so every series a dashboard uses exists in the first scrape."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally

from ray.serve.metrics import Counter, Gauge, Histogram

from runtimes.schema import LABELS

from .ray_internals import zero_counter

logger = logging.getLogger("ray.serve")
# Milliseconds to seconds: a prediction takes 1-50 ms here, an overloaded one seconds.
LATENCY_BUCKETS = [0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
REDIS_OPERATIONS = ("cache_get", "cache_set", "rate_limit")


class MetricBuffer:
    """Gauges whose last value is re-recorded every second, and counters summed in-process and
    recorded once a second. Ray's metrics agent forgets a gauge series that no export refreshed
    within two export intervals, and a value set once (a load time, a closed breaker) would
    otherwise vanish from scrapes. Ray exports every few seconds anyway, so summing counters
    here costs no freshness and takes a Ray metric call per event off the request path."""

    def __init__(self, period_s: float = 1.0):
        self._values: dict[tuple[int, tuple], tuple[Gauge, dict, float]] = {}
        self._counts: dict[tuple[int, tuple], list] = {}  # -> [counter, tags, pending increment]
        self._lock = threading.Lock()
        threading.Thread(target=self._refresh, args=(period_s,), name="metric-buffer", daemon=True).start()

    def set(self, gauge: Gauge, value: float, tags: dict[str, str]) -> None:
        key = (id(gauge), tuple(sorted(tags.items())))
        with self._lock:
            unchanged = key in self._values and self._values[key][2] == value
            self._values[key] = (gauge, tags, value)
        if not unchanged:
            gauge.set(value, tags=tags)

    def inc(self, counter: Counter, value: float, tags: dict[str, str]) -> None:
        if value <= 0:  # Ray refuses a zero increment; the series exists from zero_counter
            return
        key = (id(counter), tuple(sorted(tags.items())))
        with self._lock:
            pending = self._counts.get(key)
            if pending is None:
                self._counts[key] = [counter, tags, value]
            else:
                pending[2] += value

    def _refresh(self, period_s: float) -> None:
        while True:
            time.sleep(period_s)
            with self._lock:
                held = list(self._values.values())
                counts, self._counts = list(self._counts.values()), {}
            try:
                for gauge, tags, value in held:
                    gauge.set(value, tags=tags)
                for counter, tags, value in counts:
                    counter.inc(value, tags=tags)
            except Exception:  # noqa: BLE001 - one bad record must not end every later export
                logger.exception("a metric could not be recorded")


class RouterMetrics:
    def __init__(self, models: list[str]):
        self.buffer = MetricBuffer()
        self.predictions = Counter("predictions_total", "Model answers, one per row and model",
                                   tag_keys=("model", "version", "variant", "status", "class"))
        self.latency = Histogram("prediction_latency_seconds", "Router-side latency of a prediction request",
                                 boundaries=LATENCY_BUCKETS, tag_keys=("model", "version"))
        self.breaker = Gauge("circuit_breaker_state", "0 closed, 1 half-open, 2 open", tag_keys=("model",))
        self.shadow_dropped = Counter("shadow_dropped_total", "Shadow copies dropped because the queue was full",
                                      tag_keys=("model",))
        self.requests = Counter("http_requests_total", "Requests by route and status code",
                                tag_keys=("route", "code"))
        self.cache_hits = Counter("prediction_cache_hits_total", "Rows answered from the prediction cache",
                                  tag_keys=("model",))
        self.cache_misses = Counter("prediction_cache_misses_total", "Rows the prediction cache did not hold",
                                    tag_keys=("model",))
        self.redis_bypassed = Gauge("redis_breaker_open", "1 while Redis is bypassed: no shared cache, "
                                    "per-replica rate limits")
        self.redis_errors = Counter("redis_errors_total", "Failed or timed-out Redis round trips",
                                    tag_keys=("operation",))
        self.registry_up = Gauge("registry_reachable", "1 while this router's probe of the model registry's "
                                 "store (local or S3) succeeds, 0 while it fails")
        self.feedback = Counter("feedback_total", "Feedback items by outcome (joined, relabelled, unknown_request_id, "
                                "expired, bad_label, ...)", tag_keys=("outcome",))
        self.buffer.set(self.redis_bypassed, 0, {})
        for outcome in ("joined", "relabelled", "unchanged", "unknown_request_id", "expired", "unknown_koi",
                        "bad_label", "invalid"):
            zero_counter(self.feedback, {"outcome": outcome})
        for operation in REDIS_OPERATIONS:
            zero_counter(self.redis_errors, {"operation": operation})
        for model in models:
            self.buffer.set(self.breaker, 0, {"model": model})
            for counter in (self.shadow_dropped, self.cache_hits, self.cache_misses):
                zero_counter(counter, {"model": model})

    def cache_lookups(self, model: str, hits: int, misses: int) -> None:
        self.buffer.inc(self.cache_hits, hits, {"model": model})
        self.buffer.inc(self.cache_misses, misses, {"model": model})

    def redis_state(self, bypassed: bool) -> None:
        self.buffer.set(self.redis_bypassed, int(bypassed), {})

    def registry_reachable(self, reachable: bool) -> None:
        self.buffer.set(self.registry_up, int(reachable), {})

    def feedback_outcomes(self, outcomes: list[str]) -> None:
        for outcome, count in Tally(outcomes).items():
            self.buffer.inc(self.feedback, count, {"outcome": outcome})

    def redis_error(self, operation: str) -> None:
        self.buffer.inc(self.redis_errors, 1, {"operation": operation})

    def zero_model(self, model: str, version: str) -> None:
        for label in LABELS:
            for status in ("ok", "error"):
                zero_counter(self.predictions, {"model": model, "version": version, "variant": "primary",
                                                "status": status, "class": label if status == "ok" else "none"})

    def answered(self, model: str, version: str, predicted: list[str], variant: str = "primary") -> None:
        for label, count in Tally(predicted).items():
            self.buffer.inc(self.predictions, count, {"model": model, "version": version, "variant": variant,
                                                      "status": "ok", "class": label})

    def failed(self, model: str, version: str, rows: int, variant: str = "primary") -> None:
        self.buffer.inc(self.predictions, rows, {"model": model, "version": version, "variant": variant,
                                                 "status": "error", "class": "none"})

    def observe_latency(self, model: str, version: str, seconds: float) -> None:
        self.latency.observe(seconds, tags={"model": model, "version": version})

    def breaker_state(self, model: str, state: str) -> None:
        self.buffer.set(self.breaker, BREAKER_STATES[state], {"model": model})

    def dropped_shadow(self, model: str) -> None:
        self.shadow_dropped.inc(tags={"model": model})

    def request(self, route: str, code: int) -> None:
        self.buffer.inc(self.requests, 1, {"route": route, "code": str(code)})


class ControllerMetrics:
    def __init__(self, models: list[str]):
        self.buffer = MetricBuffer()
        self.rollbacks = Counter("rollbacks_total", "Automatic or manual experiment rollbacks",
                                 tag_keys=("model", "reason"))
        for model in models:
            zero_counter(self.rollbacks, {"model": model, "reason": "none"})
        self.quality = {
            "labelled": Gauge("variant_labels", "Labelled (row, version) units of an experiment variant", tag_keys=("model", "variant")),
            "accuracy": Gauge("variant_accuracy", "Accuracy of an experiment variant on resolved labels", tag_keys=("model", "variant")),
            "log_loss": Gauge("variant_log_loss", "Log-loss of an experiment variant on resolved labels", tag_keys=("model", "variant")),
            "ece": Gauge("variant_ece", "Expected calibration error (10 bins) of an experiment variant",
                         tag_keys=("model", "variant"))}

    def rolled_back(self, model: str, reason: str) -> None:
        self.rollbacks.inc(tags={"model": model, "reason": reason})

    def variant_quality(self, model: str, variant: str, summary: dict) -> None:
        for name, gauge in self.quality.items():
            if summary.get(name) is not None:
                self.buffer.set(gauge, float(summary[name]), {"model": model, "variant": variant})


class ModelMetrics:
    def __init__(self, model: str):
        self.model = model
        self.buffer = MetricBuffer()
        self.load_time = Gauge("model_load_time_seconds", "Time to pull, verify, load and warm a version",
                               tag_keys=("model", "version"))
        self.active = Gauge("active_models_count", "Versions loaded in this replica", tag_keys=("model",))
        self.hits = Counter("cache_hits_total", "Requests served by an already loaded version", tag_keys=("model",))
        self.misses = Counter("cache_misses_total", "Requests that had to load their version", tag_keys=("model",))
        zero_counter(self.hits, {"model": model})
        zero_counter(self.misses, {"model": model})

    def loaded(self, version: str, seconds: float, active: int) -> None:
        self.buffer.set(self.load_time, seconds, {"model": self.model, "version": version})
        self.buffer.set(self.active, active, {"model": self.model})

    def cache(self, hit: bool) -> None:
        self.buffer.inc(self.hits if hit else self.misses, 1, {"model": self.model})
