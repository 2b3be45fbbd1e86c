# Model runners: the one interface between the worker and inference code.
#
# Rules of this module:
# - A runner is synchronous. The worker calls `load`, `run` and `unload` from a
#   worker thread (`trio.to_thread.run_sync`), never from the event loop, so a
#   runner may block for as long as inference takes.
# - `run` is re-entrant: all per-task state lives in the call, so one loaded
#   runner can serve several slots at once from several threads.
# - Cancellation is cooperative: `run` polls `should_stop()` between units of
#   work (tokens, steps) and returns early with `finish_reason="cancelled"`.
# - Partial output goes out through `on_progress(dict)`; the dict is merged into
#   the worker's `progress` frame as-is, so it must be JSON-able.
# - Errors are typed: `InvalidTaskInput` means the task itself is bad (retrying on
#   another node will not help); `ModelLoadError` means this node cannot serve
#   the model. Anything else is an unexpected failure of the node.
#
# Theory of operation: the worker maps each model name it serves to a model
# directory, and `load_runner(name, dir)` turns that pair into a loaded runner by
# looking the name up in two tables (data, not ifs): model name -> runner kind,
# and runner kind -> factory. Factories import their heavy dependencies
# (onnxruntime, tokenizers) lazily, so a worker that only serves `noop` (the
# network-path benchmark) never pays for them.
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

__all__ = [
    "MODEL_KINDS",
    "RUNNER_KINDS",
    "FinishReason",
    "InvalidTaskInput",
    "ModelLoadError",
    "ModelRunner",
    "NoopRunner",
    "ProgressCallback",
    "RunResult",
    "RunnerFactory",
    "StopCheck",
    "load_runner",
]

ProgressCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]
FinishReason = Literal["stop", "length", "cancelled"]


class InvalidTaskInput(ValueError):
    """The task's input or params cannot be run; retrying elsewhere will not help."""


class ModelLoadError(RuntimeError):
    """This node cannot load or serve the model (missing files, bad export, no device)."""


@attrs.frozen
class RunResult:
    """What one finished run produced.

    `usage` always has `tokens` (generated tokens), `prompt_tokens` and `seconds`
    (wall time of the run). `finish_reason` is "stop" (natural end, e.g. EOS),
    "length" (hit max_tokens or the context limit) or "cancelled" (should_stop).
    """

    output: Any
    usage: Mapping[str, float | int]
    finish_reason: FinishReason = "stop"


class ModelRunner(Protocol):
    """A model that the worker can load once and run many tasks on."""

    model_name: str

    def load(self) -> None:
        """Acquire files, sessions and device memory. Raises ModelLoadError."""

    def run(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> RunResult:
        """Run one task. Raises InvalidTaskInput for unusable inputs or params."""

    def unload(self) -> None:
        """Release what `load` acquired; the runner may be loaded again later."""


@attrs.define
class NoopRunner:
    """A runner that does NO inference at all.

    It returns a fixed placeholder at once, so benchmarks of the network path
    (coordinator <-> worker frames, scheduling, persistence) measure everything
    except a model. Never serve it to users as if it were a model.
    """

    model_name: str = "noop"

    OUTPUT = "[noop runner: no inference was run]"

    def load(self) -> None:
        return None

    def run(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> RunResult:
        return RunResult(output=self.OUTPUT, usage={"tokens": 0, "prompt_tokens": 0, "seconds": 0.0})

    def unload(self) -> None:
        return None


RunnerFactory = Callable[[str, Path | None, str | None], ModelRunner]


def _make_noop(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    return NoopRunner(model_name)


def _make_textgen(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    from engine.worker.runners.textgen import TextGenRunner  # lazy: onnxruntime is heavy

    if model_dir is None:
        raise ModelLoadError(f"model {model_name!r}: a text-generation model needs a model directory")
    return TextGenRunner(model_name, Path(model_dir), providers_preference=providers_preference)


def _make_whisper(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    from engine.worker.runners.whisper import WhisperRunner  # lazy: onnxruntime is heavy

    if model_dir is None:
        raise ModelLoadError(f"model {model_name!r}: a Whisper model needs a model directory")
    return WhisperRunner(model_name, Path(model_dir), providers_preference=providers_preference)


# Runner kind -> factory. A factory builds an unloaded runner.
RUNNER_KINDS: dict[str, RunnerFactory] = {
    "noop": _make_noop,
    "textgen": _make_textgen,
    "whisper": _make_whisper,
}

# Model name (as the API and the catalog spell it) -> runner kind.
MODEL_KINDS: dict[str, str] = {
    "noop": "noop",
    "llama2": "textgen",
    "llama2:7b": "textgen",
    "whisper": "whisper",
}


def load_runner(
    model_name: str,
    model_dir: Path | None,
    *,
    kind: str | None = None,
    providers_preference: str | None = None,
) -> ModelRunner:
    """Build and load the runner for `model_name`, whose files are in `model_dir`.

    `kind` overrides the MODEL_KINDS lookup (for models the table does not know);
    `providers_preference` is "auto", "cpu" or "cuda" (None: the
    NEUROGRID_ORT_PROVIDER environment variable, else "auto").
    Raises ModelLoadError when no runner fits or the model cannot be loaded.
    """
    kind = kind or MODEL_KINDS.get(model_name)
    factory = RUNNER_KINDS.get(kind) if kind is not None else None
    if factory is None:
        known = ", ".join(sorted(MODEL_KINDS))
        raise ModelLoadError(f"no runner for model {model_name!r} (kind {kind!r}); known models: {known}")
    runner = factory(model_name, model_dir, providers_preference)
    runner.load()
    return runner
