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
# Task lifecycle (a table, not nested ifs - see TRANSITIONS in state.py):
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
# The Scheduler is this class and three base classes, one per responsibility, each
# declaring what it uses of the others: EventHandlers (handlers.py: one handler per
# event type), LifecycleSteps (lifecycle.py: the transitions and the timers) and
# VerificationSteps (verifying.py). This module keeps the entry points, the
# read-only views and placement (_place, _assign, _start_run).
#
# Rules: no I/O, no clocks, no global randomness (rng given at construction); the
# same events at the same times with the same seed give the same decisions.
from __future__ import annotations

import heapq
import math
import random
from typing import Any, Callable

from .catalog import GPU_CLASSES, MODELS
from .events import (
    Assign, Decision, DeliveryFailed, Event, NodeDraining, NodeHeartbeat, NodeJoined,
    NodeLost, TaskCancelled, TaskFailed, TaskFaulted, TaskFinished, TaskSpec, TaskState,
    TaskSubmitted, Tick, VerificationReported, WakeAt,
)
from .handlers import EventHandlers
from .index import NodeClass, NodeIndex, NodeState
from .placement import (
    DEFAULT_POLICY, PlacementPolicy, ScoredPolicy, balanced_score, make_policy,
)
from .lifecycle import LifecycleSteps
from .metering import run_bound
from .pricing import PricingPolicy, Quote, charge, make_pricing
from .queue import ModelQueue
from .standing import Standing
from .state import COUNTERS, TRANSITIONS, SchedulerConfig, TaskRecord
from .verification import Trust
from .verifying import VerificationSteps
from .views import NetworkSnapshot, NodeSnapshot, network_snapshot, quote_task

R = TaskState.RUNNING


class Scheduler(EventHandlers, LifecycleSteps, VerificationSteps):
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
        # the earliest timer as of the last handle() (inf: none). Only handle() adds or
        # ends timers, and it recomputes this last, so before `now` reaches it no timer
        # is due: handle() looks at the timer heaps only then (the live coordinator's
        # three heaps were settled twice a call, a quarter of its core's opcodes).
        self._announced_wake = math.inf
        # a run's terms (its class's promise: timers, the charge cap, measured speed)
        # are only kept when something reads them (_start_run)
        self._run_terms = (config.execution_timeout_factor is not None
                           or config.charge_cap_factor is not None or self.index.measured)
        # a finished run is only charged and ended (handlers._on_finished's fast path):
        # no cap, no earned slots or timers, no measured speed, no verification
        self._plain_finish = not (self._run_terms or config.check_hardware
                                  or config.initial_slots is not None
                                  or config.trust is not None)
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
        if now >= self._announced_wake:  # (see __init__: nothing is due before it)
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

    def _assign(self, record: TaskRecord, node: NodeState, now: float,
                out: list[Decision]) -> None:
        spec, model = record.spec, record.model
        task_id, node_id = spec.task_id, node.spec.node_id
        # the class it runs in, as placed (before warmth may move it)
        cls = node.classes[model] if self._run_terms else None
        cold = model not in node.loaded
        warmth_changed = len(node.touch_model(model)) > 0 or cold
        node.running.add(task_id)
        self._busy_slots += 1
        record.multiplier = self.pricing.multiplier(
            record.priority, self._busy_slots / self._total_slots)
        if cls is not None:
            self._start_run(record, node, cls, now)
        self.index.refresh(node, warmth_changed)
        assert (record.state, R) in TRANSITIONS, (record.state, R)  # _move, inlined
        record.state = R
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



__all__ = ["Scheduler", "SchedulerConfig", "TaskRecord", "NetworkSnapshot", "NodeSnapshot",
           "TRANSITIONS", "GPU_CLASSES"]
