"""The `Store` contract: what every store must do, written against the protocol
only and opened through `open_store(url)`. Each test runs once per entry of
STORE_URLS; a new store (PostgreSQL) adds its URL factory there and must pass
the same tests. "Reopen" closes the store and opens the same URL again.

PostgreSQL runs when NEUROGRID_TEST_POSTGRES names a database (a postgresql://
URL; .ci/postgres.sh starts a server and prints one): each test gets a schema
of its own in it, dropped after the test."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import pytest
import trio

from api.store import (
    Blob, DuplicateTaskId, KeyRecord, NodeTokenRecord, Signup, Stats, TaskChange, TaskRow, open_store,
)

from .conftest import NO_POSTGRES, POSTGRES

def postgres_schema(tmp: Path) -> AbstractContextManager[str]:
    if not POSTGRES:
        pytest.skip(NO_POSTGRES)
    from api.postgres_schema import scratch_schema  # psycopg: only where PostgreSQL runs

    return scratch_schema(POSTGRES)


# store kind -> the URL of a fresh, empty database (in the test's directory, or a
# schema of its own), for as long as the context lasts
STORE_URLS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {
    "sqlite": lambda tmp: nullcontext(f"sqlite:///{tmp.resolve()}/contract.db"),
    "postgresql": postgres_schema,
}


@pytest.fixture(params=sorted(STORE_URLS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with STORE_URLS[request.param](tmp_path) as url:
        yield url


def task(task_id: str, owner: str = "key:k1", created: float = 100.0, **values: object) -> TaskRow:
    fields: dict[str, object] = {
        "id": task_id, "owner": owner, "model": "llama2:7b", "priority": "standard",
        "prompt": f"p {task_id}", "params": {"max_tokens": 8, "temperature": 0.5},
        "status": "queued", "created_at": created, "estimated_cost": 0.001,
        "estimated_seconds": 3.0, "openai_cost": 0.06, **values}
    return TaskRow(**fields)  # type: ignore[arg-type]


async def test_a_task_moves_forward_and_keeps_every_field(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.insert_task(task("t1"))
        stored = await store.get_task("t1")
        assert stored is not None and stored.seq > 0
        assert stored == task("t1", seq=stored.seq)
        with pytest.raises(DuplicateTaskId):
            await store.insert_task(task("t1"))
        assert await store.get_task("nope") is None

        assert await store.change_task(TaskChange("t1", "running", 101.0, node_id="node_a",
                                                  node_location="Germany", node_gpu="RTX 4090"))
        assert await store.change_task(TaskChange("t1", "running", 101.5))  # started stays
        assert await store.change_task(TaskChange(
            "t1", "completed", 103.0, result="ok", cost=0.002, tokens_used=9,
            processing_time=1.5, openai_cost=0.01))
        assert not await store.change_task(TaskChange("t1", "failed", 104.0, error="late"))
        assert not await store.change_task(TaskChange("nope", "running", 104.0))
    async with open_store(store_url) as store:
        done = await store.get_task("t1")
        assert done == task("t1", seq=stored.seq, status="completed", started_at=101.0,
                            completed_at=103.0, node_id="node_a", node_location="Germany",
                            node_gpu="RTX 4090", result="ok", cost=0.002, tokens_used=9,
                            processing_time=1.5, openai_cost=0.01)


async def test_a_task_back_in_the_queue_loses_its_node(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.insert_task(task("t"))
        await store.change_task(TaskChange("t", "running", 1.0, node_id="n", node_gpu="A100"))
        await store.change_task(TaskChange("t", "queued", 2.0, error="node lost"))
        row = await store.get_task("t")
        assert row is not None
        assert (row.status, row.node_id, row.node_gpu, row.error, row.started_at,
                row.completed_at) == ("queued", None, None, "node lost", 1.0, None)


async def test_posted_changes_keep_their_order_and_land_by_the_barrier(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.insert_task(task("a"))
        await store.insert_task(task("b"))
        await store.post_task_change(TaskChange("a", "running", 1.0))
        await store.post_task_change(TaskChange("a", "completed", 2.0, result="r"))
        await store.post_task_change(TaskChange("a", "failed", 3.0))  # too late: ignored
        await store.post_task_change(TaskChange("b", "cancelled", 4.0))
        await store.barrier()
        a, b = await store.get_task("a"), await store.get_task("b")
        assert a is not None and b is not None
        assert (a.status, a.result, a.completed_at, b.status) == ("completed", "r", 2.0,
                                                                  "cancelled")
        await store.insert_task(task("c"))
        await store.post_task_change(TaskChange("c", "expired", 5.0))
    async with open_store(store_url) as store:  # queued changes are written before close
        c = await store.get_task("c")
        assert c is not None and c.status == "expired"


async def test_tasks_are_listed_by_owner_newest_first_with_a_cursor(store_url: str) -> None:
    async with open_store(store_url) as store:
        for n in range(5):
            await store.insert_task(task(f"mine{n}", created=float(n)))
            await store.insert_task(task(f"other{n}", owner="anon:1.2.3.4"))
        await store.change_task(TaskChange("mine1", "cancelled", 9.0))
        await store.change_task(TaskChange("mine3", "cancelled", 9.0))
        page = await store.list_tasks("key:k1", 2, None, None)
        assert [r.id for r in page] == ["mine4", "mine3"]
        rest = await store.list_tasks("key:k1", 10, page[-1].seq, None)
        assert [r.id for r in rest] == ["mine2", "mine1", "mine0"]
        cancelled = await store.list_tasks("key:k1", 10, None, "cancelled")
        assert [r.id for r in cancelled] == ["mine3", "mine1"]
        assert await store.list_tasks("key:nobody", 10, None, None) == []


async def test_reopen_puts_running_tasks_back_oldest_first(store_url: str) -> None:
    async with open_store(store_url) as store:
        for task_id in ("a", "b", "c", "d"):
            await store.insert_task(task(task_id))
        await store.change_task(TaskChange("b", "running", 1.0, node_id="node_x"))
        await store.change_task(TaskChange("c", "cancelled", 1.0))
        await store.change_task(TaskChange("d", "running", 1.0, node_id="node_y"))
    async with open_store(store_url) as store:
        reopened = await store.reopen_tasks()
        assert [(r.id, r.status, r.node_id) for r in reopened] == [
            ("a", "queued", None), ("b", "queued", None), ("d", "queued", None)]
        b = await store.get_task("b")
        assert b is not None and (b.status, b.node_id) == ("queued", None)
        assert await store.reopen_tasks() == reopened


async def test_keys_are_found_by_secret_listed_without_it_and_revoked(store_url: str) -> None:
    async with open_store(store_url) as store:
        secret, record = await store.create_key("premium", "acme", 5, None, 10.0)
        other_secret, other = await store.create_key("beta", "", None, 2, 11.0)
        assert record == KeyRecord(record.id, "premium", "acme", 5, None, 10.0, None)
        assert secret != other_secret and record.id != other.id
        assert await store.find_key(secret) == record
        assert await store.find_key(other_secret) == other
        assert await store.find_key(secret + "x") is None
        assert await store.revoke_key(record.id, 12.0)
        assert not await store.revoke_key(record.id, 13.0)
        assert not await store.revoke_key("key_unknown", 13.0)
        assert await store.find_key(secret) is None
    async with open_store(store_url) as store:
        assert await store.list_keys() == [
            KeyRecord(record.id, "premium", "acme", 5, None, 10.0, 12.0), other]
        assert await store.find_key(other_secret) == other


async def test_a_new_node_token_replaces_the_old_one_of_its_name(store_url: str) -> None:
    async with open_store(store_url) as store:
        first = await store.create_node_token("de", 1.0)
        fr = await store.create_node_token("fr", 2.0)
        assert await store.find_node_token(first) == "de"
        replaced = await store.create_node_token("de", 3.0)
        assert await store.find_node_token(first) is None
        assert await store.find_node_token(replaced) == "de"
        assert await store.revoke_node_token("fr", 4.0)
        assert not await store.revoke_node_token("fr", 5.0)
        assert await store.find_node_token(fr) is None
    async with open_store(store_url) as store:
        assert await store.list_node_tokens() == [NodeTokenRecord("de", 3.0, None),
                                                  NodeTokenRecord("fr", 2.0, 4.0)]
        again = await store.create_node_token("fr", 6.0)  # a revoked name can come back
        assert await store.find_node_token(again) == "fr"


async def test_a_second_signup_of_an_email_gets_the_first(store_url: str) -> None:
    async with open_store(store_url) as store:
        first = Signup("beta_1", "a@example.com", "developer", "web", 1.0)
        assert await store.add_signup(first) == (first, True)
        again = Signup("beta_2", "a@example.com", "provider", "cli", 2.0)
        assert await store.add_signup(again) == (first, False)
        other = Signup("beta_3", "b@example.com", "provider", "cli", 3.0)
        assert await store.add_signup(other) == (other, True)
        assert (await store.stats()).beta_signups == 2


async def test_stats_are_totals_over_the_stored_tasks(store_url: str) -> None:
    ends = {  # task -> (status, cost, openai cost, processing time, completed at)
        "c1": ("completed", 0.25, 1.0, 2.0, 110.0), "c2": ("completed", 0.5, 3.0, 4.0, 130.0),
        "f": ("failed", None, None, None, 105.0), "e": ("expired", None, None, None, 106.0),
        "x": ("cancelled", None, None, None, 107.0), "r": ("rejected", None, None, None, 108.0),
    }
    async with open_store(store_url) as store:
        assert await store.stats() == Stats()
        for task_id in [*ends, "open", "running"]:
            await store.insert_task(task(task_id, created=100.0))
        await store.change_task(TaskChange("running", "running", 101.0))
        for task_id, (status, cost, openai, seconds, at) in ends.items():
            if status == "completed":
                await store.change_task(TaskChange(task_id, "running", 101.0))
            await store.post_task_change(TaskChange(task_id, status, at, cost=cost,
                                                    openai_cost=openai, processing_time=seconds))
        await store.change_task(TaskChange("c1", "failed", 200.0))  # ended: changes nothing
        await store.barrier()
        expected = Stats(total_tasks=8, completed_tasks=2, failed_tasks=2, cancelled_tasks=1,
                         compute_seconds=6.0, turnaround_seconds=40.0, cost=0.75,
                         openai_cost=4.0, beta_signups=1)
        await store.add_signup(Signup("beta_1", "a@example.com", "developer", "web", 1.0))
        assert await store.stats() == expected
        reopened = await store.reopen_tasks()  # running -> queued: no total moves
        assert {r.id for r in reopened} == {"open", "running"}
        assert await store.stats() == expected
    async with open_store(store_url) as store:
        assert await store.stats() == expected


async def test_concurrent_writes_all_land_and_fail_alone(store_url: str) -> None:
    created: dict[str, bool] = {}
    async with open_store(store_url) as store:

        async def signup(n: int) -> None:
            email = f"user{n % 25}@example.com"  # every email twice
            _, created[f"beta_{n}"] = await store.add_signup(
                Signup(f"beta_{n}", email, "developer", "web", float(n)))

        async def insert(n: int) -> None:
            try:
                await store.insert_task(task(f"t{n % 60}"))  # 40 of them are duplicates
            except DuplicateTaskId:
                created[f"dup_{n}"] = False

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(signup, n)
            for n in range(100):
                nursery.start_soon(insert, n)
        stats = await store.stats()
        assert sum(created.values()) == 25 == stats.beta_signups
        assert len([k for k in created if k.startswith("dup_")]) == 40
        assert stats.total_tasks == 60


async def test_availability_counts_each_run_to_its_last_sign_of_life(store_url: str) -> None:
    async with open_store(store_url) as store:
        assert await store.availability(50.0, 0) == 1.0  # no history
        first = await store.start_run(0.0)
        assert await store.availability(0.0, first) == 1.0
        assert await store.availability(40.0, first) == 1.0
        await store.mark_alive(first, 60.0)
    async with open_store(store_url) as store:
        second = await store.start_run(100.0)
        assert second != first
        assert await store.availability(200.0, second) == pytest.approx(160 / 200)
        await store.mark_alive(second, 150.0)  # the current run counts until now anyway
        assert await store.availability(300.0, second) == pytest.approx(260 / 300)
        assert await store.nodes() == {}  # no node is recorded by the store itself


async def test_task_files_are_kept_whole_replaced_by_name_and_come_with_their_change(
        store_url: str) -> None:
    audio = Blob("input.audio", "audio/wav", bytes(range(256)) * 4096)  # 1 MiB, every byte
    async with open_store(store_url) as store:
        await store.insert_task(task("t"))
        await store.put_blobs("t", (audio, Blob("note.txt", "text/plain", b"")))
        await store.put_blobs("t", (Blob("note.txt", "text/markdown", b"\x00# hi"),))
        image = Blob("image.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\xff")
        await store.post_task_change(TaskChange("t", "completed", 2.0, result="",
                                                content_type="image/png"), (image,))
        late = Blob("late.png", "image/png", b"late")  # with a change that is ignored
        await store.post_task_change(TaskChange("t", "failed", 3.0), (late,))
        await store.barrier()
    async with open_store(store_url) as store:
        assert await store.get_blob("t", "input.audio") == audio
        assert await store.get_blob("t", "note.txt") == Blob("note.txt", "text/markdown",
                                                             b"\x00# hi")
        assert await store.get_blob("t", "image.png") == image
        assert await store.get_blob("t", "late.png") is None
        assert await store.get_blob("other", "image.png") is None
        done = await store.get_task("t")
        assert done is not None and (done.status, done.content_type) == ("completed", "image/png")
