"""A live `python -m api` server for tests that need a real HTTP server (the SDKs,
the official `openai` client, raw sockets): started on a free port with one local
worker serving the demo model, stopped with Ctrl-C (SIGINT) at the end. The
`live_server` fixture (tests/conftest.py) shares one per test session."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import attrs
import httpx
import trio

from api.store import open_store
from tests.e2e.test_serve import read_line

REPO = Path(__file__).resolve().parents[1]
START_SECONDS = 60.0


@attrs.frozen
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    db: Path  # its database (keys can be created in it while it runs)


@contextmanager
def launched(command: list[str], log_path: Path, marker: str = "NeuroGrid API on",
             env: dict[str, str] | None = None
             ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A `neurogrid serve` process (any role) that has printed its first line:
    (the process, its URL). On the way out it gets SIGINT, unless it has already
    ended (a test killed it), and is killed if it does not stop."""
    log = open(log_path, "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        deadline = time.monotonic() + START_SECONDS
        line = ""
        while marker not in line:
            line = read_line(process, deadline - time.monotonic())
            assert line or process.poll() is None, log_path.read_text()
        yield process, line.split(" on ", 1)[1].strip()
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Stop a server or worker as an operator would (SIGINT), killing it if it has
    not exited within `timeout` seconds; nothing when it has exited already."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def run_live_server(tmp: Path, local_workers: int = 1) -> Iterator[LiveServer]:
    """A running server whose local workers have joined."""
    db = tmp / "live.db"
    command = [sys.executable, "-m", "api", "--port", "0", "--db", str(db),
               "--local-workers", str(local_workers), "--local-models", "demo"]
    with launched(command, tmp / "serve.log") as (process, url):
        deadline = time.monotonic() + START_SECONDS
        while httpx.get(f"{url}/api/network/status").json()["network"]["nodes_online"] < (
                local_workers):
            assert time.monotonic() < deadline, "the local worker never joined"
            time.sleep(0.1)
        yield LiveServer(url, db)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, (tmp / "serve.log").read_text()


def create_key(db: Path, tier: str = "premium", name: str = "tests") -> str:
    """A new API key in a (running) server's database: its secret."""

    async def create() -> str:
        async with open_store(str(db)) as store:
            secret, _ = await store.create_key(tier, name, None, None, time.time())
            return secret

    return trio.run(create)
