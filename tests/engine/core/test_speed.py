"""Measured speed (engine/core/speed.py): the scheduler times each run itself; with
SchedulerConfig.measured_speed the quote and placement use each node's measured rate
per model, and with check_hardware a node whose speed contradicts its claimed GPU is
re-classed and charged at the price of the class its speed matches."""
from __future__ import annotations

import math
import random

import pytest

from engine.core import (
    GPU_CLASSES, Assign, Complete, NodeJoined, NodeLost, NodeSpec, Scheduler,
    SchedulerConfig, TaskFinished, TaskSpec, TaskSubmitted, Usage, gpu_rate,
)
from engine.core.speed import (
    CLAIM_TOLERANCE, MEASURED_GPU, matched_gpu, measured_pace, round_rate,
)

LLAMA, SD = "llama2:7b", "stable-diffusion"


def sched(policy: str = "fastest", **config) -> Scheduler:
    config.setdefault("heartbeat_timeout", math.inf)
    return Scheduler(policy, rng=random.Random(0), config=SchedulerConfig(**config))


def join(s: Scheduler, node_id: str, gpu: str = "RTX 4090", model: str = LLAMA,
         price: float | None = None, now: float = 0.0) -> None:
    s.handle(NodeJoined(NodeSpec(node_id, gpu, 80.0, (model,), 1, price, loaded=(model,))), now)


def spec(task_id: str, model: str = LLAMA) -> TaskSpec:
    if model == SD:
        return TaskSpec(task_id, SD, steps=30)
    return TaskSpec(task_id, model, output_tokens=200)


def run(s: Scheduler, task_id: str, seconds: float, now: float, model: str = LLAMA) -> Complete:
    """Submit a task, let it take `seconds` on whichever node it is placed on."""
    (assign,) = [d for d in s.handle(TaskSubmitted(spec(task_id, model)), now)
                 if isinstance(d, Assign)]
    done = s.handle(TaskFinished(task_id, assign.node_id, Usage(seconds)), now + seconds)
    (complete,) = [d for d in done if isinstance(d, Complete)]
    return complete


def test_off_by_default_the_quote_keeps_the_catalog_figure():
    s = sched()
    join(s, "slow")
    before = s.quote(spec("q")).estimated_seconds
    for i in range(5):
        run(s, f"t{i}", 20.0, now=100.0 * i)  # ten times the catalog's 2 s
    assert s.quote(spec("q")).estimated_seconds == before
    assert before == pytest.approx(200 / gpu_rate("RTX 4090", LLAMA))
    assert s.snapshot().nodes[0].measured == ()


def test_the_quote_follows_the_node_s_measured_speed():
    s = sched(measured_speed=True)
    join(s, "slow")
    catalog = s.quote(spec("q")).estimated_seconds
    run(s, "t0", 10 * catalog, now=0.0)
    quoted = s.quote(spec("q")).estimated_seconds
    # the first run sets the pace; the class rate is rounded to a quarter-octave
    assert quoted == pytest.approx(10 * catalog, rel=0.1)
    for i in range(1, 10):
        run(s, f"t{i}", 10 * catalog, now=100.0 * i)
    assert s.quote(spec("q")).estimated_seconds == pytest.approx(10 * catalog, rel=0.1)
    (node,) = s.snapshot().nodes
    (measured,) = node.measured
    assert measured.model == LLAMA and measured.pace == pytest.approx(10.0)
    assert measured.rate == pytest.approx(gpu_rate("RTX 4090", LLAMA) / 10)
    assert not measured.reclassed and measured.gpu == "RTX 4090"  # no contradiction checked


def test_placement_prefers_the_node_that_measured_faster():
    s = sched(measured_speed=True)
    join(s, "a")
    join(s, "b")  # same claim and price: one class until measured
    first = run(s, "t0", 20.0, now=0.0)  # the newest of the class: b, slow
    assert first.node_id == "b"
    second = run(s, "t1", 1.3, now=100.0)
    assert second.node_id == "a"  # b is in a slower class now; a is still unmeasured
    picks = {run(s, f"t{i}", 1.3 if i % 2 else 20.0, now=100.0 * i).node_id
             for i in range(2, 6)}
    assert picks == {"a"}  # a keeps measuring fast, so it is always chosen
    assert s.quote(spec("q")).node_id == "a"


