"""The REST API, /api/v1: predictions, the schema, models and their metadata."""
from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from runtimes.schema import LABELS, input_schema, output_schema

from ..errors import BadRequest, NotFoundError
from ..dispatcher import Answer
from ..schemas import BatchPredictRequest, BatchPredictResponse, ErrorResponse, PredictRequest, PredictResponse
from ..versions import registry_call
from .common import ingress, predict

ERRORS = {status: {"model": ErrorResponse} for status in (404, 422, 503)}
router = APIRouter(prefix="/api/v1", responses=ERRORS)


def answers(probabilities: np.ndarray, with_probabilities: bool) -> list[dict]:
    """Rows of probabilities as the API's answers (plain dicts: the response is built once, not
    validated again by FastAPI, which costs more than the model on a large batch)."""
    classes = probabilities.argmax(axis=1).tolist()
    if not with_probabilities:
        return [{"prediction": LABELS[c]} for c in classes]
    return [{"prediction": LABELS[c], "probabilities": dict(zip(LABELS, row))}
            for c, row in zip(classes, probabilities.tolist())]


def _answer(answer: Answer, request_id: str, started: float, **fields) -> JSONResponse:
    body = {"request_id": request_id, **fields, "model": answer.model, "version": answer.version,
            "variant": answer.variant, "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "ensemble": answer.ensemble.model_dump() if answer.ensemble else None}
    return JSONResponse({k: v for k, v in body.items() if v is not None})


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
async def predict_one(body: PredictRequest, request: Request):
    """Classify one KOI."""
    started = time.perf_counter()
    answer, ctx = await predict(request, "predict", body.model, body.version, body.matrix(), body.return_all_models)
    members = [{"model": m.model, "version": m.version, **answers(m.probabilities, body.return_probabilities)[0]}
               for _, m in sorted(answer.members.items())] if body.return_all_models else None
    return _answer(answer, ctx.request_id, started, **answers(answer.probabilities, body.return_probabilities)[0],
                   all_models=members)


@router.post("/predict/batch", response_model=BatchPredictResponse, response_model_exclude_none=True)
async def predict_batch(body: BatchPredictRequest, request: Request):
    """Classify many KOIs in one call (up to the configured row limit)."""
    limit = ingress(request).settings.max_batch_rows
    if len(body.instances) > limit:
        raise BadRequest(f"instances: {len(body.instances)} rows exceed the limit of {limit}")
    started = time.perf_counter()
    answer, ctx = await predict(request, "predict_batch", body.model, body.version, body.matrix(),
                                body.return_all_models)
    members = {name: answers(m.probabilities, body.return_probabilities)
               for name, m in sorted(answer.members.items())} if body.return_all_models else None
    return _answer(answer, ctx.request_id, started, predictions=answers(answer.probabilities, body.return_probabilities),
                   all_models=members)


@router.get("/schema")
async def schema():
    """The feature schema: names in order, dtype, and the labels."""
    return {"input": input_schema(), "output": output_schema()}


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
