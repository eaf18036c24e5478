"""The prediction cache and the shared rate limits without Ray: keys, the bounded in-memory LRU,
the dispatcher's cache stage (hits, a moved alias, shadows, honest experiment statistics), and the
Redis side against a real redis-server: one round trip per batch, TTL and memory limit, exact
limits across two routers' limiters, and a killed or stopped Redis bypassed and recovered."""
from __future__ import annotations

import asyncio
import logging
import struct
import time

import numpy as np
import pytest

from serve_app.cache_setup import CacheSetup
from serve_app.config import CacheSettings, RollbackSettings
from serve_app.dispatcher import RequestContext
from serve_app.prediction_cache import MemoryStore, PredictionCache, RedisStore, row_keys
from serve_app.rate_limits import SharedLimits
from serve_app.redis_link import PASSWORD_ENV, RedisLink
from serve_app.rollback import tripped
from serve_app.variant_stats import Bucket, summarize

from .conftest import free_port
from .redis_server import PASSWORD, RedisServer
from .test_dispatcher import _book, make, run

ROW = np.linspace(0.5, 3.5, 36)


def rows(n: int, start: int = 0) -> np.ndarray:
    return np.stack([ROW + i for i in range(start, start + n)]).astype(np.float32)


def run_cached(dispatcher, **cache):
    dispatcher.cache = PredictionCache(MemoryStore(**{"max_entries": 1000, "max_bytes": 10**6, **cache}))
    return dispatcher


# ---- keys and the in-memory store ------------------------------------------------------------------
def test_keys_name_model_version_and_the_row_with_one_nan():
    quiet_nan = np.frombuffer(struct.pack("<Q", 0x7FF8000000000001), dtype=np.float64)[0]
    a, b = ROW.copy(), ROW.copy()
    a[3], b[3] = np.nan, -quiet_nan  # two NaN bit patterns: one key
    assert row_keys("xgboost", "1.0.0", a[None]) == row_keys("xgboost", "1.0.0", b[None])
    assert row_keys("xgboost", "1.0.0", ROW[None].astype(np.float32)) == row_keys(
        "xgboost", "1.0.0", ROW.astype(np.float32).astype(np.float64)[None])
    others = [row_keys("xgboost", "1.1.0", ROW[None]), row_keys("random_forest", "1.0.0", ROW[None]),
              row_keys("xgboost", "1.0.0", ROW[::-1][None]), row_keys("xgboost", "1.0.0", (ROW + 1e-12)[None])]
    assert len({k[0] for k in others + [row_keys("xgboost", "1.0.0", ROW[None])]}) == 5


def test_the_memory_store_is_an_lru_bounded_by_entries_and_bytes():
    store = MemoryStore(max_entries=3, max_bytes=10**6)
    run(store.set_many({b"a": b"1", b"b": b"2", b"c": b"3"}))
    run(store.get_many([b"a"]))  # a is now the most recent
    run(store.set_many({b"d": b"4"}))
    assert run(store.get_many([b"a", b"b", b"c", b"d"])) == [b"1", None, b"3", b"4"]
    small = MemoryStore(max_entries=1000, max_bytes=2000)
    run(small.set_many({f"k{i}".encode(): bytes(24) for i in range(100)}))
    assert small.bytes <= 2000 and 0 < len(small) < 100
    assert small.bytes == sum(len(k) + len(v) + 160 for k, v in small.entries.items())


def test_a_batch_computes_only_its_missing_rows_and_a_hit_returns_the_stored_bits():
    computed = []

    async def compute(matrix):
        computed.append(matrix.copy())
        return np.tile(np.float32([0.1, 0.2, 0.7]), (len(matrix), 1))

    cache = PredictionCache(MemoryStore(100, 10**6))
    first, fresh = run(cache.answer("xgboost", "1.0.0", rows(2), compute))
    second, fresh_again = run(cache.answer("xgboost", "1.0.0", rows(3), compute))
    assert fresh == [0, 1] and fresh_again == [2]
    assert np.array_equal(computed[1], rows(3)[2:])  # only the new row reached the model
    assert second.dtype == np.float64 and np.array_equal(second[:2], first)  # bit for bit
    key = row_keys("xgboost", "1.0.0", rows(1))[0]
    cache.store.entries[key] = b"not probabilities"  # an unusable entry is a miss, recomputed
    assert run(cache.answer("xgboost", "1.0.0", rows(1), compute))[1] == [0]


