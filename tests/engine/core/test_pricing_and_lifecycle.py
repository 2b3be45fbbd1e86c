"""Pricing figures against hand-computed values, the aging bound of the queue, the
token bucket, and the task and node lifecycle rules."""
from __future__ import annotations

import math
import random

import pytest

from engine.core import (
    Assign, Cancel, Cancelled, Complete, Drop, Expire, Fail, NodeDraining, NodeHeartbeat,
    NodeJoined, NodeLost, NodeSpec, Priority, Reject, Requeue, Scheduler, SchedulerConfig,
    TaskCancelled, TaskFailed, TaskFinished, TaskSpec, TaskState, TaskSubmitted, Tick,
    TokenBucket, Usage, WakeAt, make_pricing, openai_cost, resolve_model,
)
from engine.core.catalog import CatalogError, work_units

LLAMA = "llama2:7b"


def sched(**config) -> Scheduler:
    config.setdefault("heartbeat_timeout", math.inf)
    return Scheduler(rng=random.Random(0), config=SchedulerConfig(**config))


def join(s: Scheduler, node_id: str, gpu="RTX 4090", slots=1, price=None, now=0.0, **kw):
    return s.handle(NodeJoined(NodeSpec(node_id, gpu, 80.0, (LLAMA,), slots, price, **kw)), now)


def submit(s: Scheduler, task_id: str, now=0.0, priority=Priority.STANDARD, **kw):
    kw.setdefault("output_tokens", 100)
    return s.handle(TaskSubmitted(TaskSpec(task_id, LLAMA, priority, **kw)), now)


def of(kind, decisions):
    return [d for d in decisions if isinstance(d, kind)]


# ---- catalog and pricing ---------------------------------------------------------

def test_aliases_and_unknown_models():
    assert resolve_model("llama2").name == LLAMA
    assert resolve_model("whisper").task_type == "speech-to-text"
    with pytest.raises(CatalogError, match="unknown model 'gpt-5'"):
        resolve_model("gpt-5")


def test_openai_reference_costs():
    # gpt-3.5-turbo: 1000 in x $0.50/M + 500 out x $1.50/M = 0.0005 + 0.00075
    assert openai_cost(LLAMA, 1000, 500, 0, 0) == pytest.approx(0.00125)
    assert openai_cost("stable-diffusion", 0, 0, 50, 0) == pytest.approx(0.018)
    assert openai_cost("whisper", 0, 0, 0, 120.0) == pytest.approx(0.012)  # 2 min x $0.006


def test_quote_matches_hand_computed_figures():
    s = sched()
    join(s, "n1", "RTX 4090", price=0.60, location="Germany")
    s.handle(NodeHeartbeat("n1", loaded=(LLAMA,)), 0.0)
    spec = TaskSpec("q", LLAMA, prompt_tokens=400, output_tokens=290)
    quote = s.quote(spec)
    work = 290 + 400 / 40  # 300 decode-equivalent tokens
    seconds = work / 149.4  # 2.008 s on a warm 4090
    assert quote.estimated_seconds == pytest.approx(seconds)
    assert quote.estimated_cost == pytest.approx(0.60 / 3600 * seconds)  # $0.000335
    assert quote.openai_cost == pytest.approx(400 * 0.5e-6 + 290 * 1.5e-6)  # $0.000635
    assert quote.savings_pct == pytest.approx(round(100 * (1 - 0.000334672 / 0.000635), 1))
    assert (quote.node_id, quote.gpu, quote.location) == ("n1", "RTX 4090", "Germany")
    assert s.snapshot().counters["submitted"] == 0  # quoting changes nothing


def test_quote_without_nodes_assumes_the_reference_gpu_cold():
    quote = sched().quote(TaskSpec("q", LLAMA, output_tokens=149))
    assert quote.node_id is None and quote.gpu == "RTX 4090"
    assert quote.estimated_seconds == pytest.approx(2.0 + 149 / 149.4)


