"""The book of experiments: the one authority's state and decisions, persisted in the registry.

Desired experiments come from the routers' user_config; what happened to them at run time
(started, failed, rolled back, promoted, admin weights, rollout steps) lives here. Precedence:
  * a rollback or failure holds until the configuration names a new candidate version, so a
    re-applied configuration or a restarted router never brings a rolled-back candidate back;
  * an admin weight holds until a configuration different from the one it overrode arrives;
  * a promotion ends the experiment: the `stable` alias now names the candidate.
Every change bumps `generation`; routers follow the newest generation they have seen. Ray-free."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Callable, Literal

from pydantic import BaseModel, Field

from .config import ExperimentSettings, RollbackSettings
from .rollback import has_evidence, tripped
from .variant_stats import Window

State = Literal["starting", "running", "rolled_back", "promoted", "failed"]
TERMINAL = ("rolled_back", "promoted", "failed")


def spec_hash(spec: ExperimentSettings) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Record(BaseModel):
    """One model's experiment as the authority sees it."""

    model: str
    experiment_id: str
    candidate: str | None = None  # the configured reference (version or alias)
    candidate_version: str | None = None
    shadow: str | None = None
    shadow_version: str | None = None
    shadow_ready: bool = False
    spec_hash: str
    state: State = "starting"
    reason: str = "configured"
    changed_at: str = Field(default_factory=_now_iso)
    started_at: float = Field(default_factory=time.time)
    weight: float = 0.0
    weight_source: Literal["config", "admin", "rollout", "bandit"] = "config"
    weight_changed_at: float | None = None  # when the bandit last moved the weight
    rollout_step: int | None = None
    step_started_at: float | None = None
    health_failures: int = 0

    def to(self, state: State, reason: str) -> None:
        self.state, self.reason, self.changed_at = state, reason, _now_iso()
        if state in TERMINAL:
            self.weight = 0.0


class Book(BaseModel):
    generation: int = 0
    current: dict[str, Record] = Field(default_factory=dict)  # model -> its experiment
    decided: dict[str, Record] = Field(default_factory=dict)  # experiment id -> terminal record
    events: list[dict] = Field(default_factory=list)

    def record_event(self, record: Record, action: str, actor: str) -> dict:
        event = {"at": record.changed_at, "model": record.model, "experiment": record.experiment_id,
                 "action": action, "state": record.state, "reason": record.reason, "by": actor,
                 "generation": self.generation}
        self.events = [*self.events[-199:], event]
        return event


def experiment_id(model: str, candidate_version: str | None, shadow_version: str | None) -> str:
    """A candidate's identity: its model and version (the shadow may change under it)."""
    return f"{model}:{candidate_version}" if candidate_version else f"{model}:shadow-{shadow_version}"


