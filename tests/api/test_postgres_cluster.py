"""The parts several processes share on one PostgreSQL database (api/postgres_cluster.py,
api/cluster_services.py), on a real server (NEUROGRID_TEST_POSTGRES): two stores
stand for two API processes. Shared admission is exact under concurrency (hourly
budget and in-flight limit), the inbox hands over what was accepted and the
cancellations, status changes are notified, the leader lock has one holder,
passes on when it is released, and is lost with its connection, and a write that
another process's transaction deadlocked is tried again."""
from __future__ import annotations

import json
import threading
import time
from typing import Iterator

import pytest
import trio

from api.access import Caller
from api.relay import AdmissionRefused
from api.store import TaskChange, TaskRow, open_store

from .conftest import NO_POSTGRES, POSTGRES

if not POSTGRES:
    pytest.skip(NO_POSTGRES, allow_module_level=True)

from api.cluster_services import DatabaseIntake  # noqa: E402  (psycopg: only with PostgreSQL)
from api.postgres_cluster import (  # noqa: E402
    Leadership, LeadershipLost, Listener, open_cluster,
)
from api.postgres_schema import connect, scratch_schema  # noqa: E402
from api.access import RateLimiter  # noqa: E402

NOW = 1_700_000_000.0


@pytest.fixture
def url() -> Iterator[str]:
    with scratch_schema(POSTGRES) as schema_url:
        yield schema_url


def row(task_id: str, owner: str) -> TaskRow:
    return TaskRow(task_id, owner, "llama2:7b", "standard", "hi", {"max_tokens": 8}, "queued",
                   NOW, 0.001, 3.0, 0.06)


async def submit_everywhere(url: str, caller: Caller, attempts: int) -> tuple[list[str], int]:
    """`attempts` concurrent submissions of `caller`, spread over two stores (two
    processes): the ids accepted and how many were refused."""
    accepted: list[str] = []
    refused = 0
    async with open_store(url) as one, open_store(url) as two:
        intakes = [DatabaseIntake(await open_cluster(s), RateLimiter()) for s in (one, two)]

        async def submit(i: int) -> None:
            nonlocal refused
            try:
                stored, admission = await intakes[i % 2].submit(
                    caller, row(f"t{i}", caller.owner), lambda: f"t{i}b", (), None, NOW)
                assert admission.allowed
                accepted.append(stored.id)
            except AdmissionRefused:
                refused += 1

        async with trio.open_nursery() as nursery:
            for i in range(attempts):
                nursery.start_soon(submit, i)
    return accepted, refused


async def test_the_hourly_budget_holds_across_processes_exactly(url):
    caller = Caller("key:k", "beta", 100, 1000, "k")
    accepted, refused = await submit_everywhere(url, caller, 130)
    assert len(accepted) == 100 and refused == 30


async def test_the_in_flight_limit_holds_across_processes_exactly(url):
    caller = Caller("key:k", "beta", 1000, 5, "k")
    accepted, refused = await submit_everywhere(url, caller, 20)
    assert len(accepted) == 5 and refused == 15


async def test_the_inbox_hands_over_accepted_tasks_and_cancellations(url):
    caller = Caller("anon:1", "beta", 100, 10)
    async with open_store(url) as store:
        cluster = await open_cluster(store)
        intake = DatabaseIntake(cluster, RateLimiter())
        for task_id in ("a", "b", "c"):
            await intake.submit(caller, row(task_id, caller.owner), lambda: "x", (), None, NOW)
        assert await intake.cancel("b", NOW + 1)
        assert not await intake.cancel("b", NOW + 2)  # ended already: nothing to cancel
        batch = await cluster.claim_inbox()
        # b's submission is no open task any more; its cancellation is there
        assert [r.id for r in batch.tasks] == ["a", "c"] and batch.cancels == ("b",)
        assert batch.claimed == 4
        assert (await cluster.claim_inbox()).claimed == 0  # claimed once
        assert (await store.get_task("b")).status == "cancelled"


async def test_status_changes_are_notified(url):
    heard: list[dict[str, str]] = []
    async with open_store(url) as store:
        cluster = await open_cluster(store)
        await store.insert_task(row("a", "anon:1"))
        listener = Listener(store.url, [cluster.task_channel],
                            lambda channel, payload: heard.append(json.loads(payload)))
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.serve)
            await store.change_task(TaskChange("a", "running", NOW + 1, node_id="n"))
            await store.change_task(TaskChange("a", "completed", NOW + 2, result="ok"))
            with trio.fail_after(10):
                while len(heard) < 2:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert heard == [{"task": "a", "status": "running"}, {"task": "a", "status": "completed"}]


async def test_one_leader_at_a_time_and_the_lock_passes_on(url):
    first, second = Leadership(url, "neurogrid.leader.test"), Leadership(url, "neurogrid.leader.test")
    try:
        with trio.fail_after(10):
            await first.acquire()
        with trio.move_on_after(1.5) as waiting:
            await second.acquire()
        assert waiting.cancelled_caught  # a standby while the first holds it
        await trio.to_thread.run_sync(first.close)  # the leader's connection ends
        with trio.fail_after(5):
            await second.acquire()
    finally:
        first.close()
        second.close()


async def test_a_leader_whose_lock_connection_dies_has_lost_leadership(url):
    leader = Leadership(url, "neurogrid.leader.test")
    try:
        await leader.acquire()
        assert leader.conn is not None
        pid = leader.conn.info.backend_pid
        with connect(url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with trio.fail_after(10), pytest.raises(LeadershipLost):
            await leader.hold()
    finally:
        leader.close()


async def test_a_write_rolled_back_by_a_deadlock_is_tried_again(url):
    # Another process's transaction and ours lock two rows in opposite orders; the
    # other waits longer before looking for deadlocks, so ours is the victim.
    with connect(url) as conn:
        conn.execute("CREATE TABLE pair (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        conn.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
    holding, crossed = threading.Event(), threading.Event()

    def other_process() -> None:
        with connect(url) as other:
            other.execute("SET deadlock_timeout = '20s'")
            with other.transaction():
                other.execute("UPDATE pair SET v = v + 10 WHERE id = 2")
                holding.set()
                crossed.wait(10)
                other.execute("UPDATE pair SET v = v + 10 WHERE id = 1")

    attempts: list[int] = []

    def op(conn) -> None:
        attempts.append(len(attempts) + 1)
        conn.execute("UPDATE pair SET v = v + 1 WHERE id = 1")
        if len(attempts) == 1:
            crossed.set()
            time.sleep(0.3)  # the other transaction now waits for row 1
        conn.execute("UPDATE pair SET v = v + 1 WHERE id = 2")

    async with open_store(url) as store:
        thread = threading.Thread(target=other_process)
        thread.start()
        holding.wait(10)
        await store.writer.write(op)
        thread.join(10)
    with connect(url) as conn:
        values = {r["id"]: r["v"] for r in conn.execute("SELECT id, v FROM pair").fetchall()}
    # tried again (twice, should the retry cross the other transaction again), once
    # committed: each transaction's increments are there once
    assert 2 <= len(attempts) <= 3 and values == {1: 11, 2: 11}, (attempts, values)
