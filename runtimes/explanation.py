"""What a runtime's `explain` answers: per-row, per-class, per-feature attributions and exactly
what they add up to. Ray-free and framework-free: training, tests and serving share it.

For every row r and class c: base_value[r, c] + values[r, c, :].sum() = output[r, c] - delta[r, c],
where `output` is in `output_space` ("margin" for XGBoost's TreeSHAP, "probability" for the forest's
TreeSHAP and the CNN's integrated gradients). `delta` is the method's completeness error (rounding
for TreeSHAP, the integral's discretisation for integrated gradients); values are never rescaled
to hide it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Explanation:
    method: str  # "tree_shap" or "integrated_gradients"
    output_space: str  # "margin" or "probability"
    features: tuple[str, ...]  # the order of the last axis of `values` and of `inputs`
    values: np.ndarray  # [n, classes, features], float64
    base_value: np.ndarray  # [n, classes]: the expected output (TreeSHAP) or F(baseline) (IG)
    output: np.ndarray  # [n, classes]: the model's output the attributions explain, in output_space
    probabilities: np.ndarray  # [n, classes]
    inputs: np.ndarray  # [n, features]: the raw feature values as given (NaN = missing)
    details: dict = field(default_factory=dict)  # method settings worth reporting (steps, baseline)

    @property
    def delta(self) -> np.ndarray:
        """output - (base_value + sum of values): what the attributions leave unexplained."""
        return self.output - self.base_value - self.values.sum(axis=2)

    def __len__(self) -> int:
        return len(self.values)

    def rows(self, start: int, stop: int) -> "Explanation":
        """Rows [start, stop): one request's share of a batch."""
        return Explanation(self.method, self.output_space, self.features, self.values[start:stop],
                           self.base_value[start:stop], self.output[start:stop], self.probabilities[start:stop],
                           self.inputs[start:stop], self.details)

    @classmethod
    def concatenate(cls, parts: list["Explanation"]) -> "Explanation":
        first = parts[0]
        return cls(first.method, first.output_space, first.features,
                   *(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("values", "base_value", "output", "probabilities", "inputs")), first.details)
