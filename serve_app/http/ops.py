"""Operations: health, the node's Prometheus text on the API port, and the offline API docs."""
from __future__ import annotations

import datetime as dt
import logging

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse

from ..schemas import HealthResponse
from .common import ingress
from .errors import error_response

router = APIRouter()
logger = logging.getLogger("ray.serve")


@router.get("/api/v1/health", response_model=HealthResponse)
async def health(request: Request):
    """Liveness and what is loaded: healthy, degraded (a model down or its breaker open) or unhealthy."""
    service = ingress(request)
    loaded = await service.loaded()
    breakers = {name: service.dispatcher.calls.state(name) for name in service.dispatcher.calls.breakers}
    up = [m for m in service.models if loaded[m] and breakers[m] == "closed"]
    status = "healthy" if len(up) == len(service.models) else "degraded" if up else "unhealthy"
    body = HealthResponse(status=status, timestamp=dt.datetime.now(dt.timezone.utc).isoformat(),
                          models_loaded=loaded, cache_size=sum(map(len, loaded.values())), breakers=breakers,
                          prediction_cache=service.caching.describe())
    return JSONResponse(body.model_dump(), status_code=200 if status != "unhealthy" else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request):
    """The Prometheus text of the node serving this request (clusters scrape every node)."""
    try:
        text = await ingress(request).metrics_text()
    except OSError as e:  # its address and the error's text are for the log, not the scraper
        logger.warning("this node's metrics agent did not answer: %s: %s", type(e).__name__, e)
        return error_response(503, "this node's metrics agent did not answer")
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/docs", include_in_schema=False)
async def docs():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="kepler-serve API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon.png")