def test_actual_cost_uses_measured_seconds_price_and_priority():
    s = sched()
    join(s, "n1", price=3.6)  # $0.001 per second
    submit(s, "std")
    out = s.handle(TaskFinished("std", "n1", Usage(seconds=2.0, tokens=50)), 1.0)
    assert of(Complete, out)[0].cost == pytest.approx(0.002)
    submit(s, "crit", 1.0, Priority.CRITICAL)
    out = s.handle(TaskFinished("crit", "n1", Usage(seconds=2.0)), 2.0)
    assert of(Complete, out)[0].cost == pytest.approx(0.004)  # x2 for critical


def test_dynamic_pricing_surges_with_utilization():
    dynamic = make_pricing("dynamic")
    assert dynamic.multiplier(Priority.STANDARD, 0.5) == 1.0
    assert dynamic.multiplier(Priority.STANDARD, 0.85) == pytest.approx(1.5)
    assert dynamic.multiplier(Priority.HIGH, 1.0) == pytest.approx(3.0)


def test_work_units_per_model():
    assert work_units(LLAMA, 400, 100, 0, 0) == 110
    assert work_units("stable-diffusion", 0, 0, 30, 0) == 30
    assert work_units("whisper", 0, 0, 0, 12.5) == 12.5


# ---- queue: priority with aging ----------------------------------------------

def test_priority_jumps_the_queue_but_only_by_its_head_start():
    s = sched()
    join(s, "n1")
    submit(s, "running")  # occupies the only slot
    submit(s, "old-standard", 0.0)
    submit(s, "high-soon", 10.0, Priority.HIGH)  # key 10 - 30 = -20 < 0: goes first
    submit(s, "high-late", 40.0, Priority.HIGH)  # key 40 - 30 = 10 > 0: behind old-standard
    submit(s, "critical-late", 119.0, Priority.CRITICAL)  # key -1: ahead of old-standard
    order = []
    now = 120.0
    running = "running"
    for _ in range(4):
        out = s.handle(TaskFinished(running, "n1", Usage(seconds=1.0)), now)
        running = of(Assign, out)[0].task_id
        order.append(running)
    assert order == ["high-soon", "critical-late", "old-standard", "high-late"]


# ---- lifecycle -------------------------------------------------------------------

def test_lost_node_requeues_its_tasks_and_they_finish_elsewhere_once():
    s = sched()
    join(s, "a")
    submit(s, "t1")
    assert s.task("t1").node_id == "a"
    out = s.handle(NodeLost("a"), 1.0)
    assert of(Requeue, out) == [Requeue("t1", "a", "node lost: disconnected")]
    assert s.task("t1").state is TaskState.QUEUED
    out = join(s, "b", now=2.0)
    assert of(Assign, out)[0].node_id == "b"
    # A late result from the lost node is ignored; the real one completes it once.
    assert s.handle(TaskFinished("t1", "a", Usage(seconds=1.0)), 3.0) == []
    assert of(Complete, s.handle(TaskFinished("t1", "b", Usage(seconds=1.0)), 3.0))
    assert s.handle(TaskFinished("t1", "b", Usage(seconds=1.0)), 3.0) == []
    assert s.counters["completed"] == 1


def test_heartbeat_timeout_drops_the_node():
    s = sched(heartbeat_timeout=10.0)
    out = join(s, "a")
    assert out == [WakeAt(10.0)]
    submit(s, "t1")
    s.handle(NodeHeartbeat("a"), 8.0)
    assert s.next_deadline() == 18.0
    out = s.handle(Tick(), 18.0)
    assert out[0] == Drop("a", "no heartbeat for 10 s")
    assert of(Requeue, out)[0].task_id == "t1"
    assert s.snapshot().nodes == ()


