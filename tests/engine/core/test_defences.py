"""The scheduler's defences against faulty and hostile nodes, each a SchedulerConfig
option (off by default, so a default scheduler decides as a trusting one):
default deadlines, execution timeouts, earned slots, the fault cooldown, one loss
per node, the rejoin grace, the charge bound and TaskFaulted."""
from __future__ import annotations

import math
import random

import attrs
import pytest

from engine.core import (
    Assign, Complete, Expire, Fail, NodeJoined, NodeLost, NodeSpec, Requeue, Scheduler,
    SchedulerConfig, TaskFaulted, TaskFinished, TaskSpec, TaskSubmitted, Tick, Usage,
    Priority, VerifyMode, WakeAt,
)
from engine.core.metering import run_bound
from engine.core.pricing import charge_cap

LLAMA = "llama2:7b"


def sched(**config) -> Scheduler:
    config.setdefault("heartbeat_timeout", math.inf)
    return Scheduler(rng=random.Random(0), config=SchedulerConfig(**config))


def join(s: Scheduler, node_id: str, slots=1, now=0.0, gpu="RTX 4090", price=None):
    return s.handle(NodeJoined(NodeSpec(node_id, gpu, 80.0, (LLAMA,), slots, price)), now)


def submit(s: Scheduler, task_id: str, now=0.0, **kw):
    kw.setdefault("output_tokens", 100)
    return s.handle(TaskSubmitted(TaskSpec(task_id, LLAMA, **kw)), now)


def of(kind, decisions):
    return [d for d in decisions if isinstance(d, kind)]


def test_the_defaults_trust_every_node():
    config = SchedulerConfig()
    assert config.default_deadline is None and config.execution_timeout_factor is None
    assert config.initial_slots is None and config.rejoin_grace is None
    assert config.charge_cap_factor is None and config.fault_cooldown is None
    s = sched()
    join(s, "n", slots=8)
    placed = [of(Assign, submit(s, f"t{i}")) for i in range(8)]
    assert all(placed) and math.isinf(placed[0][0].deadline)
    assert s.next_deadline() == math.inf  # no timer of any kind


def test_a_task_without_a_deadline_gets_the_default_one():
    s = sched(default_deadline=1200.0)
    submit(s, "t", now=5.0)
    assert s.task("t").spec.deadline == 1205.0
    submit(s, "own", now=5.0, deadline=50.0)
    assert s.task("own").spec.deadline == 50.0  # an explicit deadline is kept
    assert of(Expire, s.handle(Tick(), 50.0)) == [Expire("own", None)]
    assert of(Expire, s.handle(Tick(), 1205.0)) == [Expire("t", None)]


def test_the_default_deadline_keeps_every_other_field_of_the_spec():
    # Every field set to something other than its default, so a field the default
    # deadline's copy dropped would show as its default.
    values = {"task_id": "t", "model": LLAMA, "priority": Priority.HIGH, "prompt_tokens": 7,
              "output_tokens": 9, "steps": 3, "audio_seconds": 1.5, "max_attempts": 5,
              "owner": "key-1", "work": 42.0, "verify": VerifyMode.ALWAYS}
    names = {f.name for f in attrs.fields(TaskSpec)}
    assert names == set(values) | {"deadline"}, "a new TaskSpec field: set it here too"
    spec = TaskSpec(**values)
    default = TaskSpec("d", LLAMA)
    for name, value in values.items():
        assert getattr(spec, name) == value
        if name not in ("task_id", "model"):
            assert value != getattr(default, name), name
    s = sched(default_deadline=600.0)
    assert of(WakeAt, s.handle(TaskSubmitted(spec), 10.0)) == [WakeAt(610.0)]  # queued
    assert s.task("t").spec == attrs.evolve(spec, deadline=610.0)


def test_a_run_past_its_bound_is_taken_back_and_counted_against_the_node():
    s = sched(execution_timeout_factor=10.0, execution_timeout_floor=60.0, initial_slots=2,
              fault_cooldown=30.0)
    join(s, "stuck", slots=4)
    (assign,) = of(Assign, submit(s, "t", now=1.0))
    record = s.task("t")
    bound = run_bound(record.expected_seconds, 1.0, 10.0, 60.0)
    assert bound == 60.0 and s.next_deadline() == 1.0 + bound
    assert not of(Requeue, s.handle(Tick(), 1.0 + bound - 0.001))
    decisions = s.handle(Tick(), 1.0 + bound)
    (requeue,) = of(Requeue, decisions)
    assert requeue.node_id == "stuck" and "execution timeout" in requeue.reason
    assert not of(Assign, decisions)  # the node that timed out is benched ...
    stuck = s.index.nodes["stuck"]
    assert stuck.benched and stuck.usable == 1  # ... and its 2 usable slots halved
    assert s.task("t").node_losses == 1
    (again,) = of(Assign, join(s, "other", now=70.0))  # so the task goes elsewhere
    assert again.node_id == "other" and again.attempt == 1  # not the task's attempt
    assert not of(Assign, submit(s, "u", now=80.0))  # still benched: nothing new
    (later,) = of(Assign, s.handle(Tick(), 1.0 + bound + 30.0))  # cooldown over
    assert later.task_id == "u" and later.node_id == "stuck"


