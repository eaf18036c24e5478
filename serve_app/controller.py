"""The experiment controller: a single-replica deployment, the one authority over run-time
experiment decisions. Routers call `sync` every second or so, outside their request paths: they
hand over their configured experiments and the statistics gathered since the last call, and get
back the newest book. Each tick the controller loads new variants, health-checks candidates,
evaluates the rollback triggers over the merged statistics, steps rollouts, and persists every
decision to the registry with a generation number, so a restarted controller carries on.

It is also the desk for delayed ground truth (serve_app/feedback_desk.py): routers hand it their
answered rows with each sync, feedback batches are joined and persisted here, and each tick the
accuracy trigger and the bandit policy read the labelled figures."""
from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from registry import RegistryError

from .aliases import AliasResolver
from .bandit import ThompsonPolicy
from .config import ExperimentSettings, FeedbackSettings, RegistrySettings, RouterSettings
from .errors import ServingError
from .experiments import TERMINAL, Book, Decisions, Record, experiments_view, router_snapshot
from .feedback_desk import FeedbackDesk
from .metrics import ControllerMetrics
from .sequential import AccuracyMonitor
from .traffic import assignment_secret
from .variant_stats import Window

logger = logging.getLogger("ray.serve")
DOCUMENT = ("experiments", "book")
LOAD_TIMEOUT_S = 180.0
PERSIST_PERIOD_S = 1.0  # the prediction record loses at most about this much on a crash


