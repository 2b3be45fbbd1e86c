# Sweeps: a grid of scenario variants x seeds, summed up in one table.
#
# A sweep file (TOML; the format is documented in sim/README.md, "Sweeps"):
#     name = "fleet-vs-load"          # optional (default: the file name)
#     scenario = "mmc"                # a bundled scenario, or a path relative to this file
#     seeds = 10                      # the scenario's seed, seed+1, ...; or a list [1, 5, 9]
#     [set]                           # overrides applied to every variant (optional)
#     duration = 30.0
#     [grid]                          # one axis per key; the variants are their product
#     policy = ["balanced", "round_robin"]
#     scale.nodes = [0.5, 1, 2]
#     "workload[0].arrival.rate" = [5.0, 7.2]
#
# Override keys are dotted paths into the scenario's TOML document, spelled the way
# ScenarioError names keys: `duration`, `nodes[0].count`, `workload[1].arrival.rate`;
# `[*]` is every entry of an array of tables (`nodes[*].slots`), and TOML's own
# dotted keys reach the same places (`nodes.0.count`). A TOML table in [set] or
# [grid] is a namespace of keys, so a table-valued field (an arrival process, a
# distribution) is set whole as an element of a [grid] list. `scale.NAME` keys are
# multipliers (`SCALES`): `scale.nodes` multiplies every node group's count (rounded,
# at least 1), `scale.rate` every workload's arrival rates (a trace replays that
# much faster). `seed` and `replications` are the sweep's `seeds`, not overrides.
#
# Theory of operation.
# - A variant is the base scenario's document with the [set] overrides, then its
#   grid point's, then the multipliers, applied (a missing table on the way is
#   created, a missing array entry is an error), and parsed by `parse_scenario`:
#   a variant is validated exactly like a scenario file, and every variant is built
#   before any run, so a bad value fails at once naming the variant and the key.
# - Rows: each variant under each of its configurations (`report.configurations`:
#   the policies and pricings of the variant's scenario), in grid order with the
#   last axis varying fastest. Runs: each row under each seed, the same seeds for
#   every row (common random numbers: variants differ by their parameters only).
# - The runs go to a backend (backends.py); each row's metrics (`METRICS`, from the
#   run summaries that report.py shows) become a mean and a 95% half-width over the
#   seeds (`metrics.confidence_interval`, Student t; none with one seed).
# - The table holds no wall-clock figure: the same sweep file gives a byte-identical
#   CSV and JSON on every backend and for any --jobs.
from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import re
import tomllib
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs

from .backends import BACKENDS, DEFAULT_BACKEND, Progress, RunSpec, Summary
from .metrics import confidence_interval, rounded
from .report import configurations
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario

SWEEP_DIR = Path(__file__).parent / "sweeps"
WILD = "*"  # a path segment: every entry of an array of tables
KeyPath = tuple[str | int, ...]  # a parsed override key: names, indices and WILD
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[(?:\d+|\*)\])*)")
_INDEX = re.compile(r"\[(\d+|\*)\]")
SWEEP_KEYS = ("name", "description", "scenario", "seeds", "set", "grid")
NOT_OVERRIDES = {"seed": "the sweep's `seeds` gives the seeds",
                 "replications": "the sweep's `seeds` gives the replications"}


# ---- multipliers: scale.NAME = factor ------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scale_nodes(doc: dict[str, Any], factor: float) -> None:
    for group in doc.get("nodes", ()):
        if isinstance(group, dict) and isinstance(group.get("count"), int):
            group["count"] = max(1, math.floor(group["count"] * factor + 0.5))


def _scale_rate(doc: dict[str, Any], factor: float) -> None:
    for workload in doc.get("workload", ()):
        arrival = workload.get("arrival") if isinstance(workload, dict) else None
        if not isinstance(arrival, dict):
            continue
        for key in ("rate", "off_rate"):
            if _is_number(arrival.get(key)):
                arrival[key] = arrival[key] * factor
        if isinstance(arrival.get("rates"), list):
            arrival["rates"] = [r * factor if _is_number(r) else r for r in arrival["rates"]]
        if arrival.get("process") == "trace":
            scale = arrival.get("time_scale", 1.0)
            if _is_number(scale):
                arrival["time_scale"] = scale / factor


SCALES: dict[str, Callable[[dict[str, Any], float], None]] = {
    "nodes": _scale_nodes,  # every [[nodes]] group's count x factor, rounded, >= 1
    "rate": _scale_rate,  # every workload's arrival rates x factor (trace: time_scale / factor)
}


