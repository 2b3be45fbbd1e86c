# Statistics of a run: what the event loop records, and what a report says about it.
#
# Theory.
# - Per task the loop keeps only what percentiles need: the end-to-end latency and
#   the queue wait of each completed task submitted in the measurement window
#   [warmup, duration], and its priority (compact `array`s, 17 bytes a task). Sums
#   (cost, counts) are streamed.
# - Queue wait is the total time a task spent queued (every queued period, so a task
#   requeued after a node loss waits again); for an M/M/c queue it is W_q.
# - Utilization is busy GPU-slot seconds over online slot-seconds. Each run records
#   busy intervals (cold load + service, or until the node was lost) and online
#   intervals (join to loss, times slots); the integral of a set of intervals over
#   any window follows from sorted starts and ends in O(n log n):
#   sum_i |[s_i, e_i] ∩ [0, t]| = sum_{s_i < t} (t - s_i) - sum_{e_i < t} (t - e_i).
# - Little's law, L = lambda W, is checked on every run in its exact finite-window
#   form over [warmup, end]: L is the time-average number of tasks in the system,
#   integrated by the loop event by event; lambda counts the tasks present in the
#   window (there at warmup, or submitted after it) per second, and W is their mean
#   time in the system within the window, summed task by task as each ends. The two
#   sides are measured independently, so any bookkeeping error in the loop (a task
#   counted in but never out, a lost end) shows as a gap; a correct run has ~0.
# - Erlang C gives the exact mean wait of an M/M/c queue (validation).
# - Replications give a mean and a 95% confidence half-width (Student t) per figure.
from __future__ import annotations

import math
from array import array
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from engine.core import Priority

PERCENTILES = (50, 95, 99)
PRIORITY_LABELS = tuple(p.label for p in Priority)


@attrs.define
class Intervals:
    """Weighted time intervals, per category (GPU class index)."""

    starts: array[float] = attrs.field(factory=lambda: array("d"))
    ends: array[float] = attrs.field(factory=lambda: array("d"))
    category: array[int] = attrs.field(factory=lambda: array("H"))
    weight: array[int] = attrs.field(factory=lambda: array("H"))

    def add(self, start: float, end: float, category: int, weight: int = 1) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.category.append(category)
        self.weight.append(weight)

    def integral(self, edges: np.ndarray, category: int | None = None) -> np.ndarray:
        """Weighted length of the intervals inside [edges[0], edges[k]] for each k."""
        starts = np.frombuffer(self.starts, dtype=np.float64)
        ends = np.frombuffer(self.ends, dtype=np.float64)
        weight = np.frombuffer(self.weight, dtype=np.uint16).astype(np.float64)
        if category is not None:
            keep = np.frombuffer(self.category, dtype=np.uint16) == category
            starts, ends, weight = starts[keep], ends[keep], weight[keep]
        inside: np.ndarray = _covered(starts, weight, edges) - _covered(ends, weight, edges) - (
            _covered(starts, weight, edges[:1]) - _covered(ends, weight, edges[:1]))
        return inside


def _covered(points: np.ndarray, weight: np.ndarray, at: np.ndarray) -> np.ndarray:
    """sum over points p < t of w * (t - p), for each t in `at`."""
    order = np.argsort(points, kind="stable")
    p, w = points[order], weight[order]
    cum_w = np.concatenate(([0.0], np.cumsum(w)))
    cum_wp = np.concatenate(([0.0], np.cumsum(w * p)))
    k = np.searchsorted(p, at, side="left")
    covered: np.ndarray = at * cum_w[k] - cum_wp[k]
    return covered


def summary(values: np.ndarray) -> dict[str, float]:
    """{mean, p50, p95, p99} of a sample (NaN when empty)."""
    if values.size == 0:
        return {"mean": math.nan, **{f"p{q}": math.nan for q in PERCENTILES}}
    pcts = np.percentile(values, PERCENTILES)
    return {"mean": float(values.mean()), **{f"p{q}": float(v) for q, v in zip(PERCENTILES, pcts)}}


def little_check(area: float, window: float, arrivals: int, sojourn_sum: float) -> dict[str, float]:
    """Both sides of L = lambda W and their gap in percent of L."""
    if window <= 0 or arrivals == 0:
        return {"L": 0.0, "lambda": 0.0, "W": 0.0, "error_pct": 0.0}
    big_l, lam, w = area / window, arrivals / window, sojourn_sum / arrivals
    error = 100.0 * abs(big_l - lam * w) / big_l if big_l > 0 else 0.0
    return {"L": big_l, "lambda": lam, "W": w, "error_pct": error}


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a = lambda/mu
    (a < c), via the Erlang B recursion B(k) = a B(k-1) / (k + a B(k-1))."""
    if not 0 <= offered_load < servers:
        raise ValueError("the offered load must be in [0, servers)")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    rho = offered_load / servers
    return b / (1.0 - rho * (1.0 - b))


def mmc_mean_wait(servers: int, arrival_rate: float, service_rate: float) -> float:
    """Exact mean queue wait W_q of an M/M/c queue."""
    return erlang_c(servers, arrival_rate / service_rate) / (
        servers * service_rate - arrival_rate)


# Two-sided 95% Student t quantiles, t_{0.975, df} for df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    if df < 1:
        return math.inf
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.960 + 2.4 / df  # within 0.002 of the exact value for df > 30


def confidence_interval(samples: Sequence[float]) -> tuple[float, float]:
    """(mean, 95% half-width) of independent replications."""
    n = len(samples)
    mean = math.fsum(samples) / n
    if n < 2:
        return mean, math.nan
    variance = math.fsum((x - mean) ** 2 for x in samples) / (n - 1)
    return mean, t_quantile_975(n - 1) * math.sqrt(variance / n)


def combine(runs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replications of one configuration -> (means, 95% half-widths), both shaped like
    one run. Non-numeric leaves are taken from the first run."""
    first = runs[0]
    means: dict[str, Any] = {}
    half_widths: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, Mapping):
            means[key], half_widths[key] = combine([r[key] for r in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            mean, hw = confidence_interval([float(r[key]) for r in runs])
            means[key] = mean
            half_widths[key] = hw
        else:
            means[key] = value
    return means, half_widths


def rounded(value: Any, digits: int = 9) -> Any:
    """Floats to `digits` significant digits (NaN and inf to None), recursively: a
    JSON report reads well and stays byte-identical across identical runs."""
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    return value

