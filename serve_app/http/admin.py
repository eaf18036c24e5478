"""Experiments, /api/v1/experiments: the book with each variant's statistics (admin scope), and
the admin actions, which the experiment controller carries out and persists before answering."""
from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import NotFoundError
from ..schemas import ErrorResponse, RollbackRequest, WeightRequest
from .common import ingress

ERRORS = {status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 422, 503)}
router = APIRouter(prefix="/api/v1/experiments", responses=ERRORS)


@router.get("")
async def experiments(request: Request):
    """Every experiment: variants, weights, request counts, error rate, p50/p95 latency, predicted
    classes, the shadow's agreement with the primary, and the state with its reason and time."""
    service = ingress(request)
    service.ensure_syncing()
    view = await service.ask_controller("view")
    return {**view, "router": service.router_view()}


async def _act(request: Request, action: str, model: str, **arguments):
    service = ingress(request)
    if model not in service.models:
        raise NotFoundError(f"unknown model {model!r}: expected one of {', '.join(service.models)}")
    actor = request.scope["state"]["principal"].name  # AccessControl let only an admin through
    return await service.ask_controller("admin", action, model, actor, **arguments)


@router.put("/{model}/weight")
async def set_weight(model: str, body: WeightRequest, request: Request):
    """Set the candidate's weight (holds until a different configuration is applied)."""
    return await _act(request, "weight", model, weight=body.weight)


@router.post("/{model}/rollback")
async def rollback(model: str, request: Request, body: RollbackRequest | None = None):
    """Send all of the model's traffic to the stable variant, for good (until a new candidate)."""
    return await _act(request, "rollback", model, reason=body.reason if body else None)


@router.post("/{model}/promote")
async def promote(model: str, request: Request):
    """Move the model's `stable` alias to the candidate version; the experiment ends."""
    return await _act(request, "promote", model)
