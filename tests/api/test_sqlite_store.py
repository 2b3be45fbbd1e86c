"""The SQLite store's own parts: its URL forms, the writer's single commit path
(a failed COMMIT fails its callers, never the writer), the totals row the
triggers keep, the migration that adds it, and reads that never block the loop."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import attrs
import pytest
import trio

from api.sqlite_schema import (
    READ_TOTALS, SCHEMA_VERSION, TABLES, TOTALS_FROM_TASKS, connect, prepare, row_values, task_insert,
    task_row,
)
from api.sqlite_store import open_sqlite
from api.sqlite_writer import Writer
from api.store_sql import TASK_COLUMNS, task_values
from api.store import Blob, Stats, StoreError, TaskChange, TaskRow, open_store, split_url


def row(task_id: str, created: float = 100.0) -> TaskRow:
    return TaskRow(task_id, "anon:1", "llama2:7b", "standard", "hi", {"max_tokens": 8}, "queued",
                   created, 0.001, 3.0, 0.06)


async def test_every_sqlite_location_form_opens_the_same_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "same.db"
    async with open_store(f"sqlite:///{db}") as store:
        await store.insert_task(row("t"))
    for location in (f"sqlite:{db}", "sqlite:same.db", "same.db", str(db),
                     f"SQLite:///{str(db).replace('same', 's%61me')}"):
        async with open_store(location) as store:
            assert await store.get_task("t") is not None, location
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["same.db"]


async def test_unknown_schemes_and_unusable_locations_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"'mysql' is not one of postgres:, postgresql:, sqlite:"):
        async with open_store("mysql://db/neurogrid"):
            pass
    with pytest.raises(StoreError, match="names no host"):
        async with open_store("sqlite://host/x.db"):
            pass
    for location in (":memory:", "sqlite::memory:", "sqlite:"):
        with pytest.raises(StoreError, match="give a file path"):
            async with open_store(location):
                pass
    with pytest.raises(StoreError, match="cannot open"):
        async with open_store(str(tmp_path / "no" / "such" / "dir.db")):
            pass
    assert split_url("./a:b.db") == ("sqlite", "./a:b.db")


async def test_a_commit_that_fails_fails_its_callers_and_the_writer_goes_on(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "w.db"))
    conn.executescript("CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES "
                       "parent (id) DEFERRABLE INITIALLY DEFERRED);")
    writer = Writer(conn)

    def insert(table: str, value: int, parent: int | None = None):  # type: ignore[no-untyped-def]
        def op(c: sqlite3.Connection) -> int:
            if table == "child":
                c.execute("INSERT INTO child (id, parent) VALUES (?, ?)", (value, parent))
            else:
                c.execute("INSERT INTO parent (id) VALUES (?)", (value,))
            return value
        return op

    def ended_by_sqlite(c: sqlite3.Connection) -> None:
        # what SQLite does itself after some failed COMMITs (disk full, I/O error):
        # the transaction is gone, so COMMIT fails and a ROLLBACK would too
        c.execute("ROLLBACK")

    outcomes: dict[str, object] = {}

    async def call(name: str, op) -> None:  # type: ignore[no-untyped-def]
        try:
            outcomes[name] = await writer.write(op)
        except Exception as exc:
            outcomes[name] = type(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.serve)
        await call("parent", insert("parent", 1))
        async with trio.open_nursery() as callers:  # one batch: a failure stays alone
            callers.start_soon(call, "orphan", insert("child", 10, 99))  # fails at COMMIT
            callers.start_soon(call, "child", insert("child", 11, 1))
            callers.start_soon(call, "parent 3", insert("parent", 3))
        assert outcomes == {"parent": 1, "orphan": sqlite3.IntegrityError, "child": 11,
                            "parent 3": 3}
        await call("ended", ended_by_sqlite)
        assert outcomes["ended"] is sqlite3.OperationalError
        await call("after", insert("parent", 2))  # the writer still serves
        assert outcomes["after"] == 2
        await writer.finish()
    assert conn.execute("SELECT COUNT(*) FROM parent").fetchone()[0] == 3
    assert [tuple(r) for r in conn.execute("SELECT id FROM child")] == [(11,)]
    conn.close()


def test_a_new_row_is_inserted_without_its_null_columns_and_reads_back_whole(
        tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "t.db"))
    prepare(conn)
    values = task_values(row("sparse"))
    sql, params = task_insert(values)
    # The columns named are exactly those the table refuses NULL for (the task's
    # lifecycle fields are None when it is created), and no parameter is None.
    required = {c["name"] for c in conn.execute("PRAGMA table_info(tasks)")
                if c["notnull"] and c["name"] != "seq"}
    named = sql[sql.index("(") + 1:sql.index(")")].split(", ")
    assert set(named) == required and None not in params and len(params) == len(named)
    conn.execute(sql, params)
    full = attrs.evolve(row("full"), started_at=1.0, completed_at=2.0, node_id="n",
                        node_location="eu", node_gpu="A100", result="r", error="e",
                        content_type="text/plain", model_weights="w", finish_reason="stop",
                        verification="{}", metered_by="coordinator")
    sql_full, params_full = task_insert(task_values(full))
    assert len(params_full) == len(task_values(full))
    conn.execute(sql_full, params_full)
    read = {r["id"]: task_row(r) for r in conn.execute("SELECT * FROM tasks")}
    assert attrs.evolve(read["sparse"], seq=0) == row("sparse")
    assert attrs.evolve(read["full"], seq=0) == full
    # A None where the table refuses NULL is still bound, and refused.
    broken = task_values(row("broken"))
    broken[TASK_COLUMNS.index("cost")] = None
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        conn.execute(*task_insert(broken))
    conn.close()


async def test_the_totals_row_always_equals_the_aggregate_over_tasks(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    statuses = ["completed", "failed", "expired", "cancelled", "rejected", "running", "queued"]
    async with open_store(db) as store:
        for n in range(70):
            await store.insert_task(row(f"t{n}", created=float(n)))
            status = statuses[n % len(statuses)]
            if status != "queued":
                await store.post_task_change(TaskChange(
                    f"t{n}", status, n + 0.5 * (n % 3), cost=n / 7, openai_cost=n / 3,
                    processing_time=n / 11))
        await store.barrier()
        await store.reopen_tasks()
    conn = connect(db)
    conn.execute("DELETE FROM tasks WHERE id IN ('t0', 't1', 't5')")  # an operator's cleanup
    totals = dict(conn.execute(READ_TOTALS).fetchone())
    assert totals == pytest.approx(dict(conn.execute(TOTALS_FROM_TASKS).fetchone()), rel=1e-12)
    assert totals["total_tasks"] == 67 and totals["completed_tasks"] == 9
    conn.close()


async def test_a_version_1_database_gets_its_totals_once_at_open(tmp_path: Path) -> None:
    db = str(tmp_path / "v1.db")
    conn = connect(db)
    conn.executescript(TABLES)  # version 1: the same tables, no totals
    conn.execute("INSERT INTO tasks (id, owner, model, priority, prompt, params, status, "
                 "created_at, estimated_cost, estimated_seconds, openai_cost, completed_at, "
                 "cost, processing_time) VALUES ('old', 'anon:1', 'llama2:7b', 'standard', "
                 "'hi', '{}', 'completed', 10.0, 0, 0, 0.5, 14.0, 0.125, 2.0)")
    conn.execute("INSERT INTO signups VALUES ('beta_1', 'a@example.com', 'developer', 'web', 1)")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    expected = Stats(total_tasks=1, completed_tasks=1, compute_seconds=2.0,
                     turnaround_seconds=4.0, cost=0.125, openai_cost=0.5, beta_signups=1)
    async with open_store(db) as store:
        assert await store.stats() == expected
        await store.insert_task(row("new"))
    async with open_store(db) as store:
        assert (await store.stats()).total_tasks == 2
    conn = connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        async with open_store(db):
            pass


async def test_a_version_2_database_gains_the_version_3_columns_and_files(tmp_path: Path) -> None:
    db = str(tmp_path / "v2.db")
    conn = connect(db)
    old_tables = TABLES.replace("    content_type TEXT,\n    model_weights TEXT\n", "")
    old_tables = old_tables.replace("processing_time REAL NOT NULL DEFAULT 0,\n",
                                    "processing_time REAL NOT NULL DEFAULT 0\n")
    conn.executescript(old_tables.split("CREATE TABLE IF NOT EXISTS task_blobs")[0])
    assert "model_weights" not in {r["name"] for r in conn.execute("PRAGMA table_info(tasks)")}
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    async with open_store(db) as store:
        await store.insert_task(row("t"))
        await store.post_task_change(
            TaskChange("t", "completed", 5.0, result="/api/tasks/t/image.png",
                       content_type="image/png", model_weights="sd-tiny-random (stand-in)"),
            (Blob("image.png", "image/png", b"\x89PNG..."),))
        await store.barrier()
        stored = await store.get_task("t")
        assert stored is not None and stored.content_type == "image/png"
        assert stored.model_weights == "sd-tiny-random (stand-in)"
        assert await store.get_blob("t", "image.png") == Blob("image.png", "image/png", b"\x89PNG...")
        assert await store.get_blob("t", "other.png") is None


async def test_a_read_that_finds_the_file_locked_waits_off_the_loop(tmp_path: Path) -> None:
    async with open_sqlite(str(tmp_path / "l.db")) as store:
        await store.insert_task(row("t"))
        ticks, threads = 0, []

        def query(conn: sqlite3.Connection) -> str:
            # a WAL reader meets a lock only in rare cases (another process recovering
            # the WAL), so the lock is what the driver would raise: on the loop it is
            # refused at once, in the worker thread it is waited for
            threads.append(threading.current_thread() is threading.main_thread())
            if threads[-1]:
                raise sqlite3.OperationalError("database is locked")
            time.sleep(0.2)
            return str(conn.execute("SELECT id FROM tasks").fetchone()[0])

        async def tick() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            assert await store.read(query) == "t"
            nursery.cancel_scope.cancel()
        assert threads == [True, False] and ticks >= 10  # the loop ran meanwhile


KEY_IN_ANOTHER_PROCESS = """
import sys, time, trio
from api.store import open_store

