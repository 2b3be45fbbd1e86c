"""`neurogrid serve` as a subprocess for the fault tests, and a raw HTTP/1.1 client
on plain sockets (the tests need to see exactly when the server closes)."""
from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.live_server import stop_process

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0


@contextmanager
def serving(tmp_path: Path, *args: str, preexec_fn: Callable[[], Any] | None = None,
            db: Path | None = None) -> Iterator[tuple[str, int, subprocess.Popen[str]]]:
    """`neurogrid serve --port 0 --local-workers 0 ARGS`: yields (host, port, process)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "engine.cli", "serve", "--port", "0",
               "--db", str(db or tmp_path / "serve.db"), "--local-workers", "0", *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                                   text=True, preexec_fn=preexec_fn,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert process.stdout is not None
            selector = selectors.DefaultSelector()
            selector.register(process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + START_SECONDS
            line = ""
            while "NeuroGrid API on" not in line:
                assert selector.select(max(0.0, deadline - time.monotonic())), log_path.read_text()
                line = process.stdout.readline()
                assert line or process.poll() is None, log_path.read_text()
            host, port = line.split("http://", 1)[1].strip().rsplit(":", 1)
            yield host, int(port), process
        finally:
            stop_process(process, timeout=20)


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or content_length is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Closed(Exception):
    """The server closed the connection (EOF or reset) before a whole response."""


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One whole response (Content-Length bodies): (status, headers, body). Raises
    Closed at EOF, TimeoutError when nothing completes within `timeout`."""
    deadline = time.monotonic() + timeout
    data = b""

    def more() -> None:
        nonlocal data
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed(data)
        data += chunk

    while b"\r\n\r\n" not in data:
        more()
    head, _, data = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(data) < length:
        more()
    return int(status_line.split()[1]), headers, data[:length]


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `timeout`; data it
    sends meanwhile is read and dropped."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
