# The Coordinator: the live driver of the pure scheduling core.
#
#     async with open_coordinator(CoordinatorConfig(), verify_token=..., on_update=...) as c:
#         nursery.start_soon(serve_websocket, c, "127.0.0.1", 8765)   # or the API's adapter
#         outcome = await c.submit(spec, {"prompt": "..."}, {"max_tokens": 64})
#
# Theory of operation. One actor task owns the Scheduler (single writer, no locks).
# Everyone else talks to it through one unbuffered memory channel (the inbox):
# API calls (submit, cancel) and NodeSessions (join, frames, left). The actor sleeps
# until the scheduler's next deadline or the next message, turns each message into
# core events, and carries out the decisions the core returns:
#   Assign   -> an `assign` frame on the node's session (or DeliveryFailed back in)
#   Requeue / Cancel / Expire -> a `cancel` frame to the node that ran the task
#   Drop     -> close the node's session with the reason
#   Complete / Fail / Cancelled / Expire / Reject / Requeue -> a TaskUpdate
# Carrying out never blocks: frames go to bounded session outboxes with
# send_nowait, updates to an unbounded queue drained by a separate notifier task
# that awaits `on_update` (so a slow database never stalls scheduling).
#
# Rules:
# - Time is `trio.current_time()` only, so the whole runtime runs in virtual time
#   under trio.testing.MockClock(autojump_threshold=0). TaskSpec.deadline is in
#   that clock (use `Coordinator.now()` to build one).
# - Payloads (prompt text, params) never enter the core; the actor keeps them by
#   task id until the task ends.
# - Reads (`quote`, `snapshot`, `task`) look at the scheduler directly: trio runs
#   one task at a time and the actor never awaits in the middle of a change.
# - Updates for one task are published in the order things happened: queued,
#   running, progress..., then one final state. Progress is lossy under backlog
#   (beyond `max_pending_updates`); state changes never are.
# - With `journal_path`, every step (time, event, decisions) is also appended to that
#   file (journal.py: buffered, flushed when idle and about once a second while busy);
#   a failing journal is logged once and dropped, never the coordinator's problem.
from __future__ import annotations

import json
import logging
import math
import random
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from engine.core import (
    DEFAULT_POLICY, Assign, Cancel, Cancelled, Complete, Decision, DeliveryFailed, Drop,
    Event, Expire, Fail, NetworkSnapshot, NodeDraining, NodeHeartbeat, NodeJoined,
    NodeLost, NodeSpec, Quote, Reject, Requeue, Scheduler, SchedulerConfig, TaskCancelled,
    TaskFailed, TaskFinished, TaskRecord, TaskSpec, TaskState, TaskSubmitted, Tick, WakeAt,
)
from engine.core.journal import JournalHeader
from engine.protocol import (
    MAX_FRAME_BYTES, PROTOCOL_VERSION, AssignTask, CancelTask, Connection, Draining, Failed,
    Heartbeat, Message, Progress, Result, Welcome,
)

from .journal import JournalFile
from .session import NodeIdentity, NodeSession, _model_name
from .updates import SubmitOutcome, TaskUpdate, UpdateSink

log = logging.getLogger(__name__)


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
    keep_finished: bool = True  # keep ended tasks readable through `task()`
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


TokenVerifier = Callable[[str], Awaitable[NodeIdentity | None]]
# Room left in an `assign` frame around the payload (ids, model, params framing).
_FRAME_OVERHEAD = 1024


class CoordinatorClosed(RuntimeError):
    """The coordinator has shut down."""


class _Reply:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value
        self.event.set()


