"""The PostgreSQL store's own parts, on a real server (NEUROGRID_TEST_POSTGRES; see
test_store_contract.py): migrations when two processes start at once, a schema
newer than the code, the writer's group commit (one transaction for what is
queued together), a failed operation that fails alone and leaves the writer
running, and connections that die under the store."""
from __future__ import annotations

import logging
import threading
from typing import Iterator

import pytest
import trio

from api.store import StoreError, StoreHealth, StoreUnavailable, TaskChange, TaskRow, open_store

from .conftest import NO_POSTGRES, POSTGRES, fake_worker, running_app, wait_for_status

if not POSTGRES:
    pytest.skip(NO_POSTGRES, allow_module_level=True)

import api.postgres_schema as postgres_schema  # noqa: E402  (psycopg: only where PostgreSQL runs)
from api.postgres_schema import (  # noqa: E402
    MIGRATIONS, SCHEMA_VERSION, connect, migrate, scratch_schema, with_schema,
)
from api.postgres_store import PostgresStore  # noqa: E402


@pytest.fixture
def url() -> Iterator[str]:
    with scratch_schema(POSTGRES) as schema_url:
        yield schema_url


def row(task_id: str) -> TaskRow:
    return TaskRow(task_id, "anon:1", "llama2:7b", "standard", "hi", {"max_tokens": 8}, "queued",
                   100.0, 0.001, 3.0, 0.06)


def versions(url: str) -> list[int]:
    with connect(url) as conn:
        return [r["version"] for r in conn.execute(
            "SELECT version FROM schema_version ORDER BY version").fetchall()]


def test_two_processes_migrating_at_once_apply_each_version_once(url: str) -> None:
    """Two connections (two processes starting) run `migrate` at the same moment:
    the advisory lock lets one apply the migrations; the other waits for its
    commit and finds nothing left to do."""
    barrier = threading.Barrier(2)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with connect(url) as conn:
                barrier.wait()
                applied.append(migrate(conn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(applied) == [[], sorted(MIGRATIONS)]
    assert versions(url) == sorted(MIGRATIONS)


async def test_two_stores_opening_at_once_share_one_schema(url: str) -> None:
    inserted: list[str] = []

    async def open_one(name: str, other: str) -> None:
        async with open_store(url) as store:
            await store.insert_task(row(name))
            inserted.append(name)
            while len(inserted) < 2:  # both open at once
                await trio.sleep(0.01)
            assert await store.get_task(other) is not None  # the other store's write

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_one, "a", "b")
        nursery.start_soon(open_one, "b", "a")
    assert versions(url) == sorted(MIGRATIONS)
    async with open_store(url) as store:
        assert (await store.stats()).total_tasks == 2
        assert {r.id for r in await store.reopen_tasks()} == {"a", "b"}


async def test_a_later_version_applies_only_its_own_migration(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(url) as store:
        await store.insert_task(row("old"))
    later = SCHEMA_VERSION + 1
    monkeypatch.setitem(MIGRATIONS, later, ["ALTER TABLE tasks ADD COLUMN note TEXT",
                                            "UPDATE tasks SET note = 'migrated'"])
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", later)
    with connect(url) as conn:
        assert migrate(conn) == [later]
        assert migrate(conn) == []
        notes = conn.execute("SELECT id, note FROM tasks").fetchall()
    assert notes == [{"id": "old", "note": "migrated"}]
    assert versions(url) == [*sorted(MIGRATIONS)]


async def test_a_schema_newer_than_the_code_and_a_missing_schema_are_refused(url: str) -> None:
    async with open_store(url):
        pass
    with connect(url) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, 0)",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        async with open_store(url):
            pass
    with pytest.raises(StoreError, match="names no schema that exists"):
        async with open_store(with_schema(POSTGRES, "neurogrid_no_such_schema")):
            pass


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError, match=r"cannot open the PostgreSQL database "
                       r"'postgresql://u:\*\*\*@127.0.0.1:1/db'") as caught:
        async with open_store("postgresql://u:s3cret@127.0.0.1:1/db"):
            pass
    assert "s3cret" not in str(caught.value)
    with pytest.raises(StoreError, match="write postgresql://USER@HOST"):
        async with open_store("postgresql:db"):
            pass


async def test_writes_queued_together_commit_in_one_transaction(url: str) -> None:
    async with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        txids: list[int] = []

        async def write() -> None:
            txids.append(await store.writer.write(
                lambda conn: conn.execute("SELECT txid_current() AS t").fetchone()["t"]))

        before = store.writer.batches
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(write)
        assert len(txids) == 100
        # group commit: far fewer transactions (and batches) than writes
        assert len(set(txids)) == store.writer.batches - before <= 10


