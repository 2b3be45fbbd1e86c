"""The store: durability, forward-only task changes, hashed secrets, group commit."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from api.store import DuplicateTaskId, Signup, StoreError, TaskChange, TaskRow, open_store


def row(task_id: str, owner: str = "anon:1", created: float = 100.0) -> TaskRow:
    return TaskRow(task_id, owner, "llama2:7b", "standard", "hi", {"max_tokens": 8}, "queued",
                   created, 0.001, 3.0, 0.06)


async def test_tasks_survive_reopening_and_move_only_forward(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    async with open_store(db) as store:
        await store.insert_task(row("t1"))
        with pytest.raises(DuplicateTaskId):
            await store.insert_task(row("t1"))
        assert await store.change_task(TaskChange("t1", "running", 101.0, node_id="node_a"))
        assert await store.change_task(TaskChange("t1", "completed", 103.0, result="ok",
                                                  cost=0.002, tokens_used=9,
                                                  processing_time=1.5, openai_cost=0.01))
        assert not await store.change_task(TaskChange("t1", "failed", 104.0, error="late"))
        assert not await store.change_task(TaskChange("nope", "running", 104.0))
    async with open_store(db) as store:
        stored = await store.get_task("t1")
        assert stored is not None
        assert (stored.status, stored.result, stored.started_at, stored.completed_at) == (
            "completed", "ok", 101.0, 103.0)
        assert stored.params == {"max_tokens": 8} and stored.error is None
        stats = await store.stats()  # recomputed from the rows at open
        assert (stats.total_tasks, stats.completed_tasks, stats.failed_tasks) == (1, 1, 0)
        assert stats.cost == 0.002 and stats.openai_cost == 0.01 and stats.turnaround_seconds == 3.0


async def test_reopen_puts_running_tasks_back_in_the_queue(tmp_path: Path) -> None:
    async with open_store(str(tmp_path / "r.db")) as store:
        for task_id in ("a", "b", "c"):
            await store.insert_task(row(task_id))
        await store.change_task(TaskChange("b", "running", 1.0, node_id="node_x"))
        await store.change_task(TaskChange("c", "cancelled", 1.0))
        reopened = await store.reopen_tasks()
    assert [(r.id, r.status, r.node_id) for r in reopened] == [("a", "queued", None),
                                                               ("b", "queued", None)]


async def test_secrets_are_never_stored_in_clear(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    async with open_store(str(db)) as store:
        key, record = await store.create_key("beta", "me", None, None, 1.0)
        token = await store.create_node_token("de", 1.0)
        assert await store.find_key(key) == record and await store.find_key(key + "x") is None
        assert await store.find_node_token(token) == "de"
        replaced = await store.create_node_token("de", 2.0)
        assert await store.find_node_token(token) is None
        assert await store.find_node_token(replaced) == "de"
        assert await store.revoke_key(record.id, 3.0) and await store.find_key(key) is None
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (key, token, replaced):
        assert secret.encode() not in data


async def test_concurrent_writes_commit_together_and_fail_alone(tmp_path: Path) -> None:
    results: dict[str, bool] = {}
    async with open_store(str(tmp_path / "g.db")) as store:

        async def signup(n: int) -> None:
            email = f"user{n % 50}@example.com"  # every email twice
            _, created = await store.add_signup(Signup(f"beta_{n}", email, "developer", "web", n))
            results[f"beta_{n}"] = created

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(signup, n)
            for n in range(200):
                nursery.start_soon(store.insert_task, row(f"task_{n}"))
        assert sum(results.values()) == 50 and (await store.stats()).beta_signups == 50
        assert (await store.stats()).total_tasks == 200


async def test_queued_changes_are_written_before_close(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    async with open_store(db) as store:
        await store.insert_task(row("t"))
        await store.post_task_change(TaskChange("t", "running", 1.0))
        await store.post_task_change(TaskChange("t", "completed", 2.0, result="r"))
    async with open_store(db) as store:
        assert (await store.get_task("t")).status == "completed"


async def test_availability_counts_past_runs_to_their_last_sign_of_life(tmp_path: Path) -> None:
    async with open_store(str(tmp_path / "u.db")) as store:
        first = await store.start_run(0.0)
        await store.mark_alive(first, 60.0)
        second = await store.start_run(100.0)
        assert await store.availability(200.0, second) == pytest.approx(160 / 200)


async def test_only_sqlite_files_are_accepted() -> None:
    for location in (":memory:", "postgresql://db/neurogrid"):
        with pytest.raises(StoreError):
            async with open_store(location):
                pass