def test_a_false_gpu_claim_is_re_classed_and_its_price_follows():
    s = sched(measured_speed=True, check_hardware=True)
    join(s, "liar", gpu="H100", model=SD)  # $4.76/h claimed, runs like a smaller GPU
    h100 = gpu_rate("H100", SD)
    seconds = 30 / 15.0  # 15 it/s: below the H100's 32.6 / CLAIM_TOLERANCE
    assert 15.0 * CLAIM_TOLERANCE < h100
    first = run(s, "t0", seconds, now=0.0, model=SD)
    assert first.cost == pytest.approx(GPU_CLASSES["H100"].price_per_hour / 3600 * seconds)
    (node,) = s.snapshot().nodes
    (measured,) = node.measured
    assert node.reclassed and measured.reclassed and node.gpu == "H100"  # the claim is kept
    assert measured.gpu == matched_gpu(SD, 15.0) == "RTX 3090"
    assert measured.price_per_hour == GPU_CLASSES["RTX 3090"].price_per_hour
    quote = s.quote(spec("q", SD))
    assert quote.gpu == "RTX 3090"
    assert quote.estimated_seconds == pytest.approx(seconds, rel=0.1)
    second = run(s, "t1", seconds, now=100.0, model=SD)
    assert second.cost == pytest.approx(GPU_CLASSES["RTX 3090"].price_per_hour / 3600 * seconds)


def test_a_node_at_cpu_speed_is_a_measured_class_priced_by_its_speed():
    s = sched(check_hardware=True)
    join(s, "cpu-liar", gpu="H100")
    run(s, "t0", 200 / 8.0, now=0.0)  # 8 tokens/s, as a CPU runs a small model
    (measured,) = s.snapshot().nodes[0].measured
    slowest = min(GPU_CLASSES.values(), key=lambda g: g.rates[LLAMA])
    assert measured.gpu == MEASURED_GPU and measured.rate == pytest.approx(8.0)
    expected_price = slowest.price_per_hour * round_rate(8.0) / slowest.rates[LLAMA]
    assert measured.price_per_hour == pytest.approx(expected_price)
    # a unit of its work costs no more than on the slowest listed GPU
    assert measured.price_per_hour / round_rate(8.0) <= (
        slowest.price_per_hour / slowest.rates[LLAMA] * 1.0001)


def test_a_node_that_says_it_is_a_cpu_is_measured_not_caught_lying():
    s = sched(check_hardware=True)
    join(s, "local", gpu="cpu")
    run(s, "t0", 200 / 8.0, now=0.0)
    (measured,) = s.snapshot().nodes[0].measured
    assert measured.gpu == MEASURED_GPU and not measured.reclassed
    assert measured.price_per_hour < GPU_CLASSES["RTX 3090"].price_per_hour


def test_an_honest_node_within_the_tolerance_keeps_its_class_and_price():
    s = sched(measured_speed=True, check_hardware=True)
    join(s, "honest", gpu="RTX 3090", model=SD)
    rate = gpu_rate("RTX 3090", SD) / 1.5  # slower than the catalog, within tolerance
    run(s, "t0", 30 / rate, now=0.0, model=SD)
    (node,) = s.snapshot().nodes
    assert not node.reclassed
    assert node.measured[0].gpu == "RTX 3090"
    assert node.measured[0].price_per_hour == GPU_CLASSES["RTX 3090"].price_per_hour


def test_a_node_back_within_the_grace_keeps_its_measured_speed():
    s = sched(measured_speed=True, rejoin_grace=60.0)
    join(s, "n")
    run(s, "t0", 20.0, now=0.0)
    pace = s.index.nodes["n"].paces[LLAMA]
    s.handle(NodeLost("n"), 30.0)
    join(s, "n", now=40.0)
    assert s.index.nodes["n"].paces == {LLAMA: pace}
    s.handle(NodeLost("n"), 50.0)
    join(s, "n", gpu="H100", now=60.0)  # another claim: what was measured does not apply
    assert s.index.nodes["n"].paces == {}


def test_the_measured_pace_is_a_moving_average_set_by_the_first_run():
    assert measured_pace(None, 100.0, 10.0, 30.0) == pytest.approx(3.0)
    assert measured_pace(3.0, 100.0, 10.0, 10.0) == pytest.approx(0.8 * 3.0 + 0.2 * 1.0)
    assert measured_pace(None, 100.0, 10.0, -5.0) > 0  # never zero or negative
    assert measured_pace(None, 100.0, 10.0, 1e12) == 4096.0  # clamped
    assert measured_pace(2.0, 0.0, 10.0, 5.0) == 2.0  # no work: nothing learnt


def test_a_run_the_load_time_swallowed_teaches_nothing():
    s = sched(measured_speed=True)
    s.handle(NodeJoined(NodeSpec("cold", "RTX 4090", 80.0, (LLAMA,), 1)), 0.0)  # not loaded
    run(s, "t0", 1.5, now=0.0)  # less than the catalog's 2 s model load: no service left
    assert s.index.nodes["cold"].paces == {}
    run(s, "t1", 2.0, now=100.0)  # warm now: measured
    assert s.index.nodes["cold"].paces[LLAMA] == pytest.approx(
        2.0 / (200 / gpu_rate("RTX 4090", LLAMA)))
