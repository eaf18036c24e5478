"""The Router: the graph's ingress deployment, and the only place the serving path meets Ray.

It owns the DeploymentHandles and turns them into the dispatcher's model call (Ray's exceptions
into domain errors), keeps the experiment book fresh off the request path, and builds its own
FastAPI app (serve_app/http) per instance, so middleware is configured from this instance's
validated config. The decisions live in the Ray-free dispatcher (serve_app/dispatcher.py)."""
from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
import uuid

import numpy as np
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from .auth import Authenticator
from .cache_setup import CacheSetup
from .config import AppArgs, RouterSettings
from .dispatcher import Dispatcher
from .errors import Conflict, ModelUnavailable, NotFoundError, Overloaded, ReplicaGone, ServingError
from .explaining import Explainer
from .feedback import AnsweredRows, Grading
from .http import APP_VERSION, build_http_app
from .http.middleware import Gate
from .koi import KOIService
from .metrics import RouterMetrics
from .model_calls import ModelCalls
from .ray_internals import current_request_id
from .refreshed import Refreshed
from .traffic import Traffic
from .versions import Versions

logger = logging.getLogger("ray.serve")
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError)
# serve.status() parses (and pickles) every deployment's config: 6% of a busy router's CPU when
# asked every 5 s. Router counts change only when it autoscales; a new replica asks at once.
ROUTER_COUNT_PERIOD_S = 30.0
REGISTRY_PROBE_PERIOD_S = 15.0  # one HEAD request (S3) per router every 15 s: cheap, and soon enough to alert


