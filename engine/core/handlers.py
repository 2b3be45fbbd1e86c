# The Scheduler's event handlers (a base class of it): one method per core event
# type, each turning the event into changes of the task table and node index and
# into decisions. Scheduler.handle dispatches to them through its handler table
# (event type -> handler); VerificationReported's handler is verifying.py's.
#
# What each does, in short:
#   TaskSubmitted   reject it (duplicate id, unknown model, deadline passed, queue
#                   full), else record it and place it at once when nobody waits,
#                   else queue it
#   TaskCancelled   end it (cancelled), telling its node when it runs
#   TaskFinished    charge it (bounded by the charge cap), time its node, hold the
#                   result for verification or complete it
#   TaskFailed      retry it while attempts remain, else fail it
#   TaskFaulted     a fault of its node: take the run back (lifecycle.py)
#   DeliveryFailed  re-queue it without counting an attempt; drop and lose the node
#   NodeJoined      add the node (a known one is lost first: it reconnected)
#   NodeHeartbeat / NodeDraining / NodeLost   refresh, drain, lose the node
# An event about a task that ended, or about a node that no longer runs it, changes
# nothing (_running_on answers None).
#
# Rules: those of the Scheduler (no I/O, no clocks; randomness from self.rng). Each
# handler is O(1) plus the index updates it makes (O(log n) per node refresh) and,
# for a node lost, O(k log k) in the k tasks it ran. The lifecycle steps they use
# (_end, _requeue, _lose, _take_back) are lifecycle.py's, the verification steps
# verifying.py's, _assign the Scheduler's: declared here for the type checker only,
# so that they never shadow the definitions that come later in the Scheduler's bases.
from __future__ import annotations

import heapq
import math
import random
from typing import TYPE_CHECKING

import attrs

from .catalog import MODELS, default_price
from .events import (
    Cancel, Cancelled, Complete, Decision, DeliveryFailed, Drop, Fail, NodeDraining,
    NodeHeartbeat, NodeJoined, NodeLost, Reject, TaskCancelled, TaskFailed, TaskFaulted,
    TaskFinished, TaskSpec, TaskState, TaskSubmitted, Usage, VerifyMode,
)
from .index import NodeIndex, NodeState
from .placement import PlacementPolicy
from .pricing import charge, charge_cap
from .queue import ModelQueue
from .standing import Standing
from .state import SchedulerConfig, TaskRecord
from .verification import HeldResult, Trust

R = TaskState.RUNNING


def _with_deadline(spec: TaskSpec, deadline: float) -> TaskSpec:
    """attrs.evolve(spec, deadline=deadline), built positionally: evolve reads every
    field by name and passes them as keywords: 32,800 instructions a call against
    14,500 for this (callgrind), and the live coordinator gives most tasks their
    deadline here. Every field is listed (tests/engine/core/test_defences.py checks
    that none is lost)."""
    return TaskSpec(spec.task_id, spec.model, spec.priority, spec.prompt_tokens,
                    spec.output_tokens, spec.steps, spec.audio_seconds, deadline,
                    spec.max_attempts, spec.owner, spec.work, spec.verify)


