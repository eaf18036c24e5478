"""The Open Inference Protocol V2 over REST (/v2): server and model metadata, readiness and
inference. Every client error is a 400 `{"error": ...}` (serve_app/http/errors.py)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import v2 as codec
from ..schemas import ErrorResponse
from ..versions import registry_call
from ..feature_rows import FeatureRows
from .common import context, ingress, observed, predict
from .explain import charge

ERRORS = {400: {"model": ErrorResponse, "description": "invalid request"}}
router = APIRouter(prefix="/v2", responses=ERRORS)


def _names(request: Request) -> list[str]:
    return [*ingress(request).models, "ensemble"]


def _known(request: Request, name: str) -> None:
    if name not in _names(request):
        raise codec.V2Error(f"unknown model {name!r}: expected one of {', '.join(_names(request))}")


def _members(request: Request, name: str) -> list[str]:
    return list(ingress(request).models) if name == "ensemble" else [name]


@router.get("")
async def server(request: Request):
    return {"name": "kepler-serve", "version": ingress(request).app_version, "extensions": []}


@router.get("/health/live")
async def live():
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request):
    loaded = await ingress(request).loaded()
    is_ready = all(loaded.values())
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def metadata(name: str, request: Request, version: str | None = None):
    _known(request, name)
    registry = ingress(request).registry
    sets = await registry_call(lambda: [set(registry.versions(m)) for m in _members(request, name)])
    versions = sorted(set.intersection(*sets))
    if version is not None and version not in versions:
        raise codec.V2Error(f"model {name!r} has no version {version!r} (versions: {', '.join(versions)})")
    platform = "kepler-serve-ensemble" if name == "ensemble" else f"kepler-serve-{name}"
    service, member = ingress(request), _members(request, name)[-1]
    served = await service.versions.resolve(member, version)
    schema = (await service.versions.metadata(member, served))["input_schema"]
    return codec.model_metadata(name, versions, platform, schema["feature_names"])


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, request: Request, version: str | None = None):
    _known(request, name)
    loaded = await ingress(request).loaded()
    members = _members(request, name)
    is_ready = all(loaded[m] if version is None else version in loaded[m] for m in members)
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 400)


@router.post("/models/{name}/infer", response_model=codec.InferResponse, response_model_exclude_none=True)
@router.post("/models/{name}/versions/{version}/infer", response_model=codec.InferResponse,
             response_model_exclude_none=True)
async def infer(name: str, body: codec.InferRequest, request: Request, version: str | None = None):
    _known(request, name)
    service = ingress(request)
    outputs = codec.requested_outputs(body, name)
    if codec.wants_explanation(outputs):
        return await _explain(name, version, body, outputs, request)
    rows = codec.decode(body, service.settings.max_batch_rows)
    answer, ctx = await predict(request, "v2_infer", name, version, rows)
    return codec.encode(name, answer.version, body.id or ctx.request_id, answer.probabilities, outputs)


async def _explain(name: str, version: str | None, body: codec.InferRequest, outputs: list[str], request: Request):
    """`contributions` asked for: the model deployment explains the rows, which also answers them."""
    service, ctx = ingress(request), context(request)
    rows = codec.decode(body, service.settings.max_explain_rows)
    await charge(request, name, len(rows))
    explained = await observed(request, "v2_infer", name, version, len(rows),
                               lambda: service.explainer.explain(name, version, FeatureRows.of(rows), ctx), ctx)
    _, explanation = explained.members[name]
    return codec.encode(name, explained.version, body.id or ctx.request_id, explained.probabilities, outputs,
                        explanation)
