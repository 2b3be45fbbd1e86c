"""Nothing accepted is lost: restarts on the same database, workers that vanish."""
from __future__ import annotations

from pathlib import Path

import trio

from .conftest import Clock, fake_worker, running_app, wait_for_status


async def test_a_restart_finds_every_accepted_task_and_runs_it(tmp_path: Path) -> None:
    db, clock = tmp_path / "restart.db", Clock()
    async with running_app(db, clock=clock) as api:
        async with fake_worker(api, name="one") as worker:
            ids = [(await api.submit({"prompt": f"task {i}"}))["task_id"] for i in range(4)]
            running = (await worker.next_assign())["task_id"]
            await wait_for_status(api, running, "running")
            finished = ids[-1]
            await api.client.delete(f"/api/tasks/{finished}")
            # the app stops with the worker still holding `running`
    async with running_app(db, clock=clock) as api:
        rows = {task_id: await api.services.store.get_task(task_id) for task_id in ids}
        assert all(row is not None for row in rows.values())
        assert rows[finished].status == "cancelled"
        open_ids = [task_id for task_id in ids if task_id != finished]
        assert {rows[t].status for t in open_ids} == {"queued"}  # running went back
        with trio.fail_after(5):  # the dispatcher hands them back to the coordinator
            while not all(api.services.coordinator.task(t) is not None for t in open_ids):
                await trio.sleep(0.01)
        assert api.services.coordinator.task(finished) is None
        async with fake_worker(api, name="two") as worker:
            for _ in open_ids:
                assign = await worker.next_assign()
                await worker.finish(assign["task_id"], f"done {assign['task_id']}")
            for task_id in open_ids:
                task = await wait_for_status(api, task_id, "completed")
                assert task["result"] == f"done {task_id}"
        stats = await api.services.store.stats()
        assert (stats.total_tasks, stats.completed_tasks, stats.cancelled_tasks) == (4, 3, 1)
        # in-flight counts were rebuilt from the store and have drained again
        assert api.services.limiter.in_flight == {}


async def test_a_vanished_worker_gives_its_task_back(tmp_path: Path) -> None:
    async with running_app(tmp_path / "lost.db") as api:
        async with fake_worker(api, name="flaky") as worker:
            task_id = (await api.submit())["task_id"]
            await worker.next_assign()
            await wait_for_status(api, task_id, "running")
        # the websocket closed: the node is lost and the task waits again
        task = await wait_for_status(api, task_id, "queued")
        assert task["node"] is None
        with trio.fail_after(5):
            while api.services.coordinator.snapshot().nodes:
                await trio.sleep(0.01)
        async with fake_worker(api, name="steady") as worker:
            assign = await worker.next_assign()
            assert assign["task_id"] == task_id
            await worker.finish(task_id, "finished elsewhere")
            task = await wait_for_status(api, task_id, "completed")
        assert task["node"]["id"] == "node_steady"
