"""Fixtures for the API tests: an app on a fresh database, served through Quart's
test client with its lifespan (store + coordinator) running, and a fake worker that
speaks the worker protocol over the app's own websocket endpoint."""
from __future__ import annotations

import json
import os
import random
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import pytest
import trio

from api import ApiConfig, create_app
from api.app import Services
from engine.core import Usage
from engine.protocol import Gpu, Hello, Result, decode, encode

# A PostgreSQL database the tests may create schemas in (the PostgreSQL store's
# tests run only when it is set).
POSTGRES = os.environ.get("NEUROGRID_TEST_POSTGRES", "")
NO_POSTGRES = ("NEUROGRID_TEST_POSTGRES is not set: give it the postgresql:// URL of a database "
               "the tests may create schemas in (`bash .ci/postgres.sh` starts one and prints it)")


@attrs.define
class Clock:
    """Wall-clock time the tests move by hand."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Harness:
    client: Any
    services: Services
    clock: Clock
    test_app: Any

    async def submit(self, body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
        response = await self.client.post("/api/tasks", json=body or {"prompt": "Hello world"},
                                          headers=headers)
        assert response.status_code == 200, await response.get_data()
        return await response.get_json()


@asynccontextmanager
async def running_app(db: Path, **config: Any) -> AsyncIterator[Harness]:
    clock = config.pop("clock", None) or Clock()
    app = create_app(ApiConfig(db=str(db), clock=clock, **config))
    async with app.test_app() as test_app:
        yield Harness(test_app.test_client(), app.extensions["neurogrid"], clock, test_app)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "api.db") as harness:
        yield harness


@attrs.define
class FakeWorker:
    """A worker on the app's websocket endpoint that completes what it is given
    with a fixed text (or holds tasks until told, with `auto=False`)."""

    ws: Any
    node_id: str
    assigned: list[dict[str, Any]] = attrs.field(factory=list)

    async def next_assign(self) -> dict[str, Any]:
        while True:
            frame = json.loads(await self.ws.receive())
            if frame["type"] == "assign":
                self.assigned.append(frame)
                return frame

    async def finish(self, task_id: str, text: str, tokens: int = 7,
                     seconds: float = 0.5) -> None:
        usage = Usage(seconds=seconds, tokens=tokens, prompt_tokens=3)
        await self.ws.send(encode(Result(task_id=task_id, output=text, usage=usage)))


@asynccontextmanager
async def fake_worker(harness: Harness, name: str = "test", location: str = "Germany",
                      gpu: str = "RTX 4090") -> AsyncIterator[FakeWorker]:
    token = await harness.services.store.create_node_token(name, harness.clock())
    async with harness.client.websocket("/api/nodes/connect") as ws:
        await ws.send(encode(Hello(token=token, name=name, location=location,
                                   gpu=Gpu(gpu, 24.0), models=("llama2:7b",), slots=1)))
        welcome = decode(await ws.receive())
        yield FakeWorker(ws, welcome.node_id)


async def wait_for_status(harness: Harness, task_id: str, status: str,
                          timeout: float = 5.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            task = (await (await harness.client.get(f"/api/tasks/{task_id}")).get_json())["task"]
            if task["status"] == status:
                return task
            await trio.sleep(0.01)


@asynccontextmanager
async def agent_worker(harness: Harness, runners: dict[str, Any], name: str = "agent",
                       weights: dict[str, str] | None = None) -> AsyncIterator[Any]:
    """A real worker agent (engine.worker.Worker) running `runners` in threads,
    connected to the app's coordinator over an in-memory connection."""
    from engine.protocol import memory_connection_pair
    from engine.worker import Worker, WorkerConfig
    from engine.worker.node import ThreadedExecutor

    token = await harness.services.store.create_node_token(name, harness.clock())
    executor = ThreadedExecutor(runners, max_threads=2)

    @asynccontextmanager
    async def connect() -> AsyncIterator[Any]:
        client, server = memory_connection_pair()
        nursery.start_soon(harness.services.coordinator.serve_connection, server)
        try:
            yield client
        finally:
            await client.aclose("worker gone")

    async with trio.open_nursery() as nursery:
        worker = Worker(WorkerConfig(token=token, name=name, gpu="RTX 4090", vram_gb=24.0,
                                     weights=weights or {}),
                        executor, connect, rng=random.Random(1))
        nursery.start_soon(worker.run)
        with trio.fail_after(10):
            while not harness.services.coordinator.snapshot().nodes:
                await trio.sleep(0.01)
        yield worker
        nursery.cancel_scope.cancel()
