"""Soft voting over the members that answered. Ray-free."""
from __future__ import annotations

import numpy as np


def soft_vote(answers: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    total = sum(weights.get(name, 0.0) for name in answers)
    if total <= 0:
        raise ValueError("no member with a positive weight answered")
    return sum(weights.get(name, 0.0) * probabilities for name, probabilities in answers.items()) / total