async def create():
    async with open_store(sys.argv[1]) as store:
        secret, _ = await store.create_key("premium", "other process", None, None, time.time())
        print(secret)

trio.run(create)
"""


async def test_writes_by_another_process_stay_visible_after_the_file_checks(tmp_path: Path) -> None:
    """The writer's periodic header check must not drop this process's SQLite locks
    (closing any descriptor of the file does, under POSIX): then another process
    that closes the file takes itself for its last user, checkpoints and deletes
    the WAL, and this store's reader is left on its old snapshot for good."""
    import subprocess
    import sys

    db = tmp_path / "shared.db"
    async with open_store(str(db)) as store:
        secrets = []
        for _ in range(2):
            await store.insert_task(row(f"t{len(secrets)}"))  # a write: the header is checked
            made = await trio.to_thread.run_sync(lambda: subprocess.run(
                [sys.executable, "-c", KEY_IN_ANOTHER_PROCESS, str(db)], capture_output=True,
                text=True, check=True, cwd=Path(__file__).parents[2]))
            secrets.append(made.stdout.strip())
            for secret in secrets:
                assert await store.find_key(secret) is not None, f"key {len(secrets)} unseen"
        assert (tmp_path / "shared.db-wal").exists()  # nobody deleted it under us


def test_row_values_is_the_row_as_a_mapping_in_column_order(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "rows.db"))
    conn.execute("CREATE TABLE t (b TEXT, A INTEGER, c REAL)")
    conn.execute("INSERT INTO t VALUES ('x', 1, 2.5)")
    row = conn.execute("SELECT * FROM t").fetchone()
    values = row_values(row)
    assert values == dict(row) == {"b": "x", "A": 1, "c": 2.5}
    assert list(values) == ["b", "A", "c"]  # the columns' order, their names as declared
