"""Accepted work is never lost on PostgreSQL either: a task change posted while the
server cannot be reached (a completion) is held, in order with the task's later
changes, and written once the server takes connections again; /health answers 503
with the held count meanwhile; a change the database refuses is not held. The
outage is real, at the boundary between the store and the server: the test's own
database stops taking connections (ALLOW_CONNECTIONS false) and the store's
backends are terminated, then connections are allowed again. The shared cluster
keeps running (NEUROGRID_TEST_POSTGRES; see tests/api/test_store_contract.py)."""
from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest
import trio

from api.store import StoreHealth, StoreUnavailable, TaskChange, TaskRow, open_store
from tests.api.conftest import NO_POSTGRES, POSTGRES, fake_worker, running_app, wait_for_status

if not POSTGRES:
    pytest.skip(NO_POSTGRES, allow_module_level=True)

import psycopg  # noqa: E402  (only where PostgreSQL runs)

import api.app as app_module  # noqa: E402
import api.postgres_writer as postgres_writer  # noqa: E402
import api.store_writer as store_writer  # noqa: E402

OUTAGE_TIMEOUT = 30.0  # generous: the pool reconnects with its own backoff (1 s, 2 s, ...)


@attrs.define
class Outage:
    """A database of the test's own on the shared server, which can stop taking
    connections (and cut the ones it has) and take them again."""

    admin_url: str  # the shared database: where the test's one is created and managed
    name: str
    url: str

    def admin(self, sql: str, *args: Any) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.encode(), args)

    def begin_now(self) -> None:
        self.admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        self.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = %s AND pid <> pg_backend_pid()", self.name)

    def end_now(self) -> None:
        self.admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    @asynccontextmanager
    async def cut(self) -> AsyncIterator[None]:
        """The outage, for the block; it ends with the block however that ends (so a
        failed assertion shows, rather than a store that cannot shut down)."""
        await trio.to_thread.run_sync(self.begin_now)
        try:
            yield
        finally:
            await trio.to_thread.run_sync(self.end_now)


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    # a batch waits 1 s for the writer's connection, not 5: the same path, sooner
    monkeypatch.setattr(postgres_writer, "CONNECT_SECONDS", 1.0)
    name = "neurogrid_outage_" + secrets.token_hex(4)
    url = urlunsplit(urlsplit(POSTGRES)._replace(path="/" + name))
    it = Outage(POSTGRES, name, url)
    try:
        it.admin(f'CREATE DATABASE "{name}"')
    except psycopg.errors.InsufficientPrivilege as exc:  # the outage needs a database of its own
        pytest.skip(f"NEUROGRID_TEST_POSTGRES's role cannot create a database: {exc}")
    try:
        yield it
    finally:
        it.end_now()
        it.admin(f'DROP DATABASE "{name}" WITH (FORCE)')


def row(task_id: str) -> TaskRow:
    return TaskRow(task_id, "anon:test", "llama2:7b", "standard", "hello", {"max_tokens": 8},
                   "queued", 1.0, 0.0, 0.0, 0.0)


async def wait_held(store: Any, count: int) -> StoreHealth:
    with trio.fail_after(OUTAGE_TIMEOUT):
        while (health := await store.health()).held_changes < count:
            await trio.sleep(0.02)
    return health


async def test_a_completion_posted_during_an_outage_is_held_and_written_after_it(
        outage: Outage) -> None:
    async with open_store(outage.url) as store:
        for task_id in ("t1", "t2"):
            await store.insert_task(row(task_id))
        await store.post_task_change(TaskChange("t1", "running", 2.0, node_id="n1"))
        await store.barrier()

        async with outage.cut():
            await store.post_task_change(TaskChange("t1", "completed", 3.0, result="during it"))
            # a later change of the same task: written after the completion, it finds
            # the task ended and changes nothing (written first, it would cancel it)
            await store.post_task_change(TaskChange("t1", "cancelled", 4.0))
            await store.post_task_change(TaskChange("t2", "running", 5.0, node_id="n2"))
            await store.post_task_change(TaskChange("t2", "completed", 6.0, result="also"))
            health = await wait_held(store, 4)
            assert health.degraded and "cannot take writes" in health.reason
            # a write with a caller is not held: it is told the store is unavailable (503)
            with pytest.raises(StoreUnavailable, match="cannot take writes now"):
                await store.insert_task(row("refused while down"))
            assert (await store.health()).held_changes == 4

        with trio.fail_after(OUTAGE_TIMEOUT):
            await store.barrier()  # waits for every held change to be written
        health = await store.health()
        assert (health.degraded, health.reason, health.held_changes, health.refused_changes) == (
            False, "", 0, 0)
        assert health.failed_writes >= 2  # the first held change (the rest queued behind it), the insert
        t1, t2 = await store.get_task("t1"), await store.get_task("t2")
        assert t1 is not None and (t1.status, t1.result, t1.node_id) == (
            "completed", "during it", "n1")
        assert t2 is not None and (t2.status, t2.result, t2.node_id) == (
            "completed", "also", "n2")
        assert await store.get_task("refused while down") is None
        assert (await store.stats()).total_tasks == 2


