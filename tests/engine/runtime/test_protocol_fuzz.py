"""Fuzz the coordinator with random and mutated worker frames (virtual time): each
frame that is not a valid message gets an `error` frame, the coordinator stays up,
and every task still ends exactly once - none is leaked on the fuzzed node."""
from __future__ import annotations

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.runtime import CoordinatorConfig
from engine.protocol import AssignTask, ConnectionClosed, Error, ProtocolError, decode
from tests.engine.runtime.harness import RawClient, open_net
from tests.strategies import garbage_frames

CONFIG = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=5.0, max_protocol_errors=20)
TASKS = ["t0", "t1", "t2", "t3"]


async def scenario(frames: list[str]) -> None:
    async with open_net(CONFIG) as net:
        worker = net.start_worker("steady")
        raw = RawClient(net)
        await raw.hello(slots=2)
        await net.until_nodes(2)
        for task_id in TASKS:
            await net.submit(task_id, seconds=1.0)
        replies: list = []

        async def read() -> None:
            try:
                while True:
                    replies.append(decode(await raw.conn.receive()))
            except ConnectionClosed:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            invalid = 0
            for text in frames:
                try:
                    decode(text)
                except ProtocolError:
                    invalid += 1
                await raw.send(text)
                await trio.sleep(0.01)
            await trio.sleep(0.1)
            errors = [r for r in replies if isinstance(r, Error)]
            assert len(errors) >= invalid  # every invalid frame was answered
            assert all(isinstance(r, (Error, AssignTask)) or type(r).__name__ == "CancelTask"
                       for r in replies)
            await raw.conn.aclose("fuzz over")
        # the coordinator is up, every task ends exactly once, nothing is left behind
        await net.until_final(*TASKS)
        for task_id in TASKS:
            assert sum(1 for s in net.states(task_id) if s.is_final) == 1
        await net.submit("after", seconds=1.0)
        await net.until_final("after")
        assert net.final("after").node_id == worker.node_id
        snap = net.c.snapshot()
        assert snap.running == 0 and snap.queued == 0 and len(snap.nodes) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage_frames, max_size=8))
def test_coordinator_survives_random_and_mutated_frames(frames):
    trio.run(scenario, frames, clock=trio.testing.MockClock(autojump_threshold=0))