class Decisions:
    """What the controller decides on each tick, given the desired specs and the window stats."""

    def __init__(self, book: Book, window: Window, clock=time.time):
        self.book, self.window, self.clock = book, window, clock

    def adopt(self, model: str, spec: ExperimentSettings, candidate_version: str | None,
              shadow_version: str | None) -> Record | None:
        """Reconcile a configured experiment. Returns a record that needs its variants loaded."""
        key, digest = experiment_id(model, candidate_version, shadow_version), spec_hash(spec)
        record = self.book.current.get(model)
        if record is not None and record.experiment_id == key:
            if record.shadow_version != shadow_version:  # a new shadow under the same candidate
                record.shadow, record.shadow_version, record.shadow_ready = spec.shadow, shadow_version, False
                self.book.generation += 1
                return record
            if record.spec_hash != digest and record.state not in TERMINAL:
                record.spec_hash = digest  # a newer configuration wins over admin weights and steps
                record.weight, record.weight_source = self._configured_weight(spec), "config"
                record.rollout_step = 0 if spec.rollout else None
                record.step_started_at = self.clock() if spec.rollout else None
                self.book.generation += 1
            return None
        if key in self.book.decided:  # a decision holds for the same candidate
            self.book.current[model] = record = self.book.decided[key].model_copy()
            self.book.generation += 1
            if record.shadow_version != shadow_version:
                record.shadow, record.shadow_version, record.shadow_ready = spec.shadow, shadow_version, False
                return record
            return None
        record = Record(model=model, experiment_id=key, candidate=spec.candidate, candidate_version=candidate_version,
                        shadow=spec.shadow, shadow_version=shadow_version, spec_hash=digest)
        self.book.current[model] = record
        self.book.generation += 1
        return record

    @staticmethod
    def _configured_weight(spec: ExperimentSettings) -> float:
        return spec.rollout.steps[0] if spec.rollout else spec.weight

    def started(self, record: Record, spec: ExperimentSettings, shadow_ready: bool) -> None:
        record.shadow_ready = shadow_ready
        record.weight = self._configured_weight(spec) if record.candidate_version else 0.0
        record.weight_source = "rollout" if spec.rollout else "config"
        record.rollout_step = 0 if spec.rollout else None
        record.started_at = record.step_started_at = self.clock()
        record.to("running", "candidate loaded" if record.candidate_version else "shadow loaded")
        self.book.generation += 1
        self.book.record_event(record, "start", "controller")

    def end(self, record: Record, state: State, reason: str, actor: str) -> dict:
        record.to(state, reason)
        self.book.generation += 1
        self.book.decided[record.experiment_id] = record.model_copy()
        return self.book.record_event(record, state, actor)

    def set_weight(self, record: Record, weight: float, actor: str) -> dict:
        record.weight, record.weight_source = weight, "admin"
        record.reason, record.changed_at = f"weight set to {weight:g} by {actor}", _now_iso()
        self.book.generation += 1
        return self.book.record_event(record, "set_weight", actor)

    def check(self, record: Record, spec: ExperimentSettings, accuracy: str | None = None) -> tuple[str, str] | None:
        """('rollback', reason), ('step', reason) or ('promote', reason) for a running experiment.
        `accuracy`: the accuracy trigger's reason when it fired (the controller keeps its monitor)."""
        if record.state != "running" or not record.candidate_version:
            return None
        rules = spec.rollback
        if record.health_failures >= rules.health_failures:
            return "rollback", f"{record.health_failures} consecutive failed health checks of the candidate"
        since, share = record.started_at, rules.max_principal_share
        candidate = self.window.summary(record.experiment_id, "candidate", rules.window_s, since, share)
        stable = self.window.summary(record.experiment_id, "stable", rules.window_s, since, share)
        reason = tripped(candidate, stable, rules) or accuracy
        if reason:
            return "rollback", reason
        if spec.rollout and record.weight_source == "rollout" and record.step_started_at is not None:
            if self.clock() - record.step_started_at >= spec.rollout.step_window_s:
                step_s, step_since = spec.rollout.step_window_s, record.step_started_at
                candidate = self.window.summary(record.experiment_id, "candidate", step_s, step_since, share)
                stable = self.window.summary(record.experiment_id, "stable", step_s, step_since, share)
                if has_evidence(candidate, stable, rules):
                    last = record.rollout_step >= len(spec.rollout.steps) - 1
                    if last and spec.rollout.promote_at_end:
                        return "promote", f"rollout completed at weight {record.weight:g}"
                    if not last:
                        return "step", f"step {record.rollout_step + 1} quiet for {spec.rollout.step_window_s:g} s"
        return None

    def bandit_weight(self, record: Record, weight: float, reason: str) -> dict:
        record.weight, record.weight_source, record.weight_changed_at = weight, "bandit", self.clock()
        record.reason, record.changed_at = reason, _now_iso()
        self.book.generation += 1
        return self.book.record_event(record, "bandit_weight", "bandit")

    def step(self, record: Record, spec: ExperimentSettings, reason: str) -> dict:
        record.rollout_step += 1
        record.weight = spec.rollout.steps[record.rollout_step]
        record.step_started_at = self.clock()
        record.reason, record.changed_at = reason, _now_iso()
        self.book.generation += 1
        return self.book.record_event(record, "step", "rollout")


def router_snapshot(book: Book, assignment_secret: bytes) -> dict:
    """What routers adopt: the book, and the secret that keys sticky assignment (routers only:
    never in `experiments_view`, the book persisted to the registry, or a log line)."""
    return {"generation": book.generation, "assignment_secret": assignment_secret,
            "experiments": {m: r.model_dump() for m, r in book.current.items()}}


def experiments_view(book: Book, window: Window, specs: dict[str, ExperimentSettings],
                     quality: Callable[[str, str | None], dict] | None = None,
                     stable_versions: dict[str, str] | None = None) -> dict:
    """Every experiment with its variants' statistics over the rollback window, as the triggers
    count them (the per-principal cap applied; `uncounted_requests` is what it left out), and
    each variant's quality from feedback (`quality(model, version)`: labels since ever, each
    (row, version) once). Built without the assignment secret, so no view can carry it."""
    experiments = {}
    for model, record in book.current.items():
        spec = specs.get(model)
        rules = spec.rollback if spec else RollbackSettings()
        variants = {"stable": {"version": (stable_versions or {}).get(model), "weight": round(1 - record.weight, 4)}}
        if record.candidate_version:
            variants["candidate"] = {"version": record.candidate_version, "weight": record.weight}
        if record.shadow_version:
            variants["shadow"] = {"version": record.shadow_version, "ready": record.shadow_ready}
        for name, variant in variants.items():
            share = rules.max_principal_share if name != "shadow" else 1.0
            variant.update(window.summary(record.experiment_id, name, rules.window_s, record.started_at,
                                          share).as_dict())
            if quality is not None and name != "shadow":
                variant["quality"] = quality(model, variant.get("version"))
        experiments[model] = {**record.model_dump(include={"experiment_id", "state", "reason", "changed_at",
                                                            "weight_source", "rollout_step"}),
                              "sticky_header": spec.sticky_header if spec else None, "window_s": rules.window_s,
                              "variants": variants}
    return {"generation": book.generation, "experiments": experiments, "events": book.events[-20:]}
