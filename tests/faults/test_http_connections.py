"""Finding 6 of issue 11: every HTTP connection ends. `Connection: close` closes,
an idle keep-alive connection is closed after the keep-alive timeout, a connection
reused after an early answer (a 400 for an oversize body, a 401) never hangs, a
body that stops arriving is answered 408 after the body timeout and its connection
closed, and a server under a low descriptor limit serves new clients once idle
connections time out (instead of failing every accept with EMFILE). Against `neurogrid serve`
as a subprocess, with raw sockets. The mechanism is in api/server.py; the minimal
reproduction is tests/faults/repro_http_close.py."""
from __future__ import annotations

import json
import resource
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from api import ApiConfig
from api.__main__ import build_parser
from api.validation import MAX_TASK_BODY_BYTES

from .serving import Closed, closed_within, read_response, request_bytes, serving

KEEP_ALIVE = 1.0  # the servers here close idle connections after this long
BODY_TIMEOUT = 1.0  # and answer 408 to a body that has not arrived after this long
TRIES = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with serving(tmp_path_factory.mktemp("http"), "--keep-alive", str(KEEP_ALIVE),
                 "--body-timeout", str(BODY_TIMEOUT)) as (host, port, _):
        yield host, port


def connect(server: tuple[str, int]) -> socket.socket:
    return socket.create_connection(server, timeout=5.0)


def test_connection_close_is_honoured(server: tuple[str, int]) -> None:
    for _ in range(TRIES):
        with connect(server) as sock:
            sock.sendall(request_bytes("GET", "/health", headers={"Connection": "close"}))
            status, headers, _ = read_response(sock, 5.0)
            assert status == 200 and headers.get("connection") == "close"
            assert closed_within(sock, KEEP_ALIVE / 2), "the server kept the connection open"


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
        server: tuple[str, int]) -> None:
    with connect(server) as sock:
        for _ in range(3):  # kept alive between requests
            sock.sendall(request_bytes("GET", "/health"))
            assert read_response(sock, 5.0)[0] == 200
        started = time.monotonic()
        assert closed_within(sock, KEEP_ALIVE + 4.0), "an idle connection was never closed"
        assert time.monotonic() - started >= KEEP_ALIVE * 0.8


def reuse_after(server: tuple[str, int], first: bytes, status: int, rest: bytes = b"") -> None:
    """Send `first` (answered with `status`), then `rest` of its body (late: after
    the answer) and a second request on the same connection: it is answered, or the
    connection is closed (the client reconnects); either way within a bound, never
    a hang."""
    with connect(server) as sock:
        sock.sendall(first)
        assert read_response(sock, 5.0)[0] == status
        try:
            sock.sendall(rest + request_bytes("GET", "/health"))
            assert read_response(sock, 5.0)[0] == 200
        except (Closed, BrokenPipeError, ConnectionResetError):
            pass  # closed: what a client must expect after an unread body


def test_a_connection_reused_after_an_oversize_body_never_hangs(server: tuple[str, int]) -> None:
    # over the largest body the tasks route takes (one carrying an audio file)
    oversize = b'{"prompt": "' + b"x" * 8192 + b'"}'
    for _ in range(TRIES):
        reuse_after(server, request_bytes("POST", "/api/tasks", oversize[:4096],
                                          content_length=MAX_TASK_BODY_BYTES + 10), 400)


def test_a_connection_reused_after_a_401_never_hangs(server: tuple[str, int]) -> None:
    body = b'{"prompt": "hello"}'
    unauthorized = request_bytes("POST", "/api/tasks", body,
                                 headers={"Authorization": "Bearer nope"})
    for _ in range(TRIES):
        reuse_after(server, unauthorized, 401)  # the body came with the headers
        head = unauthorized[:-len(body)]
        reuse_after(server, head, 401, rest=body)  # the body comes after the answer


def test_a_body_that_stops_arriving_is_answered_408_and_its_connection_closed(
        server: tuple[str, int]) -> None:
    body = json.dumps({"prompt": "hello there", "max_tokens": 4}).encode()
    with connect(server) as stalled:
        # the headers promise the whole body; a third of it comes, then nothing
        stalled.sendall(request_bytes("POST", "/api/tasks", body[:len(body) // 3],
                                      headers={"Content-Type": "application/json"},
                                      content_length=len(body)))
        started = time.monotonic()
        # meanwhile the server answers other clients
        with connect(server) as other:
            other.sendall(request_bytes("GET", "/health"))
            assert read_response(other, 5.0)[0] == 200
        status, headers, answer = read_response(stalled, BODY_TIMEOUT + 5.0)
        assert time.monotonic() - started >= BODY_TIMEOUT * 0.8  # it waited for the body
        error = json.loads(answer)
        assert (status, error["success"], error["error"]) == (408, False, "Request Timeout")
        assert headers["content-type"] == "application/json"
        # the rest of the body is still owed on this connection: the server closes it
        assert closed_within(stalled, KEEP_ALIVE + 2.0), "the stalled connection stayed open"
    with connect(server) as after:  # and goes on serving
        after.sendall(request_bytes("GET", "/health"))
        assert read_response(after, 5.0)[0] == 200


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_a_body_timeout_that_is_not_a_positive_number_is_refused(
        bad: float, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="body_timeout"):
        ApiConfig(body_timeout=bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--body-timeout", str(bad)])
    assert "--body-timeout" in capsys.readouterr().err


FD_LIMIT = 256
IDLE_CONNECTIONS = 240


def low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_idle_connections_under_a_low_descriptor_limit_do_not_lock_clients_out(
        tmp_path: Path) -> None:
    with serving(tmp_path, "--keep-alive", str(KEEP_ALIVE),
                 preexec_fn=low_descriptor_limit) as (host, port, process):
        idle: list[socket.socket] = []
        try:
            for _ in range(IDLE_CONNECTIONS):  # each asks once, then idles (keep-alive)
                sock = socket.create_connection((host, port), timeout=10.0)
                idle.append(sock)
                sock.sendall(request_bytes("GET", "/health"))
            answered = 0
            for sock in idle:
                try:
                    answered += read_response(sock, 10.0)[0] == 200
                except (Closed, TimeoutError):
                    pass  # not accepted while descriptors ran out: fine, if it recovers
            assert answered > 0
            # A new client is served within a bound: idle connections are closed.
            deadline = time.monotonic() + KEEP_ALIVE + 15.0
            while True:
                assert time.monotonic() < deadline, "a new client was never served"
                try:
                    with socket.create_connection((host, port), timeout=2.0) as fresh:
                        fresh.sendall(request_bytes("GET", "/health"))
                        if read_response(fresh, 2.0)[0] == 200:
                            break
                except (Closed, TimeoutError, ConnectionError):
                    time.sleep(0.2)
            # and every idle one is closed (one accepted late, once descriptors were
            # free, is answered, then idles for its own keep-alive timeout)
            deadline = time.monotonic() + KEEP_ALIVE + 5.0
            assert all(closed_within(sock, max(0.1, deadline - time.monotonic()))
                       for sock in idle)
            assert process.poll() is None
        finally:
            for sock in idle:
                sock.close()


def test_request_headers_that_never_finish_are_cut_off(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < KEEP_ALIVE + 4.0:  # a byte now and then
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_within(sock, 0.3):
                closed = True
                break
        assert closed, "a client that never finishes its headers kept its connection"
