"""The router: the FastAPI ingress of the graph. It validates requests, resolves aliases,
chooses models, calls the model deployments through their handles (retrying once when a replica
dies, behind a circuit breaker each), votes the ensemble and shapes the answers of the REST API
and the Open Inference Protocol V2."""

import asyncio
import datetime as dt
import logging
import time
import urllib.request
import uuid
from pathlib import Path

import fastapi_offline
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from registry import InvalidName, NotFound
from runtimes.schema import LABELS, input_schema, output_schema

from . import traffic, v2
from .access import AccessControl
from .aliases import AliasResolver
from .auth import Authenticator
from .breaker import CircuitBreaker
from .coalescing import Coalescer
from .config import AppArgs, RouterSettings
from .ensemble import soft_vote
from .metrics import RouterMetrics
from .errors import BadRequest, ModelUnavailable, NotFoundError, ServingError
from .schemas import (BatchItem, BatchPredictRequest, BatchPredictResponse, EnsembleInfo, ErrorResponse,
                      HealthResponse, ModelAnswer, PredictRequest, PredictResponse, RollbackRequest,
                      WeightRequest)
from .traffic import Route, ShadowCopies, Traffic

logger = logging.getLogger("ray.serve")
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError)
_ERRORS = {422: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
_V2_ERRORS = {400: {"model": ErrorResponse, "description": "invalid request"}}
_ADMIN_ERRORS = {status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 422, 503)}

app = FastAPI(title="kepler-serve", version="0.1.0", docs_url=None, redoc_url=None,
              description="Classify Kepler Objects of Interest as CONFIRMED, CANDIDATE or FALSE_POSITIVE.")
