# What reaches the Coordinator (Coordinator._post, in the sender's task): one frozen
# message class per kind of request, dispatched by type (Coordinator._on_message, a dict
# type -> handler, as the core's events are dispatched by the Scheduler).
#
#   from the API       SubmitRequest (a batch of tasks), CancelRequest
#   from NodeSessions  SessionJoined, SessionReported (a heartbeat, result,
#                      failed or draining frame), SessionLeft
#
# Also here: TaskInput, what the coordinator keeps of an open task besides its spec (the
# task's worker input), shared by the steps that receive a worker's frames
# (worker_frames.py) and those that carry out decisions (carrying.py).
#
# Rules: the messages are values the sender never touches again; a request that
# wants an answer carries a `Reply`, which its handler sets (never blocks) and the
# sender reads once the message is handled. Names end in Request / start with
# Session so that they never clash with the core's events (engine.core.NodeJoined,
# TaskCancelled, ...).
from __future__ import annotations

from typing import Any, Generic, Mapping, TypeVar

import attrs

from engine.core import NodeSpec, TaskSpec

from .session import NodeReport, NodeSession
from .updates import SubmitOutcome

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot answer: the request's handler sets it before `Coordinator._post`
    returns (handlers are synchronous), so the sender reads it right after."""

    __slots__ = ("_value", "_set")

    def __init__(self) -> None:
        self._value: T | None = None
        self._set = False

    def set(self, value: T) -> None:
        self._value, self._set = value, True

    @property
    def value(self) -> T:
        if not self._set:
            raise RuntimeError("the request has not been handled")
        return self._value  # type: ignore[return-value]  # set above


@attrs.frozen
class Submission:
    """One task to queue: the core's spec and the worker's input and params."""

    spec: TaskSpec
    payload: Mapping[str, Any]
    params: Mapping[str, Any]


@attrs.frozen
class TaskInput:
    """What the actor keeps of an open task besides its spec (the core never sees it)."""

    model: str
    payload: Mapping[str, Any]
    params: Mapping[str, Any]


@attrs.frozen(eq=False)
class SubmitRequest:
    submissions: tuple[Submission, ...]
    reply: Reply[list[SubmitOutcome]]


@attrs.frozen(eq=False)
class CancelRequest:
    task_id: str
    reply: Reply[bool]


@attrs.frozen(eq=False)
class SessionJoined:
    session: NodeSession
    spec: NodeSpec


@attrs.frozen(eq=False)
class SessionReported:
    session: NodeSession
    message: NodeReport


@attrs.frozen(eq=False)
class SessionLeft:
    session: NodeSession
    reason: str


ActorMessage = (SubmitRequest | CancelRequest | SessionJoined | SessionReported
                | SessionLeft)

__all__ = ["ActorMessage", "CancelRequest", "Reply", "SessionJoined", "SessionLeft",
           "SessionReported", "SubmitRequest", "Submission", "TaskInput"]
