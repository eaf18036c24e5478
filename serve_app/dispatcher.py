"""The dispatcher: every prediction goes through the same stages, in this order.

    resolve the version -> project the rows onto that version's input schema (feature_rows.py)
    -> assign the variant (stable, candidate; experiments only; a request the candidate's schema
       cannot take is answered by the stable variant and left out of both variants' statistics)
    -> the prediction cache (rows seen before, at the same version; never shadow copies)
    -> batch -> call the model (breaker, retry once)          [ModelCalls]
    -> record (metrics, the experiment's statistics, the prediction record feedback joins) -> shadow copy

`model="auto"` picks the model whose served version has the best registry ROC-AUC among those
whose breakers are not open; `model="ensemble"` runs the stages once per member concurrently and
soft-votes what answered, degrading rather than failing while one member answers. Ray-free:
the ingress injects the model call, tests inject fakes that fail, hang or die on cue."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Protocol

import numpy as np

from runtimes.ensemble import EnsembleRecord, combine
from runtimes.schema import LABELS

from .config import RouterSettings
from .ensemble import EnsembleRecords, soft_vote
from .errors import BadRequest, BreakerOpen, ModelUnavailable, ServingError
from .feature_rows import FeatureRows
from .feedback import AnsweredRows
from .model_calls import ModelCalls
from .prediction_cache import PredictionCache
from .schemas import EnsembleInfo
from .traffic import Route, ShadowCopies, Traffic
from .versions import Versions


@dataclass(frozen=True)
class RequestContext:
    """Who asks, passed explicitly down the stages."""

    request_id: str
    principal: str | None = None  # the credential's name; keys sticky assignment and caps its share of samples
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names: sticky assignment


@dataclass(frozen=True)
class MemberAnswer:
    model: str
    version: str
    probabilities: np.ndarray
    variant: str | None = None  # "stable" or "candidate" when the model runs an experiment
    features: tuple[str, ...] = ()  # the answering version's input schema


@dataclass(frozen=True)
class Answer:
    probabilities: np.ndarray
    model: str
    version: str
    variant: str | None = None
    ensemble: EnsembleInfo | None = None
    members: dict[str, MemberAnswer] = field(default_factory=dict)  # every model's answer, when asked
    features: tuple[str, ...] = ()  # what the answer was computed from: missing ones are listed


class Observer(Protocol):
    """Where the dispatcher reports model answers (Prometheus in the ingress, a list in tests)."""

    def answered(self, model: str, version: str, predicted: list[str], variant: str) -> None: ...
    def failed(self, model: str, version: str, rows: int, variant: str) -> None: ...
    def breaker_state(self, model: str, state: str) -> None: ...
    def dropped_shadow(self, model: str) -> None: ...


class Dispatcher:
    def __init__(self, models: list[str], versions: Versions, calls: ModelCalls, traffic: Traffic,
                 observer: Observer, settings: RouterSettings):
        self.models, self.versions, self.calls, self.traffic = models, versions, calls, traffic
        self.observer = observer
        self.shadows = ShadowCopies(self._shadow_answer, traffic.recorder, observer.dropped_shadow)
        self.records = EnsembleRecords(versions.registry, versions.aliases)
        self.cache: PredictionCache | None = None  # set by the ingress from settings.cache
        self.answered: AnsweredRows | None = None  # the prediction record feedback joins (set by the ingress)
        self.configure(settings)

    def configure(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.versions.ttl_s = settings.alias_cache_s
        self.calls.configure(settings)
        self.traffic.configure(settings.experiments)
        self.shadows.resize(max([s.shadow_queue for s in settings.experiments.values()], default=64))

    async def predict(self, model: str, version_ref: str | None, rows: FeatureRows | np.ndarray,
                      context: RequestContext, all_models: bool = False) -> Answer:
        if not isinstance(rows, FeatureRows):
            rows = FeatureRows.of(rows)
        if model == "ensemble" or all_models:
            vote = await self._ensemble(version_ref, rows, context, fitted=model == "ensemble")
            if model == "ensemble":
                return vote
            chosen = await self.best_model(version_ref) if model == "auto" else model
            if chosen in vote.members:
                member = vote.members[chosen]
                return Answer(member.probabilities, chosen, member.version, member.variant, None, vote.members,
                              member.features)
            model = chosen
        elif model == "auto":
            model = await self.best_model(version_ref)
        member = await self._member(model, version_ref, rows, context)
        return Answer(member.probabilities, model, member.version, member.variant, features=member.features)

    # ---- one model, through every stage ------------------------------------------------------
    async def _member(self, model: str, version_ref: str | None, rows: FeatureRows,
                      context: RequestContext) -> MemberAnswer:
        version = await self.versions.resolve(model, version_ref)
        matrix, features = await self.versions.check_input(model, version, rows)
        # Only requests that name no version take part in the model's experiment.
        route = None if version_ref else self.traffic.route(model, context.headers, context.principal)
        if route is None:
            answer, _ = await self._cached(model, version, matrix, context)
            self._remember(context, model, version, None, matrix, answer)
            return MemberAnswer(model, version, answer, None, features)
        candidate = await self._fit_for(model, route.candidate_version if route.compares else None, rows)
        if route.compares and candidate is None:  # the candidate could not take it: compare like with like
            route = replace(route, variant="stable", compares=False)
        if route.variant == "candidate":
            answer = await self._compared(route, "candidate", context,
                                          self._cached(model, route.candidate_version, candidate[0], context, "candidate"))
            if answer is not None:
                self._remember(context, model, route.candidate_version, "candidate", candidate[0], answer)
                await self._shadow(model, route, rows, answer)
                return MemberAnswer(model, route.candidate_version, answer, "candidate", candidate[1])
            # a failing candidate's request is answered by the stable variant
        answer = await self._compared(route, "stable", context, self._cached(model, version, matrix, context),
                                      reraise=True)
        self._remember(context, model, version, "stable" if route.compares else None, matrix, answer)
        await self._shadow(model, route, rows, answer)
        return MemberAnswer(model, version, answer, "stable", features)

    def _remember(self, context: RequestContext, model: str, version: str, variant: str | None,
                  matrix: np.ndarray, answer: np.ndarray) -> None:
        """Into the prediction record that feedback joins by request id (serve_app/feedback.py)."""
        if self.answered is not None:
            self.answered.add(context.request_id, model, version, variant, answer, matrix)

    async def _fit_for(self, model: str, version: str | None, rows: FeatureRows):
        """The rows as `version` takes them, or None when its schema cannot take them."""
        if version is None:
            return None
        try:
            return await self.versions.check_input(model, version, rows)
        except BadRequest:
            return None

    async def _cached(self, model: str, version: str, rows: np.ndarray, context: RequestContext,
                      variant: str = "primary") -> tuple[np.ndarray, list[int]]:
        """The answer, and which rows the model computed: the others came from the cache."""
        if self.cache is None:
            return await self._call(model, version, rows, context, variant), list(range(len(rows)))
        answer, computed = await self.cache.answer(
            model, version, rows, lambda missing: self._call(model, version, missing, context, variant))
        if len(computed) < len(rows):
            cached = np.delete(answer, computed, axis=0)
            self.observer.answered(model, version, [LABELS[i] for i in cached.argmax(axis=1)], variant)
        return answer, computed

    async def _call(self, model: str, version: str, rows: np.ndarray, context: RequestContext,
                    variant: str = "primary") -> np.ndarray:
        deployment = model if variant == "primary" else f"{model}_{variant}"
        try:
            result = await self.calls(deployment, version, rows, context.request_id)
        except Exception:
            self.observer.failed(model, version, len(rows), variant)
            raise
        finally:
            if variant == "primary":
                self.observer.breaker_state(model, self.calls.state(model))
        self.observer.answered(model, version, [LABELS[i] for i in result.argmax(axis=1)], variant)
        return result

    async def _compared(self, route: Route, variant: str, context: RequestContext, call,
                        reraise: bool = False) -> np.ndarray | None:
        """The call's outcome and latency, recorded for the experiment's triggers (under the
        caller's credential) when the model computed some of it: a cache hit cannot fail and costs
        no model time, so counting hits would dilute a failing or slow candidate's statistics.
        Latency is per computed row, so a client sending large batches to one variant cannot make
        it look slow (or the other fast) by the size of its requests."""
        started = time.perf_counter()
        try:
            result, computed = await call
        except ServingError:
            if route.compares:
                self.traffic.recorder.failed(route.experiment, variant, context.principal)
            if reraise:
                raise
            return None
        if route.compares and computed:
            per_row = (time.perf_counter() - started) / len(computed)
            self.traffic.recorder.answered(route.experiment, variant, per_row,
                                           result[computed].argmax(axis=1).tolist(), context.principal)
        return result

    async def _shadow(self, model: str, route: Route, rows: FeatureRows, primary: np.ndarray) -> None:
        shadow = await self._fit_for(model, route.shadow_version, rows)
        if shadow is not None:
            self.shadows.offer(model, route, shadow[0], primary)

    async def _shadow_answer(self, model: str, version: str, rows: np.ndarray) -> np.ndarray:
        return await self._call(model, version, rows, RequestContext("shadow"), "shadow")

    # ---- model choice and the ensemble ------------------------------------------------------
    async def best_model(self, version_ref: str | None) -> str:
        """The model whose served version has the best registry ROC-AUC, skipping open breakers."""
        best, best_auc = None, -1.0
        for model in self.models:
            if self.calls.state(model) == "open":
                continue
            try:
                version = await self.versions.resolve(model, version_ref)
                auc = (await self.versions.metadata(model, version))["performance"]["roc_auc"]
            except ServingError:
                continue
            if auc > best_auc:
                best, best_auc = model, auc
        if best is None:
            raise ModelUnavailable(f"no model can serve version {version_ref or 'default'!r}")
        return best

    async def _ensemble(self, version_ref: str | None, rows: FeatureRows, context: RequestContext,
                        fitted: bool) -> Answer:
        """Version V's fitted record, where V has one: members called at V, calibrated and weighted
        as fitted (explicitly configured ensemble_weights still win). Else the configured weights
        over each member's own default or the requested version."""
        plan = await self.ensemble_plan(version_ref, fitted)
        answers, skipped = await gather_members(
            {m: self._member(m, plan.member_ref, rows, context) for m in plan.members})
        versions = {a.version for a in answers.values()}
        version = versions.pop() if len(versions) == 1 else (version_ref or "mixed")
        vote = plan.vote({m: a.probabilities for m, a in answers.items()})
        features = tuple(dict.fromkeys(f for a in answers.values() for f in a.features))
        return Answer(vote, "ensemble", version, None, plan.info(skipped), answers, features)

    async def ensemble_plan(self, version_ref: str | None, fitted: bool = True) -> "EnsemblePlan":
        record = await self.records.find(version_ref) if fitted else None
        explicit = "ensemble_weights" in self.settings.model_fields_set
        weights = self.settings.ensemble_weights if record is None or explicit else record.weights
        return EnsemblePlan(record, dict(weights), record.version if record is not None else version_ref,
                            record is not None and not explicit, [m for m in self.models if weights.get(m, 0) > 0])


@dataclass(frozen=True)
class EnsemblePlan:
    """How an ensemble answer is made: which members, at which version, weighted and calibrated how."""

    record: EnsembleRecord | None
    weights: dict[str, float]
    member_ref: str | None  # the version every member is asked for (the record's), else the request's
    calibrated: bool  # the record's temperatures and weights combine the members
    members: list[str]

    def vote(self, probabilities: dict[str, np.ndarray]) -> np.ndarray:
        return combine(self.record, probabilities) if self.calibrated else soft_vote(probabilities, self.weights)

    def info(self, skipped: dict[str, BaseException]) -> EnsembleInfo:
        return EnsembleInfo(members=sorted(set(self.members) - set(skipped)),
                            weights={m: self.weights[m] for m in self.members}, degraded=bool(skipped),
                            skipped={m: getattr(e, "message", type(e).__name__) for m, e in skipped.items()},
                            record=self.record.version if self.record is not None else None,
                            temperatures=dict(self.record.temperatures) if self.calibrated else None)


async def gather_members(calls: dict) -> tuple[dict, dict[str, BaseException]]:
    """Each member's result and each member's failure; raises when every member failed."""
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    answers, skipped = {}, {}
    for model, result in zip(calls, results):
        (skipped if isinstance(result, BaseException) else answers)[model] = result
    if not answers:
        raise _all_failed(skipped)
    return answers, skipped


def _all_failed(skipped: dict[str, BaseException]) -> ServingError:
    """Every member failed: if a member's failure was the request's own (a bad version), say so;
    if breakers turned every member away, retry when the first one half-opens."""
    for error in skipped.values():
        if not isinstance(error, Exception):  # cancelled: not a verdict on the models
            raise error
        if isinstance(error, ServingError) and not isinstance(error, ModelUnavailable):
            return error
    reasons = "; ".join(f"{m}: {getattr(e, 'message', type(e).__name__)}" for m, e in skipped.items())
    if all(isinstance(e, BreakerOpen) for e in skipped.values()):
        return BreakerOpen(f"every ensemble member failed: {reasons}",
                           min(e.retry_after_s for e in skipped.values()))
    return ModelUnavailable(f"every ensemble member failed: {reasons}")
