"""A replay of the real history: what the accuracy trigger and the Thompson weight policy would
have done had a candidate been served next to the stable version on the test stars' KOIs, with
the 2025 dispositions arriving late as ground truth. Ray-free, deterministic for a seed.

Requests for test KOIs (one a simulated second) come from a pool of clients; a client goes to the
candidate while sticky_draw(...) < the candidate's weight, and each version answers with its real
runtime. CONFIRMED and FALSE_POSITIVE KOIs get their label after an exponential delay (2025
CANDIDATEs have no ground truth), grading the variant that answered that request, counted once
per (KOI, version) in a QualityBook. After every label the AccuracyMonitor is checked (a rollback
sends the candidate no more traffic) and the ThompsonPolicy may move the weight (at most every
update_s). The full mode repeats each scenario over 20 seeds, since one run's timing is noisy.
  (a) worse: the stable against a clearly worse candidate. No registered version is worse by
      enough on these ~1,400 labelled KOIs for the trigger ever to prove it (the output lists each
      version's accuracy and the evidence it could reach at most), so the default candidate is the
      stable version served rows whose 33 diagnostics were lost (NaN): a broken feature pipeline;
  (b) history: 2.0.0 (2019 labels) stable, 2.1.0 (2025 labels) canaried against it, with a paired
      analysis over every labelled KOI (McNemar) saying what that sample size can and cannot show.

    python -m training.replay [--registry URI] [--model xgboost] [--stable 2.1.0] [--previous 2.0.0]
                              [--worse 2.1.0:no-diagnostics] [--fast] [--seed 0] [--out bench/results]
"""
from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from registry import RegistryConfig
from registry.registry import ModelRegistry
from runtimes.catalogue import DATASET, Catalogue
from runtimes.schema import DIAGNOSTICS, LABELS
from runtimes.split import is_test_star
from serve_app.bandit import ThompsonPolicy
from serve_app.loading import load_version
from serve_app.quality import RESOLVED, QualityBook, row_digest
from serve_app.sequential import AccuracyMonitor, log_e_value
from serve_app.traffic import sticky_draw

NO_DIAGNOSTICS = "no-diagnostics"
Z95, Z80 = 1.959963984540054, 0.8416212335729143


@dataclass(frozen=True)
class Settings:
    requests: int = 20_000  # for test KOIs drawn with replacement, one a simulated second
    clients: int = 1000  # each request from one of them, at random
    delay_s: float = 600.0  # mean label delay
    start_weight: float = 0.5
    min_weight: float = 0.05
    max_weight: float = 0.95
    update_s: float = 300.0
    min_step: float = 0.05
    draws: int = 20_000
    alpha: float = 0.05
    margin: float = 0.02
    min_labels: int = 200  # per variant, as the service's experiment settings default
    runs: int = 20  # seeds seed, seed + 1, ...: the first run's path is the one shown


FULL = Settings()
FAST = replace(FULL, draws=2000, runs=1)


@dataclass
class Scored:
    spec: str  # "2.1.0", or "2.1.0:no-diagnostics" for its rows without the diagnostics
    probabilities: np.ndarray  # [test KOIs, 3]
    units: np.ndarray  # row digests: one labelled unit per (row, version)


def progress(message: str) -> None:
    print(f"replay: {message}", file=sys.stderr, flush=True)


def open_catalogue(registry: ModelRegistry) -> Catalogue:
    version = registry.datasets.resolve(DATASET, "stable")
    return Catalogue.load(registry.datasets.pull(DATASET, version), version)


