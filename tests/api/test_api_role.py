"""An API process (`--role api`) in this process, on a real PostgreSQL
(NEUROGRID_TEST_POSTGRES): submissions and cancellations go to the coordinator
through the database's inbox, a worker is sent to the leader, and an SSE client
sees its task end even when the notification never came (the rows it follows are
read again)."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterator

import pytest
import trio

from api import ApiConfig, create_role_app
from api.store import TaskChange, open_store
from engine.protocol import Error, Gpu, Hello, decode, encode

from .conftest import NO_POSTGRES, POSTGRES, Clock

if not POSTGRES:
    pytest.skip(NO_POSTGRES, allow_module_level=True)

from api.postgres_cluster import open_cluster  # noqa: E402  (psycopg: only with PostgreSQL)
from api.postgres_schema import connect, scratch_schema  # noqa: E402


@pytest.fixture
def url() -> Iterator[str]:
    with scratch_schema(POSTGRES) as schema_url:
        yield schema_url


@asynccontextmanager
async def api_process(url: str) -> AsyncIterator[Any]:
    app = create_role_app(ApiConfig(db=url, role="api", clock=Clock()))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def submit(client: Any) -> str:
    response = await client.post("/api/tasks", json={"prompt": "Hello", "max_tokens": 8})
    assert response.status_code == 200, await response.get_data()
    return str((await response.get_json())["task_id"])


async def test_submissions_and_cancellations_reach_the_coordinator_through_the_inbox(url):
    async with api_process(url) as client, open_store(url) as store:
        kept, cancelled = await submit(client), await submit(client)
        response = await client.delete(f"/api/tasks/{cancelled}")
        assert response.status_code == 200
        assert (await response.get_json())["task"]["status"] == "cancelled"
        again = await client.delete(f"/api/tasks/{cancelled}")
        assert again.status_code == 409  # it has ended: nothing more to cancel
        batch = await (await open_cluster(store)).claim_inbox()
    assert [r.id for r in batch.tasks] == [kept] and batch.cancels == (cancelled,)


async def test_a_worker_is_sent_to_the_leader(url):
    async with api_process(url) as client:
        with connect(url) as conn:
            conn.execute("INSERT INTO coordinator_leader (id, url, holder, since) VALUES "
                         "(1, 'ws://leader:9/api/nodes/connect', 'h:1', 0)")
        with trio.fail_after(10):
            while True:  # the API process reads the leader each second
                async with client.websocket("/api/nodes/connect") as ws:
                    await ws.send(encode(Hello(token="t", gpu=Gpu("RTX 4090", 24.0),
                                               models=("llama2:7b",), slots=1)))
                    error = decode(await ws.receive())
                assert isinstance(error, Error) and "not the leader" in error.message
                if error.leader:
                    break
                await trio.sleep(0.2)
    assert error.leader == "ws://leader:9/api/nodes/connect" and error.retry


async def test_an_sse_client_sees_the_end_without_its_notification(url):
    async with api_process(url) as client, open_store(url) as store:
        task_id = await submit(client)
        with connect(url) as conn:  # the end will come without a NOTIFY
            conn.execute("ALTER TABLE tasks DISABLE TRIGGER task_status_notify")
        received: list[bytes] = []

        async def read_stream() -> None:
            response = await client.get(f"/api/tasks/{task_id}/stream")
            received.append(await response.get_data())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stream)
            await trio.sleep(0.5)  # subscribed, reading the open row
            await store.change_task(TaskChange(task_id, "completed", 1.0, result="done"))
            with trio.fail_after(10):
                while not received:
                    await trio.sleep(0.05)
    assert received[0].decode().rstrip().rsplit("\n", 1)[-1].startswith("data: ")
    assert '"status": "completed"' in received[0].decode().split("event: done", 1)[1]
