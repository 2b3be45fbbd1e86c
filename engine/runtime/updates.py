# What the coordinator tells the program that runs it (the API): a TaskUpdate for
# every change of a task, in the order things happened, and a SubmitOutcome for
# every submission.
#
# Rules: frozen attrs values, no behaviour; times never travel in them (the
# receiver stamps its own wall clock).
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

import attrs

from engine.core import TaskState, Usage


@attrs.frozen
class TaskUpdate:
    """One change of a task, for the API: a new state (kind "state") or streamed
    partial output (kind "progress", `partial` as the worker sent it, e.g.
    {"tokens": [...], "index": n})."""

    task_id: str
    kind: str  # "state" | "progress"
    state: TaskState | None = None
    node_id: str | None = None
    result: Any = None  # completed: the output (text for text generation)
    usage: Usage | None = None  # completed: measured work
    cost: float | None = None  # completed: dollars charged
    error: str = ""  # failed / rejected / expired / requeued: why
    partial: Mapping[str, Any] | None = None  # progress
    finish_reason: str = ""  # completed: "stop", "length", ... as the runner said


@attrs.frozen
class SubmitOutcome:
    task_id: str
    accepted: bool
    state: TaskState  # queued or running when accepted, else rejected
    reason: str = ""  # why it was rejected
    node_id: str | None = None  # where it was placed at once, if it was


UpdateSink = Callable[[TaskUpdate], Awaitable[None]]

__all__ = ["SubmitOutcome", "TaskUpdate", "UpdateSink"]
