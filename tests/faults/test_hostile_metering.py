"""Metering the node cannot inflate (issue 13): a lying worker over the real protocol
reports more tokens, seconds or steps than it did; the client's cost and the usage
it is billed by (which is what the node is paid: the charge is the node's price x
the seconds) follow the coordinator's count, and a count the output cannot hold is a
protocol error for which the node is not paid."""
from __future__ import annotations

import pytest
import trio
from tokenizers import Tokenizer

from engine.core import TaskSpec, TaskState
from engine.core.metering import METERED_BY_COORDINATOR, METERED_BY_NODE, SPEED_SLACK
from engine.protocol import AssignTask, Error, Gpu, Hello
from engine.worker.packs.defaults import DEMO_WEIGHTS
from engine.worker.runners.demo_pack import build_tokenizer
from tests.engine.runtime.harness import FAST, MODEL, open_net
from tests.faults.hostile import Hostile, Tokens, result_text

PRICE = 0.60  # the RTX 4090's catalog price, $/h
OUTPUT = "the cat sat on the mat and looked at the garden"


def demo_count(text: str) -> int:
    return len(Tokenizer.from_str(build_tokenizer()).encode(text, add_special_tokens=False).ids)


HELD: dict[int, list[str]] = {}  # liar -> the tasks its heartbeats list


async def liar_hello(liar: Hostile, token: str, model: str = MODEL,
                     weights: str = DEMO_WEIGHTS, gpu: str = "RTX 4090") -> None:
    """Say hello announcing `weights`, then heartbeat (listing what it holds)."""
    await liar.send(Hello(token, Gpu(gpu, 80.0), (model,), 1, name="liar",
                          loaded=(model,), weights={model: weights}))
    held = HELD[id(liar)] = []
    liar.net.nursery.start_soon(liar.heartbeat_forever, lambda: held)
    await liar.net.until_nodes(1)


async def run_liar(net, liar: Hostile, spec: TaskSpec, busy: float, output: str = OUTPUT,
                   **usage) -> None:
    """Take the task, keep it `busy` virtual seconds, report `usage` for `output`."""
    held = HELD[id(liar)]
    await net.c.submit(spec, {"prompt": "tell me about the cat"}, {})
    await liar.expect(AssignTask)
    await liar.accept(spec.task_id)
    held.append(spec.task_id)
    await trio.sleep(busy)
    await liar.send(result_text(spec.task_id, output=f'"{output}"', **usage))
    held.remove(spec.task_id)


async def test_inflated_tokens_and_seconds_are_billed_as_the_coordinator_counts(
        autojump_clock):
    tokens = Tokens("liar")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar_hello(liar, "tok-liar")
        counted = demo_count(OUTPUT)
        # a first, honest run measures its speed: 64 tokens' work in 2 s
        await run_liar(net, liar, TaskSpec("t0", MODEL, output_tokens=64), busy=2.0,
                       tokens=counted, seconds=2.0)
        await net.until_final("t0")
        assert net.final("t0").usage.seconds == 2.0  # an honest report stands
        (measured,) = net.c.snapshot().nodes[0].measured
        # then a lie within every bound of the node's word alone: 30 tokens <= 64 x
        # 1.1 + 16, 6.9 s <= the 2 s it had the task + 5 s; but not what it did
        spec = TaskSpec("t", MODEL, output_tokens=64, prompt_tokens=6)
        await run_liar(net, liar, spec, busy=2.0, tokens=2 * counted - 2, seconds=6.9,
                       prompt_tokens=500)
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED and final.node_id == "node_liar"
        assert final.metered_by == METERED_BY_COORDINATOR
        assert final.usage.tokens == counted < 2 * counted - 2
        assert final.usage.prompt_tokens <= demo_count("tell me about the cat") + 512
        # at most what its measured speed allows beyond our 2 s: 2 s x SPEED_SLACK
        assert final.usage.seconds == pytest.approx(2.0 * SPEED_SLACK, rel=0.01)
        # it claimed an RTX 4090 and ran 32 tokens/s: re-classed, at a lower price
        assert measured.reclassed and measured.price_per_hour < PRICE
        assert final.cost == pytest.approx(
            measured.price_per_hour / 3600 * final.usage.seconds, rel=0.01)