def score(registry: ModelRegistry, model: str, spec: str, catalogue: Catalogue, kois: list[str]) -> Scored:
    version, _, fault = spec.partition(":")
    names = tuple(registry.metadata(model, version).input_schema.feature_names)
    blanked = [i for i, name in enumerate(names) if name in DIAGNOSTICS]
    if fault not in ("", NO_DIAGNOSTICS) or (fault and not blanked):
        raise SystemExit(f"{spec}: expected VERSION or VERSION:{NO_DIAGNOSTICS} (for a version taking diagnostics)")
    rows = catalogue.features(kois, names)
    if fault:
        rows[:, blanked] = np.nan
    runtime = load_version(registry, model, version, threads=4).runtime
    return Scored(spec, runtime.predict_proba(rows), row_digest(rows))


def correct(scored: Scored, truth: np.ndarray) -> np.ndarray:
    return scored.probabilities.argmax(axis=1) == truth


def run_scenario(name: str, model: str, stable: Scored, candidate: Scored, labels: list[str | None],
                 settings: Settings, seed: int, verbose: bool) -> dict:
    rng = np.random.default_rng([seed, ord(name)])
    secret = hashlib.sha256(f"kepler-replay-{seed}".encode()).digest()
    # Sticky by client, not by KOI: a client moved to the candidate asks about ever new KOIs, so the
    # candidate's labelled units keep growing at the minimum weight (keyed by star, they could not).
    points = np.array([sticky_draw(secret, name, None, f"client-{k}") for k in range(settings.clients)])
    asked = rng.integers(len(labels), size=settings.requests)
    client = rng.integers(settings.clients, size=settings.requests)
    delays = rng.exponential(settings.delay_s, settings.requests)
    book, monitor = QualityBook(), AccuracyMonitor(settings.alpha, settings.margin, settings.min_labels)
    policy = ThompsonPolicy(settings.min_weight, settings.max_weight, settings.update_s, settings.min_step,
                            settings.draws, seed)
    state = {"weight": settings.start_weight, "last_change": None, "labels": 0, "fired": None}
    changes, series, pending = [], [], []

    def receive(now: float, koi: int, variant: Scored) -> None:
        state["labels"] += 1
        added = book.add(model, variant.spec, int(variant.units[koi]), labels[koi], variant.probabilities[koi])
        s, c = book.of(model, stable.spec), book.of(model, candidate.spec)
        if added == "new":
            verdict = monitor.update(s.correct, s.labelled, c.correct, c.labelled)
            if verdict.rollback and state["fired"] is None:  # rolled back: the candidate gets no more traffic
                state["fired"] = {"labels": state["labels"], "stable_labels": s.labelled,
                                  "candidate_labels": c.labelled, "time_s": now, "reason": verdict.reason}
                state["weight"] = 0.0
        if state["fired"] is None and s.labelled and c.labelled:  # no labels: P(better) 0.5 says nothing
            decision = policy.propose(s.correct, s.labelled - s.correct, c.correct, c.labelled - c.correct,
                                      state["weight"], now, state["last_change"])
            if decision.changed:
                changes.append({"labels": state["labels"], "time_s": now, "from": state["weight"],
                                "to": decision.weight, "reason": decision.reason})
                state["weight"], state["last_change"] = decision.weight, now
        series.append((state["labels"], s.correct, s.labelled, c.correct, c.labelled, state["weight"]))

    for i, koi in enumerate([*asked.tolist(), None]):  # None: the end, when every pending label arrives
        now = float(i) if koi is not None else math.inf
        while pending and pending[0][0] <= now:
            arrival, _, label_of, variant = heapq.heappop(pending)
            receive(arrival, label_of, variant)
        if koi is None:
            break
        variant = candidate if points[client[i]] < state["weight"] else stable
        if labels[koi] is not None:  # the request id (i) joins the label to the variant that answered
            heapq.heappush(pending, (now + float(delays[i]), i, koi, variant))
        if verbose and (i + 1) % max(settings.requests // 5, 1) == 0:
            progress(f"{name}: {i + 1}/{settings.requests} requests, {state['labels']} labels, "
                     f"weight {state['weight']:.3f}")
    return {"scenario": name, "stable": stable.spec, "candidate": candidate.spec,
            "live": {"stable": book.summary(model, stable.spec), "candidate": book.summary(model, candidate.spec)},
            "labels_received": state["labels"], "trigger": state["fired"], "start_weight": settings.start_weight,
            "final_weight": changes[-1]["to"] if changes else settings.start_weight,
            "weight_after_rollback": 0.0 if state["fired"] else None, "weight_changes": changes,
            "series": np.array(series, dtype=float).reshape(-1, 6)}


def across(runs: list[dict]) -> dict:
    """Over the seeds: how often and when the trigger fired, where the weight ended."""
    def spread(values: list) -> dict | None:
        return {"min": min(values), "median": float(np.median(values)), "max": max(values)} if values else None
    fired = [r["trigger"]["labels"] for r in runs if r["trigger"]]
    return {"runs": len(runs), "fired": len(fired), "labels_when_fired": spread(fired),
            "final_weight": spread([r["final_weight"] for r in runs])}


def paired(stable: Scored, candidate: Scored, truth: np.ndarray, resolved: np.ndarray, was_candidate: np.ndarray,
           settings: Settings) -> dict:
    """Both versions on every labelled KOI: the question the live split answers with half the data each."""
    s_right, c_right = correct(stable, truth)[resolved], correct(candidate, truth)[resolved]
    n, earlier = int(resolved.sum()), was_candidate[resolved]
    only_stable, only_candidate = int((s_right & ~c_right).sum()), int((~s_right & c_right).sum())
    m = only_stable + only_candidate
    p = min(1.0, 2 * sum(math.comb(m, k) for k in range(min(only_stable, only_candidate) + 1)) / 2 ** m)
    # Agresti & Min (2005): half a count in each cell keeps the Wald interval honest at small counts.
    b, c, size = only_stable + 0.5, only_candidate + 0.5, n + 2
    difference, half = (c - b) / size, Z95 * math.sqrt((b + c) - (c - b) ** 2 / size) / size
    figures = {"labelled_kois": n, "stable_accuracy": round(float(s_right.mean()), 4),
               "candidate_accuracy": round(float(c_right.mean()), 4), "only_stable_right": only_stable,
               "only_candidate_right": only_candidate, "both_right": int((s_right & c_right).sum()),
               "both_wrong": int((~s_right & ~c_right).sum()), "mcnemar_exact_p": float(f"{p:.3g}"),
               "difference": round(float(c_right.mean() - s_right.mean()), 4),
               "interval_95": [round(difference - half, 4), round(difference + half, 4)],
               "detectable_difference": round((Z95 + Z80) * math.sqrt(m) / n, 4),
               "only_stable_right_2019_candidates": int((s_right & ~c_right & earlier).sum()),
               "only_candidate_right_2019_candidates": int((~s_right & c_right & earlier).sum()),
               "trigger_log_e_if_all_graded": round(float(log_e_value(int(s_right.sum()), n, int(c_right.sum()), n,
                                                                      settings.margin)), 3)}
    return {**figures, "reading": reading(figures, settings)}


def reading(f: dict, settings: Settings) -> list[str]:
    low, high = f["interval_95"]
    threshold = math.log(1 / settings.alpha)
    return [
        f"{f['labelled_kois']} labelled test KOIs: candidate - stable accuracy {f['difference']:+.1%} "
        f"(95% interval {low:+.1%} to {high:+.1%}); they differ in correctness on "
        f"{f['only_stable_right'] + f['only_candidate_right']} KOIs ({f['only_stable_right']} only the stable right, "
        f"{f['only_candidate_right']} only the candidate), exact McNemar p = {f['mcnemar_exact_p']:.3g}.",
        (f"Shown: on these KOIs the {'candidate' if f['difference'] > 0 else 'stable'} is the more accurate."
         if f["mcnemar_exact_p"] < 0.05 else "Not shown: these KOIs cannot tell which version is more accurate."),
        f"Not resolvable at this sample size: a true difference of {f['detectable_difference']:.1%} would be found "
        f"only 4 times in 5 at this discordance, smaller ones mostly not. A candidate worse by more than the "
        f"{settings.margin * 100:g}-point margin is " + ("shown" if high < -settings.margin else "ruled out" if
                                                          low > -settings.margin else "neither shown nor ruled out") + ".",
        f"The live trigger, even were every labelled KOI graded for both variants, would reach log E "
        f"{f['trigger_log_e_if_all_graded']:.2f} of {threshold:.2f}: it "
        f"{'could' if f['trigger_log_e_if_all_graded'] >= threshold else 'could not'} prove the candidate worse "
        f"by more than the margin with these KOIs.",
        f"Scope: agreement with the 2025 archive on the test stars' KOIs, not physical truth; "
        f"{f['only_candidate_right_2019_candidates']} of the {f['only_candidate_right']} KOIs only the candidate got "
        f"right, and {f['only_stable_right_2019_candidates']} of the {f['only_stable_right']} only the stable got "
        f"right, were still CANDIDATEs in 2019."]


def plot(scenarios: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 4.6), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios):
        labels, s_correct, s_n, c_correct, c_n, weight = scenario["series"].T
        with np.errstate(invalid="ignore", divide="ignore"):
            axis.plot(labels, np.where(s_n > 0, s_correct / s_n, np.nan), label=f"stable {scenario['stable']}")
            axis.plot(labels, np.where(c_n > 0, c_correct / c_n, np.nan), label=f"candidate {scenario['candidate']}")
        axis.set_ylim(0.5, 1.0)
        axis.set_xscale("log")  # the trigger and the bandit act early; later labels mostly repeat graded KOIs
        axis.set_xlabel("labels received (log scale)")
        axis.set_ylabel("running accuracy (labelled units)")
        right = axis.twinx()
        right.step(labels, weight, where="post", color="black", linewidth=1, label="candidate weight")
        right.set_ylim(0, 1)
        right.set_ylabel("candidate weight")
        if scenario["trigger"]:
            axis.axvline(scenario["trigger"]["labels"], color="red", linestyle="--",
                         label=f"trigger fired ({scenario['trigger']['labels']} labels)")
        axis.legend(handles=axis.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0],
                    loc="center right", fontsize=8)
        axis.set_title(f"({scenario['scenario']}) {scenario['stable']} stable vs {scenario['candidate']}")
    figure.tight_layout()
    figure.savefig(path, dpi=80, metadata={"Software": None})  # fixed metadata: bytes a function of the run
    plt.close(figure)