# ---- the dispatcher's cache stage ----------------------------------------------------------------
def test_repeated_rows_are_answered_from_the_cache_and_an_alias_move_changes_the_key():
    dispatcher, registry, models, _ = make(alias_cache_s=0)
    run_cached(dispatcher)
    first = run(dispatcher.predict("xgboost", None, rows(2), RequestContext("a")))
    again = run(dispatcher.predict("xgboost", None, rows(2), RequestContext("b")))
    assert len(models.calls) == 1 and np.array_equal(first.probabilities, again.probabilities)
    registry.aliases[("xgboost", "stable")] = "1.1.0"  # stable moves: new version, new keys
    moved = run(dispatcher.predict("xgboost", None, rows(2), RequestContext("c")))
    assert moved.version == "1.1.0" and models.calls[-1] == ("xgboost", "1.1.0", 2)


def test_shadow_copies_are_never_cached():
    dispatcher, _, models, _ = make(experiments={"xgboost": {"shadow": "latest"}})
    run_cached(dispatcher)
    book = _book(0.0)
    book["experiments"]["xgboost"].update(state="running", candidate=None, candidate_version=None,
                                          shadow="latest", shadow_version="1.1.0", shadow_ready=True)
    dispatcher.traffic.adopt(book)

    async def twice():
        for count, request in enumerate(("a", "b"), 1):
            await dispatcher.predict("xgboost", None, rows(1), RequestContext(request))
            deadline = time.monotonic() + 10
            while len([c for c in models.calls if c[0] == "xgboost_shadow"]) < count:
                assert time.monotonic() < deadline, "no shadow copy was sent"
                await asyncio.sleep(0.01)
    run(twice())
    shadow_calls = [c for c in models.calls if c[0] == "xgboost_shadow"]
    assert len(shadow_calls) == 2 and [c for c in models.calls if c[0] == "xgboost"] == [("xgboost", "1.0.0", 1)]


def test_a_failing_candidate_still_trips_its_error_rate_when_half_its_traffic_hits_the_cache():
    """8% of the candidate's computed answers fail (trigger: 5%). Every row that succeeded is asked
    again and hits the cache; counted, those hits would dilute the rate to about 4%."""
    dispatcher, _, models, _ = make(experiments={"xgboost": {"candidate": "latest", "weight": 1.0}})
    run_cached(dispatcher)
    dispatcher.traffic.adopt(_book(1.0))
    failing = set(range(0, 100, 12))  # 9 of 100 rows
    for i in range(100):
        models.cue["xgboost_candidate"] = ["fail"] if i in failing else []
        run(dispatcher.predict("xgboost", None, rows(1, i), RequestContext(f"r{i}")))
    for i in sorted(set(range(100)) - failing):
        answer = run(dispatcher.predict("xgboost", None, rows(1, i), RequestContext(f"again{i}")))
        assert answer.variant == "candidate"
    candidate = [c for c in models.calls if c[0] == "xgboost_candidate"]
    assert len(candidate) == 100  # the repeats were hits
    buckets = {}
    for _, variant, _, _, bucket in dispatcher.traffic.recorder.drain():
        buckets.setdefault(variant, []).append(Bucket.from_dict(bucket))
    summary = summarize(buckets["candidate"])
    assert (summary.requests, summary.errors) == (100, 9)
    stable = summarize(buckets.get("stable", [Bucket()]))
    assert tripped(summary, stable, RollbackSettings(min_samples=50, max_error_rate=0.05)) is not None


