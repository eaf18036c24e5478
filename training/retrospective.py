"""Would the ranking have worked? The 2.0.0 recipe learned the 2019 labels; its out-of-fold
ranking of the 2019 CANDIDATEs is checked against what the archive had CONFIRMED by 2025.

    python -m training.retrospective [--registry URI] [--model ensemble] [--version 2.0.0]
"""
from __future__ import annotations

import argparse

from registry import RegistryConfig
from registry.registry import ModelRegistry

from .data import load_snapshot
from .ensembles import member_out_of_fold


def precision_at(registry: ModelRegistry, model: str, version: str, cutoffs=(50, 100)) -> dict:
    then, now = load_snapshot("2019-01-20").table, load_snapshot("2025-09-18").table
    was = dict(zip(then["kepoi_name"], then["koi_disposition"]))
    became = dict(zip(now["kepoi_name"], now["koi_disposition"]))
    names, _, probabilities = member_out_of_fold(registry, model, version)
    ranked = sorted((-p[0], n) for n, p in zip(names, probabilities) if was[n] == "CANDIDATE")
    confirmed = [became[n] == "CONFIRMED" for _, n in ranked]
    return {"candidates_2019": len(ranked), "confirmed_by_2025": sum(confirmed),
            "base_rate": round(sum(confirmed) / len(ranked), 4),
            **{f"precision_at_{k}": round(sum(confirmed[:k]) / k, 4) for k in cutoffs}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry")
    parser.add_argument("--model", default="ensemble")
    parser.add_argument("--version", default="2.0.0")
    args = parser.parse_args(argv)
    registry = RegistryConfig.from_env(uri=args.registry).open()
    result = precision_at(registry, args.model, args.version)
    print(f"{args.model} {args.version}: {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
