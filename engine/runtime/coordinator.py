# The Coordinator: the live driver of the pure scheduling core (run it with
# service.open_coordinator).
#
#     async with open_coordinator(CoordinatorConfig(), verify_token=..., on_update=...) as c:
#         nursery.start_soon(serve_websocket, c, "127.0.0.1", 8765)   # or the API's adapter
#         outcome = await c.submit(spec, {"prompt": "..."}, {"max_tokens": 64})
#
# Theory of operation. One actor task owns the Scheduler (single writer, no locks).
# Everyone else talks to it through one unbuffered memory channel (the inbox) of
# typed messages (messages.py): API calls (SubmitRequest, CancelRequest) and
# NodeSessions (SessionJoined, SessionReported, SessionLeft; the Coordinator is
# their `SessionHost`). The actor sleeps until the scheduler's next deadline or the
# next message, dispatches the message by type, turns it into core events, and
# carries out the decisions the core returns (a dict decision type -> handler):
#   Assign   -> an `assign` frame on the node's session (or DeliveryFailed back in)
#   Requeue / Cancel / Expire -> a `cancel` frame to the node that ran the task
#   Drop     -> close the node's session with the reason
#   Complete / Fail / Cancelled / Expire / Reject / Requeue / Verified -> a TaskUpdate
#   (updates.py: one precise type per change, carrying what a store row needs:
#   the node's GPU and location, the usage, cost and reference cost)
# Carrying out never blocks: frames go to bounded session outboxes with
# send_nowait, updates to an unbounded queue drained by a separate notifier task
# that awaits `on_update` (so a slow database never stalls scheduling).
#
# Verification (engine/core/verification.py): on Hold the actor keeps the held
# result's output and proof (the node's `result` frame's `proof`); the job's Assign
# (Assign.verifies) becomes an `assign` with the task's own input and params plus
# `verify: {claimed, proof}`; the validator's `result` for it carries the verdict
# {passed, score, detail} as its output, which becomes VerificationReported (any
# other output is the validator's protocol fault: TaskFaulted). Jobs are not API
# tasks: no TaskUpdate names them. Quarantine is an `error` frame to the node (its
# operator reads why in the worker's log); the node stays connected, idle.
#
# Rules:
# - Time is `trio.current_time()` only, so the whole runtime runs in virtual time
#   under trio.testing.MockClock(autojump_threshold=0). TaskSpec.deadline is in
#   that clock (use `Coordinator.now()` to build one).
# - Payloads (prompt text, params) never enter the core; the actor keeps them by
#   task id until the task ends.
# - Reads (`quote`, `snapshot`, `task`) look at the scheduler directly: trio runs
#   one task at a time and the actor never awaits in the middle of a change.
# - Updates for one task are published in the order things happened: queued (with
#   `publish_accepted`), running, progress..., then one final state. Progress is
#   lossy under backlog (beyond `max_pending_updates`); state changes never are.
# - Ended tasks are forgotten (`keep_finished=False`, the default): a long-running
#   coordinator's memory stays flat; `task()` then answers only for open tasks.
# - Every step (time, event, decisions) goes to the journal sinks (journal.py): in
#   memory with `record`; with `journal_path` to a file, by a writer task off the
#   actor. A failing journal is logged once and dropped, never the actor's problem.
# - A worker's bookkeeping (which tasks its connection holds, heartbeat
#   reconciliation) is node_tasks.NodeTasks, pure; the actor reaches a session only
#   through `deliver`, `close`, `protocol_error`, `spec` and `tasks`.
# - What a worker reports is checked at this boundary: a `result` whose usage is
#   impossible for the task (engine.core.metering.usage_problem, with
#   `check_usage`), or a report the codec refused (session.Refused), is a protocol
#   error answered with `error`, and the run is a fault of that node (TaskFaulted:
#   the task is re-queued, the node's earned slots halve). A charge the core clamped
#   to its bound is logged.
# - The usage that enters the core is metered here, not taken from the node
#   (metering.metered_usage): tokens counted with the model's tokenizer (meter.py,
#   found by the weights the node announced), steps and audio seconds from the task,
#   seconds at most what its measured speed allows beyond the run as this clock
#   timed it; a node count its output cannot hold (metering.count_problem) is a
#   fault like impossible usage. The completed update says who metered it
#   (`metered_by`).
# - Hellos are rate-limited per token (guard.ReconnectLimiter); `revoke(name)`
#   closes a token's live sessions now, and every session re-checks its token each
#   `reverify_interval` (`still_valid`), which is what makes a revocation by another
#   process (the admin CLI) take effect.
from __future__ import annotations

