"""Property tests: random event sequences through the Scheduler, with the
invariants of the core checked after every single event by an independent model
built only from the events and the decisions."""
from __future__ import annotations

import math
import random

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import (
    MODELS, Assign, Cancel, Cancelled, Complete, DEFAULT_HEAD_START, Drop, Expire, Fail,
    NodeDraining, NodeHeartbeat, NodeJoined, NodeLost, NodeSpec, Priority, Reject, Requeue,
    Scheduler, SchedulerConfig, TaskCancelled, TaskFailed, TaskFinished, TaskSpec,
    TaskState, TaskSubmitted, Tick, Usage,
)
from tests.strategies import policy_names, scheduler_ops

ENDINGS = (Complete, Fail, Expire, Cancelled, Reject)


@attrs.define
class Observer:
    """What an outside observer knows from events and decisions alone."""

    nodes: dict[str, NodeSpec] = attrs.field(factory=dict)
    draining: set[str] = attrs.field(factory=set)
    specs: dict[str, TaskSpec] = attrs.field(factory=dict)
    keys: dict[str, tuple[float, int]] = attrs.field(factory=dict)
    queued: set[str] = attrs.field(factory=set)
    running: dict[str, str] = attrs.field(factory=dict)  # task -> node
    ended: dict[str, type] = attrs.field(factory=dict)

    def on_node_running(self, node_id: str) -> list[str]:
        return sorted(t for t, n in self.running.items() if n == node_id)


def make_event(op: tuple, obs: Observer, now: float, counter: list[int]):
    kind, p = op
    nodes = sorted(obs.nodes)
    running = sorted(obs.running)
    live = sorted(obs.queued | set(obs.running))
    if kind == "join":
        counter[0] += 1
        return NodeJoined(NodeSpec(f"n{counter[0]}", p["gpu"], p["vram"], tuple(p["models"]),
                                   p["slots"], p["price"], p["region"]))
    if kind == "submit":
        counter[0] += 1
        size = p["size"]
        return TaskSubmitted(TaskSpec(
            f"t{counter[0]}", p["model"], Priority(p["priority"]), prompt_tokens=size,
            output_tokens=size, steps=size % 60 + 1, audio_seconds=float(size % 90),
            deadline=math.inf if p["ttl"] is None else now + p["ttl"]))
    if kind in ("finish", "fail") and running:
        task_id = running[p["pick"] % len(running)]
        if kind == "finish":
            return TaskFinished(task_id, obs.running[task_id], Usage(seconds=1.5, tokens=10))
        return TaskFailed(task_id, obs.running[task_id], "boom", retryable=p["retryable"])
    if kind == "cancel" and live:
        return TaskCancelled(live[p["pick"] % len(live)])
    if kind in ("lose", "drain", "heartbeat") and nodes:
        node_id = nodes[p["pick"] % len(nodes)]
        return {"lose": NodeLost, "drain": NodeDraining, "heartbeat": NodeHeartbeat}[kind](node_id)
    return Tick()


