# A prompt, clean shutdown of the server.
#
# Where the time went (4 to 15 s on SIGTERM): hypercorn stops accepting, then
# waits up to its graceful_timeout (5 s) for every open connection to end - and
# worker websockets and server-sent-event streams never end on their own - before
# the app's lifespan shutdown could even begin (which closes the coordinator, and
# with it the worker sessions); the local worker processes were told to stop
# only after all that, and each had up to WORKER_STOP_SECONDS more.
#
# Theory of operation (`Closing.begin`, called by `neurogrid serve` when the signal
# comes, before hypercorn is told to stop):
#   1. the caller stops its local workers first (SIGTERM: each finishes its
#      running tasks and leaves), so their tasks end normally;
#   2. every worker websocket still open (remote workers) is closed with the
#      reason "server shutting down": each session ends cleanly, its node leaves
#      and the coordinator re-queues what it ran (the store keeps it for the next
#      start); a remote worker reconnects when the server is back;
#   3. requests in flight (not streams) and the closed sockets' sessions are
#      waited for, up to a bound;
# then hypercorn stops with a short grace (streams are cut: their clients
# reconnect), and the lifespan closes the coordinator and lets the store commit
# what is queued.
#
# Rules:
# - Nothing is lost: a task not finished stays in the store as queued or running,
#   and a restart hands it out again (app.py).
from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Quart, websocket

from .request_hooks import request_hooks

log = logging.getLogger("neurogrid")
CLOSING_KEY = "neurogrid.closing"  # app.extensions key
REQUEST_GRACE_SECONDS = 10.0  # waiting for requests in flight at shutdown, at most
SHUTDOWN_REASON = "server shutting down"
GOING_AWAY = 1001  # RFC 6455: the endpoint is going away


class Closing:
    def __init__(self) -> None:
        self.sockets: set[Any] = set()  # open websockets (Quart's objects)
        self.in_flight = 0  # plain requests being answered
        self.began = False  # new worker connections are refused from then on
        self.stopping = trio.Event()  # set by `begin`: long-lived streams end
        self._idle = trio.Event()
        self._idle.set()
        self._socket_gone = trio.Event()

    async def pause(self, seconds: float) -> bool:
        """Sleep `seconds`, or less should shutdown begin: True when it has (a
        stream's loop then ends)."""
        with trio.move_on_after(seconds):
            await self.stopping.wait()
        return self.stopping.is_set()

    def socket_ended(self, ws: Any) -> None:
        self.sockets.discard(ws)
        self._socket_gone.set()

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    def request_ended(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight == 0:
            self._idle.set()

    async def begin(self, request_grace: float = REQUEST_GRACE_SECONDS) -> None:
        """Close the worker sockets, then wait (at most `request_grace`) for the
        requests in flight and for the sockets' sessions to end."""
        self.began = True
        self.stopping.set()
        sockets = list(self.sockets)
        for ws in sockets:
            try:
                await ws.close(GOING_AWAY, SHUTDOWN_REASON)
            except Exception:  # already closed by the peer
                pass
        if sockets:
            log.info("shutting down: closed %d worker connection(s)", len(sockets))
        with trio.move_on_after(request_grace) as waited:
            await self._idle.wait()
            while self.sockets:  # each session ends once its worker acknowledges
                self._socket_gone = trio.Event()
                await self._socket_gone.wait()
        if waited.cancelled_caught:
            log.warning("shutting down with %d request(s) and %d connection(s) still open "
                        "after %.0f s", self.in_flight, len(self.sockets), request_grace)


def install_closing(app: Quart) -> Closing:
    closing = app.extensions[CLOSING_KEY] = Closing()

    hooks = request_hooks(app)  # counted first, uncounted at teardown: never one sided
    hooks.watch.append(lambda req: closing.request_started())
    hooks.end.append(closing.request_ended)

    @app.before_websocket
    async def note_socket() -> tuple[str, int] | None:
        if closing.began:
            return SHUTDOWN_REASON, 503
        closing.sockets.add(websocket._get_current_object())  # type: ignore[attr-defined]
        return None

    @app.teardown_websocket
    async def forget_socket(exc: BaseException | None) -> None:
        closing.socket_ended(websocket._get_current_object())  # type: ignore[attr-defined]

    return closing


def app_closing(app: Quart) -> Closing:
    closing: Closing = app.extensions[CLOSING_KEY]
    return closing


__all__ = ["CLOSING_KEY", "Closing", "REQUEST_GRACE_SECONDS", "app_closing", "install_closing"]