async def test_a_failed_operation_fails_alone_and_the_writer_goes_on(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        outcomes: dict[str, object] = {}

        async def insert(task_id: str) -> None:
            try:
                await store.insert_task(row(task_id))
                outcomes[task_id] = "ok"
            except Exception as exc:
                outcomes[task_id] = exc

        async def bad_sql() -> None:
            try:
                await store.writer.write(lambda conn: conn.execute("SELECT * FROM no_such_table"))
            except Exception as exc:
                outcomes["bad"] = exc

        await store.insert_task(row("t0"))
        batches = store.writer.batches
        async with trio.open_nursery() as nursery:  # one batch: good, bad and duplicate
            for n in range(10):
                nursery.start_soon(insert, f"t{n}")
            nursery.start_soon(bad_sql)
        assert store.writer.batches - batches < 11  # they were batched together
        assert type(outcomes.pop("bad")).__name__ == "UndefinedTable"
        assert type(outcomes.pop("t0")).__name__ == "DuplicateTaskId"
        assert outcomes == {f"t{n}": "ok" for n in range(1, 10)}
        with caplog.at_level(logging.ERROR, logger="neurogrid.store"):
            await store.writer.post(lambda conn: conn.execute("SELECT 1/0"))
            await store.post_task_change(TaskChange("t1", "completed", 5.0, result="r"))
            await store.barrier()
        assert "a posted store write failed" in caplog.text
        health = await store.health()
        assert (health.degraded, health.refused_changes, health.failed_writes) == (False, 1, 3)
        done = await store.get_task("t1")
        assert done is not None and (done.status, done.result) == ("completed", "r")
        assert (await store.stats()).total_tasks == 10


async def test_connections_that_die_cost_no_write_and_no_read(url: str) -> None:
    """The server cuts every connection of the store (a restart, an idle timeout):
    the next write and read get new connections and succeed."""
    async with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        await store.insert_task(row("before"))
        pids = {await store.writer.write(lambda conn: conn.info.backend_pid)}
        for _ in range(3):
            pids.add(await store.read(lambda conn: conn.info.backend_pid))
        with connect(url) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await store.insert_task(row("after"))
        await store.post_task_change(TaskChange("before", "cancelled", 9.0))
        await store.barrier()
        for task_id, status in (("before", "cancelled"), ("after", "queued")):
            stored = await store.get_task(task_id)
            assert stored is not None and stored.status == status
        assert await store.writer.write(lambda conn: conn.info.backend_pid) not in pids


async def test_both_scheme_names_open_the_same_database(url: str) -> None:
    assert url.startswith("postgresql://")
    async with open_store("postgres://" + url.removeprefix("postgresql://")) as store:
        await store.insert_task(row("t"))
    async with open_store("POSTGRESQL://" + url.removeprefix("postgresql://")) as store:
        assert await store.get_task("t") is not None


async def test_the_api_runs_a_task_end_to_end_on_postgresql(url: str) -> None:
    """The whole app on the PostgreSQL store: a task submitted, run by a worker,
    read back, counted in the network's totals, and still there after a restart."""
    async with running_app(url) as api:  # type: ignore[arg-type]  # a URL, not a path
        async with fake_worker(api, name="de") as worker:
            task_id = (await api.submit({"prompt": "Hello PostgreSQL"}))["task_id"]
            assert (await worker.next_assign())["task_id"] == task_id
            await worker.finish(task_id, "hello back", tokens=5, seconds=0.5)
            task = await wait_for_status(api, task_id, "completed")
        assert task["result"] == "hello back" and task["node"]["id"] == "node_de"
        status = await (await api.client.get("/api/network/status")).get_json()
        assert (status["network"]["total_tasks"], status["network"]["completed_tasks"]) == (1, 1)
    async with running_app(url) as api:  # type: ignore[arg-type]
        again = await (await api.client.get(f"/api/tasks/{task_id}")).get_json()
        assert again["task"]["status"] == "completed" and again["task"]["result"] == "hello back"


async def test_a_nul_character_is_stored_as_the_replacement_character(url: str) -> None:
    """PostgreSQL's TEXT cannot hold U+0000: the store writes U+FFFD instead, so the
    task and its change are stored rather than failed."""
    async with open_store(url) as store:
        await store.insert_task(TaskRow("t", "anon:1", "llama2:7b", "standard", "a\x00b",
                                        {"stop": "\x00"}, "queued", 1.0, 0.0, 1.0, 0.0))
        assert await store.change_task(TaskChange("t", "completed", 2.0, result="out\x00put"))
        stored = await store.get_task("t")
    assert stored is not None
    assert (stored.prompt, stored.result, stored.params) == ("a\ufffdb", "out\ufffdput",
                                                             {"stop": "\x00"})


async def test_no_connection_is_a_503_and_a_degraded_store(url: str) -> None:
    async with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        assert await store.health() == StoreHealth()
        store.writer.pool.close()  # no connection to be had any more
        store.reads.close()
        with pytest.raises(StoreUnavailable, match="cannot take writes now"):
            await store.insert_task(row("t"))
        with pytest.raises(StoreUnavailable, match="cannot be read now"):
            await store.get_task("t")
        health = await store.health()
        assert health.degraded and "cannot take writes" in health.reason
        assert (health.failed_writes, health.refused_changes) == (1, 0)
