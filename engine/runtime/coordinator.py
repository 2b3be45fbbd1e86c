# The Coordinator: the live driver of the pure scheduling core (run it with
# service.open_coordinator).
#
#     async with open_coordinator(CoordinatorConfig(), verify_token=..., on_update=...) as c:
#         nursery.start_soon(serve_websocket, c, "127.0.0.1", 8765)   # or the API's adapter
#         outcome = await c.submit(spec, {"prompt": "..."}, {"max_tokens": 64})
#
# Theory of operation. The Coordinator owns the Scheduler (single writer, no locks).
# Everyone else talks to it in typed messages (messages.py): API calls
# (SubmitRequest, CancelRequest) and NodeSessions (SessionJoined, SessionReported,
# SessionLeft; the Coordinator is their `SessionHost`). A message is dispatched by
# type, in the sender's task (`_post`): it is turned into core events, and the
# decisions the core returns are carried out. Every handler is synchronous, so trio
# (which switches tasks only at an await) runs each message's handling whole, as a
# hop through an inbox to an actor task would, without the hop's task switches. The
# actor task (`run_actor`) sleeps until the scheduler's next deadline (a Tick) and
# lets the journal flush when idle. The Coordinator is this class and two
# base classes, one per responsibility, each declaring what it uses of this one:
# WorkerFrames (worker_frames.py: a worker's reported frames -> core events, with
# their checks and metering) and DecisionSteps (carrying.py: each decision type ->
# frames to nodes and TaskUpdates, and the verification flow's bookkeeping). This
# module keeps the public interface, the SessionHost interface, the actor loop and
# the handlers of the messages.
#
# Rules:
# - Time is `trio.current_time()` only, so the whole runtime runs in virtual time
#   under trio.testing.MockClock(autojump_threshold=0). TaskSpec.deadline is in
#   that clock (use `Coordinator.now()` to build one).
# - Payloads (prompt text, params) never enter the core; the actor keeps them by
#   task id (messages.TaskInput) until the task ends.
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
# - What a worker reports is checked at this boundary, and the usage that enters
#   the core is metered here (worker_frames.py has the rules); a charge the core
#   clamped to its bound is logged.
# - Hellos are rate-limited per token (guard.ReconnectLimiter); `revoke(name)`
#   closes a token's live sessions now, and every session re-checks its token each
#   `reverify_interval` (`still_valid`), which is what makes a revocation by another
#   process (the admin CLI) take effect.
from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from engine.core import (
    Assign, Cancelled, Decision, Event, NetworkSnapshot, NodeJoined, NodeLost, NodeSpec,
    Quote, Reject, Scheduler, TaskCancelled, TaskRecord, TaskSpec, TaskState,
    TaskSubmitted, Tick,
)
from engine.protocol import PROTOCOL_VERSION, Connection, Message, Progress, Welcome

from .carrying import DecisionSteps
from .config import CoordinatorConfig
from .guard import ReconnectLimiter
from .meter import Meter
from .journal import FileJournal, JournalFile, JournalSink, ListJournal, Step
from .messages import (
    ActorMessage, CancelRequest, Reply, SessionJoined, SessionLeft, SessionReported,
    SubmitRequest, Submission, TaskInput,
)
from .session import NodeIdentity, NodeReport, NodeSession
from .updates import (
    ProgressUpdate, QueuedUpdate, SubmitOutcome, TaskUpdate, UpdateSink, VerificationUpdate,
)
from .worker_frames import WorkerFrames

log = logging.getLogger(__name__)


TokenVerifier = Callable[[str], Awaitable[NodeIdentity | None]]
# Room left in an `assign` frame around the payload (ids, model, params framing).
_FRAME_OVERHEAD = 1024
# json.dumps(payload, ensure_ascii=False) without building an encoder per call
_PAYLOAD_SIZE = json.JSONEncoder(ensure_ascii=False)


class CoordinatorClosed(RuntimeError):
    """The coordinator has shut down."""