class Coordinator:
    """Use through `open_coordinator`. Public: submit, cancel, quote, snapshot, task,
    serve_connection, now; `journal` when config.record; `journal_file` when
    config.journal_path (open_coordinator opens and closes it)."""

    def __init__(self, config: CoordinatorConfig, verify_token: TokenVerifier | None,
                 inbox: trio.MemorySendChannel[tuple],
                 updates: trio.MemorySendChannel[TaskUpdate] | None,
                 scheduler: Scheduler | None = None,
                 journal_file: JournalFile | None = None) -> None:
        self.config = config
        self.verify_token = verify_token
        self.scheduler = scheduler if scheduler is not None else config.make_scheduler()
        self.journal: list[tuple[float, Event, list[Decision]]] | None = (
            [] if config.record else None)
        self.journal_file = journal_file
        self._inbox = inbox
        self._updates = updates
        self._pending: list[TaskUpdate] = []
        self._sessions: dict[str, NodeSession] = {}
        self._payloads: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        self._outputs: dict[str, tuple[Any, str]] = {}
        self._dev_nodes = 0
        self._on_message = {"submit": self._on_submit, "cancel": self._on_cancel,
                            "join": self._on_join, "left": self._on_left,
                            "frame": self._on_frame}
        self._on_frame_type = {Heartbeat: self._on_heartbeat, Result: self._on_result,
                               Failed: self._on_failed, Draining: self._on_draining}
        self._carry_out = {Assign: self._do_assign, Reject: self._do_reject,
                           Requeue: self._do_requeue, Cancel: self._do_cancel,
                           Cancelled: self._do_cancelled, Complete: self._do_complete,
                           Fail: self._do_fail, Expire: self._do_expire, Drop: self._do_drop,
                           WakeAt: lambda decision, queue: None}

    # ---- the public interface ---------------------------------------------------

    @staticmethod
    def now() -> float:
        """The coordinator's clock (trio's), for TaskSpec.deadline."""
        return trio.current_time()

    async def submit(self, spec: TaskSpec, payload: Mapping[str, Any],
                     params: Mapping[str, Any] | None = None) -> SubmitOutcome:
        """Queue a task. `payload` is the task's input as the runner reads it (text
        generation: {"prompt": str}); `params` its run parameters (max_tokens,
        temperature, top_p, seed). Both must be JSON-able; they reach the worker as
        the `assign` frame's `input` and `params`."""
        return (await self.submit_many([(spec, payload, params)]))[0]

    async def submit_many(self, tasks: Sequence[tuple[TaskSpec, Mapping[str, Any],
                                                      Mapping[str, Any] | None]]
                          ) -> list[SubmitOutcome]:
        """Queue several tasks in one trip to the actor, in order; the outcomes come
        back in the same order. A caller with a backlog (the API's dispatcher) pays
        the round trip once per batch instead of once per task."""
        outcomes: list[SubmitOutcome | None] = []
        batch: list[tuple[TaskSpec, tuple[Mapping[str, Any], dict[str, Any]]]] = []
        limit = self.config.max_frame_bytes - _FRAME_OVERHEAD
        for spec, payload, params in tasks:
            params = dict(params or {})
            size = len(json.dumps(payload, ensure_ascii=False)) + len(json.dumps(params))
            if size > limit:
                outcomes.append(SubmitOutcome(spec.task_id, False, TaskState.REJECTED,
                                              f"input too large ({size} bytes; limit {limit})"))
            else:
                outcomes.append(None)
                batch.append((spec, (payload, params)))
        if batch:
            reply = _Reply()
            if not await self._to_actor(("submit", batch, reply)):
                raise CoordinatorClosed("the coordinator has shut down")
            await reply.event.wait()
            placed = iter(reply.value)
            outcomes = [o if o is not None else next(placed) for o in outcomes]
        return outcomes  # type: ignore[return-value]

    async def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task; True when the cancellation took effect
        (False: unknown or already ended). A running task's worker is told to stop."""
        reply = _Reply()
        if not await self._to_actor(("cancel", task_id, reply)):
            raise CoordinatorClosed("the coordinator has shut down")
        await reply.event.wait()
        return reply.value

    def quote(self, spec: TaskSpec) -> Quote:
        return self.scheduler.quote(spec)

    def snapshot(self) -> NetworkSnapshot:
        return self.scheduler.snapshot()

    def task(self, task_id: str) -> TaskRecord | None:
        return self.scheduler.task(task_id)

    async def serve_connection(self, conn: Connection) -> None:
        """Serve one worker connection until it ends (see session.py); never raises
        for anything the worker does."""
        await NodeSession(self, conn).run()

    # ---- plumbing used by sessions -----------------------------------------------

    async def _to_actor(self, message: tuple) -> bool:
        try:
            await self._inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _dev_node_id(self) -> str:
        self._dev_nodes += 1
        return f"node_{self._dev_nodes}"

    def _publish_progress(self, message: Progress, node_id: str) -> None:
        record = self.scheduler.tasks.get(message.task_id)
        if (self._updates is None or record is None or record.node_id != node_id
                or record.state is not TaskState.RUNNING):
            return  # stale: the task moved on
        if self._updates.statistics().current_buffer_used < self.config.max_pending_updates:
            self._publish(TaskUpdate(message.task_id, "progress", node_id=node_id,
                                     partial=message.partial))

    def _publish(self, update: TaskUpdate) -> None:
        try:
            self._updates.send_nowait(update)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # shutting down: the notifier is gone

    # ---- the actor ---------------------------------------------------------------

    async def _run(self, inbox: trio.MemoryReceiveChannel[tuple]) -> None:
        async with inbox:
            while True:
                message = None
                deadline = self.scheduler.next_deadline()
                if self.journal_file is not None:  # flush when idle, or ~once a second
                    now = trio.current_time()
                    self.journal_file.before_wait(now, idle=deadline > now and not
                                                  inbox.statistics().tasks_waiting_send)
                with trio.move_on_at(deadline):
                    message = await inbox.receive()
                if message is None:
                    self._apply(Tick())
                else:
                    self._on_message[message[0]](*message[1:])
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            if self._updates is not None:
                for update in self._pending:
                    self._publish(update)
            self._pending.clear()

    def _apply(self, event: Event) -> list[Decision]:
        """Hand an event to the core and carry out its decisions, including the
        events that carrying them out produces (DeliveryFailed)."""
        queue, taken = [event], []
        while queue:
            event = queue.pop(0)
            now = trio.current_time()
            decisions = self.scheduler.handle(event, now)
            if self.journal is not None:
                self.journal.append((now, event, decisions))
            if self.journal_file is not None:
                self.journal_file.write(now, event, decisions)
            for decision in decisions:
                self._carry_out[type(decision)](decision, queue)
            taken.extend(decisions)
        return taken

    def _update(self, task_id: str, state: TaskState, **fields: Any) -> None:
        self._pending.append(TaskUpdate(task_id, "state", state, **fields))

    def _tell(self, node_id: str | None, message: Message) -> None:
        session = self._sessions.get(node_id) if node_id else None
        if session is not None:
            session.deliver(message)

    # ---- messages to the actor ---------------------------------------------------

    def _on_submit(self, batch: list[tuple[TaskSpec, tuple]], reply: _Reply) -> None:
        reply.set([self._submit_one(spec, payload) for spec, payload in batch])

    def _submit_one(self, spec: TaskSpec, payload: tuple) -> SubmitOutcome:
        task_id = spec.task_id
        known = task_id in self.scheduler.tasks
        if not known:
            self._payloads[task_id] = payload
        mark = len(self._pending)
        decisions = self._apply(TaskSubmitted(spec))
        reject = next((d for d in decisions if isinstance(d, Reject) and d.task_id == task_id),
                      None)
        if reject is not None:
            return SubmitOutcome(task_id, False, TaskState.REJECTED, reject.reason)
        self._pending.insert(mark, TaskUpdate(task_id, "state", TaskState.QUEUED))
        node = next((d.node_id for d in decisions if isinstance(d, Assign)
                     and d.task_id == task_id), None)
        state = TaskState.QUEUED if node is None else TaskState.RUNNING
        return SubmitOutcome(task_id, True, state, node_id=node)

    def _on_cancel(self, task_id: str, reply: _Reply) -> None:
        decisions = self._apply(TaskCancelled(task_id))
        reply.set(any(isinstance(d, Cancelled) and d.task_id == task_id for d in decisions))

    def _on_join(self, session: NodeSession, spec: NodeSpec) -> None:
        old = self._sessions.get(spec.node_id)
        if old is not None:
            old.close("replaced by a newer connection of the same node")
        self._sessions[spec.node_id] = session
        session.deliver(Welcome(spec.node_id, self.config.heartbeat_interval,
                                self._finite(self.config.heartbeat_timeout), PROTOCOL_VERSION))
        log.info("node %s joined from %s: %s, %d slot(s), models %s", spec.node_id,
                 session.conn.remote, spec.gpu, spec.slots, ", ".join(spec.models))
        self._apply(NodeJoined(spec))

    def _on_left(self, session: NodeSession, reason: str) -> None:
        if self._sessions.get(session.node_id) is session:
            del self._sessions[session.node_id]
            log.info("node %s left: %s", session.node_id, reason)
            self._apply(NodeLost(session.node_id, reason))

    def _on_frame(self, session: NodeSession, message: Message) -> None:
        if self._sessions.get(session.node_id) is session:  # else: a replaced session
            self._on_frame_type[type(message)](session, message)

    # ---- frames from workers -----------------------------------------------------

    def _on_heartbeat(self, session: NodeSession, beat: Heartbeat) -> None:
        node_id = session.node_id
        loaded = None if beat.loaded is None else tuple(_model_name(m) for m in beat.loaded)
        self._apply(NodeHeartbeat(node_id, loaded))
        # Reconcile: frames on one connection arrive in order, so a task the worker
        # accepted, did not report on, and no longer lists was dropped by it.
        running = set(beat.running)
        for task_id in sorted(session.known - running):
            record = self.scheduler.tasks.get(task_id)
            still_here = (record is not None and record.node_id == node_id
                          and record.state is TaskState.RUNNING)
            if not still_here:
                session.known.discard(task_id)
                session.accepted.discard(task_id)
            elif task_id in session.accepted:
                session.known.discard(task_id)
                session.accepted.discard(task_id)
                self._apply(TaskFailed(task_id, node_id, "the node dropped the task", True))
        for task_id in sorted(running - session.known):
            session.deliver(CancelTask(task_id, "not assigned to this node"))

    def _reported(self, session: NodeSession, task_id: str) -> bool:
        if task_id not in session.known:
            session.protocol_error(f"task {task_id!r} is not assigned to this node")
            return False
        session.known.discard(task_id)
        session.accepted.discard(task_id)
        return True

    def _on_result(self, session: NodeSession, message: Result) -> None:
        if self._reported(session, message.task_id):
            self._outputs[message.task_id] = (message.output, message.finish_reason)
            self._apply(TaskFinished(message.task_id, session.node_id, message.usage))
            self._outputs.pop(message.task_id, None)  # still here: a stale result

    def _on_failed(self, session: NodeSession, message: Failed) -> None:
        if self._reported(session, message.task_id):
            self._apply(TaskFailed(message.task_id, session.node_id, message.error,
                                   message.retryable))

    def _on_draining(self, session: NodeSession, message: Draining) -> None:
        log.info("node %s is draining", session.node_id)
        self._apply(NodeDraining(session.node_id))

    # ---- carrying out decisions ------------------------------------------------

    @staticmethod
    def _finite(value: float) -> float | None:
        return value if value < math.inf else None

    def _do_assign(self, d: Assign, queue: list[Event]) -> None:
        session = self._sessions.get(d.node_id)
        payload, params = self._payloads[d.task_id]
        frame = AssignTask(d.task_id, d.model, payload, params,
                           self._finite(d.deadline - trio.current_time()), d.attempt)
        if session is None or not session.deliver(frame):
            queue.append(DeliveryFailed(d.task_id, d.node_id))
            return
        session.known.add(d.task_id)
        self._update(d.task_id, TaskState.RUNNING, node_id=d.node_id)

    def _forget(self, task_id: str) -> None:
        self._payloads.pop(task_id, None)

    def _do_reject(self, d: Reject, queue: list[Event]) -> None:
        # A duplicate id is rejected without touching the original task.
        if self.scheduler.tasks.get(d.task_id) is None:
            self._forget(d.task_id)
            self._update(d.task_id, TaskState.REJECTED, error=d.reason)

    def _do_requeue(self, d: Requeue, queue: list[Event]) -> None:
        session = self._sessions.get(d.node_id)
        if session is not None and d.task_id in session.known:
            session.deliver(CancelTask(d.task_id, d.reason))
        self._update(d.task_id, TaskState.QUEUED, error=d.reason)

    def _do_cancel(self, d: Cancel, queue: list[Event]) -> None:
        self._tell(d.node_id, CancelTask(d.task_id, "cancelled"))

    def _do_cancelled(self, d: Cancelled, queue: list[Event]) -> None:
        self._forget(d.task_id)
        self._update(d.task_id, TaskState.CANCELLED)

    def _do_complete(self, d: Complete, queue: list[Event]) -> None:
        self._forget(d.task_id)
        output, finish_reason = self._outputs.pop(d.task_id, (None, ""))
        self._update(d.task_id, TaskState.COMPLETED, node_id=d.node_id, result=output,
                     usage=d.usage, cost=d.cost, finish_reason=finish_reason)

    def _do_fail(self, d: Fail, queue: list[Event]) -> None:
        self._forget(d.task_id)
        self._update(d.task_id, TaskState.FAILED, node_id=d.node_id, error=d.error)

    def _do_expire(self, d: Expire, queue: list[Event]) -> None:
        self._forget(d.task_id)
        self._tell(d.node_id, CancelTask(d.task_id, "deadline passed"))
        self._update(d.task_id, TaskState.EXPIRED, node_id=d.node_id, error="deadline passed")

    def _do_drop(self, d: Drop, queue: list[Event]) -> None:
        session = self._sessions.pop(d.node_id, None)
        if session is not None:
            log.info("dropping node %s: %s", d.node_id, d.reason)
            session.close(d.reason)