def test_retryable_failures_retry_up_to_the_limit_then_fail():
    s = sched()
    join(s, "a")
    submit(s, "t1", max_attempts=2)
    out = s.handle(TaskFailed("t1", "a", "oom", retryable=True), 1.0)
    assert of(Requeue, out) and of(Assign, out)[0].attempt == 2
    out = s.handle(TaskFailed("t1", "a", "oom again", retryable=True), 2.0)
    assert of(Fail, out) == [Fail("t1", "oom again", "a")]
    assert s.task("t1").state is TaskState.FAILED


def test_non_retryable_failure_fails_at_once():
    s = sched()
    join(s, "a")
    submit(s, "t1")
    out = s.handle(TaskFailed("t1", "a", "bad input", retryable=False), 1.0)
    assert of(Fail, out) and s.task("t1").state is TaskState.FAILED


def test_deadlines_expire_queued_and_running_tasks():
    s = sched()
    join(s, "a")
    submit(s, "running", deadline=5.0)
    submit(s, "waiting", deadline=3.0)
    assert s.next_deadline() == 3.0
    out = s.handle(Tick(), 3.0)
    assert of(Expire, out) == [Expire("waiting", None)]
    out = s.handle(Tick(), 5.0)
    assert of(Expire, out) == [Expire("running", "a")]
    assert s.next_deadline() == math.inf


def test_cancel_in_every_state():
    s = sched()
    join(s, "a")
    submit(s, "run")
    submit(s, "wait")
    assert s.handle(TaskCancelled("wait"), 1.0) == [Cancelled("wait")]
    out = s.handle(TaskCancelled("run"), 1.0)
    assert out[:2] == [Cancel("run", "a"), Cancelled("run")]
    assert s.handle(TaskCancelled("run"), 1.0) == []  # already ended: nothing
    assert s.handle(TaskCancelled("never-existed"), 1.0) == []


def test_draining_node_finishes_but_takes_nothing_new():
    s = sched()
    join(s, "a", slots=2)
    submit(s, "t1")
    s.handle(NodeDraining("a"), 1.0)
    assert not of(Assign, submit(s, "t2", 1.0))
    assert of(Complete, s.handle(TaskFinished("t1", "a", Usage(seconds=1.0)), 2.0))
    assert s.task("t2").state is TaskState.QUEUED


def test_bad_submissions_are_rejected_and_change_nothing():
    s = sched(max_queued=1)
    submit(s, "t1")
    assert of(Reject, submit(s, "t1"))[0].reason == "duplicate task id 't1'"
    assert "queue full" in of(Reject, submit(s, "t2"))[0].reason
    out = s.handle(TaskSubmitted(TaskSpec("x", "gpt-5")), 0.0)
    assert of(Reject, out)[0].reason == "unknown model 'gpt-5'"
    assert "deadline" in of(Reject, submit(s, "late", 5.0, deadline=4.0))[0].reason
    assert s.counters["submitted"] == 1 and len(s.tasks) == 1


def test_poison_task_fails_after_killing_too_many_nodes():
    s = sched(max_node_losses=2)
    join(s, "a")
    submit(s, "poison")
    s.handle(NodeLost("a"), 1.0)
    join(s, "b", now=1.0)
    out = s.handle(NodeLost("b"), 2.0)
    assert of(Fail, out)[0].error == "its node was lost 2 times"


# ---- rate limiter ---------------------------------------------------------------

def test_token_bucket_limits_and_refills():
    bucket = TokenBucket.per_hour(100, now=0.0)
    verdicts = [bucket.try_take(0.0) for _ in range(101)]
    assert all(v.allowed for v in verdicts[:100]) and not verdicts[100].allowed
    assert verdicts[99].remaining == 0
    assert verdicts[100].retry_after == pytest.approx(36.0)  # one token per 36 s
    assert not bucket.try_take(35.0).allowed
    after = bucket.try_take(36.0)
    assert after.allowed and after.remaining == 0
    assert bucket.peek(36.0 + 3600).remaining == 100  # never above capacity
