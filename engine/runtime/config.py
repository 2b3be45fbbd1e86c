# CoordinatorConfig: everything that shapes a live coordinator, as one frozen value
# (the API's ApiConfig carries one; `neurogrid serve` builds it from its flags).
# It also derives what the coordinator's parts need: the scheduler's config (and
# the scheduler itself, seeded), the journal's header, a session's limits.
#
# The defences against faulty and hostile workers are on by default here (the
# scheduler's own defaults leave them off, for the simulator's scenarios):
#   default_deadline 1200 s      a task without a deadline expires after 20 minutes
#                                (AI Horde's request lifetime); the API sets it
#   execution_timeout_factor 10, execution_timeout_floor 300 s
#                                a run is taken back after max(10 x its expected
#                                time x the node's pace, 300 s)
#   initial_slots 2, completions_per_slot 2
#                                a node's claimed slots are earned
#   rejoin_grace 60 s            reconnects cost a task at most one loss per node
#   charge_cap_factor 2.0, charge_cap_allowance $0.01
#                                charge <= max(2 x quote, quote + $0.01)
#   fault_cooldown 30 s          a node that faulted takes no new work meanwhile
#   check_usage                  impossible usage is a protocol error, and usage is
#                                metered by the coordinator (metering.py, meter.py)
#   measured_speed, check_hardware
#                                quotes and placement from each node's measured
#                                speed; a false GPU claim re-classed (speed.py)
#   max_price_per_hour $1000     a hello asking more is refused
#   reconnect_burst 10, reconnect_rate 0.5/s
#                                hellos per worker token (guard.py)
#   reverify_interval 10 s       a live session's token is checked again this often:
#                                a token revoked anywhere (the admin CLI's process
#                                included) closes its sessions within this
#   trust TrustPolicy()          results are verified by validator nodes
#                                (engine/core/verification.py): the API's tasks
#                                default to `sampled`; `trusted_nodes` names the
#                                validators the operator trusts (node ids or worker
#                                token names), others earn it by reputation; a node
#                                on probation has at most 2 tasks running or held
#                                for a verdict (TrustPolicy.probation_tasks)
from __future__ import annotations

import random

import attrs

from engine.core import DEFAULT_POLICY, Scheduler, SchedulerConfig, TrustPolicy
from engine.core.journal import JournalHeader
from engine.protocol import MAX_FRAME_BYTES

from .session import SessionLimits


@attrs.frozen
class CoordinatorConfig:
    policy: str = DEFAULT_POLICY  # placement policy name (engine.core.POLICIES)
    pricing: str = "static"  # pricing policy name (engine.core.PRICING)
    seed: int = 0  # seeds the scheduler's rng: same events + seed => same decisions
    heartbeat_interval: float = 5.0  # told to workers in `welcome`
    heartbeat_timeout: float = 20.0  # a worker silent this long is lost
    hello_timeout: float = 10.0  # a connection must say hello within this
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_protocol_errors: int = 10  # bad frames tolerated per connection, then close
    max_slots: int = 256  # a hello announcing more slots is refused
    max_queued: int = 1_000_000
    max_node_losses: int = 5  # a task whose node dies this often fails
    keep_finished: bool = False  # keep ended tasks readable through `task()` (memory grows)
    publish_accepted: bool = True  # a QueuedUpdate for each accepted submission
    max_pending_updates: int = 100_000  # progress updates dropped beyond this backlog
    record: bool = False  # keep a journal of (time, event, decisions) for replay
    journal_path: str | None = None  # append every step to this file, engine.core.journal format
    # defences (see the top comment; None turns a scheduler one off)
    default_deadline: float | None = 1200.0
    execution_timeout_factor: float | None = 10.0
    execution_timeout_floor: float = 300.0
    initial_slots: int | None = 2
    completions_per_slot: int = 2
    rejoin_grace: float | None = 60.0
    charge_cap_factor: float | None = 2.0
    charge_cap_allowance: float = 0.01
    fault_cooldown: float | None = 30.0
    check_usage: bool = True
    measured_speed: bool = True
    check_hardware: bool = True
    max_price_per_hour: float = 1000.0
    reconnect_burst: float = 10.0
    reconnect_rate: float = 0.5
    reverify_interval: float | None = 10.0  # None: never re-check a live session's token
    trust: TrustPolicy | None = TrustPolicy()  # verification of results; None: off
    trusted_nodes: tuple[str, ...] = ()  # validators by node id or worker token name

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(heartbeat_timeout=self.heartbeat_timeout,
                               max_queued=self.max_queued,
                               max_node_losses=self.max_node_losses,
                               keep_finished=self.keep_finished,
                               default_deadline=self.default_deadline,
                               execution_timeout_factor=self.execution_timeout_factor,
                               execution_timeout_floor=self.execution_timeout_floor,
                               initial_slots=self.initial_slots,
                               completions_per_slot=self.completions_per_slot,
                               rejoin_grace=self.rejoin_grace,
                               charge_cap_factor=self.charge_cap_factor,
                               charge_cap_allowance=self.charge_cap_allowance,
                               fault_cooldown=self.fault_cooldown, trust=self.trust,
                               measured_speed=self.measured_speed,
                               check_hardware=self.check_hardware)

    def make_scheduler(self) -> Scheduler:
        return Scheduler(self.policy, self.pricing, random.Random(self.seed),
                         self.scheduler_config())

    def journal_header(self) -> JournalHeader:
        """What a journal says of `make_scheduler()`'s scheduler (it rebuilds it)."""
        return JournalHeader(self.policy, self.pricing, self.seed, self.scheduler_config())

    def session_limits(self) -> SessionLimits:
        return SessionLimits(self.hello_timeout, self.max_frame_bytes,
                             self.max_protocol_errors, self.max_slots,
                             self.max_price_per_hour, self.reverify_interval)


__all__ = ["CoordinatorConfig"]
