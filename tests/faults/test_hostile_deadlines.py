"""Finding 3: no task is held forever. Every task has a default deadline; a worker
that accepts a task and never answers (while heartbeating) has it taken back after
the execution bound, and it completes elsewhere; a false hello (a "H100" at price 0
with 256 slots that never answers) cannot swallow the queue: its slots are earned."""
from __future__ import annotations

import trio

from engine.core import TaskState
from engine.protocol import AssignTask, CancelTask
from engine.runtime import CoordinatorConfig
from tests.engine.runtime.harness import FAST, open_net
from tests.faults.hostile import Hostile, Tokens, until_final

FLOOR = 300.0  # CoordinatorConfig.execution_timeout_floor, live
INITIAL_SLOTS = 2  # CoordinatorConfig.initial_slots, live


def test_the_live_configuration_has_the_defences_on():
    config = CoordinatorConfig()
    assert config.default_deadline == 1200.0  # AI Horde's 20 minutes
    assert config.execution_timeout_floor == FLOOR and config.initial_slots == INITIAL_SLOTS
    scheduler = config.scheduler_config()
    assert scheduler.execution_timeout_factor == 10.0 and scheduler.rejoin_grace == 60.0


async def test_a_task_nobody_runs_expires_after_the_default_deadline(autojump_clock):
    async with open_net(FAST) as net:
        await net.submit("orphan", seconds=1.0)  # no deadline given, no worker online
        await trio.sleep(1199)
        assert net.final("orphan") is None
        await until_final(net, "orphan", timeout=10)
        assert net.final("orphan").state is TaskState.EXPIRED


async def test_a_stuck_worker_has_its_task_taken_back(autojump_clock):
    tokens = Tokens("stuck", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        stuck = Hostile(net)
        await stuck.hello("tok-stuck", slots=4)
        held: list[str] = []
        net.nursery.start_soon(stuck.heartbeat_forever, lambda: held)
        await net.until_nodes(1)
        await net.submit("t", seconds=1.0)
        assign = await stuck.expect(AssignTask)
        await stuck.accept(assign.task_id)
        held.append(assign.task_id)  # "running" it, forever
        assigned_at = trio.current_time()
        net.start_worker("honest", token="tok-honest")
        await until_final(net, "t", timeout=FLOOR + 60)
        final = net.final("t")
        assert final.state is TaskState.COMPLETED and final.node_id == "node_honest"
        taken_back = trio.current_time() - assigned_at
        assert FLOOR <= taken_back < FLOOR + 10
        requeued = [u for u in net.of("t", "state") if u.state is TaskState.QUEUED][1:]
        assert len(requeued) == 1 and "execution timeout" in requeued[0].error
        cancel = await stuck.expect(CancelTask)
        assert cancel.task_id == "t"
        node = next(n for n in net.c.snapshot().nodes if n.node_id == "node_stuck")
        assert node.slots == 1  # the fault counted against it: its 2 usable slots halved


async def test_a_false_hello_cannot_swallow_the_queue(autojump_clock):
    tokens = Tokens("liar", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar.hello("tok-liar", slots=256, gpu="H100", price_per_hour=0.0)
        held: list[str] = []
        net.nursery.start_soon(liar.heartbeat_forever, lambda: held)

        async def accept_everything() -> None:
            while True:
                assign = await liar.expect(AssignTask, timeout=10_000)
                await liar.accept(assign.task_id)
                held.append(assign.task_id)

        net.nursery.start_soon(accept_everything)
        net.start_worker("honest", token="tok-honest")
        await net.until_nodes(2)
        ids = [f"t{i}" for i in range(20)]
        for task_id in ids:
            await net.submit(task_id, seconds=1.0)
        await trio.sleep(5)
        assert len(liar.of_type(AssignTask)) <= INITIAL_SLOTS  # a newcomer's share
        await until_final(net, *ids, timeout=2 * FLOOR)
        for task_id in ids:
            final = net.final(task_id)
            assert final.state is TaskState.COMPLETED and final.node_id == "node_honest"
