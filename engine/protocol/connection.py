# Connections: the one thing a NodeSession (coordinator side) or a worker agent
# needs of a transport - send a text frame, receive a text frame, close with a
# reason.
#
# Rules:
# - `Connection` is a Protocol; three implementations meet it: the in-memory pair
#   (tests, in-process simulated workers, virtual time), the trio-websocket
#   adapter here (the coordinator's own server and the worker's client), and the
#   API's hypercorn/Quart websocket adapter (api/), so one coordinator serves
#   workers on any of them.
# - `receive` returns text or raises ConnectionClosed (with the peer's or our own
#   close reason); `send` on a closed connection raises ConnectionClosed too.
#   Both are schedule points when they return (every adapter's receive waits on a
#   trio channel or stream): a session's reader hands a frame to the coordinator
#   without another checkpoint (Coordinator.report).
#   Transport-specific exceptions never leak out of an adapter.
# - `aclose(reason)` is idempotent and never raises; the reason reaches the peer
#   where the transport can carry one (websocket close reasons: <= 123 bytes).
# - Optional: `ping()` returns once the peer has answered a websocket ping (raises
#   ConnectionClosed when closed). WebSocketConnection has it; a worker uses it to
#   notice a coordinator that went silent without closing (a half-open TCP
#   connection, which TCP alone reports only after many minutes).
# - `serve_websocket` is the coordinator's standalone websocket endpoint on
#   WORKER_PATH; any other path is refused with HTTP 404 before the upgrade.
from __future__ import annotations

import math
from typing import Protocol

import trio
import trio_websocket

from .codec import MAX_FRAME_BYTES

WORKER_PATH = "/api/nodes/connect"
_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


class ConnectionClosed(Exception):
    """The connection is closed; `reason` says why, when known."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "connection closed")
        self.reason = reason


class Connection(Protocol):
    remote: str

    async def send(self, text: str) -> None: ...

    async def receive(self) -> str: ...

    async def aclose(self, reason: str = "") -> None: ...


class _Shared:
    """The close state both ends of an in-memory pair see."""

    __slots__ = ("reason", "closed")

    def __init__(self) -> None:
        self.reason = ""
        self.closed = False


class MemoryConnection:
    """One end of an in-memory connection pair (see `memory_connection_pair`)."""

    def __init__(self, send: trio.MemorySendChannel[str], receive: trio.MemoryReceiveChannel[str],
                 shared: _Shared, remote: str) -> None:
        self._send, self._receive, self._shared = send, receive, shared
        self.remote = remote

    async def send(self, text: str) -> None:
        if self._shared.closed:
            raise ConnectionClosed(self._shared.reason)
        try:
            await self._send.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(self._shared.reason) from None

    async def receive(self) -> str:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self._shared.reason) from None

    async def aclose(self, reason: str = "") -> None:
        if not self._shared.closed:
            self._shared.closed, self._shared.reason = True, reason
        # Closing our send side ends the peer's receive once it has read what we
        # sent; closing our receive side breaks the peer's sends at once.
        self._send.close()
        self._receive.close()


def memory_connection_pair(buffer: float = math.inf, names: tuple[str, str] = ("a", "b")
                           ) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected ends: what one sends, the other receives, in order."""
    shared = _Shared()
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[str](buffer)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[str](buffer)
    a = MemoryConnection(a_to_b_send, b_to_a_receive, shared, remote=f"memory:{names[1]}")
    b = MemoryConnection(b_to_a_send, a_to_b_receive, shared, remote=f"memory:{names[0]}")
    return a, b


def _close_reason(reason: str) -> str:
    data = reason.encode("utf-8")[:_CLOSE_REASON_BYTES]
    return data.decode("utf-8", "ignore")


def _reason_of(exc: trio_websocket.ConnectionClosed) -> str:
    close = exc.reason
    if close is None:
        return "connection lost"
    return close.reason or f"closed ({close.code} {close.name})"


class WebSocketConnection:
    """A trio-websocket connection as a `Connection` (server or client side)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        remote = ws.remote
        self.remote = (str(remote) if isinstance(remote, str)
                       else f"{remote.address}:{remote.port}")

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            reason = _reason_of(exc) if isinstance(exc, trio_websocket.ConnectionClosed) else ""
            raise ConnectionClosed(reason or "connection lost") from None

    async def receive(self) -> str:
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise ConnectionClosed(_reason_of(exc)) from None
        if isinstance(message, bytes):  # the protocol is text; let the codec judge it
            return message.decode("utf-8", "replace")
        return message

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            reason = _reason_of(exc) if isinstance(exc, trio_websocket.ConnectionClosed) else ""
            raise ConnectionClosed(reason or "connection lost") from None

    async def aclose(self, reason: str = "") -> None:
        try:
            await self._ws.aclose(code=1000, reason=_close_reason(reason) or None)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is already gone; closed either way


class ConnectionServer(Protocol):
    """What `serve_websocket` hands each accepted connection to (the Coordinator)."""

    async def serve_connection(self, conn: Connection) -> None: ...


async def serve_websocket(coordinator: ConnectionServer, host: str, port: int, *,
                          max_frame_bytes: int = MAX_FRAME_BYTES,
                          task_status: trio.TaskStatus[trio_websocket.WebSocketServer]
                          = trio.TASK_STATUS_IGNORED) -> None:
    """Accept workers on ws://host:port/api/nodes/connect until cancelled. Starts
    with the server object (its `.port` is the bound port when `port` is 0)."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        if request.path.split("?", 1)[0] != WORKER_PATH:
            await request.reject(404, body=f"workers connect to {WORKER_PATH}\n".encode())
            return
        ws = await request.accept()
        await coordinator.serve_connection(WebSocketConnection(ws))

    # The transport's own limit sits above the codec's, so that an oversized frame
    # reaches the codec and gets an `error` frame; far beyond it, the transport
    # closes with 1009 (message too big) before buffering the whole frame.
    await trio_websocket.serve_websocket(
        handler, host, port, ssl_context=None, max_message_size=4 * max_frame_bytes,
        task_status=task_status,
    )


__all__ = ["WORKER_PATH", "Connection", "ConnectionClosed", "ConnectionServer", "MemoryConnection",
           "memory_connection_pair", "WebSocketConnection", "serve_websocket"]
