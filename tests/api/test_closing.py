"""api/shutdown.py: at shutdown the server closes worker connections itself (the
node leaves cleanly, its running task goes back to the queue) and refuses new
ones, and waits for requests in flight."""
from __future__ import annotations

import pytest
import trio
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from api.shutdown import Closing, app_closing
from engine.protocol import Gpu, Hello, encode

from .conftest import Harness, fake_worker, wait_for_status


async def test_worker_connections_are_closed_and_new_ones_refused(api: Harness) -> None:
    closing = app_closing(api.test_app.app)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with fake_worker(api, name="remote") as worker:
                task_id = (await api.submit())["task_id"]
                await worker.next_assign()
                await wait_for_status(api, task_id, "running")
                assert len(closing.sockets) == 1
                nursery.start_soon(closing.begin, 30.0)  # returns once the session ended
                with pytest.raises(WebsocketDisconnectError) as closed:
                    await worker.ws.receive()  # the server closed it: going away
                assert closed.value.args[0] == 1001
        assert closing.sockets == set()
    with trio.fail_after(10):  # the session ended cleanly: its task went back
        await wait_for_status(api, task_id, "queued")
    assert api.services.coordinator.snapshot().nodes == ()
    token = await api.services.store.create_node_token("late", api.clock())
    statuses: list[int] = []
    try:
        async with api.client.websocket("/api/nodes/connect") as ws:
            await ws.send(encode(Hello(token=token, name="late", location="",
                                       gpu=Gpu("RTX 4090", 24.0), models=("llama2:7b",),
                                       slots=1)))
            await ws.receive()
    except* WebsocketResponseError as group:  # the handshake is refused
        statuses = [exc.response.status_code for exc in group.exceptions]  # type: ignore[attr-defined]
    assert statuses == [503]
    assert api.services.coordinator.snapshot().nodes == ()


async def test_begin_waits_for_requests_in_flight() -> None:
    closing = Closing()
    closing.request_started()
    finished: list[float] = []

    async def answer() -> None:
        await trio.sleep(0.2)
        closing.request_ended()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        start = trio.current_time()
        await closing.begin(request_grace=30)
        finished.append(trio.current_time() - start)
    assert closing.in_flight == 0 and closing.began and 0.2 <= finished[0] < 30