# ---- override keys ------------------------------------------------------------------


def parse_key(text: str, where: str, source: str) -> KeyPath:
    """`workload[0].arrival.rate` (or `workload.0.arrival.rate`) -> its path."""
    path: list[str | int] = []
    for segment in text.split("."):
        if segment.isdigit():
            path.append(int(segment))
            continue
        if segment == WILD:
            path.append(WILD)
            continue
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ScenarioError(source, where, "a dotted key like nodes[0].count or "
                                "workload[*].arrival.rate", text)
        path.append(match.group(1))
        path.extend(WILD if i == WILD else int(i) for i in _INDEX.findall(match.group(2)))
    if isinstance(path[0], int) or path[0] == WILD:
        raise ScenarioError(source, where, "a key that starts with a name", text)
    if path[0] in NOT_OVERRIDES:
        raise ScenarioError(source, where, f"no {path[0]} override ({NOT_OVERRIDES[path[0]]})")
    if path[0] == "scale" and (len(path) != 2 or path[1] not in SCALES):
        raise ScenarioError(source, where, f"a multiplier, one of: "
                            f"{', '.join('scale.' + name for name in SCALES)}", text)
    return tuple(path)


def key_name(path: KeyPath) -> str:
    """The canonical spelling of a key, as ScenarioError names it."""
    out = ""
    for segment in path:
        if isinstance(segment, int) or segment == WILD:
            out += f"[{segment}]"
        else:
            out += ("." if out else "") + segment
    return out


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A TOML table of keys -> (dotted key, value); tables are namespaces."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        out.extend(_flatten(value, name) if isinstance(value, dict) else [(name, value)])
    return out


def _assign(node: Any, path: KeyPath, value: Any, walked: str, fail: Callable[..., ScenarioError]) -> None:
    head, rest = path[0], path[1:]
    if isinstance(head, str) and head != WILD:
        here = f"{walked}.{head}" if walked else head
        if not isinstance(node, dict):
            raise fail(walked, "a table to hold " + here, node)
        if not rest:
            node[head] = copy.deepcopy(value)
            return
        if head not in node:
            if not isinstance(rest[0], str) or rest[0] == WILD:
                raise fail(here, "an array of tables in the scenario (it has none)")
            node[head] = {}
        _assign(node[head], rest, value, here, fail)
        return
    if not isinstance(node, list):
        raise fail(walked, "an array of tables to index", node)
    indices = range(len(node)) if head == WILD else [int(head)]
    for i in indices:
        if not 0 <= i < len(node):
            raise fail(f"{walked}[{i}]", f"an index < {len(node)} ({walked} has {len(node)} entries)")
        if not rest:
            node[i] = copy.deepcopy(value)
        else:
            _assign(node[i], rest, value, f"{walked}[{i}]", fail)


def apply_overrides(doc: Mapping[str, Any], overrides: Sequence[tuple[KeyPath, Any]],
                    fail: Callable[..., ScenarioError]) -> dict[str, Any]:
    """A copy of the scenario document with `overrides` applied in order, the
    multipliers (`scale.*`) last. `fail(key, expected, got?)` makes the error."""
    out = copy.deepcopy(dict(doc))
    scales = []
    for path, value in overrides:
        if path[0] == "scale":
            if not _is_number(value) or not 0 < value < math.inf:
                raise fail(key_name(path), "a number > 0 (a multiplier)", value)
            scales.append((str(path[1]), float(value)))
        else:
            _assign(out, path, value, "", fail)
    for name, factor in scales:
        SCALES[name](out, factor)
    return out


# ---- the sweep ----------------------------------------------------------------------


@attrs.frozen
class Variant:
    index: int
    params: tuple[tuple[str, Any], ...]  # (key, value) per grid axis
    scenario: Scenario


@attrs.frozen
class Row:
    variant: Variant
    policy: str
    pricing: str


@attrs.frozen
class Sweep:
    name: str
    description: str
    source: str
    scenario: str  # the base scenario's name
    seeds: tuple[int, ...]
    axes: tuple[str, ...]  # grid keys, canonical
    variants: tuple[Variant, ...]

    def rows(self) -> list[Row]:
        return [Row(v, policy, pricing) for v in self.variants
                for policy, pricing in configurations(v.scenario)]

    def runs(self) -> list[RunSpec]:
        """Every (row, seed), rows outer."""
        return [RunSpec(row.variant.index, row.policy, row.pricing, seed)
                for row in self.rows() for seed in self.seeds]


