# What the coordinator tells the program that runs it (the API): a TaskUpdate for
# every change of a task, in the order things happened, and a SubmitOutcome for
# every submission.
#
# Theory. `TaskUpdate` is a union of precise types, one per kind of change, each
# carrying exactly what a receiver needs to record that change (a store row: the
# node's GPU and location when a task starts running, the measured usage, the
# charge and its reference (OpenAI) cost when it completes). A receiver dispatches
# on the type (a dict type -> handler, as the core's events are dispatched); the
# class constants `kind` ("state" or "progress") and `state` (the TaskState the
# task is in after the change; None for progress) say the same for a reader that
# only wants to filter.
#
#   QueuedUpdate     a submission was accepted (only with
#                    CoordinatorConfig.publish_accepted: the caller also has the
#                    SubmitOutcome)
#   RunningUpdate    it was assigned to a node
#   ProgressUpdate   streamed partial output from that node
#   RequeuedUpdate   back in the queue (its node was lost, dropped or failed it)
#   CompletedUpdate  finished, with the result       \
#   FailedUpdate     failed for good                  |  final: nothing follows
#   RejectedUpdate   refused at submission            |
#   ExpiredUpdate    its deadline passed              |
#   CancelledUpdate  cancelled                       /
#   VerificationUpdate  how its result fares under verification (kind
#                    "verification"): pending (held for a validator's verdict),
#                    then passed / failed (re-run elsewhere) / unverified / skipped;
#                    published before the state change it explains
#
# Rules: frozen attrs values, no behaviour; times never travel in them (the
# receiver stamps its own wall clock). Names end in "Update" so that they never
# clash with the core's events (engine.core.TaskFailed, TaskCancelled, ...).
from __future__ import annotations

from typing import Any, Awaitable, Callable, ClassVar, Mapping

import attrs

from engine.core import TaskState, Usage


@attrs.frozen
class QueuedUpdate:
    """A submission was accepted and queued."""

    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.QUEUED

    task_id: str


@attrs.frozen
class RequeuedUpdate:
    """The task went back to the queue; `error` says why (its node was lost, ...)."""

    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.QUEUED

    task_id: str
    error: str


@attrs.frozen
class RunningUpdate:
    """The task was handed to a node: where it runs, as a row shows it."""

    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.RUNNING

    task_id: str
    node_id: str
    node_gpu: str  # the catalog's GPU class of the node
    node_location: str  # the node's location, else its region, else ""
    model_weights: str = ""  # the weights serving the model there, as the node says


@attrs.frozen
class ProgressUpdate:
    """Streamed partial output, as the worker sent it (e.g. {"tokens": [...],
    "index": n}); lossy under backlog."""

    kind: ClassVar[str] = "progress"
    state: ClassVar[None] = None

    task_id: str
    node_id: str
    partial: Mapping[str, Any]


@attrs.frozen
class VerificationUpdate:
    """The verification of the task's result (engine/core/verification.py):
    `status` pending | passed | failed | unverified | skipped; `rerun`: the result
    failed and the task runs again on another node."""

    kind: ClassVar[str] = "verification"
    state: ClassVar[None] = None

    task_id: str
    status: str
    producer: str = ""  # the node whose result is checked
    validator: str | None = None
    score: float | None = None
    detail: str = ""
    rerun: bool = False

    def as_json(self) -> dict[str, Any]:
        """The task JSON's `verification` object."""
        return {"status": self.status, "producer": self.producer,
                "validator": self.validator, "score": self.score, "detail": self.detail,
                "rerun": self.rerun}


@attrs.frozen
class CompletedUpdate:
    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.COMPLETED

    task_id: str
    node_id: str
    result: Any  # the output (text for text generation)
    usage: Usage  # measured work
    cost: float  # dollars charged
    reference_cost: float  # what the measured usage costs at the reference (OpenAI) prices
    finish_reason: str = ""  # "stop", "length", ... as the runner said
    node_gpu: str = ""
    node_location: str = ""
    model_weights: str = ""
    # how the result fared under verification, when it was considered for it (one
    # stored change with the completion, not two)
    verification: VerificationUpdate | None = None
    # who counted the usage it is billed by (engine.core.metering: "coordinator", or
    # "node, bounded" when the coordinator has no tokenizer for the node's weights)
    metered_by: str = ""


@attrs.frozen
class FailedUpdate:
    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.FAILED

    task_id: str
    error: str
    node_id: str | None = None  # where it last ran, if it did


@attrs.frozen
class RejectedUpdate:
    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.REJECTED

    task_id: str
    error: str


@attrs.frozen
class ExpiredUpdate:
    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.EXPIRED

    task_id: str
    node_id: str | None = None  # where it was running, if it was
    error: str = "deadline passed"


@attrs.frozen
class CancelledUpdate:
    kind: ClassVar[str] = "state"
    state: ClassVar[TaskState] = TaskState.CANCELLED

    task_id: str


TaskUpdate = (QueuedUpdate | RequeuedUpdate | RunningUpdate | ProgressUpdate | CompletedUpdate
              | FailedUpdate | RejectedUpdate | ExpiredUpdate | CancelledUpdate
              | VerificationUpdate)
StateUpdate = (QueuedUpdate | RequeuedUpdate | RunningUpdate | CompletedUpdate | FailedUpdate
               | RejectedUpdate | ExpiredUpdate | CancelledUpdate)
FinalUpdate = CompletedUpdate | FailedUpdate | RejectedUpdate | ExpiredUpdate | CancelledUpdate
FINAL_UPDATES: frozenset[type] = frozenset(
    {CompletedUpdate, FailedUpdate, RejectedUpdate, ExpiredUpdate, CancelledUpdate})


@attrs.frozen
class SubmitOutcome:
    task_id: str
    accepted: bool
    state: TaskState  # queued or running when accepted, else rejected
    reason: str = ""  # why it was rejected
    node_id: str | None = None  # where it was placed at once, if it was


UpdateSink = Callable[[TaskUpdate], Awaitable[None]]

__all__ = [
    "CancelledUpdate", "CompletedUpdate", "ExpiredUpdate", "FINAL_UPDATES", "FailedUpdate",
    "FinalUpdate", "ProgressUpdate", "QueuedUpdate", "RejectedUpdate", "RequeuedUpdate",
    "RunningUpdate", "StateUpdate", "SubmitOutcome", "TaskUpdate", "UpdateSink",
    "VerificationUpdate",
]