def replay(registry: ModelRegistry, model: str = "xgboost", stable: str = "2.1.0", previous: str = "2.0.0",
           worse: str = f"2.1.0:{NO_DIAGNOSTICS}", fast: bool = False, seed: int = 0,
           out: Path = Path("bench/results")) -> dict:
    settings = FAST if fast else FULL
    catalogue = open_catalogue(registry)
    kois = [k for k, star in zip(catalogue.names, catalogue.kepids(catalogue.names).tolist()) if is_test_star(star)]
    labels = [d if d in RESOLVED else None for d in map(catalogue.disposition, kois)]
    resolved = np.array([label is not None for label in labels])
    truth = np.array([LABELS.index(label) if label else -1 for label in labels])
    was_candidate = np.array([catalogue.row(k)[catalogue.disposition_columns[0]] == "CANDIDATE" for k in kois])
    progress(f"{len(kois)} test KOIs, {int(resolved.sum())} with a resolved {catalogue.current_disposition}")
    specs = [*registry.versions(model), worse, previous, stable]
    scored = {spec: score(registry, model, spec, catalogue, kois) for spec in dict.fromkeys(specs)}
    registered = {spec: paired(scored[stable], s, truth, resolved, was_candidate, settings)
                  for spec, s in scored.items() if spec != stable}
    results = {"model": model, "seed": seed, "mode": "fast" if fast else "full", "settings": asdict(settings),
               "catalogue": catalogue.version, "labels": catalogue.current_disposition, "test_kois": len(kois),
               "labelled_test_kois": int(resolved.sum()),
               "against_stable": {spec: {k: r[k] for k in ("candidate_accuracy", "stable_accuracy",
                                                            "trigger_log_e_if_all_graded")}
                                  for spec, r in registered.items()}, "scenarios": []}
    for name, (old, new) in (("a", (stable, worse)), ("b", (previous, stable))):
        progress(f"scenario {name}: stable {old}, candidate {new}, {settings.runs} run(s)")
        runs = []
        for k in range(settings.runs):
            runs.append(run_scenario(name, model, scored[old], scored[new], labels, settings, seed + k, k == 0))
            fired = runs[-1]["trigger"]
            progress(f"{name}: run {k + 1}/{settings.runs}, trigger {fired['labels'] if fired else 'never'}")
        results["scenarios"].append({**runs[0], "runs": across(runs),
                                     "paired": paired(scored[old], scored[new], truth, resolved, was_candidate,
                                                      settings)})
    out.mkdir(parents=True, exist_ok=True)
    plot(results["scenarios"], out / "replay.png")
    written = {**results, "scenarios": [{k: v for k, v in s.items() if k != "series"} for s in results["scenarios"]]}
    (out / "replay.json").write_text(json.dumps(written, indent=2) + "\n")
    return results


