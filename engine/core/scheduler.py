# The Scheduler: the one entry point of the pure core.
#
#     decisions = scheduler.handle(event, now)
#     when = scheduler.next_deadline()        # math.inf when nothing is due
#
# Theory of operation. The scheduler owns the task table, the per-model queues
# (queue.py), the node index (index.py), a placement policy (placement.py) and a
# pricing policy (pricing.py). `handle` first fires every timer that is due at
# `now` (task deadlines, node heartbeat timeouts), then applies the event through a
# table of handlers (one per event type), then places queued tasks on free nodes
# until a model's queue or its free nodes run out. (A submission that finds every
# queue empty is placed by its handler directly: the same policy call, and so the
# same decision, as the queue would give it, without the queue round trip.) It
# returns the decisions in the order they were taken. A driver carries them out;
# what it cannot carry out it reports back as an event (DeliveryFailed, NodeLost) -
# the core never sees I/O.
#
# Task lifecycle (a table, not nested ifs - see TRANSITIONS):
#   queued -> running -> completed | failed | expired | cancelled | queued (requeue)
#   queued -> expired | cancelled
#   (submission) -> rejected
# Each task ends exactly once; an event about a task that already ended, or about
# a node that no longer runs it (a stale result from a node that was declared lost),
# changes nothing.
#
# Defences against faulty and hostile nodes are SchedulerConfig options (state.py),
# off by default - the simulator's scenarios decide as a trusting scheduler does -
# and on in the live coordinator (CoordinatorConfig): a default deadline; an
# execution timeout (metering.run_bound: the run is taken back, a Requeue, as a
# fault of its node); earned slots and a cooldown after a fault (standing.py); at
# most one loss per node per task, none for a reconnect (rejoin_grace); the charge
# bound (pricing.py); measured speed and checked hardware claims (speed.py: a
# completed run, timed on our clock, moves its node to the class its measured speed
# puts it in, and it is charged at that class's price). A fault (TaskFaulted, an
# execution timeout) re-queues the task without counting an attempt, like a lost
# node; max_node_losses fail it as poison.
#
# Verification of results (SchedulerConfig.trust, off by default; verification.py
# has the flow): a result that must be verified is held (Hold) while a verification
# job - a child task placed on a validator node - checks it; the verdict
# (VerificationReported) completes the task or re-queues it away from its producer,
# whose reputation (reputation.py) falls and may quarantine it (Quarantine). A held
# task stays `running` (off its producer's slot) until then.
#
# Rules: no I/O, no clocks, no global randomness (rng given at construction); the
# same events at the same times with the same seed give the same decisions.
from __future__ import annotations

import heapq
import math
import random
from typing import Any, Callable

import attrs

from .catalog import GPU_CLASSES, MODELS, default_price
from .events import (
    Assign, Cancel, Cancelled, Complete, Decision, DeliveryFailed, Drop, Event, Expire,
    Fail, NodeDraining, NodeHeartbeat, NodeJoined, NodeLost, Reject,
    Requeue, TaskCancelled, TaskFailed, TaskFaulted, TaskFinished, TaskSpec, TaskState,
    TaskSubmitted, Tick, VerificationReported, VerifyMode, WakeAt,
)
from .index import NodeClass, NodeIndex, NodeState
from .placement import (
    DEFAULT_POLICY, PlacementPolicy, ScoredPolicy, balanced_score, make_policy,
)
from .metering import run_bound
from .pricing import PricingPolicy, Quote, charge, charge_cap, make_pricing
from .queue import ModelQueue
from .standing import Standing
from .state import TRANSITIONS, SchedulerConfig, TaskRecord
from .verification import Trust
from .verifying import VerificationSteps
from .views import NetworkSnapshot, NodeSnapshot, network_snapshot, quote_task

Q, R = TaskState.QUEUED, TaskState.RUNNING
_LIVE = frozenset({Q, R})  # the states that are not final (TaskState.is_final, C speed)
_COUNTER_OF = {state: state.value for state in TaskState}
COUNTERS = ("submitted", "assigned", "completed", "failed", "expired", "cancelled",
            "rejected", "requeued", "nodes_joined", "nodes_lost")


