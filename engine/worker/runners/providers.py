# ONNX Runtime execution-provider choice: CUDA when it really works, CPU otherwise.
#
# Rules of this module:
# - The preference is "auto", "cpu" or "cuda": the argument if given, else the
#   NEUROGRID_ORT_PROVIDER environment variable, else "auto".
# - "auto" picks CUDA only when a probe session created with CUDA first actually
#   runs on CUDA. onnxruntime-gpu lists CUDAExecutionProvider as *available* even
#   on machines with no GPU or no CUDA libraries, and then silently falls back to
#   CPU, so availability alone proves nothing; `session.get_providers()` after
#   creation tells the truth.
# - "cuda" forced but unusable is an error (ModelLoadError), never a silent CPU run.
# - Each choice logs exactly one INFO line: the provider in use and why.
#
# Theory of operation: the probe (a one-node Identity model) runs once per process
# (functools.cache); while it runs, file descriptor 2 is redirected to a temporary
# file, because onnxruntime writes its failed-library-load error from C++ straight
# to stderr. The captured text is mined for the reason (e.g. which .so is missing)
# so the one log line can say why, and the spam never reaches the terminal.
# Sessions are then created with log severity ERROR, so they stay quiet too.
#
# Floating-point detail: `session_options` also applies the operator's tuning from
# the environment, NEUROGRID_ORT_THREADS (intra-op threads, >= 1; default ONNX
# Runtime's: one per core) and NEUROGRID_ORT_OPTIMIZATION (the graph optimisation
# level by name: disable, basic, extended, all; default all). Both change the
# order of floating-point operations, so two honest nodes' logits differ in the
# last bits: result verification (engine/worker/runners/verify_text.py) is tested
# and benchmarked across them. A bad value is a ModelLoadError naming the variable.
# The CUDA runtime libraries come from the `gpu` install extra
# (`pip install ".[gpu]"`: onnxruntime-gpu[cuda,cudnn], NVIDIA's wheels), which the
# probe preloads; a system CUDA install works too.
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort

from engine.worker.runners.base import ModelLoadError

__all__ = [
    "CPU",
    "CUDA",
    "OPTIMIZATION_ENV",
    "OPTIMIZATION_LEVELS",
    "PROVIDER_ENV",
    "THREADS_ENV",
    "choose_providers",
    "cuda_problem",
    "open_session",
    "session_options",
    "session_tuning",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDER_ENV = "NEUROGRID_ORT_PROVIDER"
THREADS_ENV = "NEUROGRID_ORT_THREADS"
OPTIMIZATION_ENV = "NEUROGRID_ORT_OPTIMIZATION"
# graph optimisation level by name (NEUROGRID_ORT_OPTIMIZATION)
OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PREFERENCES = ("auto", "cpu", "cuda")
_ORT_ERROR = 3  # onnxruntime severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal

log = logging.getLogger(__name__)


def session_options() -> ort.SessionOptions:
    """Session options shared by every runner: only errors get logged; threads and
    the optimisation level from the environment (see the module comment)."""
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERROR
    threads = os.environ.get(THREADS_ENV, "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ModelLoadError(f"{THREADS_ENV} must be an integer >= 1, got {threads!r}")
        options.intra_op_num_threads = int(threads)
    level = os.environ.get(OPTIMIZATION_ENV, "").strip().lower()
    if level:
        if level not in OPTIMIZATION_LEVELS:
            raise ModelLoadError(f"{OPTIMIZATION_ENV} must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                                 f"got {level!r}")
        options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    return options


@contextlib.contextmanager
def session_tuning(threads: int | None, optimization: str | None) -> Iterator[None]:
    """Sessions created inside use these threads / this optimisation level (None: the
    default), as if the environment said so; the environment is restored after.
    For tests and benchmarks that compare floating-point detail in one process."""
    wanted = {THREADS_ENV: None if threads is None else str(threads), OPTIMIZATION_ENV: optimization}
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, value in wanted.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def open_session(model_path: Path, providers: tuple[str, ...]) -> ort.InferenceSession:
    """Create an inference session on `providers`, turning failures into ModelLoadError."""
    try:
        return ort.InferenceSession(str(model_path), session_options(), providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime cannot load {model_path}: {exc}") from exc


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Redirect the process-wide fd 2 into a buffer; the text lands in the yielded list."""
    sink: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


def _probe_model() -> bytes:
    import onnx.helper as oh  # only the probe needs onnx

    value = oh.make_tensor_value_info
    graph = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y"])],
        "provider_probe",
        [value("x", 1, [1])],
        [value("y", 1, [1])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=9)
    serialized: bytes = model.SerializeToString()
    return serialized


def _reason_from_log(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    missing = re.search(r"Failed to load library (\S+) with error: (.+)", text)
    if missing:
        return f"{Path(missing.group(1)).name} failed to load: {missing.group(2).strip()}"
    errors = [line.split("] ", 1)[-1].strip() for line in text.splitlines() if "[E:" in line]
    if errors:
        return errors[0]
    return "CUDAExecutionProvider was requested but the session fell back to CPU"


@functools.cache
def cuda_problem() -> str | None:
    """Why CUDA is unusable in this process, or None when a CUDA session really works."""
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDAExecutionProvider"
    ort.set_default_logger_severity(_ORT_ERROR)
    captured_error: str | None
    with _stderr_captured() as captured:
        try:
            # The CUDA and cuDNN libraries of the `gpu` extra (nvidia-* wheels) are
            # not on the loader's path: onnxruntime >= 1.21 loads them from there.
            # Only where those wheels are installed: elsewhere it prints a warning
            # per missing library.
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None and importlib.util.find_spec("nvidia") is not None:
                preload()
            used = ort.InferenceSession(_probe_model(), session_options(), providers=[CUDA, CPU]).get_providers()
        except Exception as exc:  # onnxruntime raises its own exception types
            used, captured_error = [], f"creating a CUDA session failed: {exc}"
        else:
            captured_error = None
    if CUDA in used:
        return None
    return captured_error or _reason_from_log("".join(captured))


def choose_providers(preference: str | None = None) -> tuple[str, ...]:
    """The providers to create sessions with, best first; logs one line saying why."""
    source = "providers_preference" if preference else PROVIDER_ENV
    preference = (preference or os.environ.get(PROVIDER_ENV) or "auto").strip().lower()
    if preference not in _PREFERENCES:
        raise ModelLoadError(f"unknown provider preference {preference!r} ({source}); use one of {_PREFERENCES}")
    if preference == "cpu":
        log.info("onnxruntime: using %s (forced by %s=cpu)", CPU, source)
        return (CPU,)
    problem = cuda_problem()
    if problem is None:
        why = f"forced by {source}=cuda" if preference == "cuda" else "a CUDA probe session runs on the GPU"
        log.info("onnxruntime: using %s (%s)", CUDA, why)
        return (CUDA, CPU)
    if preference == "cuda":
        raise ModelLoadError(f"{source}=cuda but CUDA is unusable: {problem}")
    log.info("onnxruntime: using %s (CUDA unusable: %s)", CPU, problem)
    return (CPU,)
