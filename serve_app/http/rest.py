"""The REST API, /api/v1: predictions, the schema, models and their metadata."""
from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from runtimes.schema import KNOWN_FEATURES, LABELS, input_schema, output_schema
from runtimes.split import SPLIT

from ..errors import BadRequest, NotFoundError
from ..dispatcher import Answer
from ..feature_rows import WIDTHS, FeatureRows
from ..koi import koi_facts
from ..schemas import BatchPredictRequest, BatchPredictResponse, ErrorResponse, PredictRequest, PredictResponse
from ..versions import registry_call
from .common import ingress, predict, sees_variants

ERRORS = {status: {"model": ErrorResponse} for status in (404, 422, 503)}
router = APIRouter(prefix="/api/v1", responses=ERRORS)


def answers(probabilities: np.ndarray, with_probabilities: bool, missing: list[list[str]] | None = None) -> list[dict]:
    """Rows of probabilities as the API's answers (plain dicts: the response is built once, not
    validated again by FastAPI, which costs more than the model on a large batch), each with the
    features its version needed and the row lacked."""
    classes = probabilities.argmax(axis=1).tolist()
    if not with_probabilities:
        rows = [{"prediction": LABELS[c]} for c in classes]
    else:
        rows = [{"prediction": LABELS[c], "probabilities": dict(zip(LABELS, row))}
                for c, row in zip(classes, probabilities.tolist())]
    for row, absent in zip(rows, missing or ()):
        if absent:
            row["missing_features"] = absent
    return rows


def _missing(rows: FeatureRows, answer: Answer) -> list[list[str]] | None:
    return rows.missing(answer.features) if answer.features else None


def _answer(answer: Answer, request: Request, request_id: str, started: float, **fields) -> JSONResponse:
    variant = answer.variant if sees_variants(request) else None
    body = {"request_id": request_id, **fields, "model": answer.model, "version": answer.version,
            "variant": variant, "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "ensemble": answer.ensemble.model_dump() if answer.ensemble else None}
    return JSONResponse({k: v for k, v in body.items() if v is not None})


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
async def predict_one(body: PredictRequest, request: Request):
    """Classify one KOI, from its features or by its name (a KIC id answers for each of its KOIs,
    in the batch answer's shape)."""
    started = time.perf_counter()
    if body.koi is not None:
        return await _by_name(request, body, [body.koi], "koi", started)
    rows = body.rows()
    answer, ctx = await predict(request, "predict", body.model, body.version, rows, body.return_all_models)
    item = answers(answer.probabilities, body.return_probabilities, _missing(rows, answer))[0]
    return _answer(answer, request, ctx.request_id, started, **item,
                   all_models=_members_one(answer, body.return_all_models, body.return_probabilities))


@router.post("/predict/batch", response_model=BatchPredictResponse, response_model_exclude_none=True)
async def predict_batch(body: BatchPredictRequest, request: Request):
    """Classify many KOIs in one call (up to the configured row limit), from features or by name."""
    started = time.perf_counter()
    if body.kois is not None:
        return await _by_name(request, body, body.kois, "kois", started)
    _within_limit(request, len(body.instances), "instances")
    rows = body.rows()
    answer, ctx = await predict(request, "predict_batch", body.model, body.version, rows, body.return_all_models)
    return _answer(answer, request, ctx.request_id, started, all_models=_members_many(answer, body),
                   predictions=answers(answer.probabilities, body.return_probabilities, _missing(rows, answer)))


async def _by_name(request: Request, body, names: list, field: str, started: float) -> JSONResponse:
    """The catalogue's rows for the named KOIs, through the same stages as any features."""
    service = ingress(request)
    _within_limit(request, len(names), field)  # before resolving any; a KIC id may then add a few
    catalogue, kois = await service.kois.resolve(names, field)
    _within_limit(request, len(kois), field)
    rows = FeatureRows(catalogue.features(kois), frozenset())
    route = "predict" if field == "koi" else "predict_batch"
    answer, ctx = await predict(request, route, body.model, body.version, rows, body.return_all_models)
    facts = koi_facts(catalogue, kois, await split_of(service, answer.model, answer.version, list(answer.members)), SPLIT)
    items = [{**item, **fact} for item, fact in zip(
        answers(answer.probabilities, body.return_probabilities, _missing(rows, answer)), facts)]
    if field == "koi" and len(kois) == 1:
        return _answer(answer, request, ctx.request_id, started, **items[0], catalogue_version=catalogue.version,
                       all_models=_members_one(answer, body.return_all_models, body.return_probabilities))
    return _answer(answer, request, ctx.request_id, started, predictions=items, catalogue_version=catalogue.version,
                   all_models=_members_many(answer, body))


def _within_limit(request: Request, rows: int, field: str) -> None:
    limit = ingress(request).settings.max_batch_rows
    if rows > limit:
        raise BadRequest(f"{field}: {rows} rows exceed the limit of {limit}")


def _members_one(answer: Answer, wanted: bool, with_probabilities: bool) -> list[dict] | None:
    if not wanted:
        return None
    return [{"model": m.model, "version": m.version, **answers(m.probabilities, with_probabilities)[0]}
            for _, m in sorted(answer.members.items())]


def _members_many(answer: Answer, body) -> dict | None:
    if not body.return_all_models:
        return None
    return {name: answers(m.probabilities, body.return_probabilities) for name, m in sorted(answer.members.items())}


async def split_of(service, model: str, version: str, members: list[str]) -> str | None:
    """The split rule the answering version was trained under, if its metadata can be read."""
    model = model if model != "ensemble" else next(iter(sorted(members)), None)
    try:
        return (await service.versions.metadata(model, version))["training"].get("split")
    except Exception:  # noqa: BLE001 - unreadable or a mixed version: unknown, said as null
        return None


@router.get("/schema")
async def schema(request: Request, model: str | None = None, version: str | None = None):
    """The input schema of `model` at `version` (default: the version it serves by default), the
    positional lengths it accepts, and every feature name a request may use."""
    if model is None and version is None:
        inputs, served = input_schema(), None
    else:
        service = ingress(request)
        name = model or "xgboost"
        if name not in service.models:
            raise BadRequest(f"model: unknown model {name!r}: expected one of {', '.join(service.models)}")
        served = await service.versions.resolve(name, version)
        inputs = (await service.versions.metadata(name, served))["input_schema"]
        model = name
    accepted = [n for n in WIDTHS if n <= inputs["features"]]
    return {"model": model, "version": served, "input": inputs, "output": output_schema(),
            "positional_lengths": accepted, "known_features": list(KNOWN_FEATURES)}


@router.get("/models")
async def list_models(request: Request):
    """Every model with its versions and aliases."""
    service = ingress(request)

    def summaries():
        return {name: {"versions": (s := service.registry.summary(name)).versions, "aliases": s.aliases,
                       "default_version": service.configured_defaults[name]}
                for name in service.models}
    return await registry_call(summaries)


@router.get("/models/{name}/info")
async def model_info(name: str, request: Request, version: str | None = None):
    """The served version's metadata: features, metrics, aliases, checksums, load time."""
    service = ingress(request)
    if name not in service.models:
        raise NotFoundError(f"unknown model {name!r}: expected one of {', '.join(service.models)}")
    resolved = await service.versions.resolve(name, version)
    metadata = await service.versions.metadata(name, resolved)
    loaded = await service.describe(name, resolved)
    aliases = await registry_call(lambda: service.registry.aliases(name))
    return {"name": name, "version": resolved, "requested": version, "aliases": aliases,
            "metadata": metadata, "checksums": loaded["checksums"], "load_time_s": loaded["load_time_s"]}
