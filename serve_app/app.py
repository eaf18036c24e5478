"""The application builder named in serve_config.yaml: `serve_app.app:build_app`."""
from __future__ import annotations

from ray import serve
from ray.serve import Application

from .config import AppArgs, ModelSettings
from .controller import controller_deployment
from .deployments import ModelServer
from .ingress import Router

# Variant deployments start small; serve_config.yaml's `deployments` entries override these.
POOL_OPTIONS = {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 64, "num_replicas": 1,
                "health_check_period_s": 5}


def build_app(args: dict) -> Application:
    config = AppArgs(**(args or {}))
    registry = config.registry.model_dump()
    model_deployment = serve.deployment(ModelServer)
    handles = {
        name: model_deployment.options(name=name).bind(name, settings.model_dump(), registry)
        for name, settings in config.models.items()
    }
    pools = {}
    for deployment, model in config.pool_names().items():
        # A variant deployment starts on the model's default; its version comes at run time.
        settings = ModelSettings(default_version=config.models[model].default_version,
                                 max_models_per_replica=config.models[model].max_models_per_replica,
                                 threads=config.models[model].threads)
        pools[deployment] = model_deployment.options(name=deployment, **POOL_OPTIONS).bind(
            model, settings.model_dump(), registry)
    # Always deployed: besides experiments it is the desk that feedback (delayed labels) goes to.
    controller = controller_deployment().bind(pools, list(config.models), registry, config.feedback.model_dump())
    return serve.deployment(Router).options(name="Router").bind(handles, config.model_dump(), pools, controller)
