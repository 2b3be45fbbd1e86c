"""A coordinator that goes silent without closing (half-open connection): the worker
notices through websocket pings and reconnects. Real sockets on 127.0.0.1, real time.

The fake coordinator speaks websockets with wsproto (trio-websocket's own protocol
engine) so that it can do what a real server never does on its own: stop answering
pings while keeping the TCP connection open."""
from __future__ import annotations

import functools
import logging

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from engine.protocol import Welcome, encode
from engine.worker.agent import Worker, WorkerConfig, websocket_connector
from tests.engine.runtime.harness import SimExecutor


class SilentCoordinator:
    """Accepts a websocket, sends `welcome`, then answers pings only while
    `answering`. Counts connections."""

    def __init__(self, answering: bool) -> None:
        self.answering = answering
        self.connections = 0
        self.pings = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        ws = WSConnection(ConnectionType.SERVER)
        welcomed = False
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        await stream.send_all(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage) and not welcomed:  # the hello
                        welcomed = True
                        welcome = encode(Welcome(f"node_{self.connections}", 60.0))
                        await stream.send_all(ws.send(TextMessage(welcome)))
                    elif isinstance(event, Ping):
                        self.pings += 1
                        if self.answering:
                            await stream.send_all(ws.send(event.response()))


async def serve_and_run_worker(coordinator: SilentCoordinator, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, coordinator.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/api/nodes/connect"
        config = WorkerConfig(token="t", keepalive_interval=0.2, keepalive_timeout=0.3,
                              backoff_initial=0.05, backoff_max=0.05)
        worker = Worker(config, SimExecutor(),
                        lambda: websocket_connector(url, disconnect_timeout=0.3))
        nursery.start_soon(worker.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_worker_drops_a_silent_coordinator_and_reconnects(caplog):
    coordinator = SilentCoordinator(answering=False)
    with caplog.at_level(logging.WARNING, logger="engine.worker.agent"):
        await serve_and_run_worker(coordinator, 3.0)
    assert coordinator.connections >= 2  # it came back after giving up on the first
    assert any("coordinator silent" in r.getMessage() for r in caplog.records)


async def test_worker_keeps_a_coordinator_that_answers_pings(caplog):
    coordinator = SilentCoordinator(answering=True)
    with caplog.at_level(logging.WARNING, logger="engine.worker.agent"):
        await serve_and_run_worker(coordinator, 1.5)
    assert coordinator.connections == 1 and coordinator.pings >= 3
    assert not any("coordinator silent" in r.getMessage() for r in caplog.records)
