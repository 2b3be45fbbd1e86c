"""The task endpoints through Quart's test client: the reference's shapes, errors,
keys, rate limits, cancellation, listing and streaming."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio
from quart import jsonify

from api.access import Tier
from api.relay import TaskFeed
from api.validation import MAX_BODY_BYTES
from engine.protocol import Progress, encode
from engine.runtime import CoordinatorConfig

from .conftest import Harness, fake_worker, running_app, wait_for_status

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DOLLARS = re.compile(r"^\$\d+\.\d+$")
REFERENCE_BODY = {"prompt": "Write a Python function to calculate Fibonacci numbers",
                  "model": "llama2:7b", "priority": "standard"}


async def test_submit_answers_with_the_reference_shape(api: Harness) -> None:
    response = await api.client.post("/api/tasks", json=REFERENCE_BODY)
    assert response.status_code == 200
    body = await response.get_json()
    assert body["success"] is True
    assert re.fullmatch(rf"task_{int(api.clock.now)}_[a-z0-9]+", body["task_id"])
    assert body["status"] == "queued"
    assert re.fullmatch(r"\d+s", body["estimated_time"])
    assert set(body["node"]) >= {"id", "location", "gpu"} and body["node"]["gpu"] == "RTX 4090"
    assert DOLLARS.match(body["cost"]["estimated"])
    assert DOLLARS.match(body["cost"]["comparison"]["openai"])
    assert re.fullmatch(r"-?\d+\.\d%", body["cost"]["comparison"]["savings"])
    assert body["message"] == "Task queued for processing"
    assert response.headers["X-RateLimit-Limit"] == "100"
    assert response.headers["X-RateLimit-Remaining"] == "99"
    assert int(response.headers["X-RateLimit-Reset"]) > api.clock.now
    # committed before the id was returned
    assert await api.services.store.get_task(body["task_id"]) is not None


async def test_submit_names_the_expected_node_when_one_is_online(api: Harness) -> None:
    async with fake_worker(api, name="de", location="Germany"):
        body = await api.submit(REFERENCE_BODY)
        assert body["node"] == {"id": "node_de", "location": "Germany", "gpu": "RTX 4090"}


async def test_a_completed_task_reads_as_in_the_reference(api: Harness) -> None:
    async with fake_worker(api, name="de") as worker:
        task_id = (await api.submit(REFERENCE_BODY))["task_id"]
        assign = await worker.next_assign()
        assert assign["task_id"] == task_id and assign["input"] == {"prompt": REFERENCE_BODY["prompt"]}
        running = await wait_for_status(api, task_id, "running")
        assert running["node"]["id"] == "node_de" and running["completed_at"] is None
        api.clock.now += 3
        await worker.finish(task_id, "def fibonacci(n): ...", tokens=150, seconds=2.3)
        task = await wait_for_status(api, task_id, "completed")
    assert task["id"] == task_id
    assert task["result"] == "def fibonacci(n): ..."
    assert ISO.match(task["created_at"]) and ISO.match(task["completed_at"])
    assert task["completed_at"] > task["created_at"]
    assert task["processing_time"] == 2.3
    assert isinstance(task["cost"], float) and task["cost"] > 0
    assert task["tokens_used"] == 153  # generated + prompt tokens
    assert task["node"]["id"] == "node_de" and task["node"]["location"] == "Germany"


async def test_hot_path_answers_are_the_bytes_jsonify_writes(api: Harness) -> None:
    # POST /api/tasks and GET /api/tasks/<id> encode with routes.json_response (one
    # encoder, no provider lookups); what clients read must stay what Quart's jsonify
    # writes for the same object: compact separators, ASCII, a final newline
    submitted = await api.client.post("/api/tasks", json=REFERENCE_BODY)
    read = await api.client.get(f"/api/tasks/{(await submitted.get_json())['task_id']}")
    for response in (submitted, read):
        assert response.status_code == 200 and response.mimetype == "application/json"
        data = await response.get_data()
        async with api.test_app.app.app_context():
            expected = await jsonify(json.loads(data)).get_data()
        assert data == expected and data.endswith(b"}\n")


async def test_unknown_task_is_404_with_the_error_object(api: Harness) -> None:
    for method in ("get", "delete"):
        response = await getattr(api.client, method)("/api/tasks/task_1_nothere")
        assert response.status_code == 404
        body = await response.get_json()
        assert body["success"] is False and body["details"] and ISO.match(body["timestamp"])


async def test_a_bad_key_is_401_even_when_keys_are_optional(api: Harness) -> None:
    for header in ("Bearer ng_not-a-key", "Basic abc", "Bearer"):
        response = await api.client.post("/api/tasks", json={"prompt": "x"},
                                         headers={"Authorization": header})
        assert response.status_code == 401
        assert (await response.get_json())["success"] is False
    assert (await api.services.store.stats()).total_tasks == 0


async def test_required_auth_refuses_anonymous_callers_and_admits_keys(tmp_path: Path) -> None:
    async with running_app(tmp_path / "a.db", auth_required=True) as api:
        response = await api.client.post("/api/tasks", json={"prompt": "x"})
        assert response.status_code == 401
        key, _ = await api.services.store.create_key("premium", "t", None, None, api.clock())
        response = await api.client.post("/api/tasks", json={"prompt": "x"},
                                         headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "1000"
        # public endpoints stay public
        assert (await api.client.get("/api/network/status")).status_code == 200


async def test_a_revoked_key_stops_working_at_once(api: Harness) -> None:
    key, record = await api.services.store.create_key("beta", "t", None, None, api.clock())
    auth = {"Authorization": f"Bearer {key}"}
    assert (await api.client.get("/api/tasks", headers=auth)).status_code == 200
    await api.services.store.revoke_key(record.id, api.clock())
    assert (await api.client.get("/api/tasks", headers=auth)).status_code == 401


async def test_a_task_is_visible_only_to_the_key_that_created_it(api: Harness) -> None:
    store = api.services.store
    key_a, _ = await store.create_key("beta", "a", None, None, api.clock())
    key_b, _ = await store.create_key("beta", "b", None, None, api.clock())
    a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    owned = (await api.submit(None, **a))["task_id"]
    anonymous = (await api.submit())["task_id"]
    assert (await api.client.get(f"/api/tasks/{owned}", headers=a)).status_code == 200
    assert (await api.client.get(f"/api/tasks/{owned}", headers=b)).status_code == 404
    assert (await api.client.get(f"/api/tasks/{owned}")).status_code == 404
    assert (await api.client.delete(f"/api/tasks/{owned}", headers=b)).status_code == 404
    assert (await api.client.get(f"/api/tasks/{anonymous}", headers=b)).status_code == 200


async def test_the_hourly_budget_answers_429_then_refills(tmp_path: Path) -> None:
    tiers = {"beta": Tier("beta", 3, 10), "premium": Tier("premium", 30, 50)}
    async with running_app(tmp_path / "r.db", tiers=tiers) as api:
        for _ in range(3):
            await api.submit()
        response = await api.client.post("/api/tasks", json={"prompt": "x"})
        assert response.status_code == 429
        body = await response.get_json()
        assert body["success"] is False and "3 task submissions per hour" in body["details"]
        assert int(response.headers["Retry-After"]) == 1200  # one submission per 20 minutes
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert (await api.services.store.stats()).total_tasks == 3
        # reads are free and still report the budget
        listed = await api.client.get("/api/tasks")
        assert listed.status_code == 200 and listed.headers["X-RateLimit-Remaining"] == "0"
        api.clock.now += 1200
        assert (await api.client.post("/api/tasks", json={"prompt": "x"})).status_code == 200


async def test_tasks_in_flight_are_limited_per_caller(tmp_path: Path) -> None:
    tiers = {"beta": Tier("beta", 100, 2), "premium": Tier("premium", 1000, 50)}
    async with running_app(tmp_path / "f.db", tiers=tiers) as api:
        first = (await api.submit())["task_id"]
        await api.submit()
        response = await api.client.post("/api/tasks", json={"prompt": "x"})
        assert response.status_code == 429 and "2 tasks in flight" in (await response.get_json())["details"]
        assert response.headers["Retry-After"] == "1"
        remaining = int(response.headers["X-RateLimit-Remaining"])
        assert (await api.client.delete(f"/api/tasks/{first}")).status_code == 200
        response = await api.client.post("/api/tasks", json={"prompt": "x"})
        assert response.status_code == 200
        assert int(response.headers["X-RateLimit-Remaining"]) == remaining - 1  # 429 spent nothing


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'"prompt"', "JSON object"),
    (b"{}", "'prompt' field is required"),
    (b'{"prompt": null}', "'prompt' field is required"),
    (b'{"prompt": ""}', "'prompt' field must not be empty"),
    (b'{"prompt": "   "}', "'prompt' field must not be empty"),
    (b'{"prompt": 42}', "'prompt' field must be a string"),
    (b'{"prompt": "hi", "model": "gpt-4"}', "'model' field"),
    (b'{"prompt": "hi", "model": 7}', "'model' field must be a string"),
    (b'{"prompt": "hi", "priority": "urgent"}', "'priority' field"),
    (b'{"prompt": "hi", "max_tokens": 0}', "'max_tokens' field must be between"),
    (b'{"prompt": "hi", "max_tokens": true}', "'max_tokens' field must be an integer"),
    (b'{"prompt": "hi", "max_tokens": 2.5}', "'max_tokens' field must be an integer"),
    (b'{"prompt": "hi", "temperature": "hot"}', "'temperature' field must be a number"),
    (b'{"prompt": "hi", "temperature": NaN}', "'temperature' field must be a number"),
    (b'{"prompt": "hi", "top_p": 0}', "'top_p' field must be above 0"),
    (b'{"prompt": "hi", "max_token": 5}', "unknown field 'max_token'"),
    (json.dumps({"prompt": "x" * 40_000}).encode(), "'prompt' field is 40000 characters"),
]


@pytest.mark.parametrize(("body", "details"), BAD_BODIES)
async def test_bad_task_bodies_are_400_and_write_nothing(api: Harness, body: bytes,
                                                         details: str) -> None:
    response = await api.client.post("/api/tasks", data=body,
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    answer = await response.get_json()
    assert answer["success"] is False and answer["error"] == "Invalid request parameters"
    assert details in answer["details"] and ISO.match(answer["timestamp"])
    assert "X-RateLimit-Limit" in response.headers
    assert (await api.services.store.stats()).total_tasks == 0
    assert await api.services.store.list_tasks("anon:127.0.0.1", 10, None, None) == []


async def test_an_oversized_body_is_400(api: Harness) -> None:
    body = json.dumps({"prompt": "x" * (MAX_BODY_BYTES + 10)}).encode()
    response = await api.client.post("/api/tasks", data=body)
    assert response.status_code == 400
    assert str(MAX_BODY_BYTES) in (await response.get_json())["details"]


async def test_optional_fields_reach_the_worker(api: Harness) -> None:
    async with fake_worker(api) as worker:
        await api.submit({"prompt": "hi", "model": "llama2", "priority": "high",
                          "max_tokens": 16, "temperature": 0.7, "seed": 5})
        assign = await worker.next_assign()
    assert assign["model"] == "llama2:7b"
    assert assign["params"] == {"max_tokens": 16, "temperature": 0.7, "top_p": 1.0, "seed": 5}


async def test_cancel_a_queued_task_then_again(tmp_path: Path) -> None:
    # keep_finished: this test reads the coordinator's record of the ended task
    # (a live coordinator forgets ended tasks; the API reads them from its store).
    async with running_app(tmp_path / "api.db",
                           coordinator=CoordinatorConfig(keep_finished=True)) as api:
        task_id = (await api.submit())["task_id"]
        response = await api.client.delete(f"/api/tasks/{task_id}")
        assert response.status_code == 200
        body = await response.get_json()
        assert body["success"] is True and body["task"]["status"] == "cancelled"
        assert body["task"]["completed_at"] is not None
        assert api.services.coordinator.task(task_id).state.value == "cancelled"
        again = await api.client.delete(f"/api/tasks/{task_id}")
        assert again.status_code == 409 and "cancelled" in (await again.get_json())["details"]
        assert (await api.services.store.stats()).cancelled_tasks == 1


async def test_cancel_a_running_task_tells_its_worker(api: Harness) -> None:
    async with fake_worker(api) as worker:
        task_id = (await api.submit())["task_id"]
        await worker.next_assign()
        await wait_for_status(api, task_id, "running")
        assert (await api.client.delete(f"/api/tasks/{task_id}")).status_code == 200
        with trio.fail_after(5):
            while True:
                frame = json.loads(await worker.ws.receive())
                if frame["type"] == "cancel":
                    break
        assert frame["task_id"] == task_id


async def test_list_pages_through_the_callers_own_tasks(api: Harness) -> None:
    ids = [(await api.submit())["task_id"] for _ in range(5)]
    key, _ = await api.services.store.create_key("beta", "other", None, None, api.clock())
    await api.submit(None, Authorization=f"Bearer {key}")
    seen, cursor = [], None
    while True:
        query = "/api/tasks?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.client.get(query)).get_json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    await api.client.delete(f"/api/tasks/{ids[0]}")
    cancelled = await (await api.client.get("/api/tasks?status=cancelled")).get_json()
    assert [t["id"] for t in cancelled["tasks"]] == [ids[0]]
    for query in ("limit=0", "limit=101", "limit=x", "cursor=abc", "status=done"):
        response = await api.client.get(f"/api/tasks?{query}")
        assert response.status_code == 400, query


async def test_stream_sends_status_progress_and_done(api: Harness) -> None:
    async with fake_worker(api) as worker:
        task_id = (await api.submit())["task_id"]
        await worker.next_assign()
        await wait_for_status(api, task_id, "running")
        received: list[bytes] = []

        async def read_stream() -> None:
            response = await api.client.get(f"/api/tasks/{task_id}/stream")
            assert response.status_code == 200
            assert response.mimetype == "text/event-stream"
            received.append(await response.get_data())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stream)
            with trio.fail_after(5):
                while api.services.feed.subscriber_count(task_id) == 0:
                    await trio.sleep(0.01)
            await worker.ws.send(encode(Progress(task_id, {"tokens": ["Hel"], "text": "Hel"})))
            await worker.finish(task_id, "Hello")
    events = [block for block in received[0].decode().split("\n\n") if block]
    kinds = [block.split("\n")[0] for block in events]
    assert kinds[0] == "event: status" and "event: progress" in kinds
    assert kinds[-1] == "event: done"
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert done["status"] == "completed" and done["result"] == "Hello"


def replayed(feed: TaskFeed, task_id: str) -> list[str]:
    """The text pieces a new subscriber of the task is sent first."""
    with feed.subscribe(task_id) as probe:
        try:
            kind, data = probe.receive_nowait()
        except trio.WouldBlock:
            return []
    assert kind == "progress" and data["replayed"] is True
    return list(data["tokens"])


async def test_a_stream_opened_mid_task_starts_with_the_text_so_far(api: Harness) -> None:
    # The browser SDK test once read only the last token: its stream opened after
    # the others were sent. The first progress event of a stream replays them.
    async with fake_worker(api) as worker:
        task_id = (await api.submit())["task_id"]
        await worker.next_assign()
        await wait_for_status(api, task_id, "running")
        for index, piece in enumerate(["Hel", "lo"]):
            await worker.ws.send(encode(Progress(task_id, {"tokens": [piece], "index": index})))
        received: list[bytes] = []

        async def read_stream() -> None:
            response = await api.client.get(f"/api/tasks/{task_id}/stream")
            received.append(await response.get_data())

        with trio.fail_after(5):  # both pieces reached the feed
            while replayed(api.services.feed, task_id) != ["Hel", "lo"]:
                await trio.sleep(0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stream)
            with trio.fail_after(5):
                while api.services.feed.subscriber_count(task_id) == 0:
                    await trio.sleep(0.01)
            await worker.ws.send(encode(Progress(task_id, {"tokens": [" world"], "index": 2})))
            await worker.finish(task_id, "Hello world")
    events = [block.split("\n") for block in received[0].decode().split("\n\n") if block]
    progress = [json.loads(lines[1].split("data: ", 1)[1]) for lines in events
                if lines[0] == "event: progress"]
    assert progress[0] == {"tokens": ["Hel", "lo"], "index": 1, "replayed": True}
    assert "".join(t for event in progress for t in event["tokens"]) == "Hello world"


async def test_concurrent_submissions_respect_the_in_flight_limit(tmp_path: Path) -> None:
    tiers = {"beta": Tier("beta", 100, 2), "premium": Tier("premium", 1000, 50)}
    statuses: list[int] = []
    async with running_app(tmp_path / "c.db", tiers=tiers) as api:

        async def submit() -> None:
            response = await api.client.post("/api/tasks", json={"prompt": "x"})
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(submit)
        assert sorted(statuses) == [200, 200] + [429] * 8
        assert (await api.services.store.stats()).total_tasks == 2