# ---- Redis: a real server --------------------------------------------------------------------------
@pytest.fixture
def redis_env(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def settings_for(server: RedisServer, **changes) -> CacheSettings:
    return CacheSettings(redis_url=server.url, **{"redis_timeout_s": 0.5, **changes})


def commands(server: RedisServer, name: str) -> int:
    return int(server.client().info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def test_a_batch_is_one_mget_and_one_pipeline_with_a_ttl(redis_server, redis_env):
    async def scenario():
        link = RedisLink(settings_for(redis_server))
        cache = PredictionCache(RedisStore(link, ttl_s=60))
        before = commands(redis_server, "mget")

        async def compute(matrix):
            return np.tile([0.25, 0.25, 0.5], (len(matrix), 1))
        _, fresh = await cache.answer("xgboost", "9.9.1", rows(50), compute)
        answer, fresh_again = await cache.answer("xgboost", "9.9.1", rows(50), compute)
        await link.close()
        return before, fresh, fresh_again, answer
    before, fresh, fresh_again, answer = asyncio.run(scenario())
    assert len(fresh) == 50 and fresh_again == [] and np.allclose(answer, [0.25, 0.25, 0.5])
    assert commands(redis_server, "mget") - before == 2
    key = row_keys("xgboost", "9.9.1", rows(1))[0]
    assert 55_000 < redis_server.client().pttl(key) <= 60_000


def test_entries_expire_and_redis_keeps_to_its_memory_limit(redis_server, redis_env):
    async def scenario():
        link = RedisLink(settings_for(redis_server))
        short = RedisStore(link, ttl_s=0.3)
        await short.set_many({b"kepler:prediction:test:expiring": np.float64([0.2, 0.3, 0.5]).tobytes()})
        assert await short.get_many([b"kepler:prediction:test:expiring"]) != [None]
        deadline = time.monotonic() + 10
        while await short.get_many([b"kepler:prediction:test:expiring"]) != [None]:
            assert time.monotonic() < deadline, "the entry outlived its TTL"
            await asyncio.sleep(0.05)
        store = RedisStore(link, ttl_s=600)
        value = bytes(2048)
        for batch in range(30):  # 30 MB of entries: more than the server's 16 MB
            await store.set_many({f"kepler:prediction:fill:{batch}:{i}".encode(): value for i in range(500)})
        await link.close()
    asyncio.run(scenario())
    info = redis_server.client().info()
    limit = redis_server.client().config_get("maxmemory")["maxmemory"]
    assert int(info["used_memory"]) <= int(limit) * 1.05 and int(info["evicted_keys"]) > 0
    redis_server.client().flushall()


def test_two_routers_limiters_together_admit_exactly_the_limit(redis_server, redis_env):
    async def scenario():
        links = [RedisLink(settings_for(redis_server)) for _ in range(2)]
        limiters = [SharedLimits(link) for link in links]
        waits = [await limiters[i % 2].take("portal", 20) for i in range(30)]
        costly = await limiters[0].take("explainer", 20, cost=15)
        over = await limiters[1].take("explainer", 20, cost=6)
        for link in links:
            await link.close()
        return waits, costly, over
    waits, costly, over = asyncio.run(scenario())
    assert waits[:20] == [0.0] * 20 and all(w >= 1 for w in waits[20:])
    assert costly == 0.0 and over >= 1  # 15 + 6 > 20 in one window


def test_a_killed_or_stopped_redis_is_bypassed_quickly_logged_once_and_recovers(tmp_path, redis_env, caplog):
    server = RedisServer(tmp_path, free_port()).start()
    states = []

    class Observer:
        def redis_state(self, bypassed):
            states.append(bypassed)

        def redis_error(self, operation):
            pass

        def cache_lookups(self, model, hits, misses):
            pass

    async def scenario():
        setup = CacheSetup(Observer())
        setup.configure(settings_for(server, redis_timeout_s=0.2, redis_failures=3, redis_cooldown_s=0.5))
        cache, limits = setup.cache, setup.limits

        async def compute(matrix):
            return np.tile([0.6, 0.3, 0.1], (len(matrix), 1))
        assert (await cache.answer("xgboost", "1.0.0", rows(1), compute))[1] == [0]
        for fault in (server.pause, server.kill):
            fault()
            started = time.monotonic()
            for _ in range(20):  # every answer still comes, computed; limits say "ask locally"
                answer, fresh = await cache.answer("xgboost", "1.0.0", rows(1), compute)
                assert fresh == [0] and np.allclose(answer[0], [0.6, 0.3, 0.1])
                assert await limits.take("client", 100) is None
            assert time.monotonic() - started < 3 * 2 * 0.2 * 2 + 2  # three timeouts, then bypassed
            assert setup.describe()["redis"] == "bypassed"
            server.ensure_running()
            deadline = time.monotonic() + 10
            while setup.describe()["redis"] != "up":
                assert time.monotonic() < deadline, "Redis was not taken back"
                await asyncio.sleep(0.1)
                await cache.answer("xgboost", "1.0.0", rows(1), compute)
            assert (await cache.answer("xgboost", "1.0.0", rows(1, 7), compute))[1] == [0]
            assert (await cache.answer("xgboost", "1.0.0", rows(1, 7), compute))[1] == []  # shared again
            assert await limits.take("client", 100) == 0.0
        await setup.link.close()

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        asyncio.run(scenario())
    server.stop()
    assert states == [True, False, True, False]
    lines = [r.getMessage() for r in caplog.records if "Redis at" in r.getMessage()]
    assert len(lines) == 4 and "bypassed" in lines[0] and "answers again" in lines[1]


def test_reconfiguring_keeps_the_cache_and_the_redis_pool_unless_they_change(redis_server, redis_env):
    setup = CacheSetup()
    setup.configure(CacheSettings())
    memory = setup.cache
    setup.configure(CacheSettings())
    assert setup.cache is memory and setup.limits is None and setup.describe()["backend"] == "memory"
    setup.configure(settings_for(redis_server))
    link = setup.link
    setup.configure(settings_for(redis_server, ttl_s=10))  # same Redis: same pool and breaker
    assert setup.link is link and setup.describe() == {"backend": "redis", "redis": "up"}
    setup.configure(CacheSettings(enabled=False))
    assert setup.cache is None and setup.link is None and setup.describe()["backend"] == "off"


def test_a_password_in_the_redis_url_is_refused():
    with pytest.raises(ValueError, match="KEPLER_REDIS_PASSWORD"):
        CacheSettings(redis_url="redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="redis_url"):
        CacheSettings(redis_url="http://127.0.0.1:6379")