async def _notify(updates: trio.MemoryReceiveChannel[TaskUpdate], sink: UpdateSink) -> None:
    async with updates:
        async for update in updates:
            try:
                await sink(update)
            except Exception:
                log.exception("on_update failed for %s (%s); going on", update.task_id,
                              update.kind)


@asynccontextmanager
async def open_coordinator(config: CoordinatorConfig = CoordinatorConfig(), *,
                           verify_token: TokenVerifier | None = None,
                           on_update: UpdateSink | None = None,
                           scheduler: Scheduler | None = None
                           ) -> AsyncIterator[Coordinator]:
    """Run a Coordinator (its actor and update notifier) for the duration of the
    block. `verify_token(token)` returns the worker's NodeIdentity, or None to refuse
    it; without one, any token is accepted (dev mode). `on_update` is awaited, in
    order, for every task state change and progress update. `scheduler` replaces
    the one `config` describes (e.g. the simulator's, for a differential run); the
    coordinator then owns it. With `config.journal_path`, the journal file is opened
    (a new session appended) before the actor starts - JournalFileError naming the
    path if it cannot be - and flushed and closed when the block exits."""
    if config.journal_path is not None and scheduler is not None:
        raise ValueError("journal_path and a replacement scheduler cannot be combined: "
                         "the journal's header describes the scheduler the config makes")
    journal_file = (JournalFile.open(config.journal_path, config.journal_header())
                    if config.journal_path is not None else None)
    try:
        inbox_send, inbox_receive = trio.open_memory_channel[tuple](0)
        updates_send = updates_receive = None
        if on_update is not None:
            updates_send, updates_receive = trio.open_memory_channel[TaskUpdate](math.inf)
        coordinator = Coordinator(config, verify_token, inbox_send, updates_send, scheduler,
                                  journal_file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coordinator._run, inbox_receive, name="coordinator actor")
            if updates_receive is not None:
                nursery.start_soon(_notify, updates_receive, on_update,
                                   name="coordinator updates")
            try:
                yield coordinator
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if journal_file is not None:
            journal_file.close()


__all__ = ["Coordinator", "CoordinatorClosed", "CoordinatorConfig", "NodeIdentity",
           "SubmitOutcome", "TaskUpdate", "TokenVerifier", "UpdateSink", "open_coordinator"]
