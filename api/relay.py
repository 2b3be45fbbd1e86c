# The relay: a task's way between the API and the coordinator, both directions.
#
#   in:  Dispatcher - hands committed tasks to the coordinator, in order, off the
#        request path;
#   out: UpdateWriter - the coordinator's `on_update`: task changes to the store,
#        streamed output and state changes to the TaskFeed (SSE subscribers).
#
# Theory (in): a submission is accepted once its row is committed (the API's
# promise: an id returned is a task that survives a crash). Handing it to the
# coordinator need not hold the client's connection: the request queues the row
# with the dispatcher and answers; the dispatcher submits rows in the order they
# were committed, everything already queued in one batch (one trip to the
# coordinator's actor, up to DISPATCH_BATCH rows). On a restart the store's open
# tasks come through the same queue, so both paths are one.
#
# Rules:
# - One writer per fact: the UpdateWriter is the only code that writes a task's
#   transitions to the store, and the only keeper of the in-flight accounting (the
#   rate limiter's count of a caller's open tasks): `open` when a task is
#   submitted (before its row is inserted, so that concurrent submissions cannot
#   all pass the in-flight check) or handed back after a restart, and closed when
#   the writer writes the task's final state (or `release`, for a row that could
#   not be stored). Whatever ends a task - the coordinator's updates, a refusal at
#   hand-over, a cancellation - reaches the store as a TaskUpdate through it. An
#   update for a task that is not open (its end is written already) is dropped:
#   it could only repeat that end.
# - A task cancelled before it was handed over is withdrawn from the dispatcher
#   (the coordinator never hears of it); after that, cancellation goes through the
#   coordinator. Either way the dispatcher writes the cancellation through the
#   writer once it took effect. A task the coordinator refuses (queue full) ends
#   `rejected` in the store with the coordinator's reason.
# - The coordinator never waits for the disk: updates are queued to the store's
#   writer (in order) without awaiting their commit. Progress (streamed tokens) is
#   not stored; it goes to SSE subscribers only. The coordinator's updates carry
#   what a row needs (the node's GPU and location, the reference cost): the
#   writer never asks the coordinator anything.
# - Feed publishing never blocks and never fails. A subscriber that reads too
#   slowly loses progress events (each has a bounded buffer), never the end of the
#   stream: when a task ends, its subscribers' channels are closed and the route
#   reads the final task from the store.
# - A stream opened late misses nothing of the text: the feed keeps the text
#   pieces each open task streamed so far (the current run's: a requeued task
#   starts over), and a new subscriber's first event is one `progress` event with
#   all of them (`replayed: true`), so what it reads is always a prefix of the
#   result. Bounded: RETAINED_CHARS a task (a longer stream is not replayed at
#   all, never in part) and RETAINED_TASKS tasks (the oldest forgotten first: in an
#   API process of a cluster, an end whose notification was lost). Kept in a dict
#   by task id: O(1) a piece, O(pieces) a subscription.
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import attrs
import trio

from engine.core import MODELS, Priority, TaskSpec, VerifyMode, estimate_prompt_tokens
from engine.runtime import (
    FINAL_UPDATES, CancelledUpdate, CompletedUpdate, ExpiredUpdate, FailedUpdate,
    ProgressUpdate, QueuedUpdate, RejectedUpdate, RequeuedUpdate, RunningUpdate,
    SubmitOutcome, TaskUpdate, VerificationUpdate,
)

from .access import Admission, Caller, RateLimiter
from .media import MediaError, image_result, task_inputs
from .store import (
    OPEN_STATES, Blob, DuplicateTaskId, IdempotencyRecord, Store, TaskChange, TaskRow, receive_batch,
)
from .transitions import TaskWatcher


log = logging.getLogger(__name__)


def task_spec(row: TaskRow) -> TaskSpec:
    """What the core knows of a stored task: its size, as its task kind reads the params."""
    return spec_of(row.id, row.owner, row.model, row.priority, row.prompt, row.params,
                   row.verify)