@serve.ingress()
class Router:
    def __init__(self, models: dict[str, DeploymentHandle], args: dict,
                 pools: dict[str, DeploymentHandle] | None = None, controller: DeploymentHandle | None = None):
        self.args = AppArgs(**args)
        self.settings = self.args.router
        self.models = list(models)
        self.handles = {**models, **(pools or {})}  # pools: "<model>_candidate" / "<model>_shadow"
        self.controller = controller
        self.configured_defaults = {name: s.default_version for name, s in self.args.models.items()}
        self.registry = self.args.registry.config().open()
        self.gate = Gate.of(Authenticator.from_env(), self.settings)
        self.metrics = RouterMetrics(self.models)
        self.versions = Versions(self.registry, self._default_ref, self.configured_defaults, self.settings.alias_cache_s)
        self.versions.pinned = self.args.named_versions(self.settings)
        self.traffic = Traffic()
        calls = ModelCalls(self._call_model, self.models, self.settings)
        self.dispatcher = Dispatcher(self.models, self.versions, calls, self.traffic, self.metrics, self.settings)
        self.explainer = Explainer(self.dispatcher, self._explain_model)
        self.answered = self.dispatcher.answered = AnsweredRows()
        self.caching = CacheSetup(self.metrics)
        self._configure_cache()
        self.kois = KOIService(self.registry, self.settings.catalogue)
        self._version_handles: dict[tuple[str, str], DeploymentHandle] = {}
        self._loaded = Refreshed(self._ask_loaded)
        self._metrics_text = Refreshed(self._fetch_metrics)
        self._syncing: asyncio.Task | None = None
        self.app_version = APP_VERSION
        self.metrics_url = _metrics_url()
        self.replica = _replica_id()
        for name in self.models:
            try:
                self.metrics.zero_model(name, self.registry.resolve(name, self.configured_defaults[name]))
            except Exception:  # noqa: BLE001 - the series appears with the first answer instead
                pass

    def __serve_build_asgi_app__(self):
        return build_http_app(self, self.gate, APP_VERSION)

    def reconfigure(self, user_config: dict) -> None:
        self.settings = RouterSettings(**(user_config or {}))
        for model, spec in self.settings.experiments.items():
            for kind in ("candidate", "shadow"):
                if getattr(spec, kind) and f"{model}_{kind}" not in self.handles:
                    raise ValueError(f"experiments.{model}.{kind}: no {model}_{kind} deployment; add "
                                     f"{model} to the application's experiment_pools")
        self.gate.configure(self.settings)
        if not self.settings.auth.enabled:
            logger.warning("AUTHENTICATION IS OFF: predictions, listings and docs are open to anyone who can "
                           "reach this port. Turn it on (user_config auth.enabled) anywhere but a laptop.")
        self.dispatcher.configure(self.settings)
        self.kois.configure(self.settings.catalogue)
        self.versions.pinned = self.args.named_versions(self.settings)
        self._configure_cache()

    def _configure_cache(self) -> None:
        self.caching.configure(self.settings.cache)
        self.metrics.redis_state(self.caching.link is not None and self.caching.link.state == "bypassed")
        self.dispatcher.cache, self.gate.shared = self.caching.cache, self.caching.limits

    async def check_health(self) -> None:
        self.ensure_syncing()

    def request_id(self) -> str:
        return current_request_id() or uuid.uuid4().hex

    # ---- the model call the dispatcher makes ----------------------------------------------------
    def _handle(self, deployment: str, version: str) -> DeploymentHandle:
        """The deployment's handle bound to one version, made once: `options()` builds (and pickles)
        a request-router config each time it is called."""
        key = (deployment, version)
        if key not in self._version_handles:
            if len(self._version_handles) >= 64:  # callers may name any version: keep the newest only
                del self._version_handles[next(iter(self._version_handles))]
            self._version_handles[key] = self.handles[deployment].options(multiplexed_model_id=version)
        return self._version_handles[key]

    async def _call_model(self, deployment: str, version: str, rows: np.ndarray, request_ids: list[str]) -> np.ndarray:
        return await self._remote("predict", deployment, version, rows, request_ids)

    async def _explain_model(self, deployment: str, version: str, rows: np.ndarray, request_id: str):
        return await self._remote("explain", deployment, version, rows, [request_id])

    async def _remote(self, method: str, deployment: str, version: str, rows: np.ndarray, request_ids: list[str]):
        """A model deployment's method, with Ray's exceptions turned into domain errors."""
        try:
            call = getattr(self._handle(deployment, version), method)
            return await call.remote(version, rows, request_ids, self.replica)
        except ServingError as e:  # the replica's own verdict on this request, wrapped by Ray
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, ServingError) else e) from None
        except BackPressureError:
            raise Overloaded(f"{deployment} is overloaded: its request queue is full") from None
        except _REPLICA_GONE as e:
            raise ReplicaGone(type(e).__name__) from None

    async def _default_ref(self, model: str) -> str:
        return await asyncio.wait_for(self.handles[model].default_ref.remote(), self.settings.model_timeout_s)

    # ---- what the routes ask of Ray --------------------------------------------------------------
    async def loaded(self) -> dict[str, list[str]]:
        """What each model deployment has loaded, asked at most once a second (health and
        readiness are open: probes must not multiply into calls to every deployment)."""
        return await self._loaded.get()

    async def _ask_loaded(self) -> dict[str, list[str]]:
        async def one(name):
            try:
                return await asyncio.wait_for(self.handles[name].loaded_versions.remote(), 5)
            except Exception:  # noqa: BLE001 - an unreachable deployment has nothing loaded
                return []
        return dict(zip(self.models, await asyncio.gather(*(one(n) for n in self.models))))

    async def describe(self, model: str, version: str) -> dict:
        return await self._handle(model, version).describe.remote(version)

    async def metrics_text(self) -> str:
        """This node's Prometheus text, fetched at most once a second however many scrape it."""
        return await self._metrics_text.get()

    async def _fetch_metrics(self) -> str:
        if not self.metrics_url:
            raise OSError("this node's metrics export address is unknown")
        return await asyncio.to_thread(_fetch, self.metrics_url)

    async def ask_controller(self, method: str, *args, **kwargs):
        if self.controller is None:
            raise NotFoundError("experiments are not enabled in this application")
        try:
            return await asyncio.wait_for(getattr(self.controller, method).remote(*args, **kwargs), 30)
        except Exception as e:  # noqa: BLE001 - Ray wraps the controller's own errors
            cause = e if isinstance(e, (LookupError, ValueError)) else getattr(e, "cause", None)
            if isinstance(cause, LookupError):
                raise NotFoundError(str(cause)) from None
            if isinstance(cause, ValueError):
                raise Conflict(str(cause)) from None
            raise ModelUnavailable(f"experiment controller unavailable: {type(e).__name__}") from None

    # ---- delayed ground truth -----------------------------------------------------------------
    async def gradings(self) -> list[Grading]:
        """The versions a KOI's label grades now: each model's default (the stable variant where an
        experiment runs) and each running experiment's candidate."""
        gradings = []
        for model in self.models:
            try:
                version = await self.versions.resolve(model, None)
            except ServingError:
                continue
            record = self.traffic.book.get(model) or {}
            running = record.get("state") == "running" and record.get("candidate_version")
            gradings.append(Grading(model, version, "stable" if running else None, model))
            if running and f"{model}_candidate" in self.handles:
                gradings.append(Grading(model, record["candidate_version"], "candidate", f"{model}_candidate"))
        return gradings

    async def grade(self, deployment: str, version: str, rows: np.ndarray) -> np.ndarray:
        return await self.dispatcher.calls(deployment, version, rows, self.request_id())

    async def send_feedback(self, items: list, scored: dict, source: str | None, principal: str | None) -> dict:
        """To the controller, with the rows answered since the last sync (so a label for a request
        answered a moment ago joins); they are put back if the call fails."""
        answered = self.answered.drain()
        try:
            return await self.ask_controller("feedback", items, scored, source, principal, answered)
        except Exception:
            self.answered.restore(answered)
            raise

    def router_view(self) -> dict:
        return {"replica": _replica_id(), "generation": self.traffic.generation,
                "replicas_sharing_rate_limits": self.gate.replicas}

    # ---- the experiment book, kept fresh off the request path ----------------------------------
    def ensure_syncing(self) -> None:
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.ensure_future(self._sync_forever())

    async def _sync_forever(self) -> None:
        counted = probed = -ROUTER_COUNT_PERIOD_S
        while True:
            if time.monotonic() - counted > ROUTER_COUNT_PERIOD_S:
                counted = time.monotonic()
                self.gate.replicas = await asyncio.to_thread(_router_replicas, self.gate.replicas)
            if time.monotonic() - probed > REGISTRY_PROBE_PERIOD_S:
                probed = time.monotonic()
                self.metrics.registry_reachable(await asyncio.to_thread(_registry_reachable, self.registry))
            if self.controller is not None:
                await self._sync_once()
            await asyncio.sleep(self.settings.sync_period_s)

    async def _sync_once(self) -> None:
        drained, answered = self.traffic.recorder.drain(), self.answered.drain()
        specs = {m: s.model_dump() for m, s in self.settings.experiments.items()}
        try:
            self.traffic.adopt(await asyncio.wait_for(
                self.controller.sync.remote(specs, drained, answered, await self._stable_versions()), 5))
        except Exception as e:  # noqa: BLE001 - keep the last book; resend the statistics later
            self.traffic.recorder.restore(drained)
            self.answered.restore(answered)
            logger.warning("experiment controller unreachable, keeping generation %d: %s",
                           self.traffic.generation, type(e).__name__)


    async def _stable_versions(self) -> dict[str, str]:
        """Each model's default version (its stable variant), as far as the alias cache knows it now."""
        versions = {}
        for model in self.models:
            try:
                versions[model] = await self.versions.resolve(model, None)
            except ServingError:  # the registry is away: the controller keeps the last one it heard
                pass
        return versions


def _router_replicas(known: int) -> int:
    """How many router replicas share the rate limits (asked of Serve off the request path)."""
    try:
        context = serve.get_replica_context()
        status = serve.status().applications[context.app_name].deployments[context.deployment]
        return max(1, status.replica_states.get("RUNNING", known))
    except Exception:  # noqa: BLE001 - keep the last count
        return known


def _registry_reachable(registry) -> bool:
    """Whether the registry's store answers: a key that need not exist, asked (S3: one HEAD)."""
    try:
        registry.store.exists("models/.reachable")
        return True
    except Exception as e:  # noqa: BLE001 - the store says unreachable in its own words
        logger.warning("model registry unreachable: %s", type(e).__name__)
        return False


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica
        return "local"


def _metrics_url() -> str | None:
    """Where this node's Ray metrics agent exports Prometheus text."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback/cluster address
        return response.read().decode()
