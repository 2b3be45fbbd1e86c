# The scheduler's state values: its configuration (SchedulerConfig), its record of
# one task (TaskRecord), the task lifecycle it may take (TRANSITIONS, LIVE_STATES)
# and the counters it keeps (COUNTERS; COUNTER_OF: the counter a final state
# counts in). The Scheduler (scheduler.py, handlers.py, lifecycle.py) owns and
# changes them; everyone else reads.
from __future__ import annotations

from typing import Mapping

import attrs

from .events import Priority, TaskSpec, TaskState
from .queue import DEFAULT_HEAD_START
from .verification import HeldResult, TrustPolicy

Q, R = TaskState.QUEUED, TaskState.RUNNING
# (from, to) pairs the scheduler may take; anything else is a bug (asserted).
TRANSITIONS = frozenset({
    (None, Q), (None, TaskState.REJECTED),
    (Q, R), (Q, TaskState.EXPIRED), (Q, TaskState.CANCELLED),
    (R, TaskState.COMPLETED), (R, TaskState.FAILED), (R, TaskState.EXPIRED),
    (R, TaskState.CANCELLED), (R, Q),
})
LIVE_STATES = frozenset({Q, R})  # the states that are not final (TaskState.is_final, C speed)
# The scheduler's counters (Scheduler.counters), and the one a task ending in a state counts in.
COUNTERS = ("submitted", "assigned", "completed", "failed", "expired", "cancelled",
            "rejected", "requeued", "nodes_joined", "nodes_lost")
COUNTER_OF = {state: state.value for state in TaskState}


@attrs.frozen
class SchedulerConfig:
    heartbeat_timeout: float = 30.0  # a node silent this long is lost; inf: never
    head_start: Mapping[Priority, float] = DEFAULT_HEAD_START
    region_latency: Mapping[str, float] = attrs.field(factory=dict)  # seconds
    max_queued: int = 1_000_000  # submissions beyond this are rejected
    max_node_losses: int = 5  # a task whose node dies this often fails (poison task)
    keep_finished: bool = True  # keep ended tasks readable (False: forget them)
    # Defences (scheduler.py, standing.py); None / the defaults: off, as the simulator runs.
    default_deadline: float | None = None  # seconds a task without a deadline gets
    execution_timeout_factor: float | None = None  # runs past the bound are taken back
    execution_timeout_floor: float = 60.0  # the bound is never below this (seconds)
    initial_slots: int | None = None  # a new node's usable slots (None: its claim)
    completions_per_slot: int = 2  # completions that earn one more usable slot
    # a task is charged at most one loss per node; a node back within this many
    # seconds keeps its standing (standing.py); a reconnect while known is no loss
    rejoin_grace: float | None = None
    charge_cap_factor: float | None = None  # charge <= max(factor x quote, quote + allowance)
    charge_cap_allowance: float = 0.01  # dollars
    fault_cooldown: float | None = None  # seconds a node takes no new work after a fault
    # verification of results and reputation (verification.py); None: off
    trust: TrustPolicy | None = None
    # Measured speed (speed.py): quotes and placement from each node's timed runs per
    # model; and a node whose measured speed contradicts its claimed GPU re-classed,
    # its price with it. Off: the catalog's figures for the claimed GPU, as the
    # simulator's scenarios run.
    measured_speed: bool = False
    check_hardware: bool = False


@attrs.define(eq=False)
class TaskRecord:
    """The core's mutable record of one task. It carries `model`, `work` and
    `priority` itself, so it is what a placement policy is handed (a PlacementTask)."""

    spec: TaskSpec
    work: float
    key: float  # queue key: virtual arrival time
    seq: int
    submitted_at: float
    model: str  # = spec.model
    priority: Priority  # = spec.priority
    state: TaskState = TaskState.QUEUED
    node_id: str | None = None
    attempts: int = 0
    node_losses: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    multiplier: float = 1.0
    cost: float = 0.0
    error: str = ""
    # The current run (set at each assignment): its number, when it started, the
    # seconds and cost its node's class promised for it.
    run: int = 0
    assigned_at: float = 0.0
    expected_seconds: float = 0.0
    quoted_cost: float = 0.0
    run_price: float = 0.0  # the price per hour of the class it runs in, as placed
    run_cold: bool = False  # the node had to load the model first
    charged_nodes: set[str] | None = None  # nodes charged a loss (with rejoin_grace)
    # Verification (verification.py): on a verification job, the id of the task
    # whose result it checks; on a task, its result waiting for a verdict, and the
    # nodes whose results for it failed verification (never placed there again).
    verifies: str | None = None
    held: HeldResult | None = None
    excluded: set[str] | None = None


__all__ = ["COUNTERS", "COUNTER_OF", "LIVE_STATES", "SchedulerConfig", "TRANSITIONS",
           "TaskRecord"]
