"""Typed configuration of the serving graph: the application builder's `args` and each model
deployment's `user_config`. Everything here is plain pydantic, so `serve_config.yaml` and a
RayService's serveConfigV2 are validated before anything starts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry import RegistryConfig
from registry.versions import check_alias, check_version, is_version
from runtimes import MODEL_NAMES

# Rate-limit tokens per explained row: about one per 25 ms of a replica's explain time for one row
# (bench/explain_cost.py), the end-to-end time of a typical prediction request.
EXPLAIN_COST = {"xgboost": 1.0, "keras_cnn": 4.0, "random_forest": 9.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RegistrySettings(_Strict):
    uri: str | None = Field(None, description="directory, file:// or s3:// URI; default ~/.kepler-serve/registry")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL")
    cache_dir: str | None = Field(None, description="local cache of pulled versions")
    verify_key: str | None = Field(None, description="Ed25519 public key (PEM path or text); when set, "
                                                     "unsigned or wrongly signed versions are refused")
    require_signatures: bool = Field(False, description="refuse to start when true and no verify_key is set "
                                                        "(here or KEPLER_VERIFY_KEY)")

    @model_validator(mode="after")
    def _signatures_required(self) -> "RegistrySettings":
        # At validation, so a cluster that must verify never starts serving unverified versions;
        # config() resolves the key as the registry will (this setting, else KEPLER_VERIFY_KEY).
        if self.require_signatures and not self.config().verify_key:
            raise ValueError("registry.require_signatures is true but no registry.verify_key is configured "
                             "(set it, or KEPLER_VERIFY_KEY, to the publisher's public key)")
        return self

    def config(self) -> RegistryConfig:
        return RegistryConfig.from_env(uri=self.uri, endpoint_url=self.endpoint_url, cache_dir=self.cache_dir,
                                       verify_key=self.verify_key)


def _known_models(field: str, per_model: dict) -> dict:
    unknown = set(per_model) - set(MODEL_NAMES)
    if unknown:
        raise ValueError(f"{field}: unknown models {sorted(unknown)}; expected some of {', '.join(MODEL_NAMES)}")
    return per_model


def _check_ref(ref: str) -> str:
    return check_version(ref) if is_version(ref) else check_alias(ref)


class ModelSettings(_Strict):
    """What one model deployment serves."""

    default_version: str = Field("stable", description="version or alias served when a request names none")
    preload: list[str] = Field(default_factory=list, description="more versions or aliases loaded at start")
    max_models_per_replica: int = Field(3, ge=1, le=16, description="multiplexed LRU cache size per replica")
    threads: int = Field(1, ge=1, le=16, description="framework threads per replica (size to its CPU share)")

    _refs = field_validator("default_version")(_check_ref)

    @field_validator("preload")
    @classmethod
    def _refs_ok(cls, refs: list[str]) -> list[str]:
        return [_check_ref(r) for r in refs]

    @model_validator(mode="after")
    def _cache_holds_config(self) -> "ModelSettings":
        if len({self.default_version, *self.preload}) > self.max_models_per_replica:
            raise ValueError("max_models_per_replica must hold every version the configuration refers to")
        return self


class BreakerSettings(_Strict):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    cooldown_s: float = Field(10.0, gt=0, description="how long an open breaker turns calls away")


class RouterBatchingSettings(_Strict):
    """Batching in the router (serve_app/coalescing.py)."""

    calls_in_flight: int = Field(2, ge=0, le=64, description="handle calls out at once per model deployment "
                                                              "and version; 0 sends each request on its own")
    max_rows: int = Field(64, ge=1, le=10_000, description="most rows one handle call gathers; keep it at most "
                                                            "the models' max_batch_size, so calls enter @serve.batch")


class RollbackSettings(_Strict):
    """When a candidate is rolled back: every trigger over the same sliding window."""

    window_s: float = Field(300.0, gt=0, description="sliding window of every trigger")
    min_samples: int = Field(50, ge=1, description="no trigger fires on fewer requests per variant")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="candidate errors / candidate requests")
    max_latency_ratio: float = Field(2.0, gt=0, description="candidate p95 / stable p95")
    max_drift_kl: float = Field(0.3, gt=0, description="KL(candidate || stable) of the predicted classes")
    health_failures: int = Field(3, ge=1, description="consecutive failed health checks of the candidate")
    health_period_s: float = Field(5.0, gt=0, description="how often the candidate is health-checked")
    health_timeout_s: float = Field(2.0, gt=0, description="a slower health check counts as failed")
    max_principal_share: float = Field(0.5, gt=0, le=1, description=(
        "most of a variant's samples in a window one credential may contribute; the rest of its requests "
        "are served but not counted (1: no cap)"))
    accuracy_margin: float = Field(0.02, ge=0, lt=1, description=(
        "roll back once the labels prove the candidate's accuracy below the stable's minus this margin "
        "(feedback; an always-valid sequential test, checked every tick)"))
    accuracy_alpha: float = Field(0.05, gt=0, lt=1, description="false-rollback probability of the accuracy trigger")
    min_labels: int = Field(200, ge=1, description="no accuracy verdict on fewer labels per variant")


class RolloutSettings(_Strict):
    """Gradual rollout: the candidate's weight steps up after each quiet window, else rolls back."""

    steps: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0], min_length=1,
                               description="the candidate's weights, in order")
    step_window_s: float = Field(300.0, gt=0, description="quiet time before the next step")
    promote_at_end: bool = Field(True, description="move `stable` to the candidate after the last step")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 1 for s in steps) or steps != sorted(steps):
            raise ValueError("steps: increasing weights in (0, 1]")
        return steps


