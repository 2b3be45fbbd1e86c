# The Coordinator's steps that carry out the core's decisions (a base class of it):
# the actor's `_apply` hands each decision the core returns to its step through the
# table `_decision_handlers` builds (decision type -> step):
#   Assign   -> an `assign` frame on the node's session (or DeliveryFailed back in)
#   Requeue / Cancel / Expire -> a `cancel` frame to the node that ran the task
#   Drop     -> close the node's session with the reason
#   Complete / Fail / Cancelled / Expire / Reject / Requeue / Verified -> a TaskUpdate
#   (updates.py: one precise type per change, carrying what a store row needs:
#   the node's GPU and location, the usage, cost and reference cost)
# Carrying out never blocks: frames go to bounded session outboxes with
# send_nowait, updates to the actor's pending list, which it publishes (unbounded
# queue, drained by a separate notifier task that awaits `on_update`) once the
# message is handled, so a slow database never stalls scheduling. A step that
# cannot carry its decision out reports it back as an event in `queue` (the core
# decides what follows). Each step is O(1).
#
# Verification (engine/core/verification.py): on Hold the actor keeps the held
# result's output and proof (the node's `result` frame's `proof`); the job's Assign
# (Assign.verifies) becomes an `assign` with the task's own input and params plus
# `verify: {claimed, proof}`; the validator's `result` for it carries the verdict
# {passed, score, detail} as its output, which becomes VerificationReported
# (worker_frames.py; any other output is the validator's protocol fault:
# TaskFaulted). Jobs are not API tasks: no TaskUpdate names them. Quarantine is an
# `error` frame to the node (its operator reads why in the worker's log); the node
# stays connected, idle.
#
# Rules: payloads and outputs are kept by task id only until the task ends
# (_forget); the actor's steps it uses (_tell, _place) are declared here and
# defined by the Coordinator.
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import trio

from engine.core import (
    Assign, Cancel, Cancelled, Complete, DeliveryFailed, Drop, Event, Expire, Fail, Hold,
    Quarantine, Reject, Requeue, Scheduler, Verified, WakeAt, openai_cost,
)
from engine.protocol import AssignTask, CancelTask, Error, Message

from .messages import TaskInput
from .session import NodeSession
from .updates import (
    CancelledUpdate, CompletedUpdate, ExpiredUpdate, FailedUpdate, RejectedUpdate,
    RequeuedUpdate, RunningUpdate, TaskUpdate, VerificationUpdate,
)

# the Coordinator's logger: its records are named as before the split
log = logging.getLogger("engine.runtime.coordinator")


