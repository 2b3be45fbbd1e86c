"""SIGTERM drains `neurogrid serve` in order (api/shutdown.py): its local worker
leaves first, then a remote worker's connection and the dashboard's event stream
are closed by the server, requests in flight are answered, the store keeps every task, exit 0.
(How long it takes is measured by hand, not here: see the report / docs.)"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.e2e.test_serve import REPO, START_SECONDS, read_line


def test_sigterm_drains_workers_streams_and_requests(tmp_path: Path) -> None:
    db = tmp_path / "stop.db"
    created = subprocess.run([sys.executable, "-m", "engine.cli", "nodes", "create", "--name",
                              "remote", "--db", str(db)], cwd=REPO, capture_output=True,
                             text=True, check=True)
    remote_token = created.stdout.splitlines()[1]
    command = [sys.executable, "-m", "api", "--port", "0", "--db", str(db),
               "--local-workers", "1", "--local-models", "demo"]
    log_path = tmp_path / "serve.log"
    remote = None
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                                   text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + START_SECONDS
            line = ""
            while "NeuroGrid API on" not in line:
                line = read_line(process, deadline - time.monotonic())
                assert line or process.poll() is None, log_path.read_text()
            url = line.split(" on ", 1)[1].strip()
            # a worker the server did not start (a remote node operator's)
            remote = subprocess.Popen(
                [sys.executable, "-m", "engine.worker", "--coordinator",
                 url.replace("http://", "ws://") + "/api/nodes/connect", "--name", "remote",
                 "--location", "far", "--demo"], cwd=REPO, stderr=log,
                env={**os.environ, "NEUROGRID_TOKEN": remote_token})
            while httpx.get(f"{url}/api/network/status").json()["network"]["nodes_online"] < 2:
                assert time.monotonic() < deadline, "the local workers never joined"
                time.sleep(0.1)
            task_id = httpx.post(f"{url}/api/tasks", json={"prompt": "hi", "max_tokens": 4}
                                 ).json()["task_id"]
            events: list[str] = []
            stream_ended = threading.Event()

            def watch() -> None:
                with httpx.stream("GET", f"{url}/api/network/events", timeout=60) as response:
                    for text in response.iter_lines():
                        if text.startswith("event:"):
                            events.append(text)
                stream_ended.set()

            threading.Thread(target=watch, daemon=True).start()
            while not events:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log_path.read_text()
            # the server ended the stream itself (the client would have waited on)
            assert stream_ended.wait(10)
        finally:
            for child in (process, remote):
                if child is not None and child.poll() is None:
                    child.kill()
    text = log_path.read_text()
    order = [text.index(marker) for marker in (
        "shutting down: stopping local workers", "node node_local-1 left",
        "closed 1 worker connection(s)", "node node_remote left", "shutting down: drained in")]
    assert order == sorted(order)
    with sqlite3.connect(db) as conn:
        (status,) = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
    assert status in ("completed", "queued", "running")  # never lost