class Coordinator(WorkerFrames, DecisionSteps):
    """Use through `open_coordinator`. Public: submit, submit_many, cancel, quote,
    snapshot, task, serve_connection, now, journal, journal_file; as a NodeSession's
    host (session.SessionHost): identify, join, report, leave, progress."""

    def __init__(self, config: CoordinatorConfig, verify_token: TokenVerifier | None,
                 updates: trio.MemorySendChannel[TaskUpdate] | None,
                 scheduler: Scheduler | None = None,
                 journals: Sequence[JournalSink] = ()) -> None:
        self.config = config
        self.verify_token = verify_token
        self.scheduler = scheduler if scheduler is not None else config.make_scheduler()
        self.journals = tuple(journals)
        self._limits = config.session_limits()
        self._closed = False  # the actor has ended: messages are refused
        self._failure: Exception | None = None  # a handler's crash, raised by the actor
        self._wake: trio.CancelScope | None = None  # the actor's wait for the core's timers
        self._activity = trio.Event()  # set after a message when a journal wants flushing
        self._updates = updates
        self._pending: list[TaskUpdate] = []
        self._sessions: dict[str, NodeSession] = {}
        self._inputs: dict[str, TaskInput] = {}
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
        self._on_report_type = self._frame_handlers()  # worker_frames.py
        self._carry_out = self._decision_handlers()  # carrying.py

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
            size = len(_PAYLOAD_SIZE.encode(payload)) + len(json.dumps(params))
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
        placed = iter(reply.value)
        return [o if o is not None else next(placed) for o in outcomes]

    async def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task; True when the cancellation took effect
        (False: unknown or already ended). A running task's worker is told to stop."""
        reply: Reply[bool] = Reply()
        if not await self._post(CancelRequest(task_id, reply)):
            raise CoordinatorClosed("the coordinator has shut down")
        return reply.value

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
        # The session's reader calls this right after its receive, which was a
        # schedule point: only cancellation is checked here (see _post).
        return await self._post(SessionReported(session, message), schedule=False)

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

    async def _post(self, message: ActorMessage, schedule: bool = True) -> bool:
        """Handle `message` now, in the caller's task; False once the coordinator has
        shut down. The checkpoint comes first, so a cancelled caller has changed
        nothing, and nothing is awaited after the change. With `schedule=False`
        (a caller that has just passed a schedule point, e.g. a receive) it only
        raises Cancelled when the caller is cancelled, without a trip through
        trio's scheduler (one run-loop batch fewer in the frame's chain)."""
        if schedule:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            return False
        try:
            self._on_message[type(message)](message)
        except Exception as exc:  # a bug: the coordinator stops, as a crashed actor would
            self._fail(exc)
            raise
        self._handled()
        return True

    def _handled(self) -> None:
        """After a message or a Tick: publish its updates and let a journal flush.
        (A timer that now comes sooner has moved the actor's wake-up: WakeAt.)"""
        self._flush()
        if self.journals and not self._activity.is_set():
            self._activity.set()

    def _fail(self, exc: Exception) -> None:
        self._failure, self._closed = exc, True
        if self._wake is not None:
            self._wake.cancel()

    def _publish(self, update: TaskUpdate) -> None:
        if self._updates is None:
            return
        try:
            self._updates.send_nowait(update)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # shutting down: the notifier is gone

    # ---- the actor ---------------------------------------------------------------

    async def run_actor(self) -> None:
        """The actor's loop (open_coordinator starts it; it ends when cancelled): it
        wakes for the core's timers, and after activity to let a journal flush."""
        # Messages do not queue for this task: every handler is synchronous, so _post
        # runs it in the sender's task, which is as atomic as a hop through a channel
        # to this task (trio switches tasks only at an await) and saves two task
        # switches a message. This loop keeps what only a task of its own can do.
        # One cancel scope wakes it for the core's timers, and it lives across
        # messages: its deadline is only ever moved earlier (by the core's WakeAt), because
        # entering a scope with a finite deadline, or moving it, costs a registration
        # in trio's deadline heap, and every task has timers. A wake-up that comes
        # early (the timer it was set for has gone) finds nothing due and re-arms
        # without a Tick, so the core sees a Tick exactly when one of its timers is
        # due. (The core also fires due timers at every event it handles.)
        journals, scheduler = self.journals, self.scheduler
        try:
            while True:
                with trio.CancelScope(deadline=scheduler.next_deadline()) as wake:
                    self._wake = wake
                    while True:
                        if journals:  # the file flushes when idle, or ~once a second
                            self._activity = trio.Event()
                            now = trio.current_time()
                            idle = trio.lowlevel.current_statistics().tasks_runnable == 0
                            for journal in journals:
                                journal.before_wait(now, idle)
                            if idle:  # nothing else runs: sleep until the next message
                                await self._activity.wait()
                            else:  # look again once the others have had their turn, so
                                await trio.lowlevel.checkpoint()  # the tail is flushed
                        else:
                            await trio.sleep_forever()
                self._wake = None
                if self._failure is not None:
                    raise self._failure
                if trio.current_time() >= scheduler.next_deadline():
                    self._apply(Tick())
                    self._handled()
        finally:
            self._closed, self._wake = True, None

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
            self._inputs[task_id] = TaskInput(spec.model, submission.payload, submission.params)
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


__all__ = ["Coordinator", "CoordinatorClosed", "CoordinatorConfig", "NodeIdentity",
           "SubmitOutcome", "TaskUpdate", "TokenVerifier", "UpdateSink"]