import json
import logging
import math
from typing import Any, Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from engine.core import (
    Assign, Cancel, Cancelled, Complete, Decision, DeliveryFailed, Drop,
    Event, Expire, Fail, Hold, NetworkSnapshot, NodeDraining, NodeHeartbeat, NodeJoined,
    NodeLost, NodeSpec, Quarantine, Quote, Reject, Requeue, Scheduler, TaskCancelled,
    TaskFailed, TaskFaulted, TaskFinished, TaskRecord, TaskSpec, TaskState, TaskSubmitted,
    Tick, VerificationReported, Verified, WakeAt, openai_cost, usage_problem,
)
from engine.core.metering import count_problem, metered_usage
from engine.core.speed import speed_seconds
from engine.protocol import (
    PROTOCOL_VERSION, AssignTask, CancelTask, Connection, Draining, Error, Failed,
    Heartbeat, Message, Progress, Result, Welcome,
)

from .config import CoordinatorConfig
from .guard import ReconnectLimiter
from .meter import Meter
from .journal import FileJournal, JournalFile, JournalSink, ListJournal, Step
from .messages import (
    ActorMessage, CancelRequest, Reply, SessionJoined, SessionLeft, SessionReported,
    SubmitRequest, Submission,
)
from .session import NodeIdentity, NodeReport, NodeSession, Refused
from .updates import (
    CancelledUpdate, CompletedUpdate, ExpiredUpdate, FailedUpdate, ProgressUpdate,
    QueuedUpdate, RejectedUpdate, RequeuedUpdate, RunningUpdate, SubmitOutcome, TaskUpdate,
    UpdateSink, VerificationUpdate,
)
from .verdicts import parse_verdict

log = logging.getLogger(__name__)


TokenVerifier = Callable[[str], Awaitable[NodeIdentity | None]]
# Room left in an `assign` frame around the payload (ids, model, params framing).
_FRAME_OVERHEAD = 1024


class CoordinatorClosed(RuntimeError):
    """The coordinator has shut down."""


@attrs.frozen
class _Input:
    """What the actor keeps of an open task besides its spec (the core never sees it)."""

    model: str
    payload: Mapping[str, Any]
    params: Mapping[str, Any]


