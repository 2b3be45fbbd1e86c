# How the API is served over HTTP: hypercorn's settings (connection lifetimes,
# limits) and the ASGI connection class that makes quart-trio let hypercorn finish
# each exchange.
#
# Rules:
# - Every connection ends: `Connection: close` closes it after the answer; an idle
#   keep-alive connection is closed after KEEP_ALIVE_SECONDS; a connection whose
#   request headers do not arrive within that time is closed too (hypercorn's idle
#   timer runs until a request's headers are in); a body must arrive within the
#   body timeout (ApiConfig.body_timeout, `--body-timeout`; BODY_TIMEOUT_SECONDS by
#   default) of the route asking for it, else Quart answers 408; an answer sent
#   before the body was read (401, 408, 413) closes the connection, since the rest
#   of that body is still on the wire. So idle or slow clients cannot hold descriptors forever
#   and lock everyone else out (EMFILE at accept).
# - There is no read timeout on the socket itself: an SSE stream or a worker's
#   websocket legitimately receives nothing for long stretches.
#
# Theory (why ClosingHTTPConnection): the app's last `send` of a response (the
# empty final body message) runs the end of the exchange inside hypercorn, inline:
# h11's end of message, then StreamClosed, which queues `http.disconnect` for the
# app and then either starts the keep-alive idle timer or closes the socket.
# quart-trio's receiving task returns on that `http.disconnect` and cancels the
# request's nursery - and with it that same `send`, still running: the close
# (`send_eof`, `aclose`) or the timer start is cancelled at its first checkpoint.
# The socket then stays open with no timer. Shielding the last send (with a
# deadline, so a peer that stops reading cannot hold it) lets hypercorn finish;
# earlier sends stay cancellable, so an SSE stream still ends when its client
# goes away. tests/faults/repro_http_close.py reproduces it on a minimal app.
#
# The keep-alive timer itself: api/keepalive.py (one task for every connection).
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from quart_trio.asgi import TrioASGIHTTPConnection

KEEP_ALIVE_SECONDS = 5.0  # an idle keep-alive connection is closed after this
BODY_TIMEOUT_SECONDS = 30.0  # by default a request body must arrive within this (Quart: 408)
LAST_SEND_SECONDS = 10.0  # the shielded end of an exchange, at most
GRACEFUL_SECONDS = 5.0  # at shutdown, for exchanges in progress
MAX_HEADER_BYTES = 16 * 1024  # h11: request line and headers, at most

Send = Callable[[Any], Awaitable[None]]


def shielding_last(send: Send) -> Send:
    """`send`, with the final body message shielded from cancellation (bounded).
    A plain function that hands back `send`'s own awaitable for every other
    message: an `async def` wrapper would add its frame to every resumption of
    every send."""

    def shielded(message: Any) -> Awaitable[None]:
        if (message is not None and message.get("type") == "http.response.body"
                and not message.get("more_body", False)):
            return send_shielded(send, message)
        return send(message)

    return shielded


async def send_shielded(send: Send, message: Any) -> None:
    with trio.CancelScope(deadline=trio.current_time() + LAST_SEND_SECONDS, shield=True):
        await send(message)


class ClosingHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, letting hypercorn close or recycle the
    connection after the last byte of the answer (see above)."""

    async def handle_request(self, nursery: trio.Nursery, request: Any,  # type: ignore[override]
                             send: Send) -> None:
        await super().handle_request(nursery, request, shielding_last(send))


def hypercorn_config(host: str, port: int, access_log: bool, *,
                     keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
                     websocket_max_message_size: int | None = None) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # hypercorn's loggers go through `logging` like ours (one format, no duplicates)
    config.accesslog = logging.getLogger("hypercorn.access") if access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = keep_alive_seconds
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    if websocket_max_message_size is not None:
        config.websocket_max_message_size = websocket_max_message_size
    config.graceful_timeout = GRACEFUL_SECONDS
    return config


__all__ = ["BODY_TIMEOUT_SECONDS", "ClosingHTTPConnection", "KEEP_ALIVE_SECONDS",
           "LAST_SEND_SECONDS", "MAX_HEADER_BYTES", "hypercorn_config", "send_shielded",
           "shielding_last"]
