"""A worker given several coordinators (`--coordinator` repeated): it follows a
standby's "not the leader" error to the leader it names, and moves on to the next
URL when one cannot be reached. In-memory connections, virtual time."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
import trio

from engine.protocol import (
    Connection, Error, Hello, Welcome, decode, encode, memory_connection_pair,
)
from engine.worker.agent import CoordinatorList, Worker, WorkerConfig
from tests.engine.runtime.harness import SimExecutor

LEADER, STANDBY, DEAD = "ws://leader/c", "ws://standby/c", "ws://dead/c"


class Network:
    """Fake coordinators by URL: the leader welcomes, a standby refuses naming
    `leader`, anything else cannot be reached."""

    def __init__(self, nursery: trio.Nursery, leader: str = LEADER) -> None:
        self.nursery, self.leader = nursery, leader
        self.tried: list[str] = []
        self.welcomed = trio.Event()

    async def serve(self, url: str, conn: Connection) -> None:
        hello = decode(await conn.receive())
        assert isinstance(hello, Hello)
        if url == LEADER:
            await conn.send(encode(Welcome("node_w", 60.0)))
            self.welcomed.set()
            await trio.sleep_forever()
        await conn.send(encode(Error("not the leader", retry=True, leader=self.leader)))
        await conn.aclose("not the leader")

    @asynccontextmanager
    async def connect(self, url: str) -> AsyncIterator[Connection]:
        self.tried.append(url)
        if url not in (LEADER, STANDBY):
            raise OSError("connection refused")
        client, server = memory_connection_pair()
        self.nursery.start_soon(self.serve, url, server)
        yield client


async def run_until_welcomed(urls: list[str], leader: str = LEADER) -> list[str]:
    config = WorkerConfig(token="t", backoff_initial=0.5, backoff_max=4.0)
    async with trio.open_nursery() as nursery:
        network = Network(nursery, leader)
        worker = Worker(config, SimExecutor(), CoordinatorList(urls, network.connect))
        nursery.start_soon(worker.run)
        with trio.fail_after(30):
            await network.welcomed.wait()
        nursery.cancel_scope.cancel()
    return network.tried


async def test_a_standby_sends_the_worker_to_the_leader_it_names(autojump_clock):
    assert await run_until_welcomed([STANDBY, DEAD]) == [STANDBY, LEADER]


async def test_an_unreachable_coordinator_is_skipped_for_the_next(autojump_clock):
    assert await run_until_welcomed([DEAD, STANDBY]) == [DEAD, STANDBY, LEADER]


async def test_a_dead_leader_named_by_a_standby_is_forgotten(autojump_clock):
    # the standby names a leader that has just died: the worker goes on down its list
    assert await run_until_welcomed([STANDBY, LEADER], leader=DEAD) == [STANDBY, DEAD, LEADER]


def test_a_list_needs_a_url():
    with pytest.raises(ValueError, match="at least one"):
        CoordinatorList([])
