# hypercorn's keep-alive timing, without a task per request: one task times the
# idle connections of a whole server.
#
# Rules (hypercorn's, kept):
# - A connection is idle from the moment hypercorn says so (`restart`: it has just
#   opened, or an answer has just ended and the connection is kept alive) until
#   the next request's headers are in (`stop`). One that stays idle for the
#   server's keep_alive_timeout is closed: its protocol is told Closed and its
#   stream closed, shielded, in the connection's own task group, as hypercorn's
#   `_idle_timeout` does. A busy connection is never closed by the timer.
# - Once the server is terminating (its WorkerContext's `terminated`), an idle
#   connection is closed at once, and one that becomes idle later is closed then.
#
# Theory: hypercorn times a connection with a TrioSingleTask: `restart` cancels
# the running timer task and starts a new one (`nursery.start`, under a lock),
# `stop` cancels it. Every keep-alive request therefore costs a task spawned, a
# task cancelled and woken, and a lock taken twice - at 32 connections, about 9%
# of the server's CPU a GET /health (same-session runs against the same tree with
# the timer removed, 2026-12-02; the closes are needed, so the timer stays).
# Here `restart` and `stop` only write when the connection went idle (or that it
# is busy); a connection is in the heap of the server's `IdleTimers` at most
# once, with a deadline no later than its due time, and is looked at when that
# deadline passes: still idle long enough, it is closed; idle more recently, it
# goes back in with its new due time; busy, it leaves the heap, and the next
# `restart` puts it back. Cost: O(1) a request; O(log n) a (re)queueing, at most
# one per connection per keep-alive interval, n the connections; one task for
# all of them, plus one per WorkerContext waiting for its termination.
# The heap holds the timers, which hold their server and task group weakly, so a
# connection that ended is not kept alive by its last deadline (at most the small
# timer object stays, until that deadline).
from __future__ import annotations

import heapq
import itertools
import logging
import math
import weakref
from typing import Any, Awaitable, Callable

import attrs
import hypercorn.trio.tcp_server
import trio
from hypercorn.events import Closed

log = logging.getLogger(__name__)


class IdleTimer:
    """One connection's keep-alive timer, in the shape of hypercorn's SingleTask
    (`restart(task_group, action)`, `stop()`); `action` is the TCPServer's idle
    timeout, whose server (`action.__self__`) gives the timeout, the context and
    what to close."""

    __slots__ = ("_timers", "_server", "_group", "_context", "_timeout", "_idle_since",
                 "_queued", "_closing")

    def __init__(self, timers: IdleTimers) -> None:
        self._timers = timers
        self._server: weakref.ref[Any] | None = None
        self._group: weakref.ref[Any] | None = None
        self._context: Any = None
        self._timeout = math.inf
        self._idle_since: float | None = None  # None: busy (or not yet opened)
        self._queued = False  # in the heap
        self._closing = False

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        if self._server is None:
            server = action.__self__  # type: ignore[attr-defined]
            self._server = weakref.ref(server)
            self._group = weakref.ref(task_group)
            self._context = server.context
            self._timeout = server.config.keep_alive_timeout
            self._timers.watch(self._context)
        now = trio.current_time()
        self._idle_since = now
        if self._context.terminated.is_set():
            self.close()
        elif not self._queued:
            self._queued = True
            self._timers.queue(self, now + self._timeout)

    async def stop(self) -> None:
        self._idle_since = None

    @property
    def context(self) -> Any:
        return self._context

    def expired(self, now: float) -> None:
        """Its deadline in the heap has passed (it has left the heap)."""
        self._queued = False
        if self._idle_since is None or self._closing:
            return  # busy: the next restart queues it again
        due = self._idle_since + self._timeout
        if due <= now:
            self.close()
        else:
            self._queued = True
            self._timers.queue(self, due)

    def close(self) -> None:
        """Close the connection if it is idle, in its own task group."""
        if self._closing or self._idle_since is None:
            return
        server = self._server() if self._server is not None else None
        group = self._group() if self._group is not None else None
        nursery = getattr(group, "_nursery", None)  # hypercorn's TaskGroup; None once it has ended
        if server is None or nursery is None:
            return  # the connection has ended
        self._closing = True
        try:
            nursery.start_soon(close_connection, server)
        except RuntimeError:  # its task group is closed to new tasks: it has ended
            pass


async def close_connection(server: Any) -> None:
    """hypercorn's TCPServer._initiate_server_close, from its public attributes."""
    with trio.CancelScope(shield=True):
        await server.protocol.handle(Closed())
        await server.stream.aclose()


@attrs.define
class IdleTimers:
    """The idle timers of one server (see above); `run` is its task."""

    heap: list[tuple[float, int, IdleTimer]] = attrs.field(factory=list)
    order: Any = attrs.field(factory=itertools.count)  # ties in the heap, first queued first
    wake: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(deadline=math.inf))
    nursery: trio.Nursery | None = None
    watched: weakref.WeakSet[Any] = attrs.field(factory=weakref.WeakSet)

    def timer(self) -> IdleTimer:
        return IdleTimer(self)

    def queue(self, timer: IdleTimer, deadline: float) -> None:
        heapq.heappush(self.heap, (deadline, next(self.order), timer))
        if deadline < self.wake.deadline:
            self.wake.deadline = deadline

    def watch(self, context: Any) -> None:
        """Close `context`'s idle connections when it terminates."""
        if context not in self.watched and self.nursery is not None:
            self.watched.add(context)
            self.nursery.start_soon(self.close_when_terminated, context)

    async def close_when_terminated(self, context: Any) -> None:
        await context.terminated.wait()
        for _, _, timer in list(self.heap):
            if timer.context is context:
                timer.close()

    def expire(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            _, _, timer = heapq.heappop(self.heap)
            try:
                timer.expired(now)
            except Exception:  # one connection's fault never stops the others' timing
                log.exception("keep-alive timer failed")

    async def run(self, task_status: trio.TaskStatus[IdleTimers] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started(self)
            while True:
                self.wake = trio.CancelScope(deadline=self.heap[0][0] if self.heap else math.inf)
                with self.wake:
                    await trio.sleep_forever()
                self.expire(trio.current_time())


async def serve_idle_timers(*, task_status: trio.TaskStatus[IdleTimers] = trio.TASK_STATUS_IGNORED
                            ) -> None:
    """Time the keep-alive connections of every hypercorn trio server started while
    this runs (hypercorn's TCPServer makes its timers with IdleTimers.timer);
    hypercorn's own timer is back when it ends."""
    timers = IdleTimers()
    original = hypercorn.trio.tcp_server.TrioSingleTask  # type: ignore[attr-defined]
    hypercorn.trio.tcp_server.TrioSingleTask = timers.timer  # type: ignore[attr-defined, assignment]
    try:
        await timers.run(task_status)
    finally:
        hypercorn.trio.tcp_server.TrioSingleTask = original  # type: ignore[attr-defined]


__all__ = ["IdleTimer", "IdleTimers", "close_connection", "serve_idle_timers"]
