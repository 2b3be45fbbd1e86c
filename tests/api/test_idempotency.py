"""Idempotency keys: the store's part (the contract every store keeps, run per
entry of STORE_URLS as in test_store_contract.py) and the API's (POST /api/tasks
with an `Idempotency-Key` header)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator
from typing import Any

import pytest
import trio

from api.store import (
    IDEMPOTENCY_TTL_SECONDS, DuplicateTaskId, IdempotencyKeyTaken, IdempotencyRecord,
    open_store,
)

from .conftest import Harness
from .test_store_contract import STORE_URLS, task


@pytest.fixture(params=sorted(STORE_URLS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with STORE_URLS[request.param](tmp_path) as url:
        yield url


def key(task_id: str, owner: str = "key:k1", name: str = "k-1", body: str = "h1",
        at: float = 100.0) -> IdempotencyRecord:
    return IdempotencyRecord(owner, name, body, task_id, at)


# ---- the store ------------------------------------------------------------------


async def test_a_key_is_stored_with_its_task_and_holds_it(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.insert_task(task("t1"), key("t1"))
        with pytest.raises(IdempotencyKeyTaken) as taken:
            await store.insert_task(task("t2"), key("t2", body="h2", at=101.0))
        assert taken.value.existing == key("t1")
        assert await store.get_task("t2") is None  # nothing of the loser is stored
        # Keys are per owner: another owner's key of the same name is its own.
        await store.insert_task(task("t3", owner="key:k2"), key("t3", owner="key:k2"))
    async with open_store(store_url) as store:  # durable
        assert await store.find_idempotency_key("key:k1", "k-1", 200.0) == key("t1")
        assert await store.find_idempotency_key("key:k2", "k-1", 200.0) == key(
            "t3", owner="key:k2")
        assert await store.find_idempotency_key("key:k1", "other", 200.0) is None
        assert [r.id for r in await store.list_tasks("key:k1", 10, None, None)] == ["t1"]


async def test_a_key_older_than_a_day_is_ignored_and_purged(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.insert_task(task("t1"), key("t1", at=100.0))
        late = 100.0 + IDEMPOTENCY_TTL_SECONDS + 1
        assert await store.find_idempotency_key("key:k1", "k-1", late - 2) == key("t1")
        assert await store.find_idempotency_key("key:k1", "k-1", late) is None
        await store.insert_task(task("t2"), key("t2", body="h2", at=late))
        assert await store.find_idempotency_key("key:k1", "k-1", late) == key(
            "t2", body="h2", at=late)


async def test_a_task_that_cannot_be_stored_leaves_no_key(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.insert_task(task("t1"))
        with pytest.raises(DuplicateTaskId):
            await store.insert_task(task("t1"), key("t1"))
        assert await store.find_idempotency_key("key:k1", "k-1", 100.0) is None


async def test_concurrent_inserts_with_one_key_store_one_task(store_url: str) -> None:
    async with open_store(store_url) as store:
        outcomes: dict[str, str] = {}

        async def insert(task_id: str) -> None:
            try:
                await store.insert_task(task(task_id), key(task_id))
                outcomes[task_id] = "inserted"
            except IdempotencyKeyTaken as taken:
                outcomes[task_id] = f"taken by {taken.existing.task_id}"

        async with trio.open_nursery() as nursery:  # queued together: one batch
            for n in range(5):
                nursery.start_soon(insert, f"t{n}")
        winners = [t for t, outcome in outcomes.items() if outcome == "inserted"]
        assert len(winners) == 1
        assert sorted(outcomes.values()) == sorted(
            ["inserted"] + [f"taken by {winners[0]}"] * 4)
        assert [r.id for r in await store.list_tasks("key:k1", 10, None, None)] == winners


# ---- POST /api/tasks --------------------------------------------------------------


async def submit(api: Harness, body: object, key_header: str | None = "retry-1",
                 **headers: str) -> tuple[int, Any, dict[str, object]]:
    if key_header is not None:
        headers["Idempotency-Key"] = key_header
    response = await api.client.post("/api/tasks", json=body, headers=headers)
    return response.status_code, response.headers, await response.get_json()  # any case


async def task_ids(api: Harness, **headers: str) -> list[str]:
    listing = await (await api.client.get("/api/tasks", headers=headers)).get_json()
    return [t["id"] for t in listing["tasks"]]


async def test_a_repeated_submit_answers_with_the_first_task(api: Harness) -> None:
    body = {"prompt": "Hello world", "model": "llama2", "max_tokens": 16}
    status, headers, first = await submit(api, body)
    assert status == 200 and "Idempotent-Replayed" not in headers
    # The same request again, its keys in another order: the same task.
    status, headers, again = await submit(api, dict(reversed(list(body.items()))))
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert again["task_id"] == first["task_id"]
    assert again.keys() == first.keys()
    assert await task_ids(api) == [first["task_id"]]
    # Without a key, or with another, a request is a new task.
    _, _, other = await submit(api, body, key_header="retry-2")
    _, _, plain = await submit(api, body, key_header=None)
    assert len({first["task_id"], other["task_id"], plain["task_id"]}) == 3


async def test_a_replay_spends_no_submission(api: Harness) -> None:
    _, headers, _ = await submit(api, {"prompt": "a"})
    remaining = int(headers["X-RateLimit-Remaining"])
    _, again, _ = await submit(api, {"prompt": "a"})
    assert int(again["X-RateLimit-Remaining"]) == remaining


async def test_the_same_key_with_another_body_is_a_conflict(api: Harness) -> None:
    _, _, first = await submit(api, {"prompt": "Hello world"})
    status, _, error = await submit(api, {"prompt": "Hello there"})
    assert status == 409
    assert error["success"] is False and error["error"] == "Idempotency key reused"
    assert "Idempotency-Key" in str(error["details"]) and first["task_id"] in str(error["details"])
    assert await task_ids(api) == [first["task_id"]]


async def test_keys_belong_to_their_caller(api: Harness) -> None:
    now = api.clock()
    secrets = [(await api.services.store.create_key("beta", n, None, None, now))[0]
               for n in ("a", "b")]
    auth = [{"Authorization": f"Bearer {s}"} for s in secrets]
    _, _, first = await submit(api, {"prompt": "x"}, **auth[0])
    _, headers, second = await submit(api, {"prompt": "x"}, **auth[1])
    assert "Idempotent-Replayed" not in headers
    assert first["task_id"] != second["task_id"]
    assert await task_ids(api, **auth[0]) == [first["task_id"]]
    assert await task_ids(api, **auth[1]) == [second["task_id"]]


async def test_a_key_holds_for_a_day(api: Harness) -> None:
    _, _, first = await submit(api, {"prompt": "x"})
    api.clock.now += IDEMPOTENCY_TTL_SECONDS - 1
    _, _, again = await submit(api, {"prompt": "x"})
    assert again["task_id"] == first["task_id"]
    api.clock.now += 2
    _, headers, later = await submit(api, {"prompt": "x"})
    assert later["task_id"] != first["task_id"] and "Idempotent-Replayed" not in headers


@pytest.mark.parametrize("bad", ["k" * 256, "tab\tin it", "del\x7f"])
async def test_a_malformed_key_is_refused_naming_the_header(api: Harness, bad: str) -> None:
    status, _, error = await submit(api, {"prompt": "x"}, key_header=bad)
    assert status == 400
    assert "'Idempotency-Key' header" in str(error["details"])
    assert await task_ids(api) == []


async def test_an_invalid_body_with_a_key_stores_nothing(api: Harness) -> None:
    status, _, _ = await submit(api, {"prompt": "x", "max_tokens": 0})
    assert status == 400
    _, headers, ok = await submit(api, {"prompt": "x"})  # the key was not spent
    assert "Idempotent-Replayed" not in headers and await task_ids(api) == [ok["task_id"]]
