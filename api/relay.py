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
# coordinator's actor, up to DISPATCH_BATCH rows). On a restart the store's open tasks come through the
# same queue, so both paths are one.
#
# Rules:
# - A task cancelled before it was handed over is withdrawn from the dispatcher
#   (the coordinator never hears of it); after that, cancellation goes through the
#   coordinator. A task the coordinator refuses (queue full) ends `rejected` in the
#   store with the coordinator's reason, and leaves its owner's in-flight count.
# - The coordinator never waits for the disk: updates are queued to the store's
#   writer (in order) without awaiting their commit. Progress (streamed tokens) is
#   not stored; it goes to SSE subscribers only.
# - Feed publishing never blocks and never fails. A subscriber that reads too
#   slowly loses progress events (each has a bounded buffer), never the end of the
#   stream: when a task ends, its subscribers' channels are closed and the route
#   reads the final task from the store.
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import trio

from engine.core import (
    MODELS, Priority, TaskSpec, TaskState, Usage, estimate_prompt_tokens, openai_cost,
)
from engine.runtime import TaskUpdate

from .access import RateLimiter
from .store import OPEN_STATES, Store, TaskChange, TaskRow, receive_batch


def task_spec(row: TaskRow) -> TaskSpec:
    """What the core knows of a stored task: its size, as its task kind reads the params."""
    return TaskSpec(
        task_id=row.id, model=row.model, priority=Priority.parse(row.priority),
        prompt_tokens=estimate_prompt_tokens(row.prompt), owner=row.owner,
        **MODELS[row.model].kind.sizes(row.params),  # type: ignore[arg-type]
    )


def task_payload(row: TaskRow) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the worker gets: the `input` and `params` of the assign frame."""
    return {"prompt": row.prompt}, row.params


DISPATCH_BATCH = 256  # rows handed to the coordinator in one trip, at most


class Dispatcher:
    def __init__(self, coordinator: Any, store: Store, limiter: RateLimiter,
                 clock: Callable[[], float]) -> None:
        self.coordinator, self.store, self.limiter, self.clock = coordinator, store, limiter, clock
        self._send, self._receive = trio.open_memory_channel[TaskRow](math.inf)
        self._waiting: set[str] = set()

    def hand_over(self, row: TaskRow) -> None:
        """Queue a committed task for the coordinator (never blocks)."""
        self.limiter.task_opened(row.id, row.owner)
        self._waiting.add(row.id)
        self._send.send_nowait(row)

    def withdraw(self, task_id: str) -> bool:
        """Take back a task not yet handed over; False when it already was."""
        if task_id not in self._waiting:
            return False
        self._waiting.discard(task_id)
        return True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            # Whatever else is queued already goes along: one trip to the coordinator
            # for the whole batch.
            try:
                rows = await receive_batch(self._receive, DISPATCH_BATCH)
            except trio.EndOfChannel:
                return
            rows = [row for row in rows if row.id in self._waiting]  # not withdrawn
            if not rows:
                continue
            for row in rows:
                self._waiting.discard(row.id)
            outcomes = await self.coordinator.submit_many(
                [(task_spec(row), *task_payload(row)) for row in rows])
            for row, outcome in zip(rows, outcomes):
                if not outcome.accepted:
                    self.limiter.task_closed(row.id)
                    await self.store.change_task(TaskChange(
                        row.id, TaskState.REJECTED.value, self.clock(), error=outcome.reason))


# ---- out: the coordinator's updates -----------------------------------------

Event = tuple[str, dict[str, Any]]
SUBSCRIBER_BUFFER = 256


class TaskFeed:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[trio.MemorySendChannel[Event]]] = {}

    @contextmanager
    def subscribe(self, task_id: str) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        send, receive = trio.open_memory_channel[Event](SUBSCRIBER_BUFFER)
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
        self._publish(task_id, ("progress", progress))

    def publish_state(self, task_id: str, change: TaskChange) -> None:
        self._publish(task_id, ("status", {"status": change.status}))
        if change.status not in OPEN_STATES:
            for send in self._subscribers.pop(task_id, ()):
                send.close()

    def subscriber_count(self, task_id: str) -> int:
        return len(self._subscribers.get(task_id, ()))


def result_text(output: Any) -> str | None:
    """A task's result as the reference shows it: the generated text, or (for
    outputs that are not text) their JSON."""
    if output is None:
        return None
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("text"), str):
        return output["text"]
    return json.dumps(output)


class UpdateWriter:
    """The coordinator's `on_update`: TaskUpdates become stored changes (queued to
    the store's writer, not awaited) and feed events."""

    def __init__(self, coordinator: Any, store: Store, limiter: RateLimiter, feed: TaskFeed,
                 clock: Callable[[], float]) -> None:
        self.coordinator, self.store, self.limiter, self.feed = coordinator, store, limiter, feed
        self.clock = clock
        self._places: dict[str, tuple[str, str]] = {}  # node id -> (location, gpu)

    def _place(self, node_id: str) -> tuple[str, str]:
        if node_id not in self._places:
            for node in self.coordinator.snapshot().nodes:
                self._places[node.node_id] = (node.location or node.region, node.gpu)
        return self._places.get(node_id, ("", ""))

    async def __call__(self, update: TaskUpdate) -> None:
        if update.state is None:  # progress: streamed output, not stored
            self.feed.publish_progress(update.task_id, dict(update.partial or {}))
            return
        if update.state is TaskState.QUEUED and not update.error:
            return  # the echo of an accepted submission: the row says queued already
        change = self.change(update)
        await self.store.post_task_change(change)
        if update.state.is_final:
            self.limiter.task_closed(update.task_id)
        self.feed.publish_state(update.task_id, change)

    def change(self, update: TaskUpdate) -> TaskChange:
        now = self.clock()
        status = update.state.value
        values: dict[str, Any] = {}
        if update.node_id is not None and status == TaskState.RUNNING.value:
            location, gpu = self._place(update.node_id)
            values.update(node_id=update.node_id, node_location=location, node_gpu=gpu)
        if status == TaskState.COMPLETED.value:
            values.update(result=result_text(update.result), cost=update.cost or 0.0)
            usage: Usage | None = update.usage
            if usage is not None:
                values.update(tokens_used=usage.tokens + usage.prompt_tokens,
                              processing_time=usage.seconds)
                record = self.coordinator.task(update.task_id)
                if record is not None:
                    values["openai_cost"] = openai_cost(
                        record.spec.model, usage.prompt_tokens, usage.tokens, usage.steps,
                        usage.audio_seconds)
        if update.error and update.state.is_final and status != TaskState.COMPLETED.value:
            values["error"] = update.error
        return TaskChange(update.task_id, status, now, **values)


__all__ = ["Dispatcher", "TaskFeed", "UpdateWriter", "result_text", "task_payload", "task_spec"]
