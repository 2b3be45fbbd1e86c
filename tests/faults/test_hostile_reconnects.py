"""Finding 5: one worker token cannot fail other people's tasks. A node that
reconnects over and over (50 times) costs the tasks it grabbed at most one loss,
so none of them fails as a poison task while an honest worker is online; hellos
are rate-limited per token (error retry=true with retry_after); a revoked token's
live sessions close within seconds - at once through Coordinator.revoke, and by
periodic re-verification when another process (the admin CLI) revoked it."""
from __future__ import annotations

import pytest
import trio

from engine.core import TaskState
from engine.protocol import AssignTask, Error, Welcome
from engine.worker import WorkerRefused
from tests.engine.runtime.harness import FAST, open_net
from tests.faults.hostile import Hostile, Tokens, until_final

REVERIFY = 10.0  # CoordinatorConfig.reverify_interval, live


@pytest.mark.parametrize("patient", [False, True], ids=["flood", "patient"])
async def test_fifty_reconnects_fail_nobody_elses_task(patient, autojump_clock):
    tokens = Tokens("flaky", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        net.start_worker("honest", token="tok-honest")
        await net.until_nodes(1)
        ids = [f"t{i}" for i in range(100)]
        for task_id in ids:
            await net.submit(task_id, seconds=0.5)
        refusals: list[Error] = []
        for _ in range(50):
            flaky = Hostile(net)
            answer = await flaky.hello("tok-flaky", slots=8)
            if isinstance(answer, Error):
                refusals.append(answer)
                if patient and answer.retry_after:
                    await trio.sleep(answer.retry_after)
                continue
            assert isinstance(answer, Welcome)
            with trio.move_on_after(0.3):  # grab what it is given, then vanish
                while True:
                    await flaky.accept((await flaky.expect(AssignTask)).task_id)
            await flaky.close()
        await until_final(net, *ids, timeout=600)
        states = [net.final(t).state for t in ids]
        assert states.count(TaskState.FAILED) == 0
        assert states.count(TaskState.COMPLETED) == 100
        if not patient:  # a flood is turned away at the door
            assert len(refusals) >= 30
            assert all(r.retry and r.retry_after and r.retry_after > 0 for r in refusals)
            assert "too often" in refusals[0].message


async def test_revoke_closes_live_sessions_now(autojump_clock):
    tokens = Tokens("w", "other")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        revoked = net.start_worker("w", token="tok-w")
        net.start_worker("other", token="tok-other")
        await net.until_nodes(2)
        await net.submit("long", seconds=30.0, steps=30)
        await net.submit("long2", seconds=30.0, steps=30)
        await trio.sleep(1)
        tokens.revoke("w")  # the store forgets it ...
        assert net.c.revoke("w") == 1  # ... and the API tells the coordinator
        await net.until(lambda: {n.node_id for n in net.c.snapshot().nodes} == {"node_other"},
                        timeout=1.0)
        await revoked.done.wait()
        assert isinstance(revoked.error, WorkerRefused)  # reconnecting does not help
        await until_final(net, "long", "long2", timeout=300)
        for task_id in ("long", "long2"):
            final = net.final(task_id)
            assert final.state is TaskState.COMPLETED and final.node_id == "node_other"


async def test_a_revocation_elsewhere_closes_the_session_within_the_interval(autojump_clock):
    tokens = Tokens("w", "other")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        net.start_worker("w", token="tok-w")
        await net.until_nodes(1)
        await trio.sleep(REVERIFY / 2)
        tokens.revoke("w")  # another process (the admin CLI) changed the store
        revoked_at = trio.current_time()
        await net.until(lambda: not net.c.snapshot().nodes, timeout=REVERIFY + 1)
        assert trio.current_time() - revoked_at <= REVERIFY + 1