async def test_health_is_503_while_a_completion_is_held_then_the_task_completes(
        outage: Outage, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole app: /health answers its degraded 503 at once (the totals it shows
    are the last it read), and the service outlives a sign of life that cannot be
    recorded (housekeeping every 0.2 s here, so some fall in the outage)."""
    monkeypatch.setattr(app_module, "HOUSEKEEPING_SECONDS", 0.2)
    async with running_app(outage.url) as api:  # type: ignore[arg-type]  # a URL
        async with fake_worker(api) as worker:
            task_id = (await api.submit())["task_id"]
            assert (await worker.next_assign())["task_id"] == task_id
            await wait_for_status(api, task_id, "running")
            assert (await api.client.get("/health")).status_code == 200

            async with outage.cut():
                await worker.finish(task_id, "finished while the database was down")
                await wait_held(api.services.store, 1)  # the store's own report: no read
                with trio.fail_after(5):  # at once, not after the read pool's timeout
                    response = await api.client.get("/health")
                report = await response.get_json()
                assert report["store"]["held_changes"] >= 1
                assert response.status_code == 503 and report["status"] == "degraded"
                assert "cannot take writes" in report["reason"]
                assert report["network"]["total_tasks"] == 1  # read before the outage
                await trio.sleep(0.5)  # signs of life fall in the outage: the service goes on

            done = await wait_for_status(api, task_id, "completed", timeout=OUTAGE_TIMEOUT)
            assert done["result"] == "finished while the database was down"
            with trio.fail_after(OUTAGE_TIMEOUT):
                while (response := await api.client.get("/health")).status_code != 200:
                    await trio.sleep(0.05)
            report = await response.get_json()
            assert report["status"] == "OK" and report["store"]["held_changes"] == 0


async def test_a_refused_change_is_not_held_and_fails_its_task(outage: Outage) -> None:
    """A value the database cannot hold (a token count beyond 64 bits) is the
    change's own failure: never held or retried, the task fails saying why; held
    changes around such a change (the chunk retried one by one) are written."""
    too_many = 2**70
    async with open_store(outage.url) as store:
        for task_id in ("a", "b", "c", "d"):
            await store.insert_task(row(task_id))
        await store.post_task_change(TaskChange("a", "completed", 2.0, tokens_used=too_many))
        await store.barrier()
        health = await store.health()
        assert (health.degraded, health.held_changes, health.refused_changes) == (False, 0, 1)

        async with outage.cut():
            await store.post_task_change(TaskChange("b", "completed", 3.0, result="b"))
            await store.post_task_change(TaskChange("c", "completed", 3.0, tokens_used=too_many))
            await store.post_task_change(TaskChange("d", "completed", 3.0, result="d"))
            await wait_held(store, 3)
        with trio.fail_after(OUTAGE_TIMEOUT):
            await store.barrier()
        health = await store.health()
        assert (health.degraded, health.held_changes, health.refused_changes) == (False, 0, 2)
        for task_id in ("a", "c"):
            task = await store.get_task(task_id)
            assert task is not None and task.status == "failed"
            assert "completed update could not be stored" in (task.error or "")
        for task_id in ("b", "d"):
            task = await store.get_task(task_id)
            assert task is not None and (task.status, task.result) == ("completed", task_id)


async def test_held_changes_are_bounded_and_all_written_in_order(
        outage: Outage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_writer, "HELD_MAX", 4)
    ids = [f"t{i}" for i in range(6)]
    async with open_store(outage.url) as store:
        for task_id in ids:
            await store.insert_task(row(task_id))
        async with outage.cut():
            async with trio.open_nursery() as nursery:
                async def post_all() -> None:  # running, then completed, for each task
                    for task_id in ids:
                        await store.post_task_change(TaskChange(task_id, "running", 2.0,
                                                                node_id="n"))
                        await store.post_task_change(TaskChange(task_id, "completed", 3.0,
                                                                result=f"r {task_id}"))

                nursery.start_soon(post_all)
                await wait_held(store, 4)
                await trio.sleep(2 * postgres_writer.CONNECT_SECONDS)  # retried, still down
                health = await store.health()
                assert health.degraded and health.held_changes == 4  # bounded, the rest queued
        with trio.fail_after(OUTAGE_TIMEOUT):
            await store.barrier()
        assert (await store.health()).held_changes == 0
        for task_id in ids:
            task = await store.get_task(task_id)
            assert task is not None and (task.status, task.result, task.node_id) == (
                "completed", f"r {task_id}", "n")


async def test_what_is_still_held_at_shutdown_is_logged_and_its_task_stays_open(
        outage: Outage, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The store closes while the server is still away: held changes are retried
    for FINISH_SECONDS (1 s here), then logged; the task is still open in the
    database, so it runs again after the restart."""
    monkeypatch.setattr(store_writer, "FINISH_SECONDS", 1.0)
    async with open_store(outage.url) as store:
        await store.insert_task(row("t"))
        await store.post_task_change(TaskChange("t", "running", 2.0, node_id="n"))
        await store.barrier()
        async with outage.cut():
            await store.post_task_change(TaskChange("t", "completed", 3.0, result="late"))
            await wait_held(store, 1)
            with caplog.at_level(logging.ERROR, logger="neurogrid.store"):
                await store.writer.finish()
                with trio.fail_after(OUTAGE_TIMEOUT):
                    while "could not be written before shutdown" not in caplog.text:
                        await trio.sleep(0.05)
    assert "1 task changes could not be written before shutdown" in caplog.text
    async with open_store(outage.url) as store:
        reopened = await store.reopen_tasks()
    assert [(r.id, r.status) for r in reopened] == [("t", "queued")]  # it runs again
