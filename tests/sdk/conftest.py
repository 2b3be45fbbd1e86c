"""Fixtures of the SDK tests: one live `python -m api` server (with one local
worker serving the demo model) for the whole session, shared by the Python and the
JavaScript SDK tests; and helpers that wait for it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.e2e.test_serve import read_line

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running server whose local worker has joined."""
    tmp = tmp_path_factory.mktemp("sdk-server")
    command = [sys.executable, "-m", "api", "--port", "0", "--db", str(tmp / "sdk.db"),
               "--local-workers", "1", "--local-models", "demo"]
    log = open(tmp / "serve.log", "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + START_SECONDS
        line = ""
        while "NeuroGrid API on" not in line:
            line = read_line(process, deadline - time.monotonic())
            assert line or process.poll() is None, (tmp / "serve.log").read_text()
        url = line.split(" on ", 1)[1].strip()
        while httpx.get(f"{url}/api/network/status").json()["network"]["nodes_online"] < 1:
            assert time.monotonic() < deadline, "the local worker never joined"
            time.sleep(0.1)
        yield url
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, (tmp / "serve.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
