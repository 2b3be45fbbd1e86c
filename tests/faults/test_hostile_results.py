"""Finding 2 (protocol half): a worker `result` that no store can hold - output with
a lone surrogate, or a usage count beyond 64 bits - is a protocol error, answered
with `error`; the run counts as failed by that node and the task completes on an
honest node. Nothing unstorable ever reaches the API (the updates)."""
from __future__ import annotations

import pytest

from engine.core import TaskState
from engine.protocol import AssignTask, Error
from tests.engine.runtime.harness import FAST, open_net
from tests.faults.hostile import Hostile, Tokens, assert_storable, result_text

UNSTORABLE = {
    "lone surrogate": (result_text("t", output='"abc\\ud800"'), "surrogate"),
    "surrogate key": (result_text("t", output='{"\\udfff":1}'), "surrogate"),
    "tokens 2**63": (result_text("t", tokens=2 ** 63), "64-bit"),
    "huge int in output": (result_text("t", output=str(10 ** 30)), "64 bits"),
}


@pytest.mark.parametrize("case", sorted(UNSTORABLE))
async def test_an_unstorable_result_is_refused_and_the_task_completes_elsewhere(
        case, autojump_clock):
    frame, says = UNSTORABLE[case]
    tokens = Tokens("evil", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        evil = Hostile(net)
        await evil.hello("tok-evil")
        net.nursery.start_soon(evil.heartbeat_forever, lambda: ())
        await net.until_nodes(1)
        await net.submit("t", seconds=1.0)
        assign = await evil.expect(AssignTask)
        assert assign.task_id == "t"
        await evil.accept("t")
        await evil.send(frame)
        error = await evil.expect(Error)
        assert says in error.message
        net.start_worker("honest", token="tok-honest")
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED
        assert final.node_id == "node_honest" and final.result == "done:t"
        requeued = [u for u in net.of("t", "state") if u.state is TaskState.QUEUED][1:]
        assert requeued and "node fault" in requeued[0].error
        assert net.states("t").count(TaskState.COMPLETED) == 1
        assert_storable(net.updates)
