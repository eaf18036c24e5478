"""The fitted ensemble record and the one combination rule. Serving and offline evaluation both
call `combine`, so a served answer reproduces the offline one. Ray-free; NumPy, SciPy, pydantic."""
from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import softmax

from runtimes.schema import N_CLASSES

NAME = "ensemble"  # the registry model whose version V holds version V's record
RECORD_FILE = "ensemble.json"
EPSILON = 1e-12  # probabilities are clipped here before the log: a hard 0 would be -inf logits
WEIGHT_TOLERANCE = 1e-6
MAX_TEMPERATURE = 100.0


class EnsembleRecord(BaseModel):
    """Which members vote, each member's temperature and weight, and how they were fitted."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    members: list[str] = Field(min_length=1)
    weights: dict[str, float]  # every member, >= 0, summing to 1
    temperatures: dict[str, float]  # every member, in (0, MAX_TEMPERATURE]
    method: str
    fitted_on: dict = Field(default_factory=dict)
    excluded: dict[str, str] = Field(default_factory=dict)  # member -> why it has no weight

    @model_validator(mode="after")
    def _check(self) -> EnsembleRecord:
        members = set(self.members)
        if len(members) != len(self.members):
            raise ValueError("members: duplicate names")
        if set(self.weights) != members:
            raise ValueError(f"weights: exactly one per member; unknown {sorted(set(self.weights) - members)}, "
                             f"missing {sorted(members - set(self.weights))}")
        if any(not np.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ValueError("weights: finite and non-negative")
        if abs(sum(self.weights.values()) - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"weights: must sum to 1, not {sum(self.weights.values())!r}")
        if set(self.temperatures) != members:
            raise ValueError("temperatures: exactly one per member")
        if any(not 0 < t <= MAX_TEMPERATURE for t in self.temperatures.values()):
            raise ValueError(f"temperatures: in (0, {MAX_TEMPERATURE:g}]")
        weighted = [m for m in self.excluded if self.weights.get(m, 0.0) > 0]
        if weighted:
            raise ValueError(f"excluded: {weighted} carry a positive weight")
        return self

    def to_json(self) -> bytes:
        """Deterministic bytes: sorted keys, fixed separators, so equal records hash equally."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2,
                          separators=(",", ": "), allow_nan=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> EnsembleRecord:
        return cls.model_validate_json(data)


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of probabilities: softmax(log(p) / T) per row (T > 1 softens)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature!r}")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0))
    return softmax(logits / temperature, axis=1)


def combine(record: EnsembleRecord, member_probabilities: dict[str, np.ndarray]) -> np.ndarray:
    """The weighted average of the calibrated members that answered, weights renormalized over them,
    so an ensemble missing a member still returns rows summing to 1."""
    present = [m for m in record.members if m in member_probabilities and record.weights[m] > 0]
    if not present:
        raise ValueError(f"no weighted member answered: have {sorted(member_probabilities)}, "
                         f"weighted {[m for m in record.members if record.weights[m] > 0]}")
    shapes = {np.shape(member_probabilities[m]) for m in present}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != N_CLASSES:
        raise ValueError(f"member probabilities must share one [rows, {N_CLASSES}] shape, got {sorted(shapes)}")
    total = sum(record.weights[m] for m in present)
    return sum((record.weights[m] / total) * calibrate(member_probabilities[m], record.temperatures[m])
               for m in present)
