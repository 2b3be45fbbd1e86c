# Sweep backends: where the runs of a sweep execute, chosen by name (`BACKENDS`).
#
# A backend gets the sweep's variant scenarios and its runs (`RunSpec`: which
# variant, policy, pricing and seed) and returns each run's summary, in the order of
# the runs. A run is `run_summary(scenario, spec)`: a pure function of (scenario,
# policy, pricing, seed), so where it runs cannot change what it returns; the
# sweep's table is byte-identical for every backend and every number of workers
# (tests/sim/test_sweep.py checks local against a hand run, and Ray against local).
#
# Backends:
# - `local` (the default): in this process with `jobs` = 1, else a pool of `jobs`
#   spawned worker processes (0: one per CPU core).
# - `ray`: Ray tasks, one per run (Ray is an optional extra: pip install
#   'neurogrid[ray]'). Attached to the running Ray instance if this process has
#   one (`ray.init(...)` before the sweep), or to the cluster in RAY_ADDRESS; else
#   it starts a local one with `jobs` CPUs (0: every core) and stops it afterwards.
#   Each variant's scenario goes into the object store once (`ray.put`); the nodes
#   of a cluster need neurogrid installed, the same version.
#
# Rules: a backend imports its engine only when chosen (`check` says, before any run,
# whether it can; a missing engine is `BackendUnavailable` naming the install
# command); it returns summaries, never RunResults (the latencies stay in the
# worker); no wall-clock figure leaves it.
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

import attrs

from .loop import run_scenario
from .scenario import Scenario

Progress = Callable[[int, int], None]  # (runs done, runs in all)
Summary = dict[str, Any]


class BackendUnavailable(RuntimeError):
    """The chosen backend's engine is not installed; `str()` says how to install it."""


@attrs.frozen
class RunSpec:
    """One run of a sweep: variant `variant` of the sweep under (policy, pricing, seed)."""

    variant: int
    policy: str
    pricing: str
    seed: int


def run_summary(scenario: Scenario, spec: RunSpec) -> Summary:
    """The run's JSON summary (sim/README.md, "Output")."""
    return run_scenario(scenario, spec.policy, spec.seed, pricing=spec.pricing).summary


RunAll = Callable[[Sequence[Scenario], Sequence[RunSpec], int, "Progress | None"], list[Summary]]


@attrs.frozen
class Backend:
    name: str
    about: str
    run: RunAll  # (scenarios, runs, jobs, progress) -> summaries in runs order
    check: Callable[[], None]  # raises BackendUnavailable when it cannot run here


def _workers(jobs: int) -> int:
    return jobs or os.cpu_count() or 1


# ---- local: this process, or a pool of spawned processes ---------------------------


def run_local(scenarios: Sequence[Scenario], runs: Sequence[RunSpec], jobs: int,
              progress: Progress | None = None) -> list[Summary]:
    workers = min(_workers(jobs), len(runs))
    if workers <= 1:
        out = []
        for done, spec in enumerate(runs, 1):
            out.append(run_summary(scenarios[spec.variant], spec))
            if progress is not None:
                progress(done, len(runs))
        return out
    # Spawned, not forked: a worker starts from the imported modules, never from a
    # copy of this process's state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(run_summary, scenarios[spec.variant], spec) for spec in runs]
        if progress is not None:
            for done, _ in enumerate(as_completed(futures), 1):
                progress(done, len(runs))
        return [future.result() for future in futures]


def _no_check() -> None:
    return None


# ---- ray: one Ray task per run --------------------------------------------------------

RAY_INSTALL = "the ray backend needs Ray: pip install 'neurogrid[ray]' (or pip install 'ray>=2.9')"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(RAY_INSTALL) from None
    return ray


def check_ray() -> None:
    _import_ray()


def run_ray(scenarios: Sequence[Scenario], runs: Sequence[RunSpec], jobs: int,
            progress: Progress | None = None) -> list[Summary]:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # the cluster RAY_ADDRESS names; its size is its own
        else:
            ray.init(num_cpus=_workers(jobs), include_dashboard=False)
        started = True
    try:
        task = ray.remote(run_summary)
        stored = [ray.put(scenario) for scenario in scenarios]
        refs = [task.remote(stored[spec.variant], spec) for spec in runs]
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            if progress is not None and ready:
                progress(len(refs) - len(pending), len(refs))
        return list(ray.get(refs))
    finally:
        if started:
            ray.shutdown()


BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (
        Backend("local", "this machine: a pool of --jobs worker processes", run_local,
                _no_check),
        Backend("ray", "Ray tasks on a local Ray instance or the cluster in RAY_ADDRESS "
                       "(pip install 'neurogrid[ray]')", run_ray, check_ray),
    )
}
DEFAULT_BACKEND = "local"