class BanditSettings(_Strict):
    """`policy: thompson`: the candidate's weight follows P(candidate more accurate) from the labels."""

    min_weight: float = Field(0.05, ge=0, le=1, description="the candidate always keeps this share, to learn from")
    max_weight: float = Field(0.95, ge=0, le=1, description="the stable always keeps 1 minus this share, to compare")
    update_s: float = Field(300.0, gt=0, description="the weight is recomputed at most this often")
    min_step: float = Field(0.05, ge=0, le=1, description="smaller changes are not made (fewer clients switch)")

    @model_validator(mode="after")
    def _bounds(self) -> "BanditSettings":
        if self.min_weight > self.max_weight:
            raise ValueError("bandit: min_weight must not exceed max_weight")
        return self


class ExperimentSettings(_Strict):
    """One model's experiment: its stable variant (the model's default) against a candidate."""

    candidate: str | None = Field(None, description="version or alias served by the candidate variant")
    weight: float = Field(0.1, ge=0, le=1, description="share of the model's default traffic to the candidate")
    sticky_header: str | None = Field(None, description="request header whose value pins a client to a variant")
    shadow: str | None = Field(None, description="version or alias that gets a copy of the traffic, never answers")
    shadow_queue: int = Field(64, ge=1, le=10_000, description="pending shadow copies before new ones are dropped")
    rollback: RollbackSettings = Field(default_factory=RollbackSettings)
    rollout: RolloutSettings | None = None
    policy: Literal["fixed", "thompson"] = Field("fixed", description=(
        "fixed: the configured weight (or rollout); thompson: a bandit moves the weight toward the more "
        "accurate variant as labels arrive (feedback)"))
    bandit: BanditSettings = Field(default_factory=BanditSettings)

    _refs = field_validator("candidate", "shadow")(lambda cls, ref: None if ref is None else _check_ref(ref))

    @field_validator("sticky_header")
    @classmethod
    def _header(cls, header: str | None) -> str | None:
        return header.lower() if header else None

    @model_validator(mode="after")
    def _something(self) -> "ExperimentSettings":
        if not self.candidate and not self.shadow:
            raise ValueError("an experiment needs a candidate, a shadow or both")
        if self.policy == "thompson" and (self.rollout is not None or not self.candidate):
            raise ValueError("policy thompson needs a candidate and no rollout: the bandit sets the weight")
        return self


class PoolSettings(_Strict):
    """Which variant deployments the application builder creates for a model."""

    candidate: bool = Field(True, description="create `<model>_candidate`")
    shadow: bool = Field(False, description="create `<model>_shadow`")


class AuthSettings(_Strict):
    enabled: bool = Field(True, description="require a `predict` credential for predictions, listings and docs "
                                            "(admin routes always require `admin`)")
    requests_per_minute: float = Field(100.0, gt=0, description="per credential, across all router replicas")


class CacheSettings(_Strict):
    """The prediction cache: in memory per router replica, or in Redis shared by every replica
    (which also makes rate limits exact across replicas). Versions are immutable, so entries
    never need invalidating: a moved alias changes the concrete version in the key."""

    enabled: bool = Field(True, description="answer repeated rows (same model, version and features) from the cache")
    max_entries: int = Field(100_000, ge=1, le=10_000_000, description="in-memory cache: most rows per router replica")
    max_bytes: int = Field(32_000_000, ge=1024, description="in-memory cache: most bytes per router replica")
    redis_url: str | None = Field(None, description="redis:// or rediss:// URL shared by every router replica; the "
                                                    "password comes from KEPLER_REDIS_PASSWORD, never the URL")
    ttl_s: float = Field(86_400.0, gt=0, le=30 * 86_400, description="Redis entries expire after this long")
    redis_timeout_s: float = Field(0.25, gt=0, le=5, description="longest wait for one Redis round trip")
    redis_failures: int = Field(3, ge=1, description="consecutive Redis failures that bypass it (cache off, "
                                                     "per-replica rate limits) until a probe succeeds")
    redis_cooldown_s: float = Field(5.0, gt=0, description="how long Redis is bypassed before a probe")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parsed = urlsplit(url)
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError("redis_url: expected redis://host:port/db or rediss://host:port/db")
        if parsed.password:  # user_config is shown by `serve status` and the dashboard
            raise ValueError("redis_url: no password in the URL; set KEPLER_REDIS_PASSWORD in the environment")
        return url