class Scheduler(VerificationSteps):
    def __init__(self, policy: str | PlacementPolicy = DEFAULT_POLICY,
                 pricing: str | PricingPolicy = "static",
                 rng: random.Random | None = None,
                 config: SchedulerConfig = SchedulerConfig()) -> None:
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.pricing = make_pricing(pricing) if isinstance(pricing, str) else pricing
        self.rng = rng if rng is not None else random.Random(0)
        self.config = config
        self.tasks: dict[str, TaskRecord] = {}
        self.queues: dict[str, ModelQueue] = {m: ModelQueue() for m in MODELS}
        self.index = NodeIndex(free_list=self.policy.needs_free_list,
                               load_heap=self.policy.needs_load_heap,
                               measured_speed=config.measured_speed,
                               check_hardware=config.check_hardware)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._seq = 0
        self._ordinal = 0
        self._deadlines: list[tuple[float, int, str]] = []
        self._node_timers: list[tuple[float, int, str]] = []
        self._run_timers: list[tuple[float, int, str]] = []
        self._runs = 0
        self.standing = Standing(self.index, config.initial_slots,
                                 config.completions_per_slot, config.rejoin_grace,
                                 config.fault_cooldown)
        self._benched = self.standing.benched  # (until, ordinal, node id): timers too
        self._busy_slots = 0
        self._total_slots = 0
        self._queued = 0  # tasks in all queues (a fast path: _place skips when 0)
        self._announced_wake = math.inf
        self._quote_ranking = ScoredPolicy("quote", balanced_score)
        self.trust: Trust | None = None
        if config.trust is not None:
            self.trust = Trust(config.trust, self.index,
                               self.policy.score if isinstance(self.policy, ScoredPolicy)
                               else balanced_score)
        self._handlers: dict[type, Callable[[Any, float, list[Decision]], None]] = {
            TaskSubmitted: self._on_submitted,
            TaskCancelled: self._on_cancelled,
            TaskFinished: self._on_finished,
            TaskFailed: self._on_failed,
            TaskFaulted: self._on_faulted,
            DeliveryFailed: self._on_delivery_failed,
            NodeJoined: self._on_joined,
            NodeHeartbeat: self._on_heartbeat,
            NodeDraining: self._on_draining,
            NodeLost: self._on_lost,
            VerificationReported: self._on_verdict,
            Tick: lambda event, now, out: None,
        }

    # ---- the entry points ------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Decision]:
        out: list[Decision] = []
        if self._deadlines or self._node_timers or self._run_timers or self._benched:
            self._fire_timers(now, out)
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"not a scheduler event: {event!r}")
        handler(event, now, out)
        if self.trust is not None and self.trust.queued:
            self._place_jobs(now, out)
        if self._queued:
            self._place(now, out)
        # Without timers next_deadline() is inf: skip the call on the hot path.
        wake = (self.next_deadline() if self._deadlines or self._node_timers
                or self._run_timers or self._benched else math.inf)
        if wake != self._announced_wake:
            self._announced_wake = wake
            if wake < math.inf:
                out.append(WakeAt(wake))
        return out

    def next_deadline(self) -> float:
        if (not self._deadlines and not self._node_timers and not self._run_timers
                and not self._benched):
            return math.inf
        self._settle_deadlines()
        self._settle_node_timers()
        self._settle_run_timers()
        first = self._deadlines[0][0] if self._deadlines else math.inf
        if self._node_timers:
            first = min(first, self._node_timers[0][0])
        if self._run_timers:
            first = min(first, self._run_timers[0][0])
        if self._benched:
            first = min(first, self.standing.next_release())
        return first

    # ---- read-only views ------------------------------------------------------

    def task(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    @property
    def utilization(self) -> float:
        return self._busy_slots / self._total_slots if self._total_slots else 0.0

    def snapshot(self) -> NetworkSnapshot:
        return network_snapshot(self.index, self.queues, self._busy_slots, self.counters,
                                self.utilization, self.trust)

    def quote(self, spec: TaskSpec) -> Quote:
        """Estimate cost and time for `spec` as the network stands now, without
        changing anything (no randomness is drawn)."""
        return quote_task(spec, self.index, len(self.queues[spec.model]), self.pricing,
                          self._quote_ranking, self.utilization)

    # ---- event handlers -------------------------------------------------------

    def _on_submitted(self, event: TaskSubmitted, now: float, out: list[Decision]) -> None:
        spec = event.task
        task_id, model, priority = spec.task_id, spec.model, spec.priority
        reason = self._rejection(spec, now)
        if reason:
            self.counters["rejected"] += 1
            out.append(Reject(task_id, reason))
            return
        if spec.deadline == math.inf and self.config.default_deadline is not None:
            spec = attrs.evolve(spec, deadline=now + self.config.default_deadline)
        record = self._add_record(spec, now - self.config.head_start[priority], now)
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
        if self.trust is not None and record.spec.verify is not VerifyMode.NONE:
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

    # ---- transitions ----------------------------------------------------------

    def _move(self, record: TaskRecord, to: TaskState) -> None:
        assert (record.state, to) in TRANSITIONS, (record.state, to)
        record.state = to

    def _detach(self, record: TaskRecord) -> NodeState | None:
        """Take a running task off its node, freeing the slot."""
        node_id = record.node_id
        node = self.index.nodes.get(node_id) if node_id else None
        if node is not None:
            running, task_id = node.running, record.spec.task_id
            if task_id in running:
                running.remove(task_id)
                if not node.draining:
                    self._busy_slots -= 1
                self.index.refresh(node, False)  # warmth did not change
        return node

    def _end(self, record: TaskRecord, to: TaskState, now: float) -> None:
        state = record.state
        job = record.verifies is not None
        if state is R:
            self._detach(record)
        elif state is Q:
            if job and self.trust is not None:
                self.trust.queues[record.model].remove(record.spec.task_id)
                self.trust.queued -= 1
            else:
                self.queues[record.model].remove(record.spec.task_id)
                self._queued -= 1
        self._move(record, to)
        record.ended_at = now
        if job and self.trust is not None:
            if to is not TaskState.COMPLETED:
                self.trust.counters["jobs_failed"] += 1
        else:
            self.counters[_COUNTER_OF[to]] += 1
        if not self.config.keep_finished:
            del self.tasks[record.spec.task_id]

    def _requeue(self, record: TaskRecord, reason: str, out: list[Decision]) -> None:
        node_id = record.node_id or ""
        self._detach(record)
        self._move(record, Q)
        record.node_id = None
        self.counters["requeued"] += 1
        if record.verifies is not None and self.trust is not None:
            self.trust.queues[record.model].push(record.spec.task_id, record.key, record.seq)
            self.trust.queued += 1
        else:
            self.queues[record.model].push(record.spec.task_id, record.key, record.seq)
            self._queued += 1
        out.append(Requeue(record.spec.task_id, node_id, reason))

    def _lose(self, node: NodeState, reason: str, now: float, out: list[Decision],
              charge: bool = True) -> None:
        for task_id in sorted(node.running, key=lambda t: self.tasks[t].seq):
            record = self.tasks[task_id]
            if charge:
                self._take_back(record, node, f"node lost: {reason}", now, out)
            else:
                record.attempts -= 1  # not the task's fault, nor (a reconnect) a loss
                self._requeue(record, f"node lost: {reason}", out)
        if not node.draining:
            self._total_slots -= node.slots
        self.standing.left(node, now)
        self.index.remove(node)
        if self.trust is not None:
            self.trust.update(None, node.node_id)
        self.counters["nodes_lost"] += 1

    def _take_back(self, record: TaskRecord, node: NodeState, reason: str, now: float,
                   out: list[Decision]) -> None:
        """The task's node failed it (lost, timed out, faulted): charge the task a
        node loss (once per node, with rejoin_grace) and re-queue it, or fail it as
        a poison task after max_node_losses of them."""
        charged = True
        if self.config.rejoin_grace is not None:
            if record.charged_nodes is None:
                record.charged_nodes = set()
            charged = node.node_id not in record.charged_nodes
            record.charged_nodes.add(node.node_id)
        if charged:
            record.node_losses += 1
        if record.node_losses >= self.config.max_node_losses:
            record.error = f"its node was lost {record.node_losses} times"
            if record.verifies is not None:
                self._job_failed(record, TaskState.FAILED, record.error, now, out)
                return
            self._end(record, TaskState.FAILED, now)
            out.append(Fail(record.spec.task_id, record.error, node.node_id))
        else:
            record.attempts -= 1  # not the task's fault
            self._requeue(record, reason, out)

    def _assign(self, record: TaskRecord, node: NodeState, now: float,
                out: list[Decision]) -> None:
        spec, model = record.spec, record.model
        task_id, node_id = spec.task_id, node.spec.node_id
        config = self.config
        # the class it runs in, as placed (before warmth may move it)
        cls = (node.classes[model] if config.execution_timeout_factor is not None
               or config.charge_cap_factor is not None or self.index.measured else None)
        cold = model not in node.loaded
        evicted = node.touch_model(model)
        node.running.add(task_id)
        self._busy_slots += 1
        record.multiplier = self.pricing.multiplier(
            record.priority, self._busy_slots / self._total_slots)
        if cls is not None:
            self._start_run(record, node, cls, now)
        self.index.refresh(node, warmth_changed=cold or bool(evicted))
        self._move(record, R)
        record.node_id = node_id
        record.assigned_at = now
        record.attempts = attempt = record.attempts + 1
        if record.started_at is None:
            record.started_at = now
        self.counters["assigned"] += 1
        out.append(Assign(task_id, node_id, model, attempt, spec.deadline, cold,
                          record.verifies))

    def _start_run(self, record: TaskRecord, node: NodeState, cls: NodeClass,
                   now: float) -> None:
        """What the node's class promises for this run, and its execution timer."""
        config = self.config
        self._runs += 1
        record.run = self._runs
        record.expected_seconds = cls.completion_seconds(record.work)
        record.run_price, record.run_cold = cls.price_per_hour, not cls.warm
        record.quoted_cost = charge(cls.price_per_hour, cls.service_seconds(record.work),
                                    record.multiplier)
        factor = config.execution_timeout_factor
        if factor is not None:
            bound = run_bound(record.expected_seconds, node.pace, factor,
                              config.execution_timeout_floor)
            heapq.heappush(self._run_timers, (now + bound, record.run, record.spec.task_id))

    def _place(self, now: float, out: list[Decision]) -> None:
        """Per model (in catalog order), place the head of its queue while the model
        has free nodes and the policy finds one. The TaskRecord itself is what the
        policy sees (it has the PlacementTask attributes)."""
        policy, rng, index, tasks = self.policy, self.rng, self.index, self.tasks
        models = index.models
        for model, queue in self.queues.items():
            if not queue:
                continue
            mi = models[model]
            while mi.free_count:
                task_id = queue.peek()
                if task_id is None:
                    break
                record = tasks[task_id]
                node = (policy.choose(record, mi, index, rng) if record.excluded is None
                        else self._choose_excluding(record, mi))
                if node is None:
                    break
                queue.pop_peeked()
                self._queued -= 1
                self._assign(record, node, now, out)

    # ---- timers ---------------------------------------------------------------

    def _settle_deadlines(self) -> None:
        heap, tasks = self._deadlines, self.tasks
        while heap:
            deadline, seq, task_id = heap[0]
            record = tasks.get(task_id)
            if record is not None and record.seq == seq and record.state in _LIVE:
                return
            heapq.heappop(heap)

    def _settle_node_timers(self) -> None:
        heap, nodes, timeout = self._node_timers, self.index.nodes, self.config.heartbeat_timeout
        while heap:
            expiry, ordinal, node_id = heap[0]
            node = nodes.get(node_id)
            if node is None or node.ordinal != ordinal:
                heapq.heappop(heap)
            elif node.last_seen + timeout > expiry:  # it was heard from since
                heapq.heapreplace(heap, (node.last_seen + timeout, ordinal, node_id))
            else:
                return

    def _settle_run_timers(self) -> None:
        heap, tasks = self._run_timers, self.tasks
        while heap:
            _, run, task_id = heap[0]
            record = tasks.get(task_id)
            if record is not None and record.run == run and record.state is R:
                return
            heapq.heappop(heap)

    def _fire_timers(self, now: float, out: list[Decision]) -> None:
        self._settle_deadlines()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, task_id = heapq.heappop(self._deadlines)
            record = self.tasks[task_id]
            if record.verifies is not None:
                self._job_failed(record, TaskState.EXPIRED, "it timed out", now, out)
            elif record.held is not None:
                self._held_expired(record, now, out)
            else:
                node_id = record.node_id if record.state is R else None
                self._end(record, TaskState.EXPIRED, now)
                out.append(Expire(task_id, node_id))
            self._settle_deadlines()
        self._settle_node_timers()
        while self._node_timers and self._node_timers[0][0] <= now:
            _, _, node_id = heapq.heappop(self._node_timers)
            node = self.index.nodes[node_id]
            reason = f"no heartbeat for {self.config.heartbeat_timeout:g} s"
            out.append(Drop(node_id, reason))
            self._lose(node, reason, now, out)
            self._settle_node_timers()
        if self._benched:
            self.standing.release(now)
        self._settle_run_timers()
        while self._run_timers and self._run_timers[0][0] <= now:
            _, _, task_id = heapq.heappop(self._run_timers)
            record = self.tasks[task_id]
            node = self.index.nodes[record.node_id or ""]
            self._total_slots += self.standing.faulted(node, now)
            self._take_back(record, node, f"no result within "
                            f"{now - record.assigned_at:.3g} s (execution timeout)", now, out)
            self._settle_run_timers()



__all__ = ["Scheduler", "SchedulerConfig", "TaskRecord", "NetworkSnapshot", "NodeSnapshot",
           "TRANSITIONS", "GPU_CLASSES"]