def spec_of(task_id: str, owner: str, model: str, priority: str, prompt: str,
            params: Mapping[str, Any], verify: str) -> TaskSpec:
    """task_spec of the row these fields make (a submission's quote needs the spec
    before its row can be built)."""
    return TaskSpec(
        task_id=task_id, model=model, priority=Priority.parse(priority),
        prompt_tokens=estimate_prompt_tokens(prompt), owner=owner,
        verify=VerifyMode.parse(verify),
        **MODELS[model].kind.sizes(params),  # type: ignore[arg-type]
    )


DISPATCH_BATCH = 256  # rows handed to the coordinator in one trip, at most


class TaskCoordinator(Protocol):
    """What the relay needs of the coordinator (engine.runtime.Coordinator)."""

    async def submit_many(self, tasks: Sequence[tuple[TaskSpec, Mapping[str, Any],
                                                      Mapping[str, Any] | None]]
                          ) -> list[SubmitOutcome]: ...

    async def cancel(self, task_id: str) -> bool: ...


class Dispatcher:
    def __init__(self, coordinator: TaskCoordinator, store: Store, limiter: RateLimiter,
                 clock: Callable[[], float], writer: UpdateWriter | None = None,
                 on_dispatch: Callable[[int, float], None] | None = None) -> None:
        self.coordinator, self.store, self.clock = coordinator, store, clock
        self.on_dispatch = on_dispatch  # (tasks, seconds) of each trip to the coordinator
        self.writer = writer if writer is not None else UpdateWriter(store, limiter,
                                                                     TaskFeed(), clock)
        # committed rows, each with its TaskSpec when the submission had it already
        self._send, self._receive = trio.open_memory_channel[tuple[TaskRow, TaskSpec | None]](
            math.inf)
        self._waiting: set[str] = set()

    async def submit(self, row: TaskRow, fresh_id: Callable[[], str],
                     files: tuple[Blob, ...] = (),
                     idempotency: IdempotencyRecord | None = None,
                     spec: TaskSpec | None = None) -> TaskRow:
        """Store a new task (its input files, and its idempotency key when given: see
        Store.insert_task) and queue it for the coordinator; returns the row as
        stored (with a `fresh_id()` should its id be taken, which is astronomically
        rare). It counts in flight from before the insert. `spec`: the row's
        task_spec when the caller has it (the quote's), so it is not worked out
        twice."""
        self.writer.open(row)
        try:
            try:
                await self.store.insert_task(row, idempotency)
            except DuplicateTaskId:  # a second draw settles it
                self.writer.release(row.id)
                row, spec = attrs.evolve(row, id=fresh_id()), None
                if idempotency is not None:
                    idempotency = attrs.evolve(idempotency, task_id=row.id)
                self.writer.open(row)
                await self.store.insert_task(row, idempotency)
            if files:  # before it is queued: the dispatcher reads them
                await self.store.put_blobs(row.id, files)
        except BaseException:
            self.writer.release(row.id)
            raise
        self._queue(row, spec)
        return row

    def hand_over(self, row: TaskRow) -> None:
        """Queue a stored task for the coordinator (never blocks): a task accepted
        before a restart."""
        self.writer.open(row)
        self._queue(row, None)

    def _queue(self, row: TaskRow, spec: TaskSpec | None) -> None:
        self._waiting.add(row.id)
        self._send.send_nowait((row, spec))

    def withdraw(self, task_id: str) -> bool:
        """Take back a task not yet handed over; False when it already was."""
        if task_id not in self._waiting:
            return False
        self._waiting.discard(task_id)
        return True

    async def cancel(self, task_id: str) -> bool:
        """Cancel an open task: withdrawn when not yet handed over, else by the
        coordinator. True when the cancellation took effect; it is then written
        (queued to the store; `store.barrier()` waits for it)."""
        if self.withdraw(task_id) or await self.coordinator.cancel(task_id):
            await self.writer(CancelledUpdate(task_id))
            return True
        return False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            # Whatever else is queued already goes along: one trip to the coordinator
            # for the whole batch.
            try:
                queued = await receive_batch(self._receive, DISPATCH_BATCH)
            except trio.EndOfChannel:
                return
            queued = [(row, spec) for row, spec in queued if row.id in self._waiting]
            if not queued:  # all withdrawn
                continue
            rows = [row for row, _ in queued]
            for row in rows:
                self._waiting.discard(row.id)
            # the inputs (a task's files) are read before the clock starts: on_dispatch
            # times the trip to the coordinator (placement), not the store
            batch = [(task_spec(row) if spec is None else spec,
                      await task_inputs(self.store, row.id, row.model, row.prompt), row.params)
                     for row, spec in queued]
            started = time.perf_counter()
            outcomes = await self.coordinator.submit_many(batch)
            if self.on_dispatch is not None:
                self.on_dispatch(len(rows), time.perf_counter() - started)
            for row, outcome in zip(rows, outcomes):
                if not outcome.accepted:
                    await self.writer(RejectedUpdate(row.id, outcome.reason))


