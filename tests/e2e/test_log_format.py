"""`--log-format json` for a whole network's logs (engine/logs.py): `neurogrid serve`
and the local worker it starts write one JSON object per line on stderr, the same
keys in both (time, level, logger, message, then the record's structured
fields); `neurogrid worker --log-format json` on its own does too, its failure line
included."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.live_server import START_SECONDS, launched

BASE_KEYS = {"time", "level", "logger", "message"}  # every JSON line has these


def json_lines(text: str) -> list[dict[str, object]]:
    """Each line of `text` as the JSON object it must be (a line that is not one
    fails the test, naming it)."""
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(value, dict), line
        lines.append(value)
    return lines


def test_serve_and_its_local_worker_write_the_same_json_lines(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "api", "--port", "0", "--db", str(tmp_path / "j.db"),
               "--local-workers", "1", "--local-models", "demo", "--log-format", "json"]
    log_path = tmp_path / "serve.log"
    with launched(command, log_path) as (_, url):
        deadline = time.monotonic() + START_SECONDS
        while httpx.get(f"{url}/api/network/status").json()["network"]["nodes_online"] < 1:
            assert time.monotonic() < deadline, "the local worker never joined"
            time.sleep(0.1)
        task_id = httpx.post(f"{url}/api/tasks", json={"prompt": "hi", "max_tokens": 4}
                             ).json()["task_id"]
        while httpx.get(f"{url}/api/tasks/{task_id}").json()["task"]["status"] != "completed":
            assert time.monotonic() < deadline, "the task never completed"
            time.sleep(0.1)
    lines = json_lines(log_path.read_text())
    assert all(BASE_KEYS <= line.keys() for line in lines)
    worker = [line for line in lines if str(line["logger"]).startswith("engine.worker")]
    server = [line for line in lines if not str(line["logger"]).startswith("engine.worker")]
    # the worker's own lines: its start, its connection, its drain and stop
    messages = " | ".join(str(line["message"]) for line in worker)
    assert "worker 'local-1'" in messages and "connected as node_local-1" in messages
    assert "worker stopped (1 task(s) completed)" in messages
    # a plain line (no structured fields) has the same keys in both processes
    assert {frozenset(line) for line in worker} == {frozenset(BASE_KEYS)}
    assert frozenset(BASE_KEYS) in {frozenset(line) for line in server}
    assert {line["level"] for line in worker} <= {"debug", "info", "warning", "error"}
    assert all(str(line["time"]).endswith("Z") for line in lines)
    # the server's structured lines are there too (the task's end)
    (end,) = [line for line in server if line.get("event") == "task_end"]
    assert (end["task_id"], end["state"], end["node_id"]) == (task_id, "completed",
                                                             "node_local-1")


def test_a_worker_alone_logs_json_and_its_failure_line_is_json_too() -> None:
    done = subprocess.run([sys.executable, "-m", "engine.worker", "--coordinator",
                           "ws://127.0.0.1:9/api/nodes/connect", "--token", "t", "--noop", "--name", "alone",
                           "--max-retries", "0", "--log-format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = json_lines(done.stderr)
    assert all(set(line) == BASE_KEYS for line in lines)
    assert any(str(line["message"]).startswith("worker 'alone'") for line in lines)  # start-up
    last = lines[-1]
    assert (last["level"], last["logger"]) == ("error", "engine.worker")
    assert str(last["message"]).startswith(
        "neurogrid worker: cannot reach the coordinator at ws://127.0.0.1:9")
