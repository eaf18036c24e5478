"""What every route module shares: the ingress behind a request, the request's context, and one
prediction timed, counted and logged (one structured line per request)."""
from __future__ import annotations

import logging
import time

import numpy as np
from fastapi import Request

from ..dispatcher import Answer, RequestContext
from ..errors import ServingError
from .errors import status_of

logger = logging.getLogger("ray.serve")


def ingress(request: Request):
    """The ingress instance that built this app (serve_app/ingress.py: Router)."""
    return request.app.state.ingress


def context(request: Request) -> RequestContext:
    principal = request.scope.get("state", {}).get("principal")
    return RequestContext(request_id=ingress(request).request_id(),
                          principal=principal.name if principal is not None else None,
                          headers=request.headers)


def sees_variants(request: Request) -> bool:
    """Whether answers name the experiment variant that served them: to callers with the admin
    scope only. Anyone else (with authentication off, everyone) is not told, so the variant is no
    label for a client to steer its traffic by; the version is still named (README: Experiments)."""
    principal = request.scope.get("state", {}).get("principal")
    return principal is not None and "admin" in principal.scopes


async def predict(request: Request, route: str, model: str, version: str | None, rows: np.ndarray,
                  all_models: bool = False) -> tuple[Answer, RequestContext]:
    ctx = context(request)
    dispatcher = ingress(request).dispatcher
    answer = await observed(request, route, model, version, len(rows),
                            lambda: dispatcher.predict(model, version, rows, ctx, all_models), ctx)
    return answer, ctx


async def observed(request: Request, route: str, model: str, version: str | None, rows: int, run,
                   ctx: RequestContext | None = None):
    """`run()`'s answer (anything with model, version and maybe variant), timed, counted and logged."""
    service = ingress(request)
    request_id = ctx.request_id if ctx is not None else service.request_id()
    started, status, served = time.perf_counter(), 200, (model, version or "default", None)
    service.ensure_syncing()
    try:
        answer = await run()
        served = answer.model, answer.version, getattr(answer, "variant", None)
        return answer
    except ServingError as e:
        status = status_of(e)
        raise
    except Exception:  # a fault of ours: counted as the 500 the client gets, never as a success
        status = 500
        raise
    finally:
        seconds = time.perf_counter() - started
        if status == 200:
            service.metrics.observe_latency(served[0], served[1], seconds)
        service.metrics.request(route, status)
        logger.info("request", extra={"endpoint": route, "model": served[0], "version": served[1],
                                      "variant": served[2] or "primary", "rows": rows, "status": status,
                                      "latency_ms": round(seconds * 1000, 3), "request_id": request_id})