class AdmissionRefused(Exception):
    """The caller's limits refuse the submission (the API: 429); nothing was written."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(admission.reason)
        self.admission = admission


class Intake(Protocol):
    """How a submission is admitted and stored, and a cancellation made: in one
    process by the rate limiter and the dispatcher (LocalIntake); in the api role
    through the database, for a coordinator elsewhere (roles.py)."""

    async def submit(self, caller: Caller, row: TaskRow, fresh_id: Callable[[], str],
                     files: tuple[Blob, ...], idempotency: IdempotencyRecord | None,
                     now: float, spec: TaskSpec | None = None) -> tuple[TaskRow, Admission]:
        """Admit and store a new task (AdmissionRefused when the caller's limits
        refuse it); `spec`: its task_spec, when the caller worked it out already."""

    async def cancel(self, task_id: str, now: float) -> bool: ...


class LocalIntake:
    """The intake of one process: admitted by the in-memory rate limiter (it spends
    the submission), stored and queued by the dispatcher (Dispatcher.submit)."""

    def __init__(self, limiter: RateLimiter, dispatcher: Dispatcher) -> None:
        self.limiter, self.dispatcher = limiter, dispatcher

    async def submit(self, caller: Caller, row: TaskRow, fresh_id: Callable[[], str],
                     files: tuple[Blob, ...], idempotency: IdempotencyRecord | None,
                     now: float, spec: TaskSpec | None = None) -> tuple[TaskRow, Admission]:
        admission = self.limiter.admit(caller, now)
        if not admission.allowed:
            raise AdmissionRefused(admission)
        return await self.dispatcher.submit(row, fresh_id, files, idempotency, spec), admission

    async def cancel(self, task_id: str, now: float) -> bool:
        return await self.dispatcher.cancel(task_id)


# ---- out: the coordinator's updates -----------------------------------------

Event = tuple[str, dict[str, Any]]
SUBSCRIBER_BUFFER = 256
RETAINED_CHARS = 64 * 1024  # streamed text kept a task (4,096 tokens of 16 characters)
RETAINED_TASKS = 4096  # open tasks whose streamed text is kept


@attrs.define
class StreamedText:
    """The text pieces an open task streamed so far (see the rules above)."""
    pieces: list[str] = attrs.field(factory=list)
    chars: int = 0
    index: Any = None  # the last progress event's `index`, when it had one
    whole: bool = True  # False once a piece was over RETAINED_CHARS: no replay

    def add(self, tokens: list[Any], index: Any) -> None:
        if not self.whole:
            return
        pieces = [t for t in tokens if isinstance(t, str)]
        self.chars += sum(map(len, pieces))
        if self.chars > RETAINED_CHARS:
            self.whole, self.pieces = False, []
            return
        self.pieces += pieces
        self.index = index

    def replay(self) -> Event | None:
        """The progress event that carries it all; None when there is nothing to replay."""
        if not self.whole or not self.pieces:
            return None
        replay: dict[str, Any] = {"tokens": list(self.pieces), "replayed": True}
        if self.index is not None:
            replay["index"] = self.index
        return ("progress", replay)


class TaskFeed:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[trio.MemorySendChannel[Event]]] = {}
        self._streamed: dict[str, StreamedText] = {}  # open task -> its text so far

    @contextmanager
    def subscribe(self, task_id: str) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        """The task's events from now on, after the text it streamed so far (one
        replayed progress event, when there is any)."""
        send, receive = trio.open_memory_channel[Event](SUBSCRIBER_BUFFER)
        streamed = self._streamed.get(task_id)
        replay = streamed.replay() if streamed is not None else None
        if replay is not None:
            send.send_nowait(replay)  # an empty channel: it fits
        self._subscribers.setdefault(task_id, set()).add(send)
        try:
            yield receive
        finally:
            subscribers = self._subscribers.get(task_id)
            if subscribers is not None:
                subscribers.discard(send)
                if not subscribers:
                    del self._subscribers[task_id]
            send.close()
            receive.close()

    def _publish(self, task_id: str, event: Event) -> None:
        for send in self._subscribers.get(task_id, ()):
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass  # a slow subscriber misses a progress event; see the rules above

    def publish_progress(self, task_id: str, progress: dict[str, Any]) -> None:
        tokens = progress.get("tokens")
        if isinstance(tokens, list):
            streamed = self._streamed.get(task_id)
            if streamed is None:
                if len(self._streamed) >= RETAINED_TASKS:
                    del self._streamed[next(iter(self._streamed))]
                streamed = self._streamed[task_id] = StreamedText()
            streamed.add(tokens, progress.get("index"))
        self._publish(task_id, ("progress", progress))

    def publish_state(self, task_id: str, change: TaskChange) -> None:
        ended = change.status not in OPEN_STATES
        if ended or change.status == "queued":  # requeued: its next run starts over
            self._streamed.pop(task_id, None)
        self._publish(task_id, ("status", {"status": change.status}))
        if ended:
            for send in self._subscribers.pop(task_id, ()):
                send.close()

    def subscriber_count(self, task_id: str) -> int:
        return len(self._subscribers.get(task_id, ()))

    def subscribed(self) -> list[str]:
        """The tasks somebody follows now."""
        return list(self._subscribers)


def result_text(output: Any) -> str | None:
    """A task's result as the reference shows it: the generated text, or (for
    outputs that are not text) their JSON."""
    if output is None:
        return None
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping):
        text = output.get("text")
        if isinstance(text, str):
            return text
    return json.dumps(output)


def _final_change(update: FailedUpdate | RejectedUpdate | ExpiredUpdate, now: float
                  ) -> TaskChange:
    return TaskChange(update.task_id, update.state.value, now, error=update.error or None)


class UpdateWriter:
    """The coordinator's `on_update`, and the single writer of task transitions and
    in-flight accounting (see the rules above): TaskUpdates become stored changes
    (queued to the store's writer, not awaited) and feed events."""

    def __init__(self, store: Store, limiter: RateLimiter, feed: TaskFeed,
                 clock: Callable[[], float], watchers: Sequence[TaskWatcher] = ()) -> None:
        self.store, self.limiter, self.feed, self.clock = store, limiter, feed, clock
        self.watchers = tuple(watchers)  # told of every transition written (transitions.py)
        # update type -> the stored change it makes (None: nothing to store)
        self._changes: dict[type, Callable[[Any, float], TaskChange | None]] = {
            QueuedUpdate: lambda update, now: None,  # the row says queued already
            RequeuedUpdate: lambda update, now: TaskChange(update.task_id, "queued", now),
            RunningUpdate: self._running_change,
            FailedUpdate: _final_change, RejectedUpdate: _final_change,
            ExpiredUpdate: _final_change,
            CancelledUpdate: lambda update, now: TaskChange(update.task_id, "cancelled", now),
        }
        # open task -> the results of it that failed verification (its re-runs)
        self._failed_results: dict[str, list[dict[str, Any]]] = {}

    def open(self, row: TaskRow) -> None:
        """Count a task in its owner's in-flight tasks (idempotent)."""
        self.limiter.task_opened(row.id, row.owner)
        for watcher in self.watchers:
            watcher.task_opened(row)

    def release(self, task_id: str) -> None:
        """The task left flight: it ended, or its row was never stored."""
        self._failed_results.pop(task_id, None)
        self.limiter.task_closed(task_id)
        for watcher in self.watchers:
            watcher.task_closed(task_id)

    def _verification(self, update: VerificationUpdate) -> str:
        """The task JSON's `verification` object (as JSON text): the latest outcome,
        and every earlier result of the task that failed verification."""
        failed = self._failed_results.setdefault(update.task_id, [])
        body = update.as_json()
        if update.status == "failed":
            failed.append({k: body[k] for k in ("producer", "validator", "score", "detail")})
        body["rerun"] = bool(failed)  # a failed result made the task run again
        body["failed_results"] = list(failed)
        if not failed:
            del self._failed_results[update.task_id]
        return json.dumps(body)

    async def __call__(self, update: TaskUpdate) -> None:
        task_id = update.task_id
        if not self.limiter.is_open(task_id):
            return  # its end is written already
        if isinstance(update, ProgressUpdate):  # streamed output, not stored
            self.feed.publish_progress(task_id, dict(update.partial))
            return
        if isinstance(update, VerificationUpdate):  # stored; the task stays running
            await self.store.post_task_change(TaskChange(
                task_id, "running", self.clock(), verification=self._verification(update)))
            return
        blobs: tuple[Blob, ...] = ()
        change: TaskChange | None
        if isinstance(update, CompletedUpdate):
            change, blobs = self._completed_change(update, self.clock())
            if update.verification is not None:
                change = attrs.evolve(change,
                                      verification=self._verification(update.verification))
        else:
            change = self._changes[type(update)](update, self.clock())
        if change is None:
            return
        await self.store.post_task_change(change, blobs)
        for watcher in self.watchers:
            watcher.task_changed(change)
        if type(update) in FINAL_UPDATES:
            self.release(task_id)
        self.feed.publish_state(task_id, change)

    @staticmethod
    def _running_change(update: RunningUpdate, now: float) -> TaskChange:
        return TaskChange(update.task_id, "running", now, node_id=update.node_id,
                          node_location=update.node_location, node_gpu=update.node_gpu,
                          model_weights=update.model_weights or None)

    @staticmethod
    def _completed_change(update: CompletedUpdate, now: float
                          ) -> tuple[TaskChange, tuple[Blob, ...]]:
        usage = update.usage
        change = TaskChange(update.task_id, "completed", now, result=result_text(update.result),
                            cost=update.cost or 0.0,
                            tokens_used=usage.tokens + usage.prompt_tokens,
                            processing_time=usage.seconds, openai_cost=update.reference_cost,
                            model_weights=update.model_weights or None,
                            finish_reason=update.finish_reason or None,
                            prompt_tokens=usage.prompt_tokens,
                            metered_by=update.metered_by or None)
        try:
            image = image_result(update.task_id, update.result)
        except MediaError as exc:  # the node's claimed image is not one: no result
            log.warning("task %s: %s (node %s)", update.task_id, exc, update.node_id)
            return attrs.evolve(change, status="failed", result=None, cost=0.0,
                                error=f"the node's result was refused: {exc}"), ()
        if image is None:
            return change, ()
        return attrs.evolve(change, result=image.path, content_type=image.content_type), (
            image.blob,)


__all__ = ["AdmissionRefused", "Dispatcher", "Intake", "LocalIntake", "TaskCoordinator",
           "StreamedText", "TaskFeed", "UpdateWriter", "result_text", "spec_of", "task_spec"]
