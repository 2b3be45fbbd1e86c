# python -m sim.trust_sweep: the adversary scenario (or another with [verification])
# over a few sampling rates, one table of safety against overhead.
#
# Rows: `none` (no verification), `sampled` at each rate (after probation every
# result is verified with exactly that probability: rate_floor = rate, rate_gain =
# 0), the default reputation-driven `sampled` (the scenario's own constants), and
# `always`. Each row is the mean over the seeds (the scenario's seed, seed+1, ...).
# Columns: wrong results delivered unflagged (share of the wrong results), mean and
# max tasks an adversary ran until its quarantine, adversaries quarantined, honest
# nodes quarantined, validator work / all delivered work.
#
# Rules: a run is `run_scenario` of a variant (attrs.evolve of the scenario's
# Verification): the same code as `python -m sim`; output is markdown on stdout.
from __future__ import annotations

import argparse
import math
import statistics
import sys
from typing import Any, Sequence

import attrs

from .loop import run_scenario
from .scenario import Scenario, ScenarioError, load_scenario

DEFAULT_RATES = (0.01, 0.05, 0.2, 0.5)


def variants(scenario: Scenario, rates: Sequence[float]) -> list[tuple[str, Scenario]]:
    base = scenario.verification
    if base is None:
        raise ScenarioError(scenario.source, "verification", "a [verification] table")
    out = [("none", scenario.evolve(verification=attrs.evolve(base, mode="none")))]
    for rate in rates:
        policy = attrs.evolve(base.policy, rate_floor=rate, rate_gain=0.0)
        out.append((f"sampled {rate:g}", scenario.evolve(
            verification=attrs.evolve(base, mode="sampled", policy=policy))))
    out.append(("sampled (reputation)", scenario.evolve(
        verification=attrs.evolve(base, mode="sampled"))))
    out.append(("always", scenario.evolve(verification=attrs.evolve(base, mode="always"))))
    return out


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(present) if present else None


def row(name: str, trusts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "verification": name,
        "wrong results": _mean([t["wrong_results"] for t in trusts]),
        "delivered unflagged": _mean([t["wrong_delivered_unflagged"] for t in trusts]),
        "unflagged share": _mean([t["wrong_delivered_unflagged_share"] for t in trusts]),
        "tasks to quarantine (mean)": _mean([t["mean_tasks_to_quarantine"] for t in trusts]),
        "tasks to quarantine (max)": _mean([t["max_tasks_to_quarantine"] for t in trusts]),
        "adversaries quarantined": _mean([t["quarantined_adversaries"] for t in trusts]),
        "honest quarantined": _mean([t["false_quarantines"] for t in trusts]),
        "overhead (of all work)": _mean([t["overhead_of_all_work"] for t in trusts]),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.trust_sweep",
                                     description="verification: safety against overhead")
    parser.add_argument("scenario", nargs="?", default="adversary")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                        help="sampling rates after probation, comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="runs per row")
    parser.add_argument("--duration", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
        if not all(0.0 <= r <= 1.0 for r in rates):
            raise ValueError("rates must lie in [0, 1]")
        scenario = load_scenario(args.scenario)
        if args.duration is not None:
            scenario = scenario.evolve(duration=args.duration)
        rows = []
        for name, variant in variants(scenario, rates):
            trusts = [run_scenario(variant, seed=variant.seed + k).summary["trust"]
                      for k in range(args.seeds)]
            rows.append(row(name, trusts))
    except (ScenarioError, ValueError) as exc:
        print(f"python -m sim.trust_sweep: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
