"""POST /api/v1/explain: why a model answered as it did, in KServe's V1 explain shape where it fits
(`predictions` plus `explanations`). What the numbers mean per family is in the README and in
serve_app/explaining.py; the JSON is built here from the runtimes' Explanation, sorted by how much
each feature moved the explained class."""
from __future__ import annotations

import math
import time

import numpy as np
from fastapi import APIRouter, Request

from runtimes.explanation import Explanation
from runtimes.feature_labels import display_name
from runtimes.schema import LABELS
from runtimes.split import SPLIT

from ..errors import BadRequest, RateLimited
from ..explaining import Explained, explain_cost
from ..feature_rows import FeatureRows
from ..koi import koi_facts
from ..schemas import ErrorResponse, ExplainRequest
from .common import context, ingress, observed
from .rest import answers, split_of

router = APIRouter(prefix="/api/v1", responses={s: {"model": ErrorResponse} for s in (404, 422, 429, 503)})
ENSEMBLE_NOTE = ("Each member's attributions explain that member's own output in its own space; the ensemble "
                 "combines the members' probabilities (after temperature scaling where calibrated), which is not "
                 "additive, so the members' attributions do not sum to the ensemble's probability.")


@router.post("/explain")
async def explain(body: ExplainRequest, request: Request):
    """Per-feature contributions to each class for each row, with the base value, the output they
    add up to and the space it is in; `model: ensemble` explains each member beside its weight."""
    started, service = time.perf_counter(), ingress(request)
    names = body.names()
    field = "koi" if body.koi is not None else "kois" if names is not None else "features" if body.features else "instances"
    _within_limit(len(names) if names is not None else len(body.rows()), service.settings.max_explain_rows, field)
    await charge(request, body.model, len(names) if names is not None else len(body.rows()))
    rows, facts, catalogue = body.rows(), None, None
    if names is not None:
        catalogue, kois = await service.kois.resolve(names, field)
        _within_limit(len(kois), service.settings.max_explain_rows, field)
        rows = FeatureRows(catalogue.features(kois), frozenset())
    ctx = context(request)
    explained: Explained = await observed(request, "explain", body.model, body.version, len(rows),
                                          lambda: service.explainer.explain(body.model, body.version, rows, ctx), ctx)
    predictions = answers(explained.probabilities, True, rows.missing(explained.features) if explained.features else None)
    if catalogue is not None:
        split = await split_of(service, explained.model, explained.version, list(explained.members))
        facts = koi_facts(catalogue, kois, split, SPLIT)
        predictions = [{**p, **f} for p, f in zip(predictions, facts)]
    body_json = {"request_id": ctx.request_id, "model": explained.model, "version": explained.version,
                 "predictions": predictions, "explanations": [row_explanation(explained, i) for i in range(len(rows))],
                 "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
    if explained.ensemble is not None:
        body_json["ensemble"] = explained.ensemble.model_dump()
    if catalogue is not None:
        body_json["catalogue_version"] = catalogue.version
    return body_json


def _within_limit(rows: int, limit: int, field: str) -> None:
    if rows > limit:
        raise BadRequest(f"{field}: {rows} rows exceed the explain limit of {limit} (max_explain_rows)")


async def charge(request: Request, model: str, rows: int) -> None:
    """An explanation costs more than the one token its request took: explain_cost per row."""
    service = ingress(request)
    principal = request.scope.get("state", {}).get("principal")
    wait = await service.gate.charge(principal, explain_cost(model, rows, service.settings.explain_cost) - 1)
    if wait:
        raise RateLimited(f"rate limit exceeded: explaining {rows} row(s) with {model} costs "
                          f"{explain_cost(model, rows, service.settings.explain_cost):g} requests' worth",
                          max(1, math.ceil(wait)))


def row_explanation(explained: Explained, row: int) -> dict:
    """One row's explanation: the model's own, or each ensemble member's beside its weight."""
    explained_class = int(np.argmax(explained.probabilities[row]))
    if explained.model != "ensemble":
        version, explanation = explained.members[explained.model]
        return member_explanation(explained.model, version, explanation, row)
    plan = explained.plan
    return {"model": "ensemble", "version": explained.version, "method": "weighted_members", "additive": False,
            "output_space": "probability", "explained_class": LABELS[explained_class],
            "output": _by_class(explained.probabilities[row]),
            "weights": {m: plan.weights[m] for m in explained.members},
            "temperatures": explained.ensemble.temperatures,
            "combination": ("sum over members of weight x softmax(log p / temperature), weights renormalised over "
                            "the members that answered" if plan.calibrated else
                            "weighted mean of the members' probabilities"),
            "note": ENSEMBLE_NOTE,
            "members": {m: member_explanation(m, v, e, row, explained_class)
                        for m, (v, e) in sorted(explained.members.items())}}


def member_explanation(model: str, version: str, explanation: Explanation, row: int,
                       explained_class: int | None = None) -> dict:
    """Features sorted by |contribution| to the explained class (the model's predicted class unless
    given); `values` per class in that order; base_value + sum(values) = output - delta."""
    if explained_class is None:
        explained_class = int(np.argmax(explanation.probabilities[row]))
    values = explanation.values[row]
    order = np.argsort(-np.abs(values[explained_class]), kind="stable")
    names = [explanation.features[j] for j in order]
    inputs = explanation.inputs[row][order].tolist()
    return {"model": model, "version": version, "method": explanation.method,
            "output_space": explanation.output_space, "explained_class": LABELS[explained_class],
            "base_value": _by_class(explanation.base_value[row]), "output": _by_class(explanation.output[row]),
            "delta": _by_class(explanation.delta[row]), "probabilities": _by_class(explanation.probabilities[row]),
            "feature_names": names, "feature_labels": [display_name(n) for n in names],
            "feature_values": [None if math.isnan(v) else v for v in inputs],
            "values": {label: values[c][order].tolist() for c, label in enumerate(LABELS)},
            "details": explanation.details}


def _by_class(row: np.ndarray) -> dict[str, float]:
    return dict(zip(LABELS, np.asarray(row, dtype=np.float64).tolist()))