class DecisionSteps:
    scheduler: Scheduler
    _pending: list[TaskUpdate]
    _sessions: dict[str, NodeSession]
    _inputs: dict[str, TaskInput]
    _outputs: dict[str, tuple[Any, str, Any, str]]
    _held: dict[str, tuple[Any, str, Any, str]]
    _jobs: dict[str, str]
    _job_of: dict[str, str]
    _verdict: dict[str, VerificationUpdate]
    _wake: trio.CancelScope | None  # the actor's wait for the core's timers (run_actor)

    # ---- defined by the Coordinator --------------------------------------------------

    def _tell(self, node_id: str | None, message: Message) -> None:
        raise NotImplementedError

    def _place(self, node_id: str, model: str) -> tuple[str, str, str]:
        raise NotImplementedError

    # ---- the steps -------------------------------------------------------------------

    def _decision_handlers(self) -> dict[type, Callable[[Any, list[Event]], None]]:
        """Decision type -> its step (Coordinator._apply carries out through it)."""
        return {
            Assign: self._do_assign, Reject: self._do_reject, Requeue: self._do_requeue,
            Cancel: self._do_cancel, Cancelled: self._do_cancelled,
            Complete: self._do_complete, Fail: self._do_fail, Expire: self._do_expire,
            Drop: self._do_drop, Hold: self._do_hold, Verified: self._do_verified,
            Quarantine: self._do_quarantine, WakeAt: self._do_wake_at}

    @staticmethod
    def _finite(value: float) -> float | None:
        return value if value < math.inf else None

    def _do_wake_at(self, d: WakeAt, queue: list[Event]) -> None:
        # The core's next timer moved: bring the actor's wake-up forward if it is
        # sooner (a later one is left: see Coordinator.run_actor).
        wake = self._wake
        if wake is not None and d.time < wake.deadline:
            wake.deadline = d.time

    def _do_assign(self, d: Assign, queue: list[Event]) -> None:
        session = self._sessions.get(d.node_id)
        verify = None
        if d.verifies is None:
            task = self._inputs[d.task_id]
        else:  # a verification job: the task's input, and the result under test
            task = self._inputs[d.verifies]
            output, _, proof, _ = self._held[d.verifies]
            verify = {"claimed": output, "proof": proof}
        frame = AssignTask(d.task_id, d.model, task.payload, task.params,
                           self._finite(d.deadline - trio.current_time()), d.attempt,
                           verify)
        if session is None or not session.deliver(frame):
            queue.append(DeliveryFailed(d.task_id, d.node_id))
            return
        session.tasks.assigned(d.task_id)
        if d.verifies is not None:
            return
        gpu, location, weights = self._place(d.node_id, d.model)
        self._pending.append(RunningUpdate(d.task_id, d.node_id, gpu, location, weights))

    def _forget(self, task_id: str) -> TaskInput | None:
        self._held.pop(task_id, None)
        self._jobs.pop(self._job_of.pop(task_id, ""), None)
        return self._inputs.pop(task_id, None)

    def _do_reject(self, d: Reject, queue: list[Event]) -> None:
        # A duplicate id is rejected without touching the original task.
        if self.scheduler.tasks.get(d.task_id) is None:
            self._forget(d.task_id)
            self._pending.append(RejectedUpdate(d.task_id, d.reason))

    def _do_requeue(self, d: Requeue, queue: list[Event]) -> None:
        session = self._sessions.get(d.node_id)
        if session is not None and session.tasks.holds(d.task_id):
            session.deliver(CancelTask(d.task_id, d.reason))
        if d.task_id not in self._jobs:
            self._held.pop(d.task_id, None)  # a result that failed its verification
            self._pending.append(RequeuedUpdate(d.task_id, d.reason))

    def _do_cancel(self, d: Cancel, queue: list[Event]) -> None:
        self._tell(d.node_id, CancelTask(d.task_id, "cancelled"))

    def _do_cancelled(self, d: Cancelled, queue: list[Event]) -> None:
        self._forget(d.task_id)
        self._pending.append(CancelledUpdate(d.task_id))

    def _do_complete(self, d: Complete, queue: list[Event]) -> None:
        held = self._held.get(d.task_id)
        task = self._forget(d.task_id)
        output, finish_reason, _, metered_by = (
            held if held is not None else self._outputs.pop(d.task_id, (None, "", None, "")))
        usage = d.usage
        if d.clamped:
            log.warning("task %s: charge clamped to $%.6f (node %s reported %g s)",
                        d.task_id, d.cost, d.node_id, usage.seconds)
        reference = 0.0 if task is None else openai_cost(
            task.model, usage.prompt_tokens, usage.tokens, usage.steps, usage.audio_seconds)
        gpu, location, weights = self._place(d.node_id, "" if task is None else task.model)
        self._pending.append(CompletedUpdate(d.task_id, d.node_id, output, usage, d.cost,
                                             reference, finish_reason, gpu, location, weights,
                                             verification=self._verdict.pop(d.task_id, None),
                                             metered_by=metered_by))

    def _do_fail(self, d: Fail, queue: list[Event]) -> None:
        verdict = self._verdict.pop(d.task_id, None)
        if verdict is not None:
            self._pending.append(verdict)
        self._forget(d.task_id)
        self._pending.append(FailedUpdate(d.task_id, d.error, d.node_id))

    def _do_expire(self, d: Expire, queue: list[Event]) -> None:
        task = self._forget(d.task_id)
        self._tell(d.node_id, CancelTask(d.task_id, "deadline passed"))
        error = "deadline passed"
        models = self.scheduler.index.models
        if d.node_id is None and task is not None and (
                task.model not in models or not models[task.model].online_slots):
            error = f"deadline passed with no online node serving {task.model}"
        self._pending.append(ExpiredUpdate(d.task_id, d.node_id, error))

    def _do_hold(self, d: Hold, queue: list[Event]) -> None:
        self._held[d.task_id] = self._outputs.pop(d.task_id, (None, "", None, ""))
        self._jobs[d.job_id] = d.task_id
        self._job_of[d.task_id] = d.job_id
        self._pending.append(VerificationUpdate(d.task_id, "pending", d.node_id))

    def _do_verified(self, d: Verified, queue: list[Event]) -> None:
        self._jobs.pop(self._job_of.pop(d.task_id, ""), None)
        update = VerificationUpdate(d.task_id, d.status, d.producer, d.validator, d.score,
                                    d.detail, d.rerun)
        if d.rerun or d.status == "failed":  # no completion follows (it runs again)
            self._pending.append(update)
        else:  # a Complete or a Fail follows at once (scheduler: Verified, then it)
            self._verdict[d.task_id] = update

    def _do_quarantine(self, d: Quarantine, queue: list[Event]) -> None:
        log.warning("node %s %s", d.node_id, d.reason)
        self._tell(d.node_id, Error(f"this node is {d.reason}; it gets no more tasks",
                                    retry=False))

    def _do_drop(self, d: Drop, queue: list[Event]) -> None:
        session = self._sessions.pop(d.node_id, None)
        if session is not None:
            log.info("dropping node %s: %s", d.node_id, d.reason)
            session.close(d.reason)


__all__ = ["DecisionSteps"]
