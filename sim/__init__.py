"""The discrete-event simulator: scenarios run through the real scheduling core.

    from sim import load_scenario, run_scenario, compare
    result = run_scenario(load_scenario("mmc"), "balanced", seed=1, record=True)
    result.summary["latency"]["p99"], result.log[0]
    header, steps = load_sessions("live.jsonl")[-1]      # a coordinator's journal
    what_if = scenario_from_session(header, steps, "live", "live.jsonl")
    table = run_sweep(load_sweep("example"), backend="local", jobs=4)  # a sweep

See sim/README.md for the scenario format and the JSON fields.
"""
from __future__ import annotations

from .loop import LogEntry, RunResult, journal_header, make_scheduler, run_scenario, task_stream
from .metrics import confidence_interval, erlang_c, mmc_mean_wait
from .report import (
    ConfigResult, PlotUnavailable, compare, format_markdown, format_table, plot, to_json,
    write_json,
)
from .replay import (
    Divergence, check_session, load_sessions, pick_session, scenario_from_session,
    write_session,
)
from .backends import BACKENDS, Backend, BackendUnavailable, RunSpec, run_summary
from .scenario import (
    NodeGroup, Scenario, ScenarioError, ScriptedNode, Workload, bundled_scenarios,
    load_scenario, parse_scenario,
)
from .sweep import (
    SCALES, Sweep, SweepTable, Variant, bundled_sweeps, load_sweep, parse_sweep, run_sweep,
    tabulate,
)
from .workload import (
    Diurnal, Distribution, Mmpp, Poisson, Recorded, Trace, TraceReplay, load_trace,
)

__all__ = [
    "LogEntry", "RunResult", "journal_header", "make_scheduler", "run_scenario",
    "task_stream",
    "Divergence", "check_session", "load_sessions", "pick_session", "scenario_from_session",
    "write_session",
    "confidence_interval", "erlang_c", "mmc_mean_wait",
    "ConfigResult", "PlotUnavailable", "compare", "format_markdown", "format_table", "plot",
    "to_json", "write_json",
    "NodeGroup", "Scenario", "ScenarioError", "ScriptedNode", "Workload",
    "bundled_scenarios", "load_scenario", "parse_scenario",
    "BACKENDS", "Backend", "BackendUnavailable", "RunSpec", "run_summary",
    "SCALES", "Sweep", "SweepTable", "Variant", "bundled_sweeps", "load_sweep", "parse_sweep",
    "run_sweep", "tabulate",
    "Diurnal", "Distribution", "Mmpp", "Poisson", "Recorded", "Trace", "TraceReplay",
    "load_trace",
]
