"""The prediction cache: the dispatcher's stage between variant assignment and batching.

A row's key is (model, concrete version, the row as that version's input schema orders it, in
float64 with every NaN made the same NaN and -0.0 made 0.0). Versions are immutable, so an entry
is never stale: an alias that moves changes the version in the key. Entries are float64 probabilities, so a hit
returns exactly the bits that were computed. Ensembles are cached by member only: the vote is
recomputed from cached members, so a changed weight or calibration can never serve an old mix.
Ray-free: in memory per router replica by default, or in Redis shared by every replica."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Awaitable, Callable, Protocol

import numpy as np

from runtimes.schema import LABELS

from .quality import canonical_rows
from .redis_link import RedisLink

ENTRY_OVERHEAD = 160  # bytes an in-memory entry costs beyond its key and value (dict slot, objects)
ROW_BYTES = 8 * len(LABELS)


class CacheObserver(Protocol):
    def cache_lookups(self, model: str, hits: int, misses: int) -> None: ...


def row_keys(model: str, version: str, matrix: np.ndarray) -> list[bytes]:
    rows = canonical_rows(matrix)
    prefix = f"kepler:prediction:{model}:{version}:".encode()
    return [prefix + hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest().encode() for row in rows]


def decode(value: bytes | None) -> np.ndarray | None:
    """A stored row, or None for a missing or unusable entry (wrong size, not probabilities)."""
    if value is None or len(value) != ROW_BYTES:
        return None
    row = np.frombuffer(value, dtype=np.float64)
    return row if np.isfinite(row).all() and abs(row.sum() - 1) < 1e-6 else None


class MemoryStore:
    """An LRU bounded by entries and by bytes; one per router replica."""

    backend = "memory"

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.bytes = 0

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        found = []
        for key in keys:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
            found.append(value)
        return found

    async def set_many(self, items: dict[bytes, bytes]) -> None:
        for key, value in items.items():
            old = self.entries.pop(key, None)
            if old is not None:
                self.bytes -= len(key) + len(old) + ENTRY_OVERHEAD
            self.entries[key] = value
            self.bytes += len(key) + len(value) + ENTRY_OVERHEAD
        while self.entries and (len(self.entries) > self.max_entries or self.bytes > self.max_bytes):
            key, value = self.entries.popitem(last=False)
            self.bytes -= len(key) + len(value) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self.entries)


class RedisStore:
    """Shared by every router replica: one MGET per batch, one pipeline of SETs with a TTL to
    fill it. A bypassed or failing Redis reads as all misses and drops the fill."""

    backend = "redis"

    def __init__(self, link: RedisLink, ttl_s: float):
        self.link, self.ttl_ms = link, max(1, int(ttl_s * 1000))

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return await self.link.call("cache_get", lambda: self.link.client.mget(keys), [None] * len(keys))

    async def set_many(self, items: dict[bytes, bytes]) -> None:
        async def fill():
            async with self.link.client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, px=self.ttl_ms)
                await pipe.execute()
        await self.link.call("cache_set", fill, None)


class PredictionCache:
    def __init__(self, store: MemoryStore | RedisStore, observer: CacheObserver | None = None):
        self.store, self.observer = store, observer

    @property
    def backend(self) -> str:
        return self.store.backend

    async def answer(self, model: str, version: str, matrix: np.ndarray,
                     compute: Callable[[np.ndarray], Awaitable[np.ndarray]]) -> tuple[np.ndarray, list[int]]:
        """Every row's probabilities (float64), the cached ones looked up and the rest computed in
        one call and stored; and which rows were computed (none: all came from the cache)."""
        keys = row_keys(model, version, matrix)
        stored = [decode(value) for value in await self.store.get_many(keys)]
        missing = [i for i, row in enumerate(stored) if row is None]
        if self.observer is not None:
            self.observer.cache_lookups(model, len(keys) - len(missing), len(missing))
        if not missing:
            return np.stack(stored), []
        computed = np.asarray(await compute(matrix if len(missing) == len(keys) else matrix[missing]),
                              dtype=np.float64)
        answer = np.empty((len(keys), computed.shape[1]), dtype=np.float64)
        for i, row in enumerate(stored):
            if row is not None:
                answer[i] = row
        answer[missing] = computed
        await self.store.set_many({keys[i]: computed[j].tobytes() for j, i in enumerate(missing)})
        return answer, missing
