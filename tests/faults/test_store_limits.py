"""Finding 1 of issue 11, at the store's own interface: held task changes are
bounded in memory (beyond HELD_MAX the writer takes nothing new: back-pressure,
never loss) and written in order once the disk takes writes again; a database
file corrupted under the running store stops it (StoreFailed) instead of writing
on into a file that no longer holds the data."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

import api.sqlite_writer as sqlite_writer
from api.store import StoreFailed, TaskChange, TaskRow, open_store

from .disks import InjectedDisk


def row(task_id: str) -> TaskRow:
    return TaskRow(task_id, "anon:test", "llama2:7b", "standard", "hello", {"max_tokens": 8},
                   "queued", 1.0, 0.0, 0.0, 0.0)


async def test_held_changes_are_bounded_and_all_written_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "HELD_MAX", 4)
    disk = InjectedDisk(tmp_path)
    async with open_store(str(tmp_path / "held.db")) as store:
        ids = [f"t{i}" for i in range(10)]
        for task_id in ids:
            await store.insert_task(row(task_id))
        disk.wrap(store)
        disk.fill()
        for task_id in ids:  # running, then completed, for each task, in that order
            await store.post_task_change(TaskChange(task_id, "running", 2.0, node_id="n"))
            await store.post_task_change(TaskChange(task_id, "completed", 3.0,
                                                    result=f"r {task_id}"))
        await trio.sleep(0.3)  # the writer has tried, held what it could, and waits
        health = await store.health()
        assert health.degraded and health.held_changes == 4  # bounded, the rest queued
        for task_id in ids:
            task = await store.get_task(task_id)
            assert task is not None and task.status == "queued"
        disk.free()
        with trio.fail_after(10):
            await store.barrier()
            while (await store.health()).held_changes or (await store.health()).degraded:
                await trio.sleep(0.02)
        for task_id in ids:
            task = await store.get_task(task_id)
            assert task is not None and (task.status, task.result, task.node_id) == (
                "completed", f"r {task_id}", "n")


async def test_a_file_corrupted_under_the_store_stops_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "CHECK_SECONDS", 0.0)  # check the header every batch
    path = tmp_path / "corrupt.db"
    with pytest.raises(StoreFailed, match="corrupt"):
        async with open_store(str(path)) as store:
            await store.insert_task(row("before"))
            with open(path, "r+b") as file:
                file.write(b"garbage, not SQLite")
            with pytest.raises(StoreFailed, match="corrupt"):
                await store.insert_task(row("after"))
            await trio.sleep_forever()  # the store's failure ends the block


async def test_a_read_that_finds_the_file_corrupt_stops_the_store(tmp_path: Path) -> None:
    path = tmp_path / "read.db"
    with pytest.raises(StoreFailed, match="not a database"):
        async with open_store(str(path)) as store:
            await store.insert_task(row("t"))
            with sqlite3.connect(path) as other:  # the WAL into the file, then garbage
                other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with open(path, "r+b") as file:
                file.write(b"garbage, not SQLite")
            with pytest.raises(StoreFailed, match="not a database"):
                await store.get_task("t")
            await trio.sleep_forever()  # the store's failure ends the block


async def test_a_barrier_waits_for_held_changes(tmp_path: Path) -> None:
    disk = InjectedDisk(tmp_path)
    async with open_store(str(tmp_path / "barrier.db")) as store:
        await store.insert_task(row("t"))
        disk.wrap(store)
        disk.fill()
        await store.post_task_change(TaskChange("t", "completed", 3.0, result="held"))
        passed = trio.Event()

        async def barrier() -> None:
            await store.barrier()
            passed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(barrier)
            await trio.sleep(0.3)
            assert not passed.is_set()  # the completion is not written yet
            assert (await store.health()).held_changes >= 1
            disk.free()
            with trio.fail_after(10):
                await passed.wait()
        task = await store.get_task("t")
        assert task is not None and (task.status, task.result) == ("completed", "held")