class Coordinator:
    """Use through `open_coordinator`. Public: submit, submit_many, cancel, quote,
    snapshot, task, serve_connection, now, journal, journal_file; as a NodeSession's
    host (session.SessionHost): identify, join, report, leave, progress."""

    def __init__(self, config: CoordinatorConfig, verify_token: TokenVerifier | None,
                 inbox: trio.MemorySendChannel[ActorMessage],
                 updates: trio.MemorySendChannel[TaskUpdate] | None,
                 scheduler: Scheduler | None = None,
                 journals: Sequence[JournalSink] = ()) -> None:
        self.config = config
        self.verify_token = verify_token
        self.scheduler = scheduler if scheduler is not None else config.make_scheduler()
        self.journals = tuple(journals)
        self._limits = config.session_limits()
        self._inbox = inbox
        self._updates = updates
        self._pending: list[TaskUpdate] = []
        self._sessions: dict[str, NodeSession] = {}
        self._inputs: dict[str, _Input] = {}
        self._outputs: dict[str, tuple[Any, str, Any, str]] = {}  # output, finish, proof, metered by
        self._held: dict[str, tuple[Any, str, Any, str]] = {}  # results waiting for a verdict
        self._jobs: dict[str, str] = {}  # verification job id -> the task it checks
        self._job_of: dict[str, str] = {}  # task -> its verification job now
        # a verdict that goes out with the task's completion (one stored change)
        self._verdict: dict[str, VerificationUpdate] = {}
        self.meter = Meter()
        self._dev_nodes = 0
        self._reconnects = ReconnectLimiter(config.reconnect_burst, config.reconnect_rate)
        self._on_message: dict[type, Callable[[Any], None]] = {
            SubmitRequest: self._on_submit, CancelRequest: self._on_cancel,
            SessionJoined: self._on_join, SessionLeft: self._on_left,
            SessionReported: self._on_report}
        self._on_report_type: dict[type, Callable[[NodeSession, Any], None]] = {
            Heartbeat: self._on_heartbeat, Result: self._on_result, Failed: self._on_failed,
            Draining: self._on_draining, Refused: self._on_refused}
        self._carry_out: dict[type, Callable[[Any, list[Event]], None]] = {
            Assign: self._do_assign, Reject: self._do_reject, Requeue: self._do_requeue,
            Cancel: self._do_cancel, Cancelled: self._do_cancelled,
            Complete: self._do_complete, Fail: self._do_fail, Expire: self._do_expire,
            Drop: self._do_drop, Hold: self._do_hold, Verified: self._do_verified,
            Quarantine: self._do_quarantine, WakeAt: lambda decision, queue: None}

    # ---- the public interface ---------------------------------------------------

    @staticmethod
    def now() -> float:
        """The coordinator's clock (trio's), for TaskSpec.deadline."""
        return trio.current_time()

    @property
    def journal(self) -> list[Step] | None:
        """The steps so far, (time, event, decisions), when config.record."""
        return next((s.steps for s in self.journals if isinstance(s, ListJournal)), None)

    @property
    def journal_file(self) -> JournalFile | None:
        """The journal file, when config.journal_path."""
        return next((s.file for s in self.journals if isinstance(s, FileJournal)), None)

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
        batch: list[Submission] = []
        limit = self.config.max_frame_bytes - _FRAME_OVERHEAD
        for spec, payload, params in tasks:
            params = dict(params or {})
            size = len(json.dumps(payload, ensure_ascii=False)) + len(json.dumps(params))
            if size > limit:
                outcomes.append(SubmitOutcome(spec.task_id, False, TaskState.REJECTED,
                                              f"input too large ({size} bytes; limit {limit})"))
            else:
                outcomes.append(None)
                batch.append(Submission(spec, payload, params))
        if not batch:
            return [o for o in outcomes if o is not None]
        reply: Reply[list[SubmitOutcome]] = Reply()
        if not await self._post(SubmitRequest(tuple(batch), reply)):
            raise CoordinatorClosed("the coordinator has shut down")
        placed = iter(await reply.wait())
        return [o if o is not None else next(placed) for o in outcomes]

    async def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task; True when the cancellation took effect
        (False: unknown or already ended). A running task's worker is told to stop."""
        reply: Reply[bool] = Reply()
        if not await self._post(CancelRequest(task_id, reply)):
            raise CoordinatorClosed("the coordinator has shut down")
        return await reply.wait()

    def quote(self, spec: TaskSpec) -> Quote:
        return self.scheduler.quote(spec)

    def snapshot(self) -> NetworkSnapshot:
        return self.scheduler.snapshot()

    def task(self, task_id: str) -> TaskRecord | None:
        """An open task's record (and an ended one's, with keep_finished)."""
        return self.scheduler.task(task_id)

    def revoke(self, token_name: str) -> int:
        """Close every live session of the worker token named `token_name` (its
        NodeIdentity.name), e.g. after the store revoked it; how many were closed.
        (Revocations by another process are found by `reverify_interval`.)"""
        closed = 0
        for session in list(self._sessions.values()):
            if session.identity is not None and session.identity.name == token_name:
                session.close("token revoked")
                closed += 1
        return closed

    async def serve_connection(self, conn: Connection) -> None:
        """Serve one worker connection until it ends (see session.py); never raises
        for anything the worker does."""
        await NodeSession(self, conn, self._limits).run()

    # ---- the SessionHost interface (session.py) ------------------------------------

    def admit(self, token: str) -> float:
        return self._reconnects.admit(token, trio.current_time())

    async def still_valid(self, token: str, identity: NodeIdentity) -> bool:
        if self.verify_token is None:  # dev mode: every token is good
            return True
        current = await self.verify_token(token)
        return current is not None and current.node_id == identity.node_id

    async def identify(self, token: str) -> NodeIdentity | None:
        if self.verify_token is None:  # dev mode: any token; a fresh node id per connection
            self._dev_nodes += 1
            return NodeIdentity(f"node_{self._dev_nodes}", "")
        return await self.verify_token(token)

    async def join(self, session: NodeSession, spec: NodeSpec) -> bool:
        return await self._post(SessionJoined(session, spec))

    async def report(self, session: NodeSession, message: NodeReport) -> bool:
        return await self._post(SessionReported(session, message))

    async def leave(self, session: NodeSession, reason: str) -> None:
        await self._post(SessionLeft(session, reason))

    def progress(self, session: NodeSession, message: Progress) -> None:
        record = self.scheduler.tasks.get(message.task_id)
        node_id = session.node_id
        if (self._updates is None or record is None or record.node_id != node_id
                or record.state is not TaskState.RUNNING or record.verifies is not None):
            return  # stale (the task moved on), or a verification job's
        if self._updates.statistics().current_buffer_used < self.config.max_pending_updates:
            self._publish(ProgressUpdate(message.task_id, node_id, message.partial))

    # ---- plumbing ----------------------------------------------------------------

    async def _post(self, message: ActorMessage) -> bool:
        try:
            await self._inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _publish(self, update: TaskUpdate) -> None:
        if self._updates is None:
            return
        try:
            self._updates.send_nowait(update)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # shutting down: the notifier is gone

    # ---- the actor ---------------------------------------------------------------

    async def run_actor(self, inbox: trio.MemoryReceiveChannel[ActorMessage]) -> None:
        """The actor's loop (open_coordinator starts it; it ends when cancelled)."""
        journals = self.journals
        async with inbox:
            while True:
                message = None
                deadline = self.scheduler.next_deadline()
                if journals:  # the file flushes when idle, or ~once a second
                    now = trio.current_time()
                    idle = deadline > now and not inbox.statistics().tasks_waiting_send
                    for journal in journals:
                        journal.before_wait(now, idle)
                with trio.move_on_at(deadline):
                    message = await inbox.receive()
                if message is None:
                    self._apply(Tick())
                else:
                    self._on_message[type(message)](message)
                self._flush()

    def _flush(self) -> None:
        if self._pending:
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
            for journal in self.journals:
                journal.write(now, event, decisions)
            for decision in decisions:
                self._carry_out[type(decision)](decision, queue)
            taken.extend(decisions)
        return taken

    def _tell(self, node_id: str | None, message: Message) -> None:
        session = self._sessions.get(node_id) if node_id else None
        if session is not None:
            session.deliver(message)

    def node_weights(self) -> dict[str, dict[str, str]]:
        """node id -> (model -> the weights serving it, as the node announced them),
        for the nodes connected now."""
        return {node_id: dict(session.weights) for node_id, session in self._sessions.items()}

    def _place(self, node_id: str, model: str) -> tuple[str, str, str]:
        """(GPU class, location, the weights serving `model`) of a connected node, as
        a row shows them."""
        session = self._sessions.get(node_id)
        spec = session.spec if session is not None else None
        if session is None or spec is None:
            return ("", "", "")
        return (spec.gpu, spec.location or spec.region, session.weights.get(model, ""))

    # ---- messages to the actor ---------------------------------------------------

    def _on_submit(self, request: SubmitRequest) -> None:
        request.reply.set([self._submit_one(s) for s in request.submissions])

    def _submit_one(self, submission: Submission) -> SubmitOutcome:
        spec = submission.spec
        task_id = spec.task_id
        if task_id not in self.scheduler.tasks:
            self._inputs[task_id] = _Input(spec.model, submission.payload, submission.params)
        mark = len(self._pending)
        decisions = self._apply(TaskSubmitted(spec))
        reject = next((d for d in decisions if isinstance(d, Reject) and d.task_id == task_id),
                      None)
        if reject is not None:
            return SubmitOutcome(task_id, False, TaskState.REJECTED, reject.reason)
        if self.config.publish_accepted:
            self._pending.insert(mark, QueuedUpdate(task_id))
        node = next((d.node_id for d in decisions if isinstance(d, Assign)
                     and d.task_id == task_id), None)
        state = TaskState.QUEUED if node is None else TaskState.RUNNING
        return SubmitOutcome(task_id, True, state, node_id=node)

    def _on_cancel(self, request: CancelRequest) -> None:
        task_id = request.task_id
        decisions = self._apply(TaskCancelled(task_id))
        request.reply.set(any(isinstance(d, Cancelled) and d.task_id == task_id
                              for d in decisions))

    def _on_join(self, message: SessionJoined) -> None:
        session, spec = message.session, message.spec
        trusted = self.config.trusted_nodes
        if trusted and (spec.node_id in trusted or (
                session.identity is not None and session.identity.name in trusted)):
            spec = attrs.evolve(spec, trusted=True)
        old = self._sessions.get(spec.node_id)
        if old is not None:
            old.close("replaced by a newer connection of the same node")
        self._sessions[spec.node_id] = session
        session.deliver(Welcome(spec.node_id, self.config.heartbeat_interval,
                                self._finite(self.config.heartbeat_timeout), PROTOCOL_VERSION))
        log.info("node %s joined from %s: %s, %d slot(s), models %s", spec.node_id,
                 session.conn.remote, spec.gpu, spec.slots, ", ".join(spec.models))
        self._apply(NodeJoined(spec))

    def _on_left(self, message: SessionLeft) -> None:
        session = message.session
        if self._sessions.get(session.node_id) is session:
            del self._sessions[session.node_id]
            log.info("node %s left: %s", session.node_id, message.reason)
            self._apply(NodeLost(session.node_id, message.reason))

    def _on_report(self, message: SessionReported) -> None:
        session = message.session
        if self._sessions.get(session.node_id) is session:  # else: a replaced session
            self._on_report_type[type(message.message)](session, message.message)

    # ---- frames from workers -----------------------------------------------------

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

    # ---- carrying out decisions ------------------------------------------------

    @staticmethod
    def _finite(value: float) -> float | None:
        return value if value < math.inf else None

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

    def _forget(self, task_id: str) -> _Input | None:
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


__all__ = ["Coordinator", "CoordinatorClosed", "CoordinatorConfig", "NodeIdentity",
           "SubmitOutcome", "TaskUpdate", "TokenVerifier", "UpdateSink"]