class ExperimentController:
    def __init__(self, pools: dict[str, DeploymentHandle], models: list[str], registry: dict,
                 feedback: dict | None = None):
        self.pools = pools  # "<model>_candidate" / "<model>_shadow" -> handle
        self.registry = RegistrySettings(**registry).config().open()
        self.aliases = AliasResolver(self.registry, RouterSettings().alias_cache_s)
        self.window = Window()
        # Keys sticky assignment on every router alike; kept out of the persisted book and the views.
        self.assignment_secret = assignment_secret()
        self.book, self.etag = self._load_book()
        self.decisions = Decisions(self.book, self.window)
        self.specs: dict[str, tuple[ExperimentSettings, float]] = {}  # model -> (spec, last seen)
        self.metrics = ControllerMetrics(models)
        self.dirty = False
        self._loading: set[str] = set()
        self._health_due: dict[str, float] = {}
        self._ticker: asyncio.Task | None = None
        self.desk = FeedbackDesk(self.registry.store, FeedbackSettings(**(feedback or {})))
        try:
            logger.info("feedback restored: %s", self.desk.restore())
        except Exception as e:  # noqa: BLE001 - serve experiments; the figures fill again with new labels
            logger.warning("feedback and prediction records unreadable, starting without them: %s", type(e).__name__)
        # One batch at a time, so labels count in the order they are stored; syncs never wait on it.
        self.feedback_lock = asyncio.Lock()
        self.stable_versions: dict[str, str] = {}  # model -> its stable variant's version, as routers resolve it
        self.monitors: dict[str, AccuracyMonitor] = {}
        self.policies: dict[str, ThompsonPolicy] = {}
        self._persisted_at = 0.0

    def _load_book(self) -> tuple[Book, str | None]:
        try:
            document, etag = self.registry.read_document(*DOCUMENT)
        except RegistryError as e:  # start empty; the next successful write wins
            logger.warning("experiment book unreadable, starting empty: %s", e)
            return Book(), None
        return (Book(**document), etag) if document else (Book(), None)

    # ---- the routers' side ------------------------------------------------------------------
    async def sync(self, specs: dict[str, dict], drained: list, answered: list = (),
                   stable_versions: dict[str, str] | None = None) -> dict:
        """Take a router's configured experiments, statistics and answered rows; give back the book."""
        self._ensure_ticking()
        self.window.merge(drained)
        self.stable_versions.update(stable_versions or {})
        self.desk.record(answered)
        now = time.time()
        for model, spec in specs.items():
            self.specs[model] = (ExperimentSettings(**spec), now)
        return self.snapshot()

    def snapshot(self) -> dict:
        return router_snapshot(self.book, self.assignment_secret)

    def _ensure_ticking(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def check_health(self) -> None:
        self._ensure_ticking()

    # ---- the loop ---------------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the authority
                logger.exception("experiment controller tick failed")
            await asyncio.sleep(0.5)

    async def _tick(self) -> None:
        now = time.time()
        for model, (spec, seen) in list(self.specs.items()):
            if now - seen > 15:  # no router configures it any more
                del self.specs[model]
                if self.book.current.pop(model, None) is not None:
                    self.book.generation += 1
                    self.dirty = True
                continue
            await self._reconcile(model, spec)
        for model, record in list(self.book.current.items()):
            spec = self.specs.get(model, (None,))[0]
            if spec is None or record.state != "running":
                continue
            await self._health_check(record, spec)
            self._decide(record, spec)
        if self.dirty:
            await self._persist()
        if time.time() - self._persisted_at >= PERSIST_PERIOD_S:
            self._persisted_at = time.time()
            await self._persist_predictions()
            self._publish_stable_quality()

    async def _reconcile(self, model: str, spec: ExperimentSettings) -> None:
        try:  # through the alias cache: ticks come twice a second, a moved alias is seen within 5 s
            candidate = await self.aliases.resolve(model, spec.candidate) if spec.candidate else None
            shadow = await self.aliases.resolve(model, spec.shadow) if spec.shadow else None
        except ServingError as e:
            logger.warning("cannot resolve the %s experiment's versions: %s", model, e)
            return
        generation = self.book.generation
        needs_loading = self.decisions.adopt(model, spec, candidate, shadow)
        self.dirty |= self.book.generation != generation
        if needs_loading is not None and model not in self._loading:
            self._loading.add(model)
            asyncio.get_running_loop().create_task(self._load_variants(needs_loading, spec))

    async def _describe(self, pool: str, version: str, timeout: float) -> None:
        handle = self.pools[pool].options(multiplexed_model_id=version)
        await asyncio.wait_for(handle.describe.remote(version), timeout)

    async def _load_variants(self, record: Record, spec: ExperimentSettings) -> None:
        """Load the candidate and shadow in their own deployments before any traffic goes there."""
        try:
            shadow_ready = False
            if record.shadow_version:
                try:
                    await self._describe(f"{record.model}_shadow", record.shadow_version, LOAD_TIMEOUT_S)
                    shadow_ready = True
                except Exception as e:  # noqa: BLE001 - no shadow traffic; the candidate may still run
                    logger.warning("%s shadow %s cannot load: %s", record.model, record.shadow_version, e)
            if record.state in TERMINAL or record.state == "running":
                record.shadow_ready = shadow_ready
                self.book.generation += 1
            elif record.candidate_version:
                try:
                    await self._describe(f"{record.model}_candidate", record.candidate_version, LOAD_TIMEOUT_S)
                except Exception as e:  # noqa: BLE001 - every failure to load means the same thing here
                    self._log(self.decisions.end(record, "failed", f"candidate cannot load: {_message(e)}",
                                                 "controller"))
                else:
                    self.decisions.started(record, spec, shadow_ready)
            else:
                self.decisions.started(record, spec, shadow_ready)
            self.dirty = True
        finally:
            self._loading.discard(record.model)

    async def _health_check(self, record: Record, spec: ExperimentSettings) -> None:
        if not record.candidate_version or time.time() < self._health_due.get(record.experiment_id, 0):
            return
        self._health_due[record.experiment_id] = time.time() + spec.rollback.health_period_s
        try:
            await self._describe(f"{record.model}_candidate", record.candidate_version, spec.rollback.health_timeout_s)
            record.health_failures = 0
        except Exception as e:  # noqa: BLE001 - a timeout or a dead replica alike
            record.health_failures += 1
            logger.warning("%s candidate health check %d failed: %s", record.model, record.health_failures,
                           _message(e))

    def _decide(self, record: Record, spec: ExperimentSettings) -> None:
        stable, candidate = self._quality(record)
        decision = self.decisions.check(record, spec, self._accuracy(record, spec, stable, candidate))
        if decision is None:
            self._bandit(record, spec, stable, candidate)
            return
        action, reason = decision
        if action == "rollback":
            self.rollback(record.model, reason, "controller")
        elif action == "step":
            self._log(self.decisions.step(record, spec, reason))
            self.dirty = True
        else:
            asyncio.get_running_loop().create_task(self._promote_after_rollout(record.model, reason))

    def _publish_stable_quality(self) -> None:
        """Every model's default version is its stable variant, experiment or not: its live figures
        are published once it has labels (a running experiment's candidate is published in _quality)."""
        for model, version in self.stable_versions.items():
            summary = self.desk.quality.summary(model, version)
            if summary["labelled"]:
                self.metrics.variant_quality(model, "stable", summary)

    def _quality(self, record: Record):
        stable = self.desk.quality.get(record.model, self.stable_versions.get(record.model))
        candidate = self.desk.quality.get(record.model, record.candidate_version)
        for variant, quality in (("stable", stable), ("candidate", candidate)):
            self.metrics.variant_quality(record.model, variant, quality.summary())
        return stable, candidate

    def _accuracy(self, record: Record, spec: ExperimentSettings, stable, candidate) -> str | None:
        """The accuracy trigger's reason once it fired: an always-valid test (serve_app/sequential.py)
        over every label of both versions, checked each tick."""
        if record.model not in self.stable_versions:
            return None
        rules = spec.rollback
        monitor = self.monitors.get(record.experiment_id)
        if monitor is None or (monitor.alpha, monitor.margin, monitor.min_labels) != (
                rules.accuracy_alpha, rules.accuracy_margin, rules.min_labels):
            monitor = self.monitors[record.experiment_id] = AccuracyMonitor(
                rules.accuracy_alpha, rules.accuracy_margin, rules.min_labels)
        try:
            verdict = monitor.update(stable.correct, stable.labelled, candidate.correct, candidate.labelled)
        except ValueError:  # the stable version changed under the experiment: its counts start over
            monitor.reset()
            verdict = monitor.update(stable.correct, stable.labelled, candidate.correct, candidate.labelled)
        return verdict.reason if verdict.rollback else None

    def _bandit(self, record: Record, spec: ExperimentSettings, stable, candidate) -> None:
        """policy thompson: move the candidate's weight toward P(candidate more accurate), within
        the bounds, at most every update_s and by at least min_step (serve_app/bandit.py)."""
        if spec.policy != "thompson" or record.weight_source == "admin" or not stable.labelled + candidate.labelled:
            return
        bandit = spec.bandit
        policy = self.policies.get(record.experiment_id)
        if policy is None or (policy.min_weight, policy.max_weight, policy.update_s, policy.min_step) != (
                bandit.min_weight, bandit.max_weight, bandit.update_s, bandit.min_step):
            policy = self.policies[record.experiment_id] = ThompsonPolicy(
                bandit.min_weight, bandit.max_weight, bandit.update_s, bandit.min_step)
        decision = policy.propose(stable.correct, stable.labelled - stable.correct, candidate.correct,
                                  candidate.labelled - candidate.correct, record.weight, time.time(),
                                  record.weight_changed_at)
        if decision.changed:
            self._log(self.decisions.bandit_weight(record, decision.weight, decision.reason))
            self.dirty = True

    async def _promote_after_rollout(self, model: str, reason: str) -> None:
        try:
            await self.promote(model, "rollout", reason)
        except (LookupError, ValueError) as e:  # ended meanwhile, or `stable` moved under it: stays running
            logger.warning("rollout of %s not promoted: %s", model, e)

    async def _persist(self) -> None:
        document = self.book.model_dump()
        try:
            self.etag = await asyncio.to_thread(self.registry.write_document, *DOCUMENT, document, self.etag)
            self.dirty = False
        except RegistryError as e:  # unreachable or written by a stale controller: retry next tick
            logger.warning("experiment book not persisted (generation %d): %s", self.book.generation, e)
            try:
                _, self.etag = await asyncio.to_thread(self.registry.read_document, *DOCUMENT)
            except RegistryError:
                pass

    def _log(self, event: dict) -> None:
        logger.warning("experiment", extra={"experiment_event": event})

    # ---- admin ------------------------------------------------------------------------------
    def _running(self, model: str) -> Record:
        record = self.book.current.get(model)
        if record is None or not record.candidate_version:
            raise LookupError(f"no experiment with a candidate runs for {model!r}")
        if record.state in TERMINAL:
            raise ValueError(f"the {model} experiment already ended: {record.state} ({record.reason})")
        return record

    def rollback(self, model: str, reason: str, actor: str) -> dict:
        record = self._running(model)
        event = self.decisions.end(record, "rolled_back", reason, actor)
        self.metrics.rolled_back(model, "manual" if actor != "controller" else _trigger(reason))
        self._log(event)
        self.dirty = True
        return event

    def set_weight(self, model: str, weight: float, actor: str) -> dict:
        event = self.decisions.set_weight(self._running(model), weight, actor)
        self._log(event)
        self.dirty = True
        return event

    async def promote(self, model: str, actor: str, reason: str = "promoted by an admin") -> dict:
        record = self._running(model)
        try:
            previous, _ = await asyncio.to_thread(self.registry.promote, model, "stable", record.candidate_version)
        except RegistryError as e:  # moved meanwhile, or the store is down: nothing changed; where, in the log
            logger.warning("cannot promote %s %s: %s: %s", model, record.candidate_version, type(e).__name__, e)
            raise ValueError(f"cannot promote {model} {record.candidate_version}: the registry refused the alias "
                             f"move or cannot be reached ({type(e).__name__}); nothing changed") from None
        event = self.decisions.end(record, "promoted", f"{reason}; stable {previous} -> {record.candidate_version}",
                                   actor)
        self._log(event)
        self.dirty = True
        await self._persist()
        return event

    async def admin(self, action: str, model: str, actor: str, **arguments) -> dict:
        """One entry point for the router's admin routes; decisions persist before answering."""
        if action == "rollback":
            event = self.rollback(model, arguments.get("reason") or f"rolled back by {actor}", actor)
        elif action == "weight":
            event = self.set_weight(model, arguments["weight"], actor)
        elif action == "promote":
            return await self.promote(model, actor)
        else:
            raise ValueError(f"unknown action {action!r}")
        await self._persist()
        return event

    def view(self) -> dict:
        """Every experiment with its variants' statistics over the rollback window, and their quality."""
        return experiments_view(self.book, self.window, {m: spec for m, (spec, _) in self.specs.items()},
                                self.desk.quality.summary, self.stable_versions)

    # ---- delayed ground truth -------------------------------------------------------------------
    async def feedback(self, items: list, scored: dict, source: str | None, principal: str | None,
                       answered: list = ()) -> dict:
        """Joins, persists (before answering) and counts one batch; the router's latest answered rows
        come along, so a label for a request answered a moment ago joins."""
        self.desk.record(answered)
        async with self.feedback_lock:
            joined, outcomes = self.desk.join(items, scored, source, principal)
            try:  # the only slow step (S3): in a thread, so router syncs and ticks go on meanwhile
                key = await asyncio.to_thread(self.desk.store_batch, joined)
            except Exception as e:  # noqa: BLE001 - the store refused or is away: nothing is acknowledged
                logger.warning("feedback batch not stored: %s: %s", type(e).__name__, e)
                return {"stored": False, "reason": type(e).__name__}
            return {"stored": True, "batch": key, "outcomes": outcomes + self.desk.count(joined)}

    async def _persist_predictions(self) -> None:
        entries, cursor = self.desk.unpersisted()
        try:
            if entries:
                await asyncio.to_thread(self.desk.write_predictions, entries)
            self.desk.persisted(cursor)
        except Exception as e:  # noqa: BLE001 - kept in memory; written with the next call
            logger.warning("prediction record not persisted: %s", type(e).__name__)


def _message(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    return getattr(cause, "message", None) or getattr(error, "message", None) or type(error).__name__


def _trigger(reason: str) -> str:
    for word, trigger in (("error rate", "errors"), ("latency", "latency"), ("drift", "drift"),
                          ("health", "health"), ("accuracy", "accuracy")):
        if word in reason:
            return trigger
    return "other"


def controller_deployment():
    return serve.deployment(ExperimentController).options(
        name="ExperimentController", num_replicas=1, max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": 0.05})