app.mount("/docs-assets", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs-assets")


class BodyLimit:
    """413 for bodies over the configured size, checked before anything parses them (ASGI)."""

    limit = 2_000_000

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        # No declared length (chunked): buffer up to the limit, then replay the body.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        response = _error(413, f"request body exceeds the limit of {self.limit} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class V2JsonBodies:
    """V2 clients (tritonclient among them) may send JSON without a Content-Type: treat it as JSON."""

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v2/") and scope["method"] == "POST":
            headers = scope.get("headers") or []
            if not any(name == b"content-type" for name, _ in headers):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


app.add_middleware(V2JsonBodies)
app.add_middleware(BodyLimit)
app.add_middleware(AccessControl)  # outermost: nothing is read before the caller is known


class BreakerOpen(ServingError):
    status_code = 503


class Conflict(ServingError):
    status_code = 409


class Overloaded(ServingError):
    status_code = 503


def _router_replicas(known: int) -> int:
    """How many router replicas share the rate limits (asked of Serve off the request path)."""
    try:
        context = serve.get_replica_context()
        status = serve.status().applications[context.app_name].deployments[context.deployment]
        return max(1, status.replica_states.get("RUNNING", known))
    except Exception:  # noqa: BLE001 - keep the last count
        return known


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


def _request_id() -> str:
    try:
        request_id = serve.context._get_serve_request_context().request_id
    except Exception:  # noqa: BLE001 - outside a Serve request (unit use)
        request_id = ""
    return request_id or uuid.uuid4().hex


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _location(loc) -> str:
    """('body', 'features', 'list[...]', 2) -> 'features[2]': pydantic's union branch tags dropped."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"{parts.pop() if parts else ''}[{part}]")
        elif part != "body" and "[" not in part and "(" not in part:
            parts.append(part)
    return ".".join(parts) or "body"


_BRANCH_MISMATCH = ("Input should be a valid dictionary", "Input should be a valid list")


def _first_problem(exc: RequestValidationError) -> str:
    errors = exc.errors() or [{"loc": (), "msg": "invalid request"}]
    specific = [e for e in errors if not str(e.get("msg", "")).startswith(_BRANCH_MISMATCH)] or errors
    error = specific[0]
    if error.get("type") == "json_invalid":
        return f"body: not valid JSON (at character {error.get('loc', ('', '?'))[-1]})"
    return f"{_location(error.get('loc', ()))}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status, message = exc.status_code, str(exc.detail)
    if status == 400 and "parsing the body" in message:  # malformed JSON or bytes that are not UTF-8
        status, message = 422, "body: not valid JSON (RFC 8259, UTF-8)"
    if request.url.path.startswith("/v2") and 400 <= status < 500:
        status = 400
    return _error(status, message, getattr(exc, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message = _first_problem(exc)
    if request.url.path.startswith("/v2"):
        return _error(400, message)
    detail = [{"field": _location(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
    return JSONResponse({"error": message, "detail": detail[:10],
                         "expected_features": input_schema()["feature_names"]}, status_code=422)


def _answers(probabilities: np.ndarray, with_probabilities: bool) -> list[BatchItem]:
    return [BatchItem(prediction=LABELS[int(row.argmax())],
                      probabilities=dict(zip(LABELS, map(float, row))) if with_probabilities else None)
            for row in probabilities]


@serve.ingress(app)
class Router:
    def __init__(self, models: dict[str, DeploymentHandle], args: dict,
                 pools: dict[str, DeploymentHandle] | None = None, controller: DeploymentHandle | None = None):
        self.args = AppArgs(**args)
        self.models = models
        self.pools = pools or {}  # "<model>_candidate" / "<model>_shadow" -> handle
        self.handles = {**models, **self.pools}
        self.controller = controller
        self.auth = AccessControl.auth = Authenticator.from_env()
        self.traffic = Traffic()
        self._syncing: asyncio.Task | None = None
        self.registry = self.args.registry.config().open()
        self.settings = self.args.router
        self.aliases = AliasResolver(self.registry, self.settings.alias_cache_s)
        self.breakers = {name: self._breaker() for name in self.handles}
        self._version_handles: dict[tuple[str, str], DeploymentHandle] = {}
        self.coalescer = Coalescer(self._send, self.settings.batching.calls_in_flight, self.settings.batching.max_rows)
        self._metadata: dict[tuple[str, str], dict] = {}
        self._defaults: dict[str, tuple[str, float]] = {}
        self._refreshing: dict[str, asyncio.Future] = {}
        self.metrics = RouterMetrics(list(models))
        for name, settings in self.args.models.items():
            try:
                self.metrics.zero_model(name, self.registry.resolve(name, settings.default_version))
            except Exception:  # noqa: BLE001 - the series appears with the first answer instead
                pass
        self.metrics_url = _metrics_url()
        self.shadows = ShadowCopies(self._shadow_answer, self.traffic.recorder, self.metrics.dropped_shadow)

    def _breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.settings.breaker.failure_threshold, self.settings.breaker.cooldown_s)

    def reconfigure(self, user_config: dict) -> None:
        self.settings = RouterSettings(**(user_config or {}))
        BodyLimit.limit = self.settings.max_body_bytes  # one router per replica process
        AccessControl.enabled = self.settings.auth.enabled
        AccessControl.requests_per_minute = self.settings.auth.requests_per_minute
        if not self.settings.auth.enabled:
            logger.warning("AUTHENTICATION IS OFF: predictions, listings and docs are open to anyone who can "
                           "reach this port. Turn it on (user_config auth.enabled) anywhere but a laptop.")
        self.aliases.ttl_s = self.settings.alias_cache_s
        self.coalescer.calls_in_flight = self.settings.batching.calls_in_flight
        self.coalescer.max_rows = self.settings.batching.max_rows
        for breaker in self.breakers.values():
            breaker.failure_threshold = self.settings.breaker.failure_threshold
            breaker.cooldown_s = self.settings.breaker.cooldown_s
        for model, spec in self.settings.experiments.items():
            for kind in ("candidate", "shadow"):
                if getattr(spec, kind) and f"{model}_{kind}" not in self.pools:
                    raise ValueError(f"experiments.{model}.{kind}: no {model}_{kind} deployment; add "
                                     f"{model} to the application's experiment_pools")
        self.traffic.configure(self.settings.experiments)
        self.shadows.resize(max([s.shadow_queue for s in self.settings.experiments.values()], default=64))

    # ---- the experiment book, kept fresh off the request path --------------------------------
    def _ensure_syncing(self) -> None:
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.ensure_future(self._sync_forever())

    async def _sync_forever(self) -> None:
        counted = 0.0
        while True:
            if time.monotonic() - counted > 5:  # serve.status() is costly; router counts change rarely
                counted = time.monotonic()
                AccessControl.replicas = await asyncio.to_thread(_router_replicas, AccessControl.replicas)
            if self.controller is None:
                await asyncio.sleep(self.settings.sync_period_s)
                continue
            drained = self.traffic.recorder.drain()
            specs = {m: s.model_dump() for m, s in self.settings.experiments.items()}
            try:
                snapshot = await asyncio.wait_for(self.controller.sync.remote(specs, drained), 5)
                self.traffic.adopt(snapshot)
            except Exception as e:  # noqa: BLE001 - keep the last book; resend the statistics later
                self.traffic.recorder.restore(drained)
                logger.warning("experiment controller unreachable, keeping generation %d: %s",
                               self.traffic.generation, type(e).__name__)
            await asyncio.sleep(self.settings.sync_period_s)

    async def check_health(self) -> None:
        self._ensure_syncing()

    # ---- calling models -------------------------------------------------------------------
    async def _call(self, name: str, version: str, rows: np.ndarray, variant: str = "primary") -> np.ndarray:
        """One model deployment's answer; `variant` picks the stable (primary), candidate or shadow one."""
        deployment = name if variant == "primary" else f"{name}_{variant}"
        try:
            result = await self._through_breaker(deployment, version, rows)
        except Exception:
            self.metrics.failed(name, version, len(rows), variant)
            raise
        finally:
            if variant == "primary":
                self.metrics.breaker_state(name, self.breakers[name].state.value)
        self.metrics.answered(name, version, [LABELS[i] for i in result.argmax(axis=1)], variant)
        return result

    async def _model_answer(self, name: str, version_ref: str | None, version: str, rows: np.ndarray):
        """(probabilities, version, variant): requests that name no version take part in the model's
        experiment; a failing candidate's request is answered by the stable variant."""
        route = None if version_ref else self.traffic.route(name, traffic.REQUEST_HEADERS.get())
        if route is None:
            return await self._call(name, version, rows), version, None
        if route.variant == "candidate":
            result = await self._timed(route, "candidate", self._call(name, route.candidate_version, rows, "candidate"))
            if result is not None:
                self._shadow(name, route, rows, result)
                return result, route.candidate_version, "candidate"
        result = await self._timed(route, "stable", self._call(name, version, rows), reraise=True)
        self._shadow(name, route, rows, result)
        return result, version, "stable"

    async def _timed(self, route: Route, variant: str, call, reraise: bool = False) -> np.ndarray | None:
        started = time.perf_counter()
        try:
            result = await call
        except ServingError:
            if route.compares:
                self.traffic.recorder.failed(route.experiment, variant)
            if reraise:
                raise
            return None
        if route.compares:
            self.traffic.recorder.answered(route.experiment, variant, time.perf_counter() - started,
                                           result.argmax(axis=1).tolist())
        return result

    def _shadow(self, name: str, route: Route, rows: np.ndarray, primary: np.ndarray) -> None:
        if route.shadow_version:
            self.shadows.offer(name, route, rows, primary)

    async def _shadow_answer(self, name: str, version: str, rows: np.ndarray) -> np.ndarray:
        return await self._call(name, version, rows, "shadow")

    async def _through_breaker(self, name: str, version: str, rows: np.ndarray) -> np.ndarray:
        """Turned away while the deployment's breaker is open; otherwise batched with concurrent
        requests for the same version into one call (`_send`)."""
        breaker = self.breakers[name]
        if not breaker.allow():
            raise BreakerOpen(f"{name} is failing; its circuit breaker is open. Retry in {breaker.retry_after_s()} s")
        return await self.coalescer((name, version), rows, _request_id())

    def _handle(self, name: str, version: str) -> DeploymentHandle:
        """The deployment's handle bound to one version, made once: `options()` builds (and pickles)
        a request-router config each time it is called."""
        key = (name, version)
        if key not in self._version_handles:
            if len(self._version_handles) >= 64:  # callers may name any version: keep the newest only
                del self._version_handles[next(iter(self._version_handles))]
            self._version_handles[key] = self.handles[name].options(multiplexed_model_id=version)
        return self._version_handles[key]

    async def _send(self, key: tuple[str, str], rows: np.ndarray, request_ids: list[str]) -> np.ndarray:
        """One handle call for the rows of one or more requests (the coalescer's batch), retried
        once on another replica when its replica dies; its outcome feeds the breaker once."""
        name, version = key
        breaker = self.breakers[name]
        handle = self._handle(name, version)
        for attempt in (1, 2):
            try:
                result = await asyncio.wait_for(handle.predict.remote(version, rows, request_ids),
                                                self.settings.model_timeout_s)
            except ServingError as e:  # this request's own problem (unknown or unloadable version)
                cause = getattr(e, "cause", None)  # Ray wraps replica exceptions in RayTaskError
                raise (cause if isinstance(cause, ServingError) else e) from None
            except BackPressureError:  # the model's queue is full: shed load, and it is not a model failure
                raise Overloaded(f"{name} is overloaded: its request queue is full") from None
            except _REPLICA_GONE:
                if attempt == 1:  # idempotent: try another replica once
                    logger.warning("%s replica died under a request; retrying once", name)
                    continue
                breaker.record_failure()
                raise ModelUnavailable(f"{name} replicas are unavailable") from None
            except Exception as e:  # noqa: BLE001 - a failing or timed-out model: feed the breaker
                breaker.record_failure()
                logger.warning("%s %s failed: %s", name, version, e)
                raise ModelUnavailable(f"{name} {version} failed: {type(e).__name__}") from None
            breaker.record_success()
            return result
        raise AssertionError("unreachable")

    async def _serve(self, route: str, model: str, version_ref: str | None, rows: np.ndarray, all_models: bool = False):
        """_predict, timed, counted and logged: one structured log line per request."""
        started, status, served = time.perf_counter(), 200, (model, version_ref or "default", None)
        self._ensure_syncing()
        try:
            result = await self._predict(model, version_ref, rows, all_models)
            served = result[1], result[2], result[5]
            return result
        except ServingError as e:
            status = e.status_code
            raise
        finally:
            seconds = time.perf_counter() - started
            if status == 200:
                self.metrics.observe_latency(served[0], served[1], seconds)
            self.metrics.request(route, status)
            logger.info("request", extra={"endpoint": route, "model": served[0], "version": served[1],
                                          "variant": served[2] or "primary", "rows": len(rows), "status": status,
                                          "latency_ms": round(seconds * 1000, 3)})

    async def _metadata_of(self, name: str, version: str) -> dict:
        key = (name, version)
        if key not in self._metadata:  # versions are immutable: cache for good
            metadata = await self._registry_call(lambda: self.registry.metadata(name, version))
            self._metadata[key] = metadata.model_dump()
        return self._metadata[key]

    async def _resolve(self, name: str, version_ref: str | None) -> str:
        """A request's version or alias, or else the model deployment's default, as a concrete version."""
        return await self.aliases.resolve(name, version_ref or await self._default_ref(name))

    async def _default_ref(self, name: str) -> str:
        """What the running model replicas serve by default. Asked once per router replica before
        its first answer, then refreshed in the background every alias_cache_s: never a wait on
        the request path once known."""
        cached = self._defaults.get(name)
        if cached is None:
            return await self._refresh_default(name)
        if time.monotonic() - cached[1] >= self.settings.alias_cache_s and name not in self._refreshing:
            self._refreshing[name] = asyncio.ensure_future(self._refresh_default(name))
        return cached[0]

    async def _refresh_default(self, name: str) -> str:
        cached = self._defaults.get(name)
        try:
            ref = await asyncio.wait_for(self.models[name].default_ref.remote(), self.settings.model_timeout_s)
        except Exception:  # noqa: BLE001 - unreachable: the last answer, else the configuration's
            ref = cached[0] if cached else self.args.models[name].default_version
        finally:
            self._refreshing.pop(name, None)
        self._defaults[name] = (ref, time.monotonic())
        return ref

    async def _auto(self, version_ref: str | None) -> str:
        """The model whose served version has the best registry ROC-AUC."""
        best, best_auc = None, -1.0
        for name in self.models:
            if self.breakers[name].state.value == "open":
                continue
            try:
                version = await self._resolve(name, version_ref)
                auc = (await self._metadata_of(name, version))["performance"]["roc_auc"]
            except ServingError:
                continue
            if auc > best_auc:
                best, best_auc = name, auc
        if best is None:
            raise ModelUnavailable(f"no model can serve version {version_ref or 'default'!r}")
        return best

    async def _ensemble(self, version_ref: str | None, rows: np.ndarray):
        weights = self.settings.ensemble_weights
        members = [m for m in self.models if weights.get(m, 0) > 0]
        versions = {}
        for name in members:
            versions[name] = await self._resolve(name, version_ref)
        results = await asyncio.gather(*(self._model_answer(n, version_ref, versions[n], rows) for n in members),
                                       return_exceptions=True)
        answers, skipped = {}, {}
        for name, result in zip(members, results):
            if isinstance(result, BaseException):
                skipped[name] = getattr(result, "message", type(result).__name__)
            else:
                answers[name], versions[name] = result[0], result[1]
        if not answers:
            raise ModelUnavailable("every ensemble member failed: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        info = EnsembleInfo(members=sorted(answers), weights={m: weights[m] for m in members},
                            degraded=bool(skipped), skipped=skipped)
        version = versions[members[0]] if len(set(versions.values())) == 1 else (version_ref or "mixed")
        return soft_vote(answers, weights), version, info, answers, versions

    async def _predict(self, model: str, version_ref: str | None, rows: np.ndarray, all_models: bool):
        """(probabilities, model, version, ensemble info, {model: (version, probabilities)}, variant)."""
        if model == "ensemble" or all_models:
            probabilities, version, info, answers, versions = await self._ensemble(version_ref, rows)
            others = {n: (versions[n], p) for n, p in answers.items()} if all_models else {}
            if model == "ensemble":
                return probabilities, "ensemble", version, info, others, None
            if model == "auto":
                model = await self._auto(version_ref)
            if model in answers:
                return answers[model], model, versions[model], None, others, None
        elif model == "auto":
            model = await self._auto(version_ref)
        version = await self._resolve(model, version_ref)
        probabilities, version, variant = await self._model_answer(model, version_ref, version, rows)
        return probabilities, model, version, None, {}, variant

    async def _guarded(self, coroutine):
        try:
            return await coroutine
        except BreakerOpen as e:
            retry = min(b.retry_after_s() for b in self.breakers.values() if b.opened_at) if any(
                b.opened_at for b in self.breakers.values()) else 1
            return _error(503, e.message, {"Retry-After": str(retry)})
        except (ModelUnavailable, Overloaded) as e:
            return _error(503, e.message, {"Retry-After": "1"})
        except ServingError as e:
            return _error(e.status_code, e.message)

    # ---- REST API -------------------------------------------------------------------------
    @app.post("/api/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=_ERRORS)
    async def predict(self, request: PredictRequest, http: Request):
        """Classify one KOI."""
        traffic.REQUEST_HEADERS.set(http.headers)
        return await self._guarded(self._predict_one(request))

    async def _predict_one(self, request: PredictRequest) -> PredictResponse:
        started = time.perf_counter()
        probabilities, model, version, info, others, variant = await self._serve(
            "predict", request.model, request.version, request.matrix(), request.return_all_models)
        answer = _answers(probabilities, request.return_probabilities)[0]
        return PredictResponse(
            request_id=_request_id(), prediction=answer.prediction, probabilities=answer.probabilities,
            model=model, version=version, variant=variant, latency_ms=round((time.perf_counter() - started) * 1000, 3), ensemble=info,
            all_models=[ModelAnswer(model=n, version=v, **_answers(p, request.return_probabilities)[0].model_dump())
                        for n, (v, p) in sorted(others.items())] if request.return_all_models else None)

    @app.post("/api/v1/predict/batch", response_model=BatchPredictResponse, response_model_exclude_none=True,
              responses=_ERRORS)
    async def predict_batch(self, request: BatchPredictRequest, http: Request):
        """Classify many KOIs in one call (up to the configured row limit)."""
        traffic.REQUEST_HEADERS.set(http.headers)
        if len(request.instances) > self.settings.max_batch_rows:
            return _error(422, f"instances: {len(request.instances)} rows exceed the limit of "
                               f"{self.settings.max_batch_rows}")
        return await self._guarded(self._predict_many(request))

    async def _predict_many(self, request: BatchPredictRequest) -> BatchPredictResponse:
        started = time.perf_counter()
        probabilities, model, version, info, others, variant = await self._serve(
            "predict_batch", request.model, request.version, request.matrix(), request.return_all_models)
        return BatchPredictResponse(
            request_id=_request_id(), predictions=_answers(probabilities, request.return_probabilities),
            model=model, version=version, variant=variant, latency_ms=round((time.perf_counter() - started) * 1000, 3), ensemble=info,
            all_models={n: _answers(p, request.return_probabilities) for n, (_, p) in sorted(others.items())}
            if request.return_all_models else None)

    @app.get("/api/v1/schema")
    async def schema(self):
        """The feature schema: names in order, dtype, and the labels."""
        return {"input": input_schema(), "output": output_schema()}

    @app.get("/api/v1/models")
    async def list_models(self):
        """Every model with its versions and aliases."""
        def summaries():
            return {name: {"versions": (s := self.registry.summary(name)).versions, "aliases": s.aliases,
                           "default_version": self.args.models[name].default_version}
                    for name in self.models}
        return await self._guarded(self._registry_call(summaries))

    async def _registry_call(self, function):
        try:
            return await asyncio.to_thread(function)
        except NotFound as e:
            raise NotFoundError(str(e)) from None
        except InvalidName as e:
            raise BadRequest(str(e)) from None
        except Exception as e:  # noqa: BLE001 - registry unreachable or malformed
            raise ModelUnavailable(f"registry unavailable: {e}") from None

    @app.get("/api/v1/models/{name}/info", responses=_ERRORS)
    async def model_info(self, name: str, version: str | None = None):
        """The served version's metadata: features, metrics, aliases, checksums, load time."""
        if name not in self.models:
            return _error(404, f"unknown model {name!r}: expected one of {', '.join(self.models)}")

        async def info():
            resolved = await self._resolve(name, version)
            metadata = await self._metadata_of(name, resolved)
            handle = self.models[name].options(multiplexed_model_id=resolved)
            loaded = await handle.describe.remote(resolved)
            aliases = await self._registry_call(lambda: self.registry.aliases(name))
            return {"name": name, "version": resolved, "requested": version, "aliases": aliases,
                    "metadata": metadata, "checksums": loaded["checksums"], "load_time_s": loaded["load_time_s"]}
        return await self._guarded(info())

    async def _loaded(self) -> dict[str, list[str]]:
        async def one(name):
            try:
                return await asyncio.wait_for(self.models[name].loaded_versions.remote(), 5)
            except Exception:  # noqa: BLE001 - an unreachable deployment has nothing loaded
                return []
        return dict(zip(self.models, await asyncio.gather(*(one(n) for n in self.models))))

    @app.get("/api/v1/health", response_model=HealthResponse)
    async def health(self):
        """Liveness and what is loaded: healthy, degraded (a model down or its breaker open) or unhealthy."""
        loaded = await self._loaded()
        breakers = {name: b.state.value for name, b in self.breakers.items()}
        up = [n for n in self.models if loaded[n] and breakers[n] == "closed"]
        status = "healthy" if len(up) == len(self.models) else "degraded" if up else "unhealthy"
        body = HealthResponse(status=status, timestamp=dt.datetime.now(dt.timezone.utc).isoformat(),
                              models_loaded=loaded, cache_size=sum(map(len, loaded.values())), breakers=breakers)
        return JSONResponse(body.model_dump(), status_code=200 if status != "unhealthy" else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(self):
        """The Prometheus text of the node serving this request (clusters scrape every node)."""
        if not self.metrics_url:
            return _error(503, "this node's metrics export address is unknown")
        try:
            text = await asyncio.to_thread(_fetch, self.metrics_url)
        except OSError as e:
            return _error(503, f"the node's metrics agent did not answer: {e}")
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    async def docs(self):
        return get_swagger_ui_html(openapi_url="/openapi.json", title="kepler-serve API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")

    # ---- experiments -----------------------------------------------------------------------
    async def _ask_controller(self, method: str, *args, **kwargs):
        if self.controller is None:
            raise NotFoundError("experiments are not enabled in this application")
        try:
            return await asyncio.wait_for(getattr(self.controller, method).remote(*args, **kwargs), 30)
        except LookupError as e:
            raise NotFoundError(str(e)) from None
        except ValueError as e:
            raise Conflict(str(e)) from None
        except Exception as e:  # noqa: BLE001 - Ray wraps the controller's own errors
            cause = getattr(e, "cause", None)
            if isinstance(cause, LookupError):
                raise NotFoundError(str(cause)) from None
            if isinstance(cause, ValueError):
                raise Conflict(str(cause)) from None
            raise ModelUnavailable(f"experiment controller unavailable: {type(e).__name__}") from None

    @app.get("/api/v1/experiments", responses=_ADMIN_ERRORS)
    async def experiments(self):
        """Every experiment: variants, weights, request counts, error rate, p50/p95 latency, predicted
        classes, the shadow's agreement with the primary, and the state with its reason and time."""
        self._ensure_syncing()
        view = await self._guarded(self._ask_controller("view"))
        if isinstance(view, JSONResponse):
            return view
        return {**view, "router": {"replica": _replica_id(), "generation": self.traffic.generation,
                                   "replicas_sharing_rate_limits": AccessControl.replicas}}

    async def _admin_action(self, http: Request, action: str, model: str, **arguments):
        actor = http.state.principal.name  # AccessControl let only an admin through
        if model not in self.models:
            return _error(404, f"unknown model {model!r}: expected one of {', '.join(self.models)}")
        return await self._guarded(self._ask_controller("admin", action, model, actor, **arguments))

    @app.put("/api/v1/experiments/{model}/weight", responses=_ADMIN_ERRORS)
    async def set_weight(self, model: str, body: WeightRequest, http: Request):
        """Set the candidate's weight (holds until a different configuration is applied)."""
        return await self._admin_action(http, "weight", model, weight=body.weight)

    @app.post("/api/v1/experiments/{model}/rollback", responses=_ADMIN_ERRORS)
    async def rollback(self, model: str, http: Request, body: RollbackRequest | None = None):
        """Send all of the model's traffic to the stable variant, for good (until a new candidate)."""
        return await self._admin_action(http, "rollback", model, reason=body.reason if body else None)

    @app.post("/api/v1/experiments/{model}/promote", responses=_ADMIN_ERRORS)
    async def promote(self, model: str, http: Request):
        """Move the model's `stable` alias to the candidate version; the experiment ends."""
        return await self._admin_action(http, "promote", model)

    # ---- Open Inference Protocol V2 ---------------------------------------------------------
    @app.get("/v2")
    async def v2_server(self):
        return {"name": "kepler-serve", "version": "0.1.0", "extensions": []}

    @app.get("/v2/health/live")
    async def v2_live(self):
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready(self):
        loaded = await self._loaded()
        ready = all(loaded.values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def _v2_names(self) -> list[str]:
        return [*self.models, "ensemble"]

    async def _v2_versions(self, name: str) -> list[str]:
        members = list(self.models) if name == "ensemble" else [name]
        sets = await self._registry_call(lambda: [set(self.registry.versions(m)) for m in members])
        return sorted(set.intersection(*sets))

    @app.get("/v2/models/{name}", responses=_V2_ERRORS)
    @app.get("/v2/models/{name}/versions/{version}", responses=_V2_ERRORS)
    async def v2_metadata(self, name: str, version: str | None = None):
        if name not in self._v2_names():
            return _error(400, f"unknown model {name!r}: expected one of {', '.join(self._v2_names())}")
        try:
            versions = await self._v2_versions(name)
        except ServingError as e:
            return _error(400, e.message)
        if version is not None and version not in versions:
            return _error(400, f"model {name!r} has no version {version!r} (versions: {', '.join(versions)})")
        platform = "kepler-serve-ensemble" if name == "ensemble" else f"kepler-serve-{name}"
        return v2.model_metadata(name, versions, platform)

    @app.get("/v2/models/{name}/ready", responses=_V2_ERRORS)
    @app.get("/v2/models/{name}/versions/{version}/ready", responses=_V2_ERRORS)
    async def v2_model_ready(self, name: str, version: str | None = None):
        if name not in self._v2_names():
            return _error(400, f"unknown model {name!r}")
        loaded = await self._loaded()
        members = list(self.models) if name == "ensemble" else [name]
        if version is None:
            ready = all(loaded[m] for m in members)
        else:
            ready = all(version in loaded[m] for m in members)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)

    @app.post("/v2/models/{name}/infer", response_model=v2.InferResponse, response_model_exclude_none=True,
              responses=_V2_ERRORS)
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=v2.InferResponse,
              response_model_exclude_none=True, responses=_V2_ERRORS)
    async def v2_infer(self, name: str, request: v2.InferRequest, http: Request, version: str | None = None):
        if name not in self._v2_names():
            return _error(400, f"unknown model {name!r}: expected one of {', '.join(self._v2_names())}")
        try:
            rows = v2.decode(request, self.settings.max_batch_rows)
            outputs = v2.requested_outputs(request)
            traffic.REQUEST_HEADERS.set(http.headers)
            probabilities, model, served, *_ = await self._serve("v2_infer", name, version, rows)
        except v2.V2Error as e:
            return _error(400, str(e))
        except (BreakerOpen, Overloaded) as e:
            return _error(503, e.message, {"Retry-After": "1"})
        except ServingError as e:
            return _error(400 if e.status_code < 500 else e.status_code, e.message)
        return v2.encode(name, served, request.id or _request_id(), probabilities, outputs)
