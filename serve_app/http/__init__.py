"""The HTTP surface, one module per protocol: rest (/api/v1), explain (/api/v1/explain), catalogue
(KOIs by name, the candidates ranking), feedback (delayed labels), v2 (/v2), admin (experiments), ops (health, metrics,
docs) and the web page's static assets (/ui, serve_app/ui). `build_http_app` assembles them for one ingress instance."""
from __future__ import annotations

from importlib.metadata import version as package_version
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..auth import Authenticator
from ..config import RouterSettings
from . import admin, catalogue, errors, explain, feedback, ops, rest, v2
from .middleware import AccessControl, BodyLimit, Gate, PageHeaders, V2JsonBodies

DESCRIPTION = "Classify Kepler Objects of Interest as CONFIRMED, CANDIDATE or FALSE_POSITIVE."
APP_VERSION = package_version("kepler-serve")
UI = Path(__file__).parent.parent / "ui"


def build_http_app(ingress, gate: Gate, version: str = APP_VERSION) -> FastAPI:
    """The FastAPI app of one ingress instance; routes reach it through `app.state.ingress`."""
    app = FastAPI(title="kepler-serve", version=version, description=DESCRIPTION, docs_url=None, redoc_url=None)
    app.state.ingress = ingress
    app.mount("/docs-assets", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="docs-assets")
    app.mount("/ui", StaticFiles(directory=UI, html=True), name="ui")
    for surface in (rest, explain, catalogue, feedback, v2, admin, ops):
        app.include_router(surface.router)
    errors.install(app)
    app.add_middleware(PageHeaders)
    app.add_middleware(V2JsonBodies)
    app.add_middleware(BodyLimit, gate=gate)
    app.add_middleware(AccessControl, gate=gate)  # outermost: nothing is read before the caller is known
    return app


def openapi_schema() -> dict:
    """The OpenAPI document every ingress serves at /openapi.json."""
    return build_http_app(None, Gate.of(Authenticator({}), RouterSettings())).openapi()