class FeedbackSettings(_Strict):
    """Delayed ground truth: what the experiment controller keeps to join labels to predictions."""

    retention_s: float = Field(30 * 86_400.0, gt=0, description="labels join predictions answered this recently "
                                                                "(by request id)")
    max_predictions: int = Field(500_000, ge=1, le=50_000_000, description=(
        "most answered rows kept for joining, about 210 bytes each in the controller's memory"))


class RouterSettings(_Strict):
    """The router's user_config: changed by `serve deploy` without a restart."""

    ensemble_weights: dict[str, float] = Field(default_factory=lambda: {m: 1.0 for m in MODEL_NAMES},
                                               description="soft-vote weight per model (0 leaves it out) for "
                                                           "versions without a fitted ensemble record; set "
                                                           "explicitly, it overrides the records too")
    alias_cache_s: float = Field(5.0, ge=0, description="how long a resolved alias is trusted")
    catalogue: str = Field("stable", description="the KOI catalogue (registry dataset koi_catalogue) to look KOIs up "
                                                 "in: a version or an alias, pulled and verified once per replica")
    max_batch_rows: int = Field(1000, ge=1, description="most rows one request may carry")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="larger request bodies are a 413")
    model_timeout_s: float = Field(10.0, gt=0, description="longest wait for one model's answer")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    batching: RouterBatchingSettings = Field(default_factory=RouterBatchingSettings)
    experiments: dict[str, ExperimentSettings] = Field(default_factory=dict, description="per model")
    sync_period_s: float = Field(1.0, gt=0, le=5, description="how often routers exchange state with the controller")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    max_explain_rows: int = Field(32, ge=1, le=1000, description="most rows one /api/v1/explain call may carry")
    explain_timeout_s: float = Field(60.0, gt=0, description="longest wait for one model's explanation")
    explain_cost: dict[str, float] = Field(
        default_factory=lambda: dict(EXPLAIN_COST), description="rate-limit tokens per explained row and model "
        "(a prediction request takes 1); an ensemble pays for each member; a call takes at most a full bucket")

    _experiment_models = field_validator("experiments")(lambda cls, v: _known_models("experiments", v))
    _catalogue_ref = field_validator("catalogue")(_check_ref)

    @field_validator("explain_cost")
    @classmethod
    def _costs(cls, costs: dict[str, float]) -> dict[str, float]:
        if set(costs) - set(MODEL_NAMES) or any(not 0 <= c <= 1e6 for c in costs.values()):
            raise ValueError(f"explain_cost: a cost from 0 to 1e6 per model of {', '.join(MODEL_NAMES)}")
        return {**EXPLAIN_COST, **costs}

    @field_validator("ensemble_weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(MODEL_NAMES)
        if unknown or any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"ensemble_weights: non-negative weights for {', '.join(MODEL_NAMES)}, at least one > 0")
        return weights


class BatchSettings(_Strict):
    """A model deployment's user_config."""

    max_batch_size: int = Field(256, ge=1, le=4096, description="most rows @serve.batch gathers from the "
                                                               "calls of every router replica; a larger call "
                                                               "is a batch of its own")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=1, description="how long a batch waits to fill; 0: the "
                                        "router already batches, so a lone call waits for nothing")


class AppArgs(_Strict):
    """`args` of serve_app.app:build_app."""

    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    models: dict[str, ModelSettings] = Field(default_factory=lambda: {m: ModelSettings() for m in MODEL_NAMES})
    router: RouterSettings = Field(default_factory=RouterSettings)
    experiment_pools: dict[str, PoolSettings] = Field(
        default_factory=dict, description="variant deployments to create: `<model>_candidate`, `<model>_shadow`")
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)

    _pool_models = field_validator("experiment_pools")(lambda cls, v: _known_models("experiment_pools", v))

    def named_versions(self, router: RouterSettings) -> set[tuple[str, str]]:
        """(model, version) pairs the configuration names as concrete versions: defaults, preloads,
        experiment candidates and shadows. Archived or not, these serve."""
        named = {(m, ref) for m, s in self.models.items() for ref in (s.default_version, *s.preload)}
        named |= {(m, ref) for m, e in router.experiments.items() for ref in (e.candidate, e.shadow) if ref}
        return {(m, ref) for m, ref in named if is_version(ref)}

    def pool_names(self) -> dict[str, str]:
        """Deployment name -> model name of every variant deployment."""
        return {f"{model}_{kind}": model for model, pool in self.experiment_pools.items()
                for kind in ("candidate", "shadow") if getattr(pool, kind) and model in self.models}

    @field_validator("models")
    @classmethod
    def _known(cls, models: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        unknown = set(models) - set(MODEL_NAMES)
        if unknown or not models:
            raise ValueError(f"models: expected some of {', '.join(MODEL_NAMES)}, got {sorted(models)}")
        return models


def read_serve_config(path: str | Path) -> dict:
    """A Serve config file as plain data. Its YAML anchors are expanded into independent copies,
    so changing one deployment's block in a test or an overlay never changes another's."""
    return json.loads(json.dumps(yaml.safe_load(Path(path).read_text())))
