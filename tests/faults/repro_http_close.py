"""A minimal reproduction of finding 6 (issue 11): quart-trio on hypercorn's trio
worker loses the connection's close after the last response byte.

    python tests/faults/repro_http_close.py          # the stock stack: hangs show
    python tests/faults/repro_http_close.py --fixed  # with api.server.ClosingHTTPConnection

Mechanism: the app's final `send` (the empty last body message) runs hypercorn's
whole end of the exchange inline: h11's EndOfMessage, then StreamClosed, which
puts `http.disconnect` on the app's receive channel (a checkpoint) and then
recycles the connection (keep-alive: start the idle timer) or closes it (Connection:
close, or a request body the app never read). quart-trio's `handle_messages`
returns on that `http.disconnect` and cancels the request's nursery, and so the
`send` still running in `handle_request`: the close (`send_eof`/`aclose`) or the
idle timer start is cancelled at its first checkpoint. The socket then stays open
with no timer: a client that waits for the close (Connection: close) hangs, and a
client that reuses the connection after an early answer (a 401 or 413 sent before
the body was read) sends its next request into a connection h11 still reads as
the old body. Whether `handle_messages` runs before the close is done depends on
trio's scheduling order, hence "about 1 in 3".
"""
from __future__ import annotations

import socket
import sys
import threading
import time

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

TRIES = 30


def make_app(fixed: bool) -> QuartTrio:
    app = QuartTrio("repro")
    if fixed:
        from api.server import ClosingHTTPConnection
        app.asgi_http_class = ClosingHTTPConnection

    @app.post("/early")
    async def early():  # answers before reading the body (as a 401 or 413 does)
        return "no", 401

    @app.get("/")
    async def index():
        return "ok"

    return app


def serve_in_thread(app: QuartTrio, port_box: list[int], stop: threading.Event) -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = 2.0

    async def main() -> None:
        async def shutdown() -> None:
            while not stop.is_set():
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            urls = await nursery.start(lambda task_status: serve(
                app, config, shutdown_trigger=shutdown, task_status=task_status))
            port_box.append(int(urls[0].rsplit(":", 1)[1]))

    trio.run(main)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False


def main() -> int:
    fixed = "--fixed" in sys.argv
    port_box: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=serve_in_thread, args=(make_app(fixed), port_box, stop))
    thread.start()
    while not port_box:
        time.sleep(0.05)
    port = port_box[0]
    hangs = {"Connection: close": 0, "early 401, body unread": 0}
    for _ in range(TRIES):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            hangs["Connection: close"] += not closed_within(sock, 1.0)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                         + b"x" * 1000)
            hangs["early 401, body unread"] += not closed_within(sock, 1.0)
    stop.set()
    thread.join()
    print(f"{'fixed' if fixed else 'stock'} stack, {TRIES} tries each: "
          + ", ".join(f"{kind}: {n} never closed" for kind, n in hangs.items()))
    return 1 if any(hangs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
