# Comparisons and their reports: the console table, the JSON document and the plot.
#
# A *configuration* is one (placement policy, pricing policy) pair of a scenario. It
# runs `replications` times with seeds seed, seed+1, ...; with more than one
# replication every figure is the mean over replications and `ci95` holds the 95%
# confidence half-width of each (Student t over the independent replications).
#
# The JSON document is {"runs": [...]}, one run per configuration, with the fields
# documented in sim/README.md ("Output"); they are a contract for outside scripts:
# add fields, never rename them. Floats are rounded to 9 significant digits so that
# the same scenario and seed give byte-identical JSON (apart from wall_seconds).
#
# Rules: matplotlib is optional (the `plot` extra) and imported only to plot.
from __future__ import annotations

import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import numpy as np

from .loop import RunResult, run_scenario
from .metrics import combine, rounded
from .scenario import Scenario


@attrs.frozen(eq=False)
class ConfigResult:
    policy: str
    pricing: str
    summary: dict[str, Any]  # means over replications
    ci95: dict[str, Any] | None  # half-widths, shaped like summary (None: one run)
    results: tuple[RunResult, ...]

    def label(self, show_pricing: bool) -> str:
        return f"{self.policy}/{self.pricing}" if show_pricing else self.policy


def configurations(scenario: Scenario, policies: tuple[str, ...] | None = None,
                   pricings: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    return [(policy, pricing) for pricing in (pricings or scenario.pricings)
            for policy in (policies or scenario.policies)]


def compare(scenario: Scenario, policies: tuple[str, ...] | None = None,
            pricings: tuple[str, ...] | None = None, seed: int | None = None,
            replications: int | None = None,
            progress: Callable[[int, int, float], None] | None = None,
            on_recorded: Callable[[RunResult, str, str, int], None] | None = None,
            jobs: int = 1) -> list[ConfigResult]:
    """Run every configuration, `replications` times each. `progress(run, runs,
    fraction)` is told how far the current run is. With `on_recorded`, each run is
    recorded and handed over with its (policy, pricing, seed) as soon as it ends;
    its log is not kept after that. `jobs` > 1 runs that many at once in worker
    processes (not with `on_recorded`); a run is a pure function of its
    configuration and seed, so the results are the same either way. The workers
    are spawned: a script that passes jobs > 1 needs the `if __name__ ==
    "__main__":` guard, and policies must be registered in an importable module,
    not at run time in the script."""
    seed = scenario.seed if seed is None else seed
    n = replications or scenario.replications
    configs = configurations(scenario, policies, pricings)
    runs = [(policy, pricing, seed + r) for policy, pricing in configs for r in range(n)]
    if jobs > 1 and len(runs) > 1 and on_recorded is None:
        results = _run_in_processes(scenario, runs, jobs, progress)
    else:
        results = []
        for step, (policy, pricing, run_seed) in enumerate(runs):
            tell = (lambda f, s=step: progress(s, len(runs), f)) if progress else None
            result = run_scenario(scenario, policy, run_seed, pricing=pricing,
                                  record=on_recorded is not None, progress=tell)
            if on_recorded is not None:
                on_recorded(result, policy, pricing, run_seed)
                result = attrs.evolve(result, log=None)
            results.append(result)
    out = []
    for c, (policy, pricing) in enumerate(configs):
        mine = results[c * n:(c + 1) * n]
        if n == 1:
            out.append(ConfigResult(policy, pricing, mine[0].summary, None, tuple(mine)))
        else:
            means, half_widths = combine([res.summary for res in mine])
            means["seed"] = seed
            half_widths.pop("seed", None)
            out.append(ConfigResult(policy, pricing, means, half_widths, tuple(mine)))
    return out


def _run_in_processes(scenario: Scenario, runs: list[tuple[str, str, int]], jobs: int,
                      progress: Callable[[int, int, float], None] | None) -> list[RunResult]:
    """Each (policy, pricing, seed) in a worker process; results in `runs` order.
    Workers are spawned (no fork of this process's state) and get the parsed
    scenario, so a trace file is read once."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context) as pool:
        futures = [pool.submit(run_scenario, scenario, policy, run_seed, pricing=pricing)
                   for policy, pricing, run_seed in runs]
        done = 0
        for _ in as_completed(futures):
            done += 1
            if progress is not None:
                progress(done - 1, len(runs), 1.0)
        return [future.result() for future in futures]


def to_json(configs: list[ConfigResult]) -> dict[str, Any]:
    runs = []
    for config in configs:
        run = dict(config.summary)
        run["replications"] = len(config.results)
        if config.ci95 is not None:
            run["ci95"] = config.ci95
        runs.append(rounded(run))
    return {"runs": runs}


def write_json(configs: list[ConfigResult], path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(configs), indent=2) + "\n")


# ---- the console table ------------------------------------------------------------

Row = tuple[str, tuple[str, ...], int]  # label, path into a run, decimals (-1: integer)


def _rows(configs: list[ConfigResult]) -> Iterator[Row]:
    for name in ("submitted", "completed", "failed", "expired", "requeued", "rejected",
                 "cancelled", "unfinished"):
        if name != "cancelled" or any(c.summary["tasks"][name] for c in configs):
            yield f"tasks {name}", ("tasks", name), -1
    for section, title in (("queue_wait", "queue wait"), ("latency", "latency")):
        for stat in ("mean", "p50", "p95", "p99"):
            yield f"{title} {stat} (s)", (section, stat), 3
    priorities = configs[0].summary["by_priority"]
    if len(priorities) > 1:
        for label in priorities:
            yield f"latency p99 {label} (s)", ("by_priority", label, "latency", "p99"), 3
            yield f"completed {label}", ("by_priority", label, "completed"), -1
    yield "utilization", ("utilization", "overall"), 3
    for gpu in configs[0].summary["utilization"]["by_gpu"]:
        yield f"  {gpu}", ("utilization", "by_gpu", gpu), 3
    yield "cost total ($)", ("cost", "total"), 4
    yield "cost per task ($)", ("cost", "per_task_mean"), 6
    yield "OpenAI equivalent ($)", ("cost", "openai_equivalent"), 4
    yield "savings vs OpenAI (%)", ("cost", "savings_pct"), 1
    yield "Little's law gap (%)", ("little", "error_pct"), 3
    yield "events", ("events",), -1
    yield "simulated seconds", ("sim_seconds",), 1
    yield "wall seconds", ("wall_seconds",), 2


def _lookup(tree: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _cell(value: Any, half_width: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:,.0f}" if decimals < 0 else f"{value:,.{decimals}f}"
    if isinstance(half_width, float) and math.isfinite(half_width) and half_width > 0:
        text += f" ± {half_width:,.{max(decimals, 0)}f}"
    return text


def format_table(configs: list[ConfigResult]) -> str:
    show_pricing = len({c.pricing for c in configs}) > 1
    header = ["", *(c.label(show_pricing) for c in configs)]
    lines = [header]
    for label, path, decimals in _rows(configs):
        lines.append([label, *(_cell(_lookup(c.summary, path), _lookup(c.ci95, path), decimals)
                               for c in configs)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join([line[0].ljust(widths[0]),
                              *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:]))]))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_markdown(configs: list[ConfigResult]) -> str:
    """The same table as GitHub markdown (for a README)."""
    show_pricing = len({c.pricing for c in configs}) > 1
    lines = ["| | " + " | ".join(c.label(show_pricing) for c in configs) + " |",
             "|---|" + "---:|" * len(configs)]
    for label, path, decimals in _rows(configs):
        if path in (("wall_seconds",), ("events",)):
            continue
        cells = [_cell(_lookup(c.summary, path), _lookup(c.ci95, path), decimals)
                 for c in configs]
        lines.append(f"| {label.strip()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the plot ---------------------------------------------------------------------


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot(configs: list[ConfigResult], path: str | Path, title: str = "") -> None:
    """Per configuration: the latency tail (complementary CDF, log-log), p99 latency
    against cost per task (with 95% intervals when replicated), and utilization over
    time (first replication)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install 'neurogrid[plot]'") from None
    show_pricing = len({c.pricing for c in configs}) > 1
    fig, (cdf_ax, cost_ax, util_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    for config in configs:
        result = config.results[0]
        label = config.label(show_pricing)
        latencies = np.sort(result.latencies)
        if latencies.size:
            above = 1.0 - np.arange(latencies.size) / latencies.size
            cdf_ax.plot(latencies, above, label=label, linewidth=1.2)
        p99 = config.summary["latency"]["p99"]
        per_task = config.summary["cost"]["per_task_mean"]
        ci = config.ci95 or {}
        cost_ax.errorbar(per_task * 1000.0, p99,
                         xerr=ci.get("cost", {}).get("per_task_mean", 0.0) * 1000.0,
                         yerr=ci.get("latency", {}).get("p99", 0.0), fmt="o", capsize=3,
                         label=label)
        cost_ax.annotate(label, (per_task * 1000.0, p99), fontsize=7,
                         textcoords="offset points", xytext=(4, 4))
        times, share = result.utilization_series
        util_ax.plot(times / 60.0, share, label=label, linewidth=1.0)
    cdf_ax.set_xscale("log")
    cdf_ax.set_yscale("log")
    cdf_ax.set_xlabel("end-to-end latency (s)")
    cdf_ax.set_ylabel("fraction of tasks slower")
    cdf_ax.set_title("latency tail (CCDF)")
    cdf_ax.grid(True, which="both", alpha=0.3)
    cdf_ax.legend(fontsize=8)
    cost_ax.set_xlabel("cost per task (milli-dollars)")
    cost_ax.set_ylabel("p99 latency (s)")
    cost_ax.set_title("tail latency vs cost")
    cost_ax.grid(True, alpha=0.3)
    util_ax.set_xlabel("simulated time (min)")
    util_ax.set_ylabel("busy share of online GPU slots")
    util_ax.set_ylim(0.0, 1.05)
    util_ax.set_title("utilization over time")
    util_ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
