# The worker endpoint: ws://HOST:PORT/api/nodes/connect on the API's own port.
#
# Rules:
# - Workers speak the worker protocol (DESIGN.md) to the coordinator; this module
#   only adapts a Quart/hypercorn websocket to the runtime's `Connection` protocol
#   (engine/protocol/connection.py) and hands it to `coordinator.serve_connection`.
#   Tokens are checked by the coordinator, through the verifier the app gives it.
# - `receive` raises ConnectionClosed when the worker goes away, and `send` after
#   that raises it too (hypercorn silently drops frames sent on a closed socket).
#   For that, `EndingWebsocketConnection` replaces quart-trio's ASGI websocket
#   class: where quart-trio cancels the handler when the peer disconnects, it ends
#   the handler's receive channel instead, so the coordinator's session sees a
#   clean ConnectionClosed and runs its own clean-up (re-queueing the node's tasks)
#   without being cancelled half-way.
from __future__ import annotations

from typing import Any

import trio
from quart import websocket
from quart.signals import websocket_received
from quart_trio.asgi import TrioASGIWebsocketConnection

from engine.protocol import ConnectionClosed, ConnectionServer

# RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
CLOSE_REASON_BYTES = 123


class EndingWebsocketConnection(TrioASGIWebsocketConnection):
    async def handle_messages(  # type: ignore[override]  # quart-trio's own signature takes a nursery
            self, nursery: trio.Nursery, receive: Any) -> None:
        while True:
            event = await receive()
            if event["type"] == "websocket.receive":
                message = event.get("bytes") or event.get("text") or ""
                await websocket_received.send_async(
                    message, _sync_wrapper=self.app.ensure_async)  # type: ignore[arg-type]  # blinker's overloads
                await self.send_channel.send(message)
            elif event["type"] == "websocket.disconnect":
                break
        await self.send_channel.aclose()  # the handler's receive() now ends


class QuartWebsocketConnection:
    """The current Quart websocket as a runtime `Connection`."""

    def __init__(self) -> None:
        self._ws = websocket._get_current_object()  # type: ignore[attr-defined]
        address = self._ws.scope.get("client") or ("unknown", 0)
        self.remote = f"{address[0]}:{address[1]}"
        self._closed_reason: str | None = None

    async def send(self, text: str) -> None:
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        await self._ws.send(text)

    async def receive(self) -> str:
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        try:
            message = await self._ws.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._closed_reason = self._closed_reason or "connection lost"
            raise ConnectionClosed(self._closed_reason) from None
        if isinstance(message, bytes):  # the protocol is text; let the codec judge it
            return message.decode("utf-8", "replace")
        return str(message)

    async def aclose(self, reason: str = "") -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason or "closed by the coordinator"
        data = reason.encode("utf-8")[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")
        try:
            await self._ws.close(1000, data)
        except RuntimeError:  # already closed by the peer
            pass


async def serve_worker_socket(coordinator: ConnectionServer) -> None:
    """The body of the websocket route: accept, then let the coordinator talk."""
    await websocket.accept()
    await coordinator.serve_connection(QuartWebsocketConnection())


__all__ = ["EndingWebsocketConnection", "QuartWebsocketConnection", "serve_worker_socket"]