def report(results: dict) -> None:
    print(f"{results['model']} on {results['labelled_test_kois']} labelled test KOIs ({results['labels']}), "
          f"{results['mode']} mode, seed {results['seed']}; each version against the stable:")
    for spec, r in results["against_stable"].items():
        print(f"  {spec}: accuracy {r['candidate_accuracy']:.2%} vs {r['stable_accuracy']:.2%}, the trigger's "
              f"log E even with every KOI graded for both {r['trigger_log_e_if_all_graded']:.2f}")
    for s in results["scenarios"]:
        live, trigger, runs = s["live"], s["trigger"], s["runs"]
        print(f"({s['scenario']}) stable {s['stable']}: {live['stable']['accuracy']} of {live['stable']['labelled']} "
              f"units; candidate {s['candidate']}: {live['candidate']['accuracy']} of {live['candidate']['labelled']}")
        print(f"  trigger: fired at {trigger['labels']} labels: {trigger['reason']}" if trigger else
              "  trigger: never fired")
        moves = [f"{c['to']:.3f} at {c['labels']}" for c in s["weight_changes"]]
        shown = moves if len(moves) <= 10 else [*moves[:8], "...", *moves[-2:]]
        print(f"  weight {s['start_weight']} -> {', '.join(shown) or 'unchanged'} ({len(moves)} changes)")
        if runs["runs"] > 1:
            print(f"  over {runs['runs']} seeds: fired in {runs['fired']}, at labels {runs['labels_when_fired']}; "
                  f"final weight {runs['final_weight']}")
        for line in s["paired"]["reading"]:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry")
    parser.add_argument("--model", default="xgboost")
    parser.add_argument("--stable", default="2.1.0")
    parser.add_argument("--previous", default="2.0.0", help="scenario (b)'s stable; --stable is its candidate")
    parser.add_argument("--worse", default=f"2.1.0:{NO_DIAGNOSTICS}", help=f"VERSION or VERSION:{NO_DIAGNOSTICS}")
    parser.add_argument("--fast", action="store_true", help="one run, not 20, and 2,000 Thompson draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    registry = RegistryConfig.from_env(uri=args.registry).open()
    results = replay(registry, args.model, args.stable, args.previous, args.worse, args.fast, args.seed, args.out)
    report(results)
    progress(f"wrote {args.out / 'replay.json'} and {args.out / 'replay.png'} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
