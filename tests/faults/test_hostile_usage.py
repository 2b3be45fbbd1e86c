"""Finding 4: usage and money take no impossible number. Usage beyond what the task
allows (more tokens than its max_tokens, more seconds than the node has had it)
is a protocol error and the task completes elsewhere at an honest price; a hello
asking an absurd price is refused; a charge never exceeds max(2 x quote, quote +
$0.01); every number the coordinator hands the API is finite."""
from __future__ import annotations

import math

import pytest
import trio

from engine.core import TaskSpec, TaskState
from engine.protocol import AssignTask, Error, Welcome
from tests.engine.runtime.harness import FAST, MODEL, open_net
from tests.faults.hostile import Hostile, Tokens, assert_storable, result_text

IMPOSSIBLE = {
    "a trillion tokens": (dict(tokens=10 ** 12, seconds=1e12), "tokens"),
    "1e308 seconds": (dict(tokens=8, seconds="1e308"), "seconds"),
    "an hour in a second": (dict(tokens=8, seconds=3600), "seconds"),
    "a huge step count": (dict(tokens=8, steps=10 ** 9), "steps"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
async def test_impossible_usage_is_refused_and_the_task_completes_elsewhere(
        case, autojump_clock):
    usage, says = IMPOSSIBLE[case]
    tokens = Tokens("liar", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar.hello("tok-liar")
        net.nursery.start_soon(liar.heartbeat_forever, lambda: ())
        await net.until_nodes(1)
        await net.submit("t", seconds=1.0, steps=8)  # an 8-token task
        await liar.expect(AssignTask)
        await liar.accept("t")
        await liar.send(result_text("t", **usage))
        error = await liar.expect(Error)
        assert f"usage.{says}" in error.message
        net.start_worker("honest", token="tok-honest")
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED and final.node_id == "node_honest"
        assert final.usage.tokens == 8 and 0 < final.cost < 0.01
        assert_storable(net.updates)
        snapshot = net.c.snapshot()
        assert all(math.isfinite(n.price_per_hour) for n in snapshot.nodes)


async def test_a_hello_with_an_absurd_price_is_refused(autojump_clock):
    async with open_net(FAST) as net:
        greedy = Hostile(net)
        refusal = await greedy.hello("tok", price_per_hour=1e300)
        assert isinstance(refusal, Error) and not refusal.retry
        assert "price_per_hour" in refusal.message and "1000" in refusal.message
        fair = Hostile(net)
        assert isinstance(await fair.hello("tok", price_per_hour=999.0), Welcome)


async def test_a_charge_never_exceeds_its_bound(autojump_clock):
    tokens = Tokens("slow")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        slow = Hostile(net)
        await slow.hello("tok-slow", price_per_hour=100.0)
        held: list[str] = []
        net.nursery.start_soon(slow.heartbeat_forever, lambda: held)
        await net.until_nodes(1)
        spec = TaskSpec("t", MODEL, output_tokens=8)
        quote = net.c.quote(spec).estimated_cost
        await net.c.submit(spec, {"prompt": "t"}, {})
        await slow.expect(AssignTask)
        await slow.accept("t")
        held.append("t")
        await trio.sleep(100)  # plausible (it had the task that long), but 100 s of a
        await slow.send(result_text("t", tokens=8, seconds=100))  # $100/h GPU: $2.78
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED
        assert final.cost == pytest.approx(max(2 * quote, quote + 0.01))
        assert final.cost < 100.0 / 3600 * 100
