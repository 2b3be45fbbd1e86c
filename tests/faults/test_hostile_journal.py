"""The defences are part of the pure core: a live run with hostile workers (a refused
report, an execution timeout, earned slots, a reconnect) journals to a file whose
session `python -m sim --replay FILE --check` re-decides step for step."""
from __future__ import annotations

import attrs
import trio

from engine.core import TaskState
from engine.protocol import AssignTask
from sim.replay import check_session, load_sessions
from tests.engine.runtime.harness import FAST, open_net
from tests.faults.hostile import Hostile, Tokens, result_text, until_final


async def test_a_hostile_run_replays_to_the_same_decisions(autojump_clock, tmp_path):
    path = tmp_path / "journal.jsonl"
    tokens = Tokens("liar", "stuck", "honest")
    async with open_net(attrs.evolve(FAST, journal_path=str(path)),
                        verify_token=tokens.verify) as net:
        liar, stuck = Hostile(net), Hostile(net)
        await liar.hello("tok-liar", slots=4)
        await stuck.hello("tok-stuck", slots=64, gpu="H100", price_per_hour=0.0)
        held: list[str] = []
        net.nursery.start_soon(liar.heartbeat_forever, lambda: ())
        net.nursery.start_soon(stuck.heartbeat_forever, lambda: held)

        async def lie() -> None:
            while True:
                assign = await liar.expect(AssignTask, timeout=10_000)
                await liar.accept(assign.task_id)
                await liar.send(result_text(assign.task_id, tokens=10 ** 9))

        async def hold() -> None:
            while True:
                assign = await stuck.expect(AssignTask, timeout=10_000)
                await stuck.accept(assign.task_id)
                held.append(assign.task_id)

        net.nursery.start_soon(lie)
        net.nursery.start_soon(hold)
        await net.until_nodes(2)
        ids = [f"t{i}" for i in range(12)]
        for task_id in ids:
            await net.submit(task_id, seconds=1.0)
        await trio.sleep(2)
        net.start_worker("honest", token="tok-honest", slots=2)
        await until_final(net, *ids, timeout=1200)
        assert all(net.final(t).state is TaskState.COMPLETED for t in ids)
        assert all(net.final(t).node_id == "node_honest" for t in ids)
    ((header, steps),) = load_sessions(path)
    assert header.config.execution_timeout_factor is not None
    kinds = {type(step.event).__name__ for step in steps}
    assert {"TaskFaulted", "TaskFinished", "Tick"} <= kinds
    assert any("execution timeout" in getattr(d, "reason", "")
               for step in steps for d in step.decisions)
    assert check_session(header, steps) is None
