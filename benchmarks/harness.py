# The benchmark harness: every benchmark module registers one `Benchmark`; the
# harness runs the chosen ones, prints a table and writes JSON.
#
# Rules:
# - Benchmarks measure; tests assert behaviour. A benchmark reports figures and,
#   where the project has a target, whether this run met it. It never fails the
#   process for a missed target unless `--strict` is given: the CI machine is shared
#   and noisy.
# - Every figure that has a baseline is measured in the same run as its baseline,
#   and reported as a ratio beside the medians, so noise on the machine cancels out.
# - `quick` runs are for CI (the whole suite in a few minutes); full runs give the
#   figures the README states.
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from typing import Callable, Mapping, Sequence

import attrs

Figure = float | int | str
# The PostgreSQL database the benchmarks with PostgreSQL cases measure on, as
# `python -m benchmarks --postgres URL` passes it to them.
POSTGRES_VARIABLE = "NEUROGRID_BENCH_POSTGRES"


def plain(value: object) -> Figure:
    """A figure as a plain int, float or str (numpy scalars have `.item()`)."""
    item = getattr(value, "item", None)
    result = item() if callable(item) else value
    if isinstance(result, bool):
        return int(result)
    if isinstance(result, (int, float, str)):
        return result
    return str(result)


def plain_figures(figures: Mapping[str, object]) -> dict[str, Figure]:
    return {name: plain(value) for name, value in figures.items()}


def plain_verdict(met: object) -> bool | None:
    return None if met is None else bool(met)


@attrs.frozen
class Row:
    """One line of a benchmark's table. Figures and the verdict are kept as plain
    Python values (a numpy scalar computed by a benchmark becomes its Python twin),
    so the report is always valid JSON."""

    case: str
    figures: dict[str, Figure] = attrs.field(converter=plain_figures)
    target: str = ""  # the target in words, e.g. ">= 100,000 decisions/s"
    met: bool | None = attrs.field(default=None, converter=plain_verdict)


@attrs.frozen
class Benchmark:
    name: str
    description: str
    run: Callable[[bool], list[Row]]  # run(quick) -> rows


def median_of(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def percentile(samples: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest-rank) of samples."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def format_figure(value: Figure) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(name: str, rows: list[Row]) -> str:
    lines = [f"== {name}"]
    for row in rows:
        figures = "  ".join(f"{k}={format_figure(v)}" for k, v in row.figures.items())
        verdict = "" if row.met is None else ("  [target met: " if row.met else "  [TARGET MISSED: ")
        if row.met is not None:
            verdict += row.target + "]"
        lines.append(f"  {row.case:<40} {figures}{verdict}")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def run_all(benchmarks: list[Benchmark], quick: bool, json_path: str | None,
            strict: bool) -> int:
    entries: list[dict[str, object]] = []
    report: dict[str, object] = {"quick": quick, "machine": machine(), "benchmarks": entries}
    missed = 0
    for bench in benchmarks:
        started = time.perf_counter()
        rows = bench.run(quick)
        elapsed = time.perf_counter() - started
        print(render(f"{bench.name}: {bench.description} ({elapsed:.1f} s)", rows), flush=True)
        missed += sum(1 for r in rows if r.met is False)
        entries.append({
            "name": bench.name, "description": bench.description, "seconds": elapsed,
            "rows": [attrs.asdict(r) for r in rows],
        })
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {json_path}")
    if missed:
        print(f"{missed} target(s) missed in this run", file=sys.stderr)
    return 1 if (strict and missed) else 0
