"""Soft voting over the members that answered, and the fitted ensemble records. Ray-free."""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from registry import NotFound
from runtimes.ensemble import NAME, RECORD_FILE, EnsembleRecord

from .errors import ServingError

logger = logging.getLogger("ray.serve")


def soft_vote(answers: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    total = sum(weights.get(name, 0.0) for name in answers)
    if total <= 0:
        raise ValueError("no member with a positive weight answered")
    return sum(weights.get(name, 0.0) * probabilities for name, probabilities in answers.items()) / total


class EnsembleRecords:
    """The fitted ensemble of a version: the registry's model `ensemble` at that version holds its
    record (weights and temperatures, checksummed with the version). Versions without one (1.x)
    vote with the configured weights. Records are immutable, so each is read once; a version
    found to have none is asked again after `ttl_s`, and at most 64 such answers are kept."""

    def __init__(self, registry, aliases, default_ref: str = "stable", clock=time.monotonic):
        self.registry, self.aliases, self.default_ref, self.clock = registry, aliases, default_ref, clock
        self._records: dict[str, EnsembleRecord] = {}
        self._absent: dict[str, float] = {}

    async def find(self, ref: str | None) -> EnsembleRecord | None:
        try:
            version = await self.aliases.resolve(NAME, ref or self.default_ref)
        except ServingError:  # no ensemble under that name or alias, or the registry is down
            return None
        if version in self._records:
            return self._records[version]
        checked = self._absent.get(version)
        if checked is not None and self.clock() - checked < self.aliases.ttl_s:
            return None
        try:
            data = await asyncio.to_thread(self.registry.read_file, NAME, version, RECORD_FILE)
            record = EnsembleRecord.from_json(data)
        except Exception as e:  # noqa: BLE001 - absent, unreadable or corrupt: the configured weights vote
            if not isinstance(e, NotFound):
                logger.warning("ensemble %s: record unusable, voting with the configured weights: %s", version, e)
            if len(self._absent) >= 64:
                del self._absent[next(iter(self._absent))]
            self._absent[version] = self.clock()
            return None
        self._records[version] = record
        return record