def _seeds(value: Any, base_seed: int, source: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ScenarioError(source, "seeds", "a count >= 1 or a list of seeds", value)
        return tuple(base_seed + i for i in range(value))
    if (isinstance(value, list) and value
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        if len(set(value)) != len(value):
            raise ScenarioError(source, "seeds", "distinct seeds", value)
        return tuple(value)
    raise ScenarioError(source, "seeds", "a count >= 1 or a non-empty list of integers >= 0",
                        value)


def _scenario_path(text: Any, sweep_dir: Path, source: str) -> str | Path:
    if not isinstance(text, str) or not text:
        raise ScenarioError(source, "scenario", "a bundled scenario name or a .toml path", text)
    local = sweep_dir / text  # a path is relative to the sweep file, never to the cwd
    return local if local.exists() or Path(text).suffix or "/" in text else text


def parse_sweep(data: Mapping[str, Any], source: str = "<sweep>",
                base: Path | None = None) -> Sweep:
    """Validate a decoded sweep file and build (and validate) every variant.
    `base`: the directory a relative scenario path is resolved against."""
    for key in data:
        if key not in SWEEP_KEYS:
            raise ScenarioError(source, key, f"no such key (known here: {', '.join(SWEEP_KEYS)})")
    for key in ("scenario", "seeds"):
        if key not in data:
            raise ScenarioError(source, key, "this key (it is required)")
    for key in ("name", "description"):
        if not isinstance(data.get(key, ""), str):
            raise ScenarioError(source, key, "a string", data[key])
    for key in ("set", "grid"):
        if not isinstance(data.get(key, {}), dict):
            raise ScenarioError(source, key, f"a table [{key}] of override keys", data[key])
    sweep_dir = base if base is not None else Path.cwd()
    try:
        base_scenario = load_scenario(_scenario_path(data["scenario"], sweep_dir, source))
    except ScenarioError as exc:
        raise ScenarioError(source, "scenario", f"a valid scenario ({exc})") from None
    seeds = _seeds(data["seeds"], base_scenario.seed, source)
    scenario_file = Path(base_scenario.source)
    document = tomllib.loads(scenario_file.read_text())
    document.setdefault("name", base_scenario.name)

    fixed: list[tuple[KeyPath, Any]] = []
    seen: dict[str, str] = {}
    for raw, value in _flatten(data.get("set", {})):
        path = parse_key(raw, f"set.{raw}", source)
        fixed.append((path, value))
        seen[key_name(path)] = "set"
    axes: list[tuple[KeyPath, list[Any]]] = []
    for raw, values in _flatten(data.get("grid", {})):
        path = parse_key(raw, f"grid.{raw}", source)
        name = key_name(path)
        if name in seen:
            raise ScenarioError(source, f"grid.{raw}", f"a key given once (it is also in [{seen[name]}])")
        seen[name] = "grid"
        if not isinstance(values, list) or not values:
            raise ScenarioError(source, f"grid.{name}", "a non-empty list of the values to try", values)
        axes.append((path, values))

    variants = []
    for index, point in enumerate(itertools.product(*(values for _, values in axes))):
        params = tuple((key_name(path), value) for (path, _), value in zip(axes, point))
        about = ", ".join(f"{k}={json.dumps(v)}" for k, v in params) or "the base scenario"
        where = f"{source} variant {index} ({about})"

        def fail(key: str, expected: str, got: object = attrs.NOTHING,
                 where: str = where) -> ScenarioError:
            return ScenarioError(where, key, expected, got)

        changed = apply_overrides(document, fixed + [(p, v) for (p, _), v in zip(axes, point)], fail)
        variants.append(Variant(index, params, parse_scenario(changed, where, scenario_file.parent)))
    return Sweep(
        name=data.get("name", Path(source).stem), description=data.get("description", ""),
        source=source, scenario=base_scenario.name, seeds=seeds,
        axes=tuple(key_name(path) for path, _ in axes), variants=tuple(variants))


def bundled_sweeps() -> dict[str, Path]:
    """Name -> path of every sweep shipped in sim/sweeps/."""
    return {path.stem: path for path in sorted(SWEEP_DIR.glob("*.toml"))}


def load_sweep(name_or_path: str | Path) -> Sweep:
    """Load a sweep file, or a bundled sweep by name (`example`)."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        bundled = bundled_sweeps()
        if str(name_or_path) not in bundled:
            raise ScenarioError(str(name_or_path), "",
                                f"a sweep .toml file or a bundled sweep, one of: {', '.join(bundled)}")
        path = bundled[str(name_or_path)]
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(str(path), "", "a readable sweep file", exc.strerror) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), "", f"valid TOML ({exc})") from None
    return parse_sweep(data, str(path), path.parent)


# ---- the table ----------------------------------------------------------------------


def _throughput(run: Summary) -> float:
    seconds = run["sim_seconds"]
    return run["tasks"]["completed"] / seconds if seconds > 0 else math.nan


def _task_count(name: str, run: Summary) -> float:
    return float(run["tasks"][name])


METRICS: dict[str, Callable[[Summary], float]] = {
    "latency_mean": lambda run: run["latency"]["mean"],
    "latency_p50": lambda run: run["latency"]["p50"],
    "latency_p95": lambda run: run["latency"]["p95"],
    "latency_p99": lambda run: run["latency"]["p99"],
    "queue_wait_mean": lambda run: run["queue_wait"]["mean"],
    "queue_wait_p99": lambda run: run["queue_wait"]["p99"],
    "throughput": _throughput,  # tasks completed per simulated second, drain included
    "utilization": lambda run: run["utilization"]["overall"],
    "cost_total": lambda run: run["cost"]["total"],
    "cost_per_task": lambda run: run["cost"]["per_task_mean"],
    "savings_pct": lambda run: run["cost"]["savings_pct"],
    **{name: partial(_task_count, name)
       for name in ("submitted", "completed", "failed", "expired", "rejected", "unfinished")},
}


@attrs.frozen
class SweepTable:
    """One row per (variant, policy, pricing): its parameters, then per metric the
    mean over the seeds and its 95% half-width (`NAME_ci95`; None with one seed)."""

    sweep: str
    scenario: str
    seeds: tuple[int, ...]
    parameters: tuple[str, ...]  # variant, the grid keys, policy, pricing
    rows: tuple[dict[str, Any], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.parameters, "seeds",
                *(c for name in METRICS for c in (name, f"{name}_ci95")))

    def to_json(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "scenario": self.scenario, "seeds": list(self.seeds),
                "parameters": list(self.parameters), "metrics": list(METRICS),
                "rows": [dict(row) for row in self.rows]}

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(row[c]) for c in self.columns])
        return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def tabulate(sweep: Sweep, summaries: Sequence[Summary]) -> SweepTable:
    """The table of `sweep` from its runs' summaries, given in `sweep.runs()` order."""
    rows = sweep.rows()
    n = len(sweep.seeds)
    if len(summaries) != len(rows) * n:
        raise ValueError(f"{len(summaries)} summaries for {len(rows) * n} runs")
    axes = tuple(a for a in sweep.axes if a not in ("policy", "pricing"))
    out = []
    for r, row in enumerate(rows):
        mine = summaries[r * n:(r + 1) * n]
        params = dict(row.variant.params)
        line: dict[str, Any] = {"variant": row.variant.index,
                                **{a: params[a] for a in axes},
                                "policy": row.policy, "pricing": row.pricing, "seeds": n}
        for name, metric in METRICS.items():
            mean, half_width = confidence_interval([float(metric(run)) for run in mine])
            line[name], line[f"{name}_ci95"] = mean, half_width
        out.append(rounded(line))
    return SweepTable(sweep.name, sweep.scenario, sweep.seeds,
                      ("variant", *axes, "policy", "pricing"), tuple(out))


def run_sweep(sweep: Sweep, backend: str = DEFAULT_BACKEND, jobs: int = 1,
              progress: Progress | None = None) -> SweepTable:
    """Every run of the sweep on the named backend (backends.BACKENDS), tabulated."""
    chosen = BACKENDS[backend]
    chosen.check()
    scenarios = [v.scenario for v in sweep.variants]
    return tabulate(sweep, chosen.run(scenarios, sweep.runs(), jobs, progress))


def format_sweep(table: SweepTable) -> str:
    """A console table: the parameters and a few metrics, mean ± half-width."""
    shown = ("latency_p50", "latency_p99", "queue_wait_mean", "utilization", "cost_per_task",
             "completed")
    header = [*table.parameters, *shown]
    lines = [header]
    for row in table.rows:
        cells = [_csv_cell(row[p]) for p in table.parameters]
        for name in shown:
            mean, hw = row[name], row[f"{name}_ci95"]
            text = "-" if mean is None else f"{mean:.4g}"
            if mean is not None and hw:
                text += f" ± {hw:.2g}"
            cells.append(text)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
