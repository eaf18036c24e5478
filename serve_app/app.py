"""The application builder named in serve_config.yaml: `serve_app.app:build_app`."""
from __future__ import annotations

from ray import serve
from ray.serve import Application

from .config import AppArgs
from .deployments import ModelServer
from .router import Router


def build_app(args: dict) -> Application:
    config = AppArgs(**(args or {}))
    registry = config.registry.model_dump()
    model_deployment = serve.deployment(ModelServer)
    handles = {
        name: model_deployment.options(name=name).bind(name, settings.model_dump(), registry)
        for name, settings in config.models.items()
    }
    return serve.deployment(Router).options(name="Router").bind(handles, config.model_dump())
