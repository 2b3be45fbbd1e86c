# What this node is and what it serves: hardware detection, the model table, and
# the executor that runs model runners off the event loop.
#
# Rules:
# - Detection never fails the worker: no `nvidia-smi`, a hung one, or output we
#   cannot parse all mean "cpu", with the host's memory as the model memory. A GPU
#   that onnxruntime cannot use is announced as "cpu" too (see `usable_gpu`), so the
#   coordinator never prices a CPU run as a GPU one. Flags override both.
# - Models are loaded once, at startup, before the worker connects: a node only
#   announces models it has proven it can load, and all of them are warm.
# - Runners are synchronous (engine/worker/runners): the executor runs each task in
#   a worker thread via trio.to_thread.run_sync, and turns trio cancellation into
#   the runner's `should_stop()` becoming true, so a cancelled task's thread stops
#   within one unit of work (a token) instead of running to the end.
from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import attrs
import trio

from engine.worker.packs.defaults import DEMO_WEIGHTS, DefaultPack, build_default
from engine.worker.runners.base import ModelRunner, NoopRunner, RunResult, Verdict
from engine.worker.runners.registry import load_runner

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEMO_MODEL = "llama2:7b"  # the model name the demo pack stands in for
DEMO_WARNING = ("serving %s with the DEMO model pack (tiny random weights): its text is "
                "NOT meaningful; it only exercises the real inference path")
NOOP_WARNING = ("serving %s with the NO-OP runner: NO inference runs; every task returns "
                "a fixed placeholder (for benchmarks of the network path)")


@attrs.frozen
class Hardware:
    gpu: str  # device name as reported, or "cpu"
    vram_gb: float  # the memory models load into


def host_memory_gb() -> float:
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def detect_gpu(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> Hardware:
    """The first NVIDIA GPU per `nvidia-smi`, else the CPU with the host's memory."""
    try:
        done = run(["nvidia-smi", "--query-gpu=name,memory.total",
                    "--format=csv,noheader,nounits"], capture_output=True, text=True,
                   timeout=10, check=True)
        name, mib = done.stdout.strip().splitlines()[0].rsplit(",", 1)
        return Hardware(name.strip(), round(float(mib) / 1024, 1))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return Hardware("cpu", host_memory_gb())


def usable_gpu(hardware: Hardware, needs_onnxruntime: bool) -> Hardware:
    """`hardware`, or the CPU when its GPU cannot run our ONNX models."""
    if hardware.gpu == "cpu" or not needs_onnxruntime:
        return hardware
    from engine.worker.runners.providers import cuda_problem  # imports onnxruntime

    problem = cuda_problem()
    if problem is None:
        return hardware
    log.warning("found %s but onnxruntime cannot use it (%s); announcing this node as cpu",
                hardware.gpu, problem)
    return Hardware("cpu", host_memory_gb())


@attrs.frozen
class ModelSource:
    """Where one served model comes from: a model directory, the demo pack, a
    default pack built from installed weights (packs/defaults.py), or the no-op
    runner. `weights` says what runs, for the hello (and so the task's JSON)."""

    name: str
    kind: str  # "dir" | "demo" | "pack" | "noop"
    directory: Path | None = None
    weights: str = ""
    pack: DefaultPack | None = None

    @classmethod
    def default_pack(cls, entry: DefaultPack) -> ModelSource:
        return cls(entry.model, "pack", weights=entry.weights, pack=entry)

    def announced_weights(self) -> str:
        """The weights in words, as the hello announces them."""
        if self.weights:
            return self.weights
        if self.kind == "noop":
            return "NO-OP runner: no model runs (network benchmarks only)"
        if self.kind == "demo":
            return DEMO_WEIGHTS
        return f"the operator's model at {self.directory}"


def served_weights(sources: list[ModelSource]) -> dict[str, str]:
    return {source.name: source.announced_weights() for source in sources}


def default_demo_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "neurogrid" / "demo-pack"


def load_models(sources: list[ModelSource], demo_dir: Path | None = None,
                providers_preference: str | None = None) -> dict[str, ModelRunner]:
    """Load every model (blocking; call from a thread). Raises ModelLoadError."""
    runners: dict[str, ModelRunner] = {}
    for source in sources:
        if source.kind == "noop":
            log.warning(NOOP_WARNING, source.name)
            runners[source.name] = NoopRunner(source.name)
            continue
        directory = source.directory
        if source.kind == "pack" and source.pack is not None:
            directory = build_default(source.pack)
            log.warning("serving %s with %s", source.name, source.pack.weights)
        if source.kind == "demo":
            from engine.worker.runners.demo_pack import ensure_demo_pack  # imports onnx

            directory = ensure_demo_pack(demo_dir or default_demo_dir())
            log.warning(DEMO_WARNING, source.name)
        runners[source.name] = load_runner(source.name, directory,
                                           providers_preference=providers_preference)
        log.info("model %s ready (%s)", source.name, directory)
    return runners


class ThreadedExecutor:
    """Runs tasks on loaded runners in worker threads (at most `max_threads` at once)."""

    def __init__(self, runners: Mapping[str, ModelRunner], max_threads: int) -> None:
        self.runners = dict(runners)
        self.models = tuple(self.runners)
        self.loaded = self.models
        self._limiter = trio.CapacityLimiter(max_threads)

    async def run(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                  on_progress: Callable[[dict[str, Any]], None]) -> RunResult:
        runner = self.runners[model]
        return await self._in_thread(runner.run, inputs, params, on_progress)

    async def verify(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                     claimed: Any, proof: Mapping[str, Any] | None) -> Verdict:
        """A verification job on the model's runner, in a worker thread like `run`."""
        runner = self.runners[model]
        return await self._in_thread(runner.verify, inputs, params, claimed, proof)

    async def _in_thread(self, call: Callable[..., _T], *args: Any) -> _T:
        """`call(*args, should_stop)` in a worker thread; trio cancellation sets should_stop."""
        stop = threading.Event()
        try:
            # On cancel the task ends at once and the thread is told to stop; it
            # returns at the runner's next should_stop() check (one token) and only
            # then gives its limiter slot back.
            return await trio.to_thread.run_sync(
                lambda: call(*args, stop.is_set), abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            stop.set()
            raise


__all__ = ["DEMO_MODEL", "DEMO_WEIGHTS", "Hardware", "ModelSource", "ThreadedExecutor",
           "default_demo_dir", "detect_gpu", "host_memory_gb", "load_models", "served_weights",
           "usable_gpu"]
