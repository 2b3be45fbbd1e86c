"""api/keepalive.py's idle timers close what hypercorn's own timer closes: a
connection idle for the keep-alive timeout (counted from the last time it went
idle), never a busy one, every idle one at once when the server terminates, and
nothing of a connection that has ended. The server here has hypercorn's real
Config, WorkerContext and TaskGroup (whose body, as hypercorn's reading of
the socket does, lasts as long as the connection); its protocol and stream only
record the close. (The closes on a real server: tests/faults/test_http_connections.py.)"""
from __future__ import annotations

from typing import Any

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
from hypercorn.events import Closed
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext

from api.keepalive import IdleTimers, serve_idle_timers

TIMEOUT = 5.0


class Connection:
    """What IdleTimer reads of hypercorn's TCPServer, recording the close."""

    def __init__(self, context: WorkerContext) -> None:
        self.config = Config()
        self.config.keep_alive_timeout = TIMEOUT
        self.context = context
        self.closed_at: float | None = None
        self.protocol = self
        self.stream = self

    async def handle(self, event: Any) -> None:
        assert isinstance(event, Closed)

    async def aclose(self) -> None:
        assert self.closed_at is None, "closed twice"
        self.closed_at = trio.current_time()

    async def _idle_timeout(self) -> None:  # hypercorn's action; never run by IdleTimers
        raise AssertionError("hypercorn's own idle timeout ran")


async def test_an_idle_connection_is_closed_the_timeout_after_it_went_idle(autojump_clock: Any
                                                                          ) -> None:
    async with trio.open_nursery() as nursery:
        timers = await nursery.start(IdleTimers().run)
        connection = Connection(WorkerContext(None))
        timer = timers.timer()
        async with TaskGroup() as group:
            opened = trio.current_time()
            await timer.restart(group, connection._idle_timeout)
            await trio.sleep(2 * TIMEOUT)
        assert connection.closed_at == opened + TIMEOUT
        nursery.cancel_scope.cancel()


async def test_requests_push_the_close_back_and_a_busy_connection_is_never_closed(
        autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        timers = await nursery.start(IdleTimers().run)
        connection = Connection(WorkerContext(None))
        timer = timers.timer()
        async with TaskGroup() as group:
            await timer.restart(group, connection._idle_timeout)
            for _ in range(20):  # a request every 3 s, each taking 1 s
                await trio.sleep(3.0)
                await timer.stop()
                await trio.sleep(1.0)
                last_idle = trio.current_time()
                await timer.restart(group, connection._idle_timeout)
            assert connection.closed_at is None
            await trio.sleep(1.0)
            await timer.stop()  # a long request: 10 timeouts
            await trio.sleep(10 * TIMEOUT)
            assert connection.closed_at is None
            last_idle = trio.current_time()
            await timer.restart(group, connection._idle_timeout)
            await trio.sleep(2 * TIMEOUT)
        assert connection.closed_at == last_idle + TIMEOUT
        # each connection is in the heap at most once
        assert len(timers.heap) <= 1
        nursery.cancel_scope.cancel()


async def test_termination_closes_idle_connections_at_once_and_busy_ones_when_idle(
        autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        timers = await nursery.start(IdleTimers().run)
        context = WorkerContext(None)
        idle, busy = Connection(context), Connection(context)
        idle_timer, busy_timer = timers.timer(), timers.timer()
        async with TaskGroup() as group:
            await idle_timer.restart(group, idle._idle_timeout)
            await busy_timer.restart(group, busy._idle_timeout)
            await busy_timer.stop()
            await trio.sleep(1.0)
            terminated = trio.current_time()
            await context.terminated.set()
            await trio.sleep(2.0)
            assert idle.closed_at == terminated
            assert busy.closed_at is None
            await busy_timer.restart(group, busy._idle_timeout)
            answered = trio.current_time()
            await trio.sleep(1.0)
        assert busy.closed_at == answered
        nursery.cancel_scope.cancel()


async def test_a_connection_that_has_ended_is_left_alone(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        timers = await nursery.start(IdleTimers().run)
        connection = Connection(WorkerContext(None))
        timer = timers.timer()
        with trio.move_on_after(1.0):  # the connection's task group ends (cancelled)
            async with TaskGroup() as group:
                await timer.restart(group, connection._idle_timeout)
                await trio.sleep_forever()
        await trio.sleep(2 * TIMEOUT)
        assert connection.closed_at is None
        assert timers.heap == []
        nursery.cancel_scope.cancel()


async def test_many_connections_each_close_on_time(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        timers = await nursery.start(IdleTimers().run)
        context = WorkerContext(None)
        connections = [Connection(context) for _ in range(200)]
        went_idle: dict[int, float] = {}
        async with TaskGroup() as group:
            for i, connection in enumerate(connections):
                timer = timers.timer()
                await timer.restart(group, connection._idle_timeout)
                went_idle[i] = trio.current_time()
                await trio.sleep(0.01 * (i % 7))
                if i % 3 == 0:  # a third answer one more request
                    await timer.stop()
                    await timer.restart(group, connection._idle_timeout)
                    went_idle[i] = trio.current_time()
            assert len(timers.heap) <= len(connections)
            await trio.sleep(2 * TIMEOUT)
        assert all(c.closed_at == went_idle[i] + TIMEOUT for i, c in enumerate(connections))
        nursery.cancel_scope.cancel()


async def test_serving_makes_hypercorn_time_connections_with_it_then_restores_its_own() -> None:
    original = hypercorn.trio.tcp_server.TrioSingleTask  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        timers = await nursery.start(serve_idle_timers)
        made = hypercorn.trio.tcp_server.TrioSingleTask()  # type: ignore[attr-defined]
        assert made._timers is timers
        nursery.cancel_scope.cancel()
    assert hypercorn.trio.tcp_server.TrioSingleTask is original  # type: ignore[attr-defined]