def test_slots_are_earned_by_completions_and_halved_by_faults():
    s = sched(initial_slots=2, completions_per_slot=2)
    join(s, "n", slots=8)
    assigned = [a for i in range(8) for a in of(Assign, submit(s, f"t{i}"))]
    assert len(assigned) == 2  # a newcomer's share, not its claim
    assert s.snapshot().nodes[0].slots == 2
    for i, task_id in enumerate(["t0", "t1"]):
        s.handle(TaskFinished(task_id, "n", Usage(1.0, tokens=100)), 10.0 + i)
    assert s.index.nodes["n"].usable == 3  # two completions, one more slot
    running = sorted(s.index.nodes["n"].running)
    s.handle(TaskFaulted(running[0], "n", "lied"), 20.0)
    assert s.index.nodes["n"].usable == 1


def test_a_node_is_charged_once_per_task_however_often_it_reconnects():
    def churn(s: Scheduler) -> list:
        join(s, "honest-but-busy", slots=1)
        submit(s, "busy")  # keeps the other node occupied
        decisions = []
        for i in range(8):
            join(s, "flaky", now=1.0 + i)
            if i == 0:
                submit(s, "t", now=1.0)
            decisions += s.handle(NodeLost("flaky", "gone"), 1.5 + i)
        return decisions

    trusting = churn(sched())
    assert [d.task_id for d in of(Fail, trusting)] == ["t"]  # poison after 5 losses
    defended = churn(sched(rejoin_grace=60.0))
    assert not of(Fail, defended)
    assert defended and len(of(Requeue, defended)) == 8
    # a rejoin while still known (a new connection replacing the old) is no loss
    s = sched(rejoin_grace=60.0)
    join(s, "n")
    submit(s, "t")
    join(s, "n", now=1.0)
    assert s.task("t").node_losses == 0


def test_a_node_back_within_the_grace_keeps_its_standing():
    s = sched(initial_slots=2, rejoin_grace=60.0)
    join(s, "n", slots=8)
    s.index.nodes["n"].usable = 1  # as a fault would leave it
    s.handle(NodeLost("n"), 5.0)
    join(s, "n", slots=8, now=30.0)
    assert s.index.nodes["n"].usable == 1  # reconnecting does not wipe a penalty
    s.handle(NodeLost("n"), 40.0)
    join(s, "n", slots=8, now=200.0)
    assert s.index.nodes["n"].usable == 2  # long gone: a newcomer again


def test_a_charge_never_exceeds_its_bound():
    s = sched(charge_cap_factor=2.0, charge_cap_allowance=0.01)
    join(s, "n", price=100.0)
    submit(s, "t", output_tokens=8)
    quoted = s.task("t").quoted_cost
    (complete,) = of(Complete, s.handle(TaskFinished("t", "n", Usage(100.0, tokens=8)), 100.0))
    assert complete.clamped and complete.cost == pytest.approx(charge_cap(quoted, 2.0, 0.01))
    assert complete.cost == pytest.approx(max(2 * quoted, quoted + 0.01))
    submit(s, "fair", output_tokens=8, now=200.0)
    fair = s.task("fair").quoted_cost
    (complete,) = of(Complete, s.handle(TaskFinished("fair", "n", Usage(0.2, tokens=8)), 201.0))
    assert not complete.clamped and complete.cost == pytest.approx(100.0 / 3600 * 0.2)
    assert complete.cost <= max(2 * fair, fair + 0.01)


def test_a_fault_requeues_without_an_attempt_and_fails_a_poison_task():
    s = sched(max_node_losses=2, rejoin_grace=60.0)
    join(s, "a")
    submit(s, "t", max_attempts=1)
    s.handle(TaskFaulted("t", "a", "impossible usage"), 1.0)
    record = s.task("t")
    assert record.attempts == 1 and record.node_losses == 1  # re-placed on a, first run
    assert not of(Fail, s.handle(TaskFaulted("t", "a", "again"), 2.0))  # same node: once
    join(s, "b", now=3.0)
    s.handle(NodeLost("a"), 3.0)
    assert s.task("t").node_id == "b"
    (fail,) = of(Fail, s.handle(TaskFaulted("t", "b", "also lying"), 4.0))
    assert "lost 2 times" in fail.error
