# The Coordinator's steps for the frames a worker reports (a base class of it):
# heartbeat, result, failed, draining, and a report the session's codec refused.
# The actor's message handler (Coordinator._on_report) dispatches a current
# session's report to them by frame type (the table `_frame_handlers` builds); each
# turns it into core events through the actor's `_apply`.
#
#   Heartbeat -> NodeHeartbeat; a task the node no longer runs (NodeTasks.lost)
#                fails retryably, a task it runs but was not given is cancelled
#   Result    -> TaskFinished (its output kept until the task completes), or, for a
#                verification job, VerificationReported (its output is the verdict,
#                verdicts.parse_verdict)
#   Failed    -> TaskFailed;  Draining -> NodeDraining
#   Refused   -> TaskFaulted (the session has answered the frame with `error`)
#
# Rules:
# - A report about a task not assigned to the node's connection is a protocol
#   error (answered with `error`) and changes nothing.
# - What a worker reports is checked at this boundary: a `result` whose usage is
#   impossible for the task (engine.core.metering.usage_problem, with
#   `check_usage`), or a report the codec refused (session.Refused), is a protocol
#   error answered with `error`, and the run is a fault of that node (TaskFaulted:
#   the task is re-queued, the node's earned slots halve). A verdict that does not
#   parse is the validator's fault the same way.
# - The usage that enters the core is metered here, not taken from the node
#   (metering.metered_usage): tokens counted with the model's tokenizer (meter.py,
#   found by the weights the node announced), steps and audio seconds from the task,
#   seconds at most what its measured speed allows beyond the run as this clock
#   timed it; a node count its output cannot hold (metering.count_problem) is a
#   fault like impossible usage. The completed update says who metered it
#   (`metered_by`).
# - Time is trio.current_time() only (the actor's rule). Each step is O(1) but for
#   the heartbeat's reconciliation, O(k) in the tasks the connection holds, and the
#   metering of a result, linear in its output.
# The actor's steps it uses (_apply) are declared here and defined by the
# Coordinator.
from __future__ import annotations

import logging
from typing import Any, Callable

import trio

from engine.core import (
    Decision, Event, NodeDraining, NodeHeartbeat, Scheduler, TaskFailed, TaskFaulted,
    TaskFinished, TaskRecord, TaskState, VerificationReported, usage_problem,
)
from engine.core.metering import count_problem, metered_usage
from engine.core.speed import speed_seconds
from engine.protocol import CancelTask, Draining, Failed, Heartbeat, Result

from .config import CoordinatorConfig
from .messages import TaskInput
from .meter import Meter
from .session import NodeSession, Refused
from .verdicts import parse_verdict

# the Coordinator's logger: its records are named as before the split
log = logging.getLogger("engine.runtime.coordinator")


class WorkerFrames:
    config: CoordinatorConfig
    scheduler: Scheduler
    meter: Meter
    _inputs: dict[str, TaskInput]
    _outputs: dict[str, tuple[Any, str, Any, str]]
    _jobs: dict[str, str]

    # ---- defined by the Coordinator --------------------------------------------------

    def _apply(self, event: Event) -> list[Decision]:
        raise NotImplementedError

    # ---- the frames ------------------------------------------------------------------

    def _frame_handlers(self) -> dict[type, Callable[[NodeSession, Any], None]]:
        """Frame type -> its step (Coordinator._on_report dispatches through it)."""
        return {Heartbeat: self._on_heartbeat, Result: self._on_result,
                Failed: self._on_failed, Draining: self._on_draining,
                Refused: self._on_refused}

    def _on_heartbeat(self, session: NodeSession, beat: Heartbeat) -> None:
        node_id = session.node_id
        self._apply(NodeHeartbeat(node_id, beat.loaded))

        def still_here(task_id: str) -> bool:
            record = self.scheduler.tasks.get(task_id)
            return (record is not None and record.node_id == node_id
                    and record.state is TaskState.RUNNING)

        for task_id in session.tasks.lost(beat.running, still_here):
            self._apply(TaskFailed(task_id, node_id, "the node dropped the task", True))
        for task_id in session.tasks.strangers(beat.running):
            session.deliver(CancelTask(task_id, "not assigned to this node"))

    def _reported(self, session: NodeSession, task_id: str) -> bool:
        if not session.tasks.report(task_id):
            session.protocol_error(f"task {task_id!r} is not assigned to this node")
            return False
        return True

    def _on_result(self, session: NodeSession, message: Result) -> None:
        task_id = message.task_id
        if self._reported(session, task_id):
            if task_id in self._jobs:
                self._on_verdict(session, message)
                return
            record = self.scheduler.tasks.get(task_id)
            usage, metered_by = message.usage, ""
            if (self.config.check_usage and record is not None
                    and record.node_id == session.node_id and record.state is TaskState.RUNNING):
                elapsed = trio.current_time() - record.assigned_at
                task = self._inputs.get(task_id)
                counts = None if task is None else self.meter.count(
                    task.model, session.weights.get(task.model, ""), message.output,
                    task.payload)
                problem = (usage_problem(record.spec, usage, elapsed)
                           or count_problem(usage, counts))
                if problem:
                    self._fault(session, task_id, problem)
                    return
                usage, metered_by = metered_usage(record.spec, usage, elapsed, counts,
                                                  self._speed_bound(record))
            self._outputs[task_id] = (message.output, message.finish_reason, message.proof,
                                    metered_by)
            self._apply(TaskFinished(task_id, session.node_id, usage))
            self._outputs.pop(task_id, None)  # still here: a stale result

    def _on_verdict(self, session: NodeSession, message: Result) -> None:
        verdict = parse_verdict(message.output)
        if isinstance(verdict, str):
            self._fault(session, message.task_id, f"verification job {message.task_id}: "
                                                  f"{verdict}")
            return
        passed, score, detail = verdict
        self._apply(VerificationReported(message.task_id, session.node_id, passed, score,
                                         detail))

    def _speed_bound(self, record: TaskRecord) -> float | None:
        """The service seconds the run's node needs for it at its measured speed, or
        None when it has not been measured for the model (engine/core/speed.py)."""
        node = self.scheduler.index.nodes.get(record.node_id or "")
        pace = None if node is None else node.paces.get(record.model)
        if node is None or pace is None:
            return None
        return speed_seconds(node.spec.gpu, record.model, record.work, pace)

    def _on_refused(self, session: NodeSession, message: Refused) -> None:
        # the session has answered the frame with `error` already
        if session.tasks.report(message.task_id):
            log.warning("node %s: refused report for %s: %s", session.node_id,
                        message.task_id, message.reason)
            self._apply(TaskFaulted(message.task_id, session.node_id, message.reason))

    def _fault(self, session: NodeSession, task_id: str, problem: str) -> None:
        log.warning("node %s: %s (task %s)", session.node_id, problem, task_id)
        session.protocol_error(problem)
        self._apply(TaskFaulted(task_id, session.node_id, problem))

    def _on_failed(self, session: NodeSession, message: Failed) -> None:
        if self._reported(session, message.task_id):
            self._apply(TaskFailed(message.task_id, session.node_id, message.error,
                                   message.retryable))

    def _on_draining(self, session: NodeSession, message: Draining) -> None:
        log.info("node %s is draining", session.node_id)
        self._apply(NodeDraining(session.node_id))


__all__ = ["WorkerFrames"]
