# Task transitions as observers see them, and the hooks through which the
# services' observers (metrics.py, logs.py, dashboard.py) are plugged in.
#
# Theory of operation: relay.UpdateWriter is the single writer of task transitions;
# it tells its watchers (TaskWatcher) when a task is opened (submitted, or handed
# back after a restart), when a change of it is written, and when it leaves
# flight. TransitionTracker is such a watcher: it keeps what an observer needs of
# each open task (model, priority, when it was created and queued, its node) and
# turns each written change into one TaskTransition value - with the seconds it
# waited in the queue when it starts running and its turnaround when it ends - for
# its listeners. Listeners are plain callables; they must not block or raise
# (a listener that raises is logged and the others still hear the transition).
#
# Rules:
# - A task is tracked from `task_opened` to its final change (or `task_closed`),
#   so the tracker holds only open tasks; a change of an untracked task is ignored.
# - Time comes in with the values (row.created_at, change.at): wall-clock seconds.
from __future__ import annotations

import logging
from typing import Awaitable, Callable, Protocol, Sequence

import attrs

from .records import OPEN_STATES, TaskChange, TaskRow

log = logging.getLogger(__name__)


class TaskWatcher(Protocol):
    """What relay.UpdateWriter tells about task transitions."""

    def task_opened(self, row: TaskRow) -> None: ...

    def task_changed(self, change: TaskChange) -> None: ...

    def task_closed(self, task_id: str) -> None: ...


@attrs.frozen
class TaskTransition:
    task_id: str
    model: str
    priority: str
    status: str  # the state it entered
    at: float  # wall clock
    final: bool
    node_id: str | None = None
    node_gpu: str | None = None
    node_location: str | None = None
    queue_seconds: float | None = None  # when it starts running: since it was (re)queued
    turnaround_seconds: float | None = None  # when it ends: since it was created
    processing_seconds: float | None = None  # when it completes: the node's own time
    cost: float | None = None
    openai_cost: float | None = None
    error: str | None = None


Listener = Callable[[TaskTransition], None]


@attrs.define
class OpenTask:
    model: str
    priority: str
    created_at: float
    queued_since: float
    openai_cost: float
    node_id: str | None = None
    node_gpu: str | None = None
    node_location: str | None = None


class TransitionTracker:
    def __init__(self, listeners: Sequence[Listener] = ()) -> None:
        self.listeners = list(listeners)
        self._open: dict[str, OpenTask] = {}

    def __len__(self) -> int:
        return len(self._open)

    def _tell(self, transition: TaskTransition) -> None:
        for listener in self.listeners:
            try:
                listener(transition)
            except Exception:
                log.exception("a transition listener failed on %s", transition.task_id)

    def task_opened(self, row: TaskRow) -> None:
        if row.id in self._open:
            return
        self._open[row.id] = OpenTask(row.model, row.priority, row.created_at,
                                      row.created_at, row.openai_cost)
        self._tell(TaskTransition(row.id, row.model, row.priority, row.status, row.created_at,
                                  final=False))

    def task_changed(self, change: TaskChange) -> None:
        task = self._open.get(change.task_id)
        if task is None:
            return
        queue_seconds = turnaround = None
        if change.status == "running":
            task.node_id, task.node_gpu = change.node_id, change.node_gpu
            task.node_location = change.node_location
            queue_seconds = max(0.0, change.at - task.queued_since)
        elif change.status == "queued":  # back in the queue: its node is gone
            task.queued_since, task.node_id, task.node_gpu = change.at, None, None
        final = change.status not in OPEN_STATES
        if final:
            del self._open[change.task_id]
            turnaround = max(0.0, change.at - task.created_at)
        self._tell(TaskTransition(
            change.task_id, task.model, task.priority, change.status, change.at, final,
            task.node_id, task.node_gpu, task.node_location, queue_seconds, turnaround,
            change.processing_time if change.status == "completed" else None,
            change.cost, change.openai_cost if change.openai_cost is not None else (
                task.openai_cost if change.status == "completed" else None),
            change.error))

    def task_closed(self, task_id: str) -> None:
        self._open.pop(task_id, None)


Actor = Callable[..., Awaitable[None]]  # async def actor(services) -> None, runs until cancelled


@attrs.frozen
class ServiceHooks:
    """What app.serve_services plugs into the services it builds: watchers of task
    transitions (the update writer's), an observer of the dispatcher's trips to the
    coordinator (tasks in the batch, seconds), one of the store's commits
    (operations, seconds), and actors run beside the services (given `Services`)."""

    task_watchers: Sequence[TaskWatcher] = ()
    on_dispatch: Callable[[int, float], None] | None = None
    on_commit: Callable[[int, float], None] | None = None
    actors: Sequence[Actor] = ()


__all__ = ["Listener", "ServiceHooks", "TaskTransition", "TaskWatcher", "TransitionTracker"]
