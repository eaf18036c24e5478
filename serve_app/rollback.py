"""The automatic rollback triggers, as pure functions of two variants' window summaries: counts
after the per-principal cap, latency per computed row (variant_stats.py). Ray-free."""
from __future__ import annotations

import math

from .config import RollbackSettings
from .variant_stats import Summary


def kl_divergence(p_counts: list[int], q_counts: list[int], smoothing: float = 1.0) -> float:
    """KL(P || Q) in nats of two class-count vectors, each count smoothed by `smoothing`."""
    p = [c + smoothing for c in p_counts]
    q = [c + smoothing for c in q_counts]
    p_total, q_total = sum(p), sum(q)
    return sum((pi / p_total) * math.log((pi / p_total) / (qi / q_total)) for pi, qi in zip(p, q))


def tripped(candidate: Summary, stable: Summary, rules: RollbackSettings) -> str | None:
    """Why the candidate must be rolled back over this window, or None while every trigger is quiet."""
    enough = rules.min_samples
    if candidate.requests >= enough and candidate.error_rate > rules.max_error_rate:
        return (f"error rate {candidate.error_rate:.1%} > {rules.max_error_rate:.1%} "
                f"({candidate.errors:.0f} of {candidate.requests:.0f} requests)")
    answered = candidate.requests - candidate.errors
    if answered < enough or stable.requests - stable.errors < enough:
        return None
    if candidate.p95_ms and stable.p95_ms and candidate.p95_ms > rules.max_latency_ratio * stable.p95_ms:
        return (f"p95 latency per row {candidate.p95_ms:.1f} ms > {rules.max_latency_ratio:g}x the stable "
                f"variant's {stable.p95_ms:.1f} ms")
    drift = kl_divergence(candidate.classes, stable.classes)
    if drift > rules.max_drift_kl:
        return f"prediction drift KL(candidate || stable) {drift:.3f} > {rules.max_drift_kl:g}"
    return None


def has_evidence(candidate: Summary, stable: Summary, rules: RollbackSettings) -> bool:
    """Enough samples in both variants for a quiet window to count as a passed rollout step."""
    return candidate.requests >= rules.min_samples and stable.requests >= rules.min_samples