def check_step(sched: Scheduler, obs: Observer, event, decisions, now: float) -> None:
    # Apply the event to the observer's view of the fleet.
    lost_running: list[str] = []
    if isinstance(event, NodeJoined):
        if event.node.node_id in obs.nodes:
            lost_running = obs.on_node_running(event.node.node_id)
        obs.nodes[event.node.node_id] = event.node
        obs.draining.discard(event.node.node_id)
    elif isinstance(event, NodeLost) and event.node_id in obs.nodes:
        lost_running = obs.on_node_running(event.node_id)
        del obs.nodes[event.node_id]
    elif isinstance(event, NodeDraining):
        obs.draining.add(event.node_id)
    elif isinstance(event, TaskSubmitted):
        obs.specs[event.task.task_id] = event.task

    if isinstance(event, TaskSubmitted):
        spec = event.task
        if not any(isinstance(d, Reject) and d.task_id == spec.task_id for d in decisions):
            obs.keys[spec.task_id] = (now - DEFAULT_HEAD_START[spec.priority], len(obs.keys))
            obs.queued.add(spec.task_id)

    requeued_now = set()
    for d in decisions:
        if isinstance(d, Drop):
            lost_running += obs.on_node_running(d.node_id)
            obs.nodes.pop(d.node_id, None)
        elif isinstance(d, Assign):
            spec = obs.specs[d.task_id]
            node = obs.nodes.get(d.node_id)
            # Only eligible nodes: online, serving the model, with the VRAM, not draining.
            assert node is not None, d
            assert d.model == spec.model and spec.model in node.models, d
            assert node.vram_gb >= MODELS[spec.model].vram_gb, d
            assert d.node_id not in obs.draining, d
            # Queue order: the smallest (virtual arrival, seq) of its model goes first.
            assert d.task_id in obs.queued, d
            mine = obs.keys[d.task_id]
            for other in obs.queued:
                if other != d.task_id and obs.specs[other].model == spec.model:
                    assert obs.keys[other] >= mine, (d, other)
            obs.queued.discard(d.task_id)
            obs.running[d.task_id] = d.node_id
            # Never more tasks than slots.
            busy = sum(1 for n in obs.running.values() if n == d.node_id)
            assert busy <= node.slots, d
        elif isinstance(d, Requeue):
            assert d.task_id in obs.running, d
            del obs.running[d.task_id]
            obs.queued.add(d.task_id)
            requeued_now.add(d.task_id)
        elif isinstance(d, ENDINGS):
            assert d.task_id not in obs.ended, ("ended twice", d)
            obs.ended[d.task_id] = type(d)
            obs.queued.discard(d.task_id)
            obs.running.pop(d.task_id, None)
        elif isinstance(d, Cancel):
            assert obs.running.get(d.task_id) == d.node_id, d
    # A lost node's tasks come back to the queue (or fail as poison after
    # max_node_losses), in the very decisions that answered the loss.
    for task_id in lost_running:
        assert task_id in requeued_now or obs.ended.get(task_id) is Fail, task_id

    # The scheduler's own state agrees with the observer, task by task.
    for task_id in obs.specs:
        record = sched.task(task_id)
        if task_id in obs.ended:
            assert record is None or record.state.is_final
        elif task_id in obs.running:
            assert record.state is TaskState.RUNNING and record.node_id == obs.running[task_id]
        else:
            assert record.state is TaskState.QUEUED, (task_id, record.state)
    for node in sched.index.nodes.values():
        assert len(node.running) <= node.slots
        assert node.running == {t for t, n in obs.running.items() if n == node.node_id}


def run_ops(ops, policy: str, seed: int, check: bool):
    sched = Scheduler(policy=policy, rng=random.Random(seed),
                      config=SchedulerConfig(heartbeat_timeout=25.0, max_node_losses=3))
    obs, now, counter = Observer(), 0.0, [0]
    log = []
    for op in ops:
        if op[0] == "tick":
            now += op[1]["dt"]
        event = make_event(op, obs, now, counter)
        decisions = sched.handle(event, now)
        log.append((now, event, decisions))
        if check:
            check_step(sched, obs, event, decisions, now)
    return sched, log


@settings(max_examples=150, deadline=None)
@given(st.lists(scheduler_ops, min_size=20, max_size=150), policy_names, st.integers(0, 2**32 - 1))
def test_invariants_hold_after_every_event(ops, policy, seed):
    run_ops(ops, policy, seed, check=True)


@settings(max_examples=50, deadline=None)
@given(st.lists(scheduler_ops, min_size=20, max_size=150), policy_names, st.integers(0, 2**32 - 1))
def test_same_events_and_seed_give_the_same_decisions(ops, policy, seed):
    _, first = run_ops(ops, policy, seed, check=False)
    replay = Scheduler(policy=policy, rng=random.Random(seed),
                       config=SchedulerConfig(heartbeat_timeout=25.0, max_node_losses=3))
    for now, event, decisions in first:
        assert replay.handle(event, now) == decisions


@settings(max_examples=50, deadline=None)
@given(st.lists(scheduler_ops, min_size=20, max_size=150), policy_names, st.integers(0, 2**32 - 1))
def test_every_task_ends_exactly_once_when_the_fleet_drains(ops, policy, seed):
    sched, log = run_ops(ops, policy, seed, check=True)
    now = log[-1][0] if log else 0.0
    # Bring up a node for every model, then finish everything that runs.
    sched.handle(NodeJoined(NodeSpec("final", "H100", 80.0, tuple(MODELS), slots=4)), now)
    for _ in range(10_000):
        running = [r for r in sched.tasks.values() if r.state is TaskState.RUNNING]
        if not running:
            break
        for r in running:
            sched.handle(TaskFinished(r.spec.task_id, r.node_id, Usage(seconds=1.0)), now)
            sched.handle(NodeHeartbeat("final"), now)
    states = [r.state for r in sched.tasks.values()]
    assert all(s.is_final for s in states)
    ends = sum(sched.counters[s] for s in ("completed", "failed", "expired", "cancelled"))
    assert ends == sched.counters["submitted"] == len(states)
