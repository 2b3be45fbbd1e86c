"""api/server.py's IdleTimer behaves as hypercorn's TrioSingleTask, which it
replaces in hypercorn's TCPServer: one action at a time, `restart` cancels the
running one and starts the new one, `stop` cancels it, and an action cancelled
before it ran never gets past its first checkpoint. (The closes it makes on a
real server: tests/faults/test_http_connections.py.)"""
from __future__ import annotations

from typing import Any

import hypercorn.trio.tcp_server
import trio
from hypercorn.trio.task_group import TaskGroup

from api.server import IdleTimer, install_idle_timer


def recorder(log: list[str], name: str, seconds: float) -> Any:
    async def action() -> None:
        log.append(f"{name} started")
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            log.append(f"{name} cancelled")
            raise
        log.append(f"{name} ran out")

    return action


async def test_restart_cancels_the_running_action_and_starts_the_new_one() -> None:
    log: list[str] = []
    timer = IdleTimer()
    async with TaskGroup() as group:
        await timer.restart(group, recorder(log, "first", 10))
        await trio.sleep(0.01)
        await timer.restart(group, recorder(log, "second", 0.05))
        # the group waits for the second action to run out
    # (the first's cancellation and the second's start come in one scheduler batch,
    # in either order)
    assert [e for e in log if e.startswith("first")] == ["first started", "first cancelled"]
    assert [e for e in log if e.startswith("second")] == ["second started", "second ran out"]


async def test_stop_cancels_the_action() -> None:
    log: list[str] = []
    timer = IdleTimer()
    async with TaskGroup() as group:
        await timer.restart(group, recorder(log, "timer", 10))
        await trio.sleep(0.01)
        await timer.stop()
        await timer.stop()  # stopping a stopped timer does nothing
    assert log == ["timer started", "timer cancelled"]


async def test_an_action_stopped_before_it_ran_ends_at_its_first_checkpoint() -> None:
    log: list[str] = []
    timer = IdleTimer()
    async with TaskGroup() as group:
        await timer.restart(group, recorder(log, "timer", 10))
        await timer.stop()  # no checkpoint between: the action has not run yet
    assert log == ["timer started", "timer cancelled"]


def test_install_makes_hypercorn_time_connections_with_it() -> None:
    original = hypercorn.trio.tcp_server.TrioSingleTask  # type: ignore[attr-defined]
    try:
        install_idle_timer()
        assert hypercorn.trio.tcp_server.TrioSingleTask is IdleTimer  # type: ignore[attr-defined]
    finally:
        hypercorn.trio.tcp_server.TrioSingleTask = original  # type: ignore[attr-defined]
