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
# The registry that turns a model name into a loaded runner is registry.py.
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

__all__ = [
    "FinishReason",
    "InvalidTaskInput",
    "ModelLoadError",
    "ModelRunner",
    "NoopRunner",
    "ProgressCallback",
    "RunResult",
    "StopCheck",
    "Verdict",
    "read_json_object",
]

ProgressCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]
FinishReason = Literal["stop", "length", "cancelled"]


class InvalidTaskInput(ValueError):
    """The task's input or params cannot be run; retrying elsewhere will not help."""


class ModelLoadError(RuntimeError):
    """This node cannot load or serve the model (missing files, bad export, no device)."""


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in a model directory's file, {} when the file is absent;
    ModelLoadError when it is unreadable or not an object."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return value


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
    # what the runner commits to beside its output, for a validator to check cheaply
    # (the `proof` of the protocol's result frame); None: nothing beyond the output
    proof: Mapping[str, Any] | None = None


@attrs.frozen
class Verdict:
    """A validator's judgement of another node's result (the output of a
    verification job: the protocol's `assign` with `verify`).

    `passed` is the decision; `score` the measured agreement it rests on (1.0 =
    identical; its meaning is the runner's: a token match rate, a similarity);
    `detail` says in words what was compared and, on failure, where it diverged.
    """

    passed: bool
    score: float
    detail: str = ""


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
