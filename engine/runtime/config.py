# CoordinatorConfig: everything that shapes a live coordinator, as one frozen value
# (the API's ApiConfig carries one; `neurogrid serve` builds it from its flags).
# It also derives what the coordinator's parts need: the scheduler's config (and
# the scheduler itself, seeded), the journal's header, a session's limits.
from __future__ import annotations

import random

import attrs

from engine.core import DEFAULT_POLICY, Scheduler, SchedulerConfig
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

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(heartbeat_timeout=self.heartbeat_timeout,
                               max_queued=self.max_queued,
                               max_node_losses=self.max_node_losses,
                               keep_finished=self.keep_finished)

    def make_scheduler(self) -> Scheduler:
        return Scheduler(self.policy, self.pricing, random.Random(self.seed),
                         self.scheduler_config())

    def journal_header(self) -> JournalHeader:
        """What a journal says of `make_scheduler()`'s scheduler (it rebuilds it)."""
        return JournalHeader(self.policy, self.pricing, self.seed, self.scheduler_config())

    def session_limits(self) -> SessionLimits:
        return SessionLimits(self.hello_timeout, self.max_frame_bytes,
                             self.max_protocol_errors, self.max_slots)


__all__ = ["CoordinatorConfig"]
