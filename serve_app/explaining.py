"""Explanations on the serving path, beside the dispatcher and through its stages where they apply:
the version resolved and the rows projected onto its schema as for a prediction, then the model
deployment's `explain` (next to its `predict_proba`, batched there).

An explanation names the version it explains, so it takes no part in experiments: no variant is
assigned and no statistics are recorded (a request with no version explains the model's default,
the stable variant). A model whose circuit breaker is open is not asked. The ensemble explains
each member at the version its record fits (or the request's) and reports the weights and
temperatures that combine them; the members' attributions are in different spaces and a softmax
is not additive, so they do not sum to the ensemble's probability, and the answer says so.
Ray-free: the ingress injects the call."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from runtimes.explanation import Explanation

from .dispatcher import Dispatcher, EnsemblePlan, RequestContext, gather_members
from .errors import BreakerOpen, ModelUnavailable, ReplicaGone, ServingError
from .feature_rows import FeatureRows
from .schemas import EnsembleInfo

logger = logging.getLogger("ray.serve")
ExplainCall = Callable[[str, str, np.ndarray, str], Awaitable[Explanation]]


@dataclass(frozen=True)
class Explained:
    model: str  # a family or "ensemble"
    version: str
    probabilities: np.ndarray  # the answer: the model's own, or the ensemble's combination
    members: dict[str, tuple[str, Explanation]]  # family -> (version, explanation); one entry unless ensemble
    ensemble: EnsembleInfo | None = None
    plan: EnsemblePlan | None = None
    features: tuple[str, ...] = ()  # the answering versions' inputs: what a row lacked is listed


class Explainer:
    def __init__(self, dispatcher: Dispatcher, call: ExplainCall):
        self.dispatcher, self.call = dispatcher, call

    async def explain(self, model: str, version_ref: str | None, rows: FeatureRows,
                      context: RequestContext) -> Explained:
        if model == "auto":
            model = await self.dispatcher.best_model(version_ref)
        if model == "ensemble":
            return await self._ensemble(version_ref, rows, context)
        version, explanation, features = await self._member(model, version_ref, rows, context)
        return Explained(model, version, explanation.probabilities, {model: (version, explanation)},
                         features=features)

    async def _member(self, model: str, version_ref: str | None, rows: FeatureRows, context: RequestContext):
        versions = self.dispatcher.versions
        version = await versions.resolve(model, version_ref)
        matrix, features = await versions.check_input(model, version, rows)
        return version, await self._call(model, version, matrix, context), features

    async def _call(self, model: str, version: str, matrix: np.ndarray, context: RequestContext) -> Explanation:
        calls = self.dispatcher.calls
        if calls.state(model) == "open":
            wait = calls.breakers[model].retry_after_s()
            raise BreakerOpen(f"{model} is failing; its circuit breaker is open. Retry in {wait} s", wait)
        timeout_s = self.dispatcher.settings.explain_timeout_s
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(timeout_s):
                    return await self.call(model, version, matrix, context.request_id)
            except ServingError:
                raise
            except ReplicaGone:
                if attempt == 2:
                    raise ModelUnavailable(f"{model} replicas are unavailable") from None
            except TimeoutError:
                raise ModelUnavailable(f"{model} {version} took longer than {timeout_s:g} s to explain "
                                       f"{len(matrix)} rows") from None
            except Exception as e:  # noqa: BLE001 - a failing model: say which, log the rest
                logger.warning("%s %s failed to explain: %s", model, version, type(e).__name__)
                raise ModelUnavailable(f"{model} {version} failed to explain: {type(e).__name__}") from None
        raise AssertionError("unreachable")

    async def _ensemble(self, version_ref: str | None, rows: FeatureRows, context: RequestContext) -> Explained:
        plan = await self.dispatcher.ensemble_plan(version_ref)
        answers, skipped = await gather_members(
            {m: self._member(m, plan.member_ref, rows, context) for m in plan.members})
        members = {m: (version, explanation) for m, (version, explanation, _) in answers.items()}
        versions = {version for version, _ in members.values()}
        version = versions.pop() if len(versions) == 1 else (version_ref or "mixed")
        vote = plan.vote({m: e.probabilities for m, (_, e) in members.items()})
        features = tuple(dict.fromkeys(f for *_, fs in answers.values() for f in fs))
        return Explained("ensemble", version, vote, members, plan.info(skipped), plan, features)


def explain_cost(model: str, rows: int, costs: dict[str, float]) -> float:
    """Rate-limit tokens an explanation takes, charged before it runs: per row and per family
    explained (an ensemble pays for every family, `auto` for the dearest)."""
    if model == "ensemble":
        return rows * sum(costs.values())
    return rows * (max(costs.values()) if model == "auto" else costs.get(model, 1.0))