class EventHandlers:
    tasks: dict[str, TaskRecord]
    queues: dict[str, ModelQueue]
    index: NodeIndex
    policy: PlacementPolicy
    rng: random.Random
    config: SchedulerConfig
    counters: dict[str, int]
    standing: Standing
    trust: Trust | None
    _seq: int
    _ordinal: int
    _deadlines: list[tuple[float, int, str]]
    _node_timers: list[tuple[float, int, str]]
    _busy_slots: int
    _total_slots: int
    _queued: int
    _plain_finish: bool  # (Scheduler.__init__)

    if TYPE_CHECKING:  # defined by the Scheduler and its other bases
        def _assign(self, record: TaskRecord, node: NodeState, now: float,
                    out: list[Decision]) -> None: ...

        def _end(self, record: TaskRecord, to: TaskState, now: float) -> None: ...

        def _requeue(self, record: TaskRecord, reason: str, out: list[Decision]) -> None: ...

        def _lose(self, node: NodeState, reason: str, now: float, out: list[Decision],
                  charge: bool = True) -> None: ...

        def _take_back(self, record: TaskRecord, node: NodeState, reason: str, now: float,
                       out: list[Decision]) -> None: ...

        def _hold(self, record: TaskRecord, producer: str, usage: Usage, cost: float,
                  clamped: bool, now: float, out: list[Decision]) -> bool: ...

        def _unhold(self, record: TaskRecord) -> HeldResult: ...

        def _job_failed(self, job: TaskRecord, to: TaskState, reason: str, now: float,
                        out: list[Decision]) -> None: ...

        def _drop_job(self, record: TaskRecord, now: float, out: list[Decision]) -> None: ...

        def _trust_joined(self, node: NodeState, now: float, out: list[Decision]) -> None: ...

    # ---- the handlers ----------------------------------------------------------------

    def _on_submitted(self, event: TaskSubmitted, now: float, out: list[Decision]) -> None:
        spec = event.task
        task_id, model, priority = spec.task_id, spec.model, spec.priority
        reason = self._rejection(spec, now)
        if reason:
            self.counters["rejected"] += 1
            out.append(Reject(task_id, reason))
            return
        config = self.config
        if config.default_deadline is not None and spec.deadline == math.inf:
            spec = _with_deadline(spec, now + config.default_deadline)
        record = self._add_record(spec, now - config.head_start[priority], now)
        self.counters["submitted"] += 1
        if not self._queued:
            # Nobody waits, so _place would consider this task alone: place it here
            # (the same policy call and the same decision, without the queue round trip).
            mi = self.index.models[model]
            if mi.free_count:
                node = self.policy.choose(record, mi, self.index, self.rng)
                if node is not None:
                    self._assign(record, node, now, out)
                    return
        self.queues[model].push(task_id, record.key, record.seq)
        self._queued += 1

    def _add_record(self, spec: TaskSpec, key: float, now: float) -> TaskRecord:
        """A new task's record, in the table, its deadline timed."""
        self._seq += 1
        seq = self._seq
        self.tasks[spec.task_id] = record = TaskRecord(spec, spec.work, key, seq, now,
                                                       spec.model, spec.priority)
        if spec.deadline < math.inf:
            heapq.heappush(self._deadlines, (spec.deadline, seq, spec.task_id))
        return record

    def _rejection(self, spec: TaskSpec, now: float) -> str:
        if spec.task_id in self.tasks:
            return f"duplicate task id {spec.task_id!r}"
        if spec.model not in MODELS:
            return f"unknown model {spec.model!r}"
        if spec.deadline <= now:
            return "deadline already passed"
        if spec.max_attempts < 1:
            return "max_attempts must be at least 1"
        if self._queued >= self.config.max_queued:
            return f"queue full ({self.config.max_queued} tasks waiting)"
        return ""

    def _on_cancelled(self, event: TaskCancelled, now: float, out: list[Decision]) -> None:
        record = self.tasks.get(event.task_id)
        if record is None or record.state.is_final or record.verifies is not None:
            return  # (a verification job ends with the task it checks)
        node_id = record.node_id if record.state is R else None
        if record.held is not None:
            self._drop_job(record, now, out)
            self._unhold(record)
            node_id = None
        self._end(record, TaskState.CANCELLED, now)
        if node_id is not None:
            out.append(Cancel(record.spec.task_id, node_id))
        out.append(Cancelled(record.spec.task_id))

    def _running_on(self, task_id: str, node_id: str) -> TaskRecord | None:
        record = self.tasks.get(task_id)
        if (record is None or record.state is not R or record.node_id != node_id
                or record.held is not None):
            return None
        return record

    def _on_finished(self, event: TaskFinished, now: float, out: list[Decision]) -> None:
        task_id, node_id = event.task_id, event.node_id
        record = self.tasks.get(task_id)  # _running_on, inlined: the hottest handler
        if (record is None or record.state is not R or record.node_id != node_id
                or record.held is not None):
            return
        node = self.index.nodes[node_id]
        if now > node.last_seen:
            node.last_seen = now
        node.tasks_done += 1
        if self._plain_finish:  # the fast path (the simulator's default configuration)
            record.cost = cost = charge(node.price_per_hour, event.usage.seconds,
                                        record.multiplier)
            self._end(record, TaskState.COMPLETED, now)
            out.append(Complete(task_id, node_id, cost, event.usage))
            return
        config = self.config
        price = record.run_price if config.check_hardware else node.price_per_hour
        record.cost = cost = charge(price, event.usage.seconds, record.multiplier)
        clamped = False
        if config.charge_cap_factor is not None:
            cap = charge_cap(record.quoted_cost, config.charge_cap_factor,
                             config.charge_cap_allowance)
            if cost > cap:
                record.cost = cost = cap
                clamped = True
        if config.initial_slots is not None or config.execution_timeout_factor is not None:
            self._total_slots += self.standing.completed(
                node, record.expected_seconds, now - record.assigned_at)
        if self.trust is not None and record.verifies is not None:
            # a job answers with a verdict, not a result
            self._on_faulted(TaskFaulted(task_id, node_id, "a verification job's "
                                         "answer must be a verdict"), now, out)
            return
        if self.index.measured:  # speed.py: the run, timed by us, measures the node
            self.standing.timed(node, record.model, record.work, now - record.assigned_at,
                                MODELS[record.model].load_seconds if record.run_cold else 0.0)
        if self.trust is not None and record.spec.verify != VerifyMode.NONE:
            if self._hold(record, node_id, event.usage, cost, clamped, now, out):
                return
        self._end(record, TaskState.COMPLETED, now)
        out.append(Complete(task_id, node_id, cost, event.usage, clamped)
                   if clamped else Complete(task_id, node_id, cost, event.usage))

    def _on_failed(self, event: TaskFailed, now: float, out: list[Decision]) -> None:
        record = self._running_on(event.task_id, event.node_id)
        if record is None:
            return
        if event.retryable and record.attempts < record.spec.max_attempts:
            self._requeue(record, f"retry after failure: {event.error}", out)
            return
        if record.verifies is not None:
            self._job_failed(record, TaskState.FAILED, event.error, now, out)
            return
        record.error = event.error
        self._end(record, TaskState.FAILED, now)
        out.append(Fail(event.task_id, event.error, event.node_id))

    def _on_faulted(self, event: TaskFaulted, now: float, out: list[Decision]) -> None:
        record = self._running_on(event.task_id, event.node_id)
        if record is not None:
            node = self.index.nodes[event.node_id]
            self._total_slots += self.standing.faulted(node, now)
            self._take_back(record, node, f"node fault: {event.reason}", now, out)

    def _on_delivery_failed(self, event: DeliveryFailed, now: float,
                            out: list[Decision]) -> None:
        record = self._running_on(event.task_id, event.node_id)
        if record is None:
            return
        record.attempts -= 1  # it never ran
        self._requeue(record, "could not be delivered to the node", out)
        # A node whose connection takes no frames is gone: were it kept, the task
        # would be placed straight back on it, and fail again, in a loop.
        node = self.index.nodes.get(event.node_id)
        if node is not None:
            reason = "its connection stopped taking frames"
            out.append(Drop(event.node_id, reason))
            self._lose(node, reason, now, out)

    def _on_joined(self, event: NodeJoined, now: float, out: list[Decision]) -> None:
        spec = event.node
        if spec.slots < 1:
            out.append(Drop(spec.node_id, "a node needs at least one slot"))
            return
        old = self.index.nodes.get(spec.node_id)
        if old is not None:  # it reconnected before we noticed it was gone
            self._lose(old, "rejoined", now, out, charge=self.config.rejoin_grace is None)
        models = tuple(m for m in spec.models if m in MODELS)
        if models != spec.models:
            spec = attrs.evolve(spec, models=models)
        self._ordinal += 1
        price = spec.price_per_hour if spec.price_per_hour is not None else default_price(spec.gpu)
        node = NodeState(spec, self._ordinal, price,
                         self.config.region_latency.get(spec.region, 0.0), now,
                         loaded=[m for m in spec.loaded if m in models])
        if self.config.initial_slots is not None or self.config.rejoin_grace is not None:
            self.standing.joining(node, now)
        self.index.add(node)
        self._total_slots += node.slots
        self.counters["nodes_joined"] += 1
        if self.trust is not None:
            self._trust_joined(node, now, out)
        if self.config.heartbeat_timeout < math.inf:
            heapq.heappush(self._node_timers,
                           (now + self.config.heartbeat_timeout, node.ordinal, node.node_id))

    def _on_heartbeat(self, event: NodeHeartbeat, now: float, out: list[Decision]) -> None:
        node = self.index.nodes.get(event.node_id)
        if node is None:
            return
        node.last_seen = max(node.last_seen, now)
        if event.loaded is not None:
            node.loaded = [m for m in event.loaded if m in node.spec.models]
            self.index.refresh(node)

    def _on_draining(self, event: NodeDraining, now: float, out: list[Decision]) -> None:
        node = self.index.nodes.get(event.node_id)
        if node is not None and not node.draining:
            self._total_slots -= node.slots
            self._busy_slots -= len(node.running)
            self.index.set_draining(node)

    def _on_lost(self, event: NodeLost, now: float, out: list[Decision]) -> None:
        node = self.index.nodes.get(event.node_id)
        if node is not None:
            self._lose(node, event.reason, now, out)


__all__ = ["EventHandlers"]
