"""Differential: a scenario run by the simulator, and the same outside world (task
arrivals, nodes joining, finishing, draining, failing) played to the live runtime
over worker connections in virtual time, give the same decisions in the same order."""
from __future__ import annotations

import math

import attrs
import pytest
import trio

from engine.core import (
    NodeDraining, NodeJoined, NodeLost, TaskFinished, TaskSubmitted, Tick, WakeAt,
)
from engine.protocol import Draining, Gpu, Hello, Result, encode, memory_connection_pair
from engine.runtime import CoordinatorConfig, NodeIdentity, open_coordinator
from sim import make_scheduler, parse_scenario, run_scenario
import trio.lowlevel

SCENARIO = {
    "name": "differential", "seed": 11, "duration": 300.0,
    "network": {"latency": {"eu-west": 0.03, "us-east": 0.09}},
    "nodes": [
        {"count": 3, "gpu": "RTX 3090", "region": "eu-west", "slots": 2,
         "mtbf": 120.0, "mttr": 30.0},
        {"count": 2, "gpu": "A100", "region": "us-east", "session_mean": 90.0,
         "away_mean": 30.0},
        {"count": 1, "gpu": "RTX 4090", "region": "us-east", "models": ["llama2:7b"]},
    ],
    "workload": [
        {"name": "chat", "model": "llama2:7b", "arrival": {"process": "poisson", "rate": 2.0},
         "output_tokens": 300},
        {"name": "urgent", "model": "llama2:7b", "priority": "high",
         "arrival": {"process": "poisson", "rate": 0.3}, "output_tokens": 100},
        {"name": "images", "model": "stable-diffusion",
         "arrival": {"process": "poisson", "rate": 0.3}, "steps": 30},
    ],
}


def comparable(decisions) -> list[tuple]:
    """Decisions without wake-ups and without free-text reasons (a live disconnect
    and a simulated failure word theirs differently)."""
    return [(type(d).__name__, *sorted((k, v) for k, v in attrs.asdict(d).items()
                                       if k not in ("reason", "error")))
            for d in decisions if not isinstance(d, WakeAt)]


async def play(scenario, policy: str, log) -> list:
    """Feed the simulated run's outside world to a live coordinator, in virtual time,
    checking each step's decisions against the simulator's; returns them all."""
    async def verify(token: str) -> NodeIdentity:
        return NodeIdentity(token)

    config = CoordinatorConfig(policy=policy, heartbeat_timeout=math.inf, record=True)
    scheduler = make_scheduler(scenario, policy, "static", scenario.seed)
    async with open_coordinator(config, verify_token=verify, scheduler=scheduler) as c:
        async with trio.open_nursery() as nursery:
            workers = {}
            for entry in log:
                event = entry.event
                if isinstance(event, Tick):
                    continue
                await trio.sleep_until(entry.time)
                seen = len(c.journal)
                if isinstance(event, TaskSubmitted):
                    await c.submit(event.task, {"prompt": "x"})
                elif isinstance(event, NodeJoined):
                    spec = event.node
                    worker, server = memory_connection_pair()
                    nursery.start_soon(c.serve_connection, server)
                    await worker.send(encode(Hello(
                        spec.node_id, Gpu(spec.gpu, spec.vram_gb), spec.models, spec.slots,
                        price_per_hour=spec.price_per_hour, region=spec.region,
                        loaded=spec.loaded)))
                    workers[spec.node_id] = worker
                elif isinstance(event, TaskFinished):
                    await workers[event.node_id].send(encode(
                        Result(event.task_id, "text", event.usage)))
                elif isinstance(event, NodeDraining):
                    await workers[event.node_id].send(encode(Draining()))
                elif isinstance(event, NodeLost):
                    await workers.pop(event.node_id).aclose("node failed")
                else:
                    raise AssertionError(f"the simulator fed {event!r}")
                for _ in range(1000):  # until the runtime has handled it
                    if len(c.journal) > seen:
                        break
                    await trio.lowlevel.checkpoint()
                else:
                    raise AssertionError(f"at {entry.time}: the runtime ignored {event!r}; "
                                         "its earlier decisions must have diverged")
                live = [d for _, _, decisions in c.journal[seen:] for d in decisions]
                assert comparable(live) == comparable(entry.decisions), (entry.time, event)
            nursery.cancel_scope.cancel()
        return [d for _, _, decisions in c.journal for d in decisions]


@pytest.mark.parametrize("policy", ["balanced", "round_robin", "random"])
async def test_simulator_and_runtime_take_the_same_decisions(policy, autojump_clock):
    scenario = parse_scenario(SCENARIO)
    run = run_scenario(scenario, policy, record=True)
    simulated = [d for entry in run.log for d in entry.decisions]
    kinds = {type(e.event).__name__ for e in run.log}
    assert {"TaskSubmitted", "TaskFinished", "NodeLost", "NodeDraining"} <= kinds
    assert any(type(d).__name__ == "Requeue" for d in simulated)
    live = await play(scenario, policy, run.log)
    assert comparable(live) == comparable(simulated)
