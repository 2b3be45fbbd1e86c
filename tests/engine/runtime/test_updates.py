"""What the coordinator's updates carry, and what a live coordinator keeps: the
precise update types, the node's place and the reference cost in them, no
queued echo when the runner turns it off, and ended tasks forgotten by default."""
from __future__ import annotations

import attrs

from engine.core import TaskState, openai_cost
from engine.runtime import (
    CompletedUpdate, CoordinatorConfig, ProgressUpdate, QueuedUpdate, RunningUpdate,
)
from tests.engine.runtime.harness import FAST, MODEL, open_net


async def test_updates_say_where_a_task_ran_and_what_it_would_cost_elsewhere(autojump_clock):
    async with open_net() as net:
        net.start_worker("a", location="Lisbon, PT", region="eu")
        net.start_worker("b", region="us")
        await net.until_nodes(2)
        for t in ("t0", "t1"):
            await net.submit(t, seconds=1.0, steps=3)
        await net.until_final("t0", "t1")
    places = {u.node_location for u in net.updates if isinstance(u, RunningUpdate)}
    assert places == {"Lisbon, PT", "us"}  # the location, else the region
    for t in ("t0", "t1"):
        [queued, running, *progress, done] = net.of(t)
        assert type(queued) is QueuedUpdate and type(running) is RunningUpdate
        assert all(type(u) is ProgressUpdate and u.node_id == running.node_id
                   for u in progress)
        assert type(done) is CompletedUpdate and done.node_id == running.node_id
        assert running.node_gpu == done.node_gpu == "RTX 4090"
        assert done.node_location == running.node_location
        usage = done.usage
        assert (usage.tokens, usage.prompt_tokens) == (3, 1)
        assert done.reference_cost == openai_cost(MODEL, 1, 3, 0, 0.0) > 0
        assert done.state is TaskState.COMPLETED and done.kind == "state"


async def test_no_queued_echo_when_the_runner_has_the_outcome(autojump_clock):
    async with open_net(attrs.evolve(FAST, publish_accepted=False)) as net:
        net.start_worker("a")
        await net.until_nodes(1)
        outcome = await net.submit("t")
        assert outcome.accepted
        await net.until_final("t")
    assert [type(u) for u in net.of("t", "state")] == [RunningUpdate, CompletedUpdate]


async def test_a_live_coordinator_forgets_ended_tasks(autojump_clock):
    config = attrs.evolve(FAST, keep_finished=CoordinatorConfig().keep_finished)
    assert config.keep_finished is False  # the default
    async with open_net(config) as net:
        net.start_worker("a", slots=2)
        await net.until_nodes(1)
        ids = [f"t{i}" for i in range(5)]
        for t in ids:
            await net.submit(t, seconds=1.0)
        assert net.c.task("t4") is not None  # open: known
        await net.until_final(*ids)
        assert [net.c.task(t) for t in ids] == [None] * 5
        assert net.c.snapshot().counters["completed"] == 5
        assert net.c.scheduler.tasks == {}