async def test_a_token_count_the_output_cannot_hold_is_a_fault_and_not_paid(autojump_clock):
    tokens = Tokens("liar", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar_hello(liar, "tok-liar")
        spec = TaskSpec("t", MODEL, output_tokens=64)
        assert 2 * demo_count("the cat") + 16 < 64
        await run_liar(net, liar, spec, busy=1.0, output="the cat", tokens=64, seconds=1.0)
        error = await liar.expect(Error)
        assert "usage.tokens 64" in error.message and "tokenizer" in error.message
        assert net.final("t") is None  # it did not complete there: re-queued, unpaid
        net.start_worker("honest", token="tok-honest")
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED and final.node_id == "node_honest"
        # the honest harness worker announces no weights: its counts are bounded only
        assert final.metered_by == METERED_BY_NODE


@pytest.mark.parametrize("usage", [dict(tokens=4, seconds=-1.0),
                                   dict(tokens=4, seconds=1.0, prompt_tokens=-3)])
async def test_negative_usage_is_a_fault_and_not_paid(usage, autojump_clock):
    tokens = Tokens("liar", "honest")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar_hello(liar, "tok-liar")
        await run_liar(net, liar, TaskSpec("t", MODEL, output_tokens=64), busy=1.0, **usage)
        error = await liar.expect(Error)
        assert "usage" in error.message and "negative" in error.message
        assert net.final("t") is None
        net.start_worker("honest", token="tok-honest")
        await net.until_final("t")
        assert net.final("t").node_id == "node_honest"


async def test_weights_without_a_tokenizer_here_are_metered_by_the_node_bounded(
        autojump_clock):
    tokens = Tokens("own")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        node = Hostile(net)
        await liar_hello(node, "tok-own", weights="the operator's model at /models/mine")
        spec = TaskSpec("t", MODEL, output_tokens=64)
        await run_liar(net, node, spec, busy=1.0, tokens=40, seconds=0.8)
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED
        assert final.metered_by == METERED_BY_NODE and final.usage.tokens == 40
        assert final.usage.seconds == pytest.approx(0.8)


async def test_image_steps_come_from_the_task_not_the_node(autojump_clock):
    tokens = Tokens("liar")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar_hello(liar, "tok-liar", model="stable-diffusion", weights="sd")
        spec = TaskSpec("t", "stable-diffusion", steps=20)
        await run_liar(net, liar, spec, busy=1.0, steps=36, seconds=1.0)
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED
        assert final.usage.steps == 20 and final.metered_by == METERED_BY_COORDINATOR


async def test_a_false_gpu_claim_is_re_classed_and_its_price_follows(autojump_clock):
    tokens = Tokens("liar")
    async with open_net(FAST, verify_token=tokens.verify) as net:
        liar = Hostile(net)
        await liar_hello(liar, "tok-liar", gpu="H100")  # $4.76/h, 133.8 tokens/s claimed
        before = net.c.quote(TaskSpec("q", MODEL, output_tokens=64))
        assert before.gpu == "H100"
        # 64 tokens in 10 s: 6.4 tokens/s, as a CPU runs it
        await run_liar(net, liar, TaskSpec("t0", MODEL, output_tokens=64), busy=10.0,
                       tokens=demo_count(OUTPUT), seconds=10.0)
        await net.until_final("t0")
        first = net.final("t0")
        # before it was caught: the H100's price, held to the charge bound of its quote
        assert first.cost == pytest.approx(before.estimated_cost + 0.01, rel=0.01)
        assert first.cost < 4.76 / 3600 * 10.0
        (node,) = net.c.snapshot().nodes
        assert node.gpu == "H100" and node.reclassed
        (measured,) = node.measured
        assert measured.gpu == "measured" and measured.rate == pytest.approx(6.4, rel=0.01)
        after = net.c.quote(TaskSpec("q", MODEL, output_tokens=64))
        assert after.gpu == "measured"
        assert after.estimated_seconds == pytest.approx(10.0, rel=0.05)  # its real speed
        assert after.estimated_cost < before.estimated_cost / 5
        await run_liar(net, liar, TaskSpec("t1", MODEL, output_tokens=64), busy=10.0,
                       tokens=demo_count(OUTPUT), seconds=10.0)
        await net.until_final("t1")
        assert net.final("t1").cost == pytest.approx(
            measured.price_per_hour / 3600 * 10.0, rel=0.01)  # charged as what it is
        assert net.final("t1").cost < first.cost / 5
