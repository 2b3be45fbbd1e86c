"""End to end: `neurogrid serve` as a subprocess on a free port with one local
worker (the demo model: its text is not meaningful, only real), and the API
reference's curl calls made with a real HTTP client."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0
TASK_SECONDS = 60.0


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
        raise TimeoutError("no output from neurogrid serve")
    return process.stdout.readline()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    # `python -m engine.cli` is the `neurogrid` console script, run from the checkout.
    command = [sys.executable, "-m", "engine.cli", "serve", "--port", "0",
               "--db", str(tmp_path / "e2e.db"), "--local-workers", "1", "--local-models", "demo"]
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + START_SECONDS
        line = ""
        while "NeuroGrid API on" not in line:
            line = read_line(process, deadline - time.monotonic())
            assert line or process.poll() is None, (tmp_path / "serve.log").read_text()
        yield line.split(" on ", 1)[1].strip()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_the_reference_calls_work_against_neurogrid_serve(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10.0) as client:
        # wait for the local worker to join
        deadline = time.monotonic() + START_SECONDS
        while client.get("/api/network/status").json()["network"]["nodes_online"] < 1:
            assert time.monotonic() < deadline, "the local worker never joined"
            time.sleep(0.2)

        submitted = client.post("/api/tasks", json={
            "prompt": "Explain quantum computing in simple terms", "model": "llama2:7b",
            "priority": "standard"})
        assert submitted.status_code == 200
        body = submitted.json()
        assert body["success"] is True and body["task_id"].startswith("task_")
        assert body["cost"]["estimated"].startswith("$") and body["estimated_time"].endswith("s")
        assert submitted.headers["X-RateLimit-Limit"] == "100"

        deadline = time.monotonic() + TASK_SECONDS
        while True:
            task = client.get(f"/api/tasks/{body['task_id']}").json()["task"]
            if task["status"] in ("completed", "failed", "expired"):
                break
            assert time.monotonic() < deadline, task
            time.sleep(0.1)
        assert task["status"] == "completed", task
        assert isinstance(task["result"], str) and task["result"].strip()  # demo-model text
        assert task["tokens_used"] > 0 and task["processing_time"] > 0
        assert task["node"]["id"] == "node_local-1"

        hello = client.post("/api/tasks", json={"prompt": "Hello world", "model": "llama2"})
        assert hello.status_code == 200

        signup = client.post("/api/beta/signup", json={
            "email": "developer@example.com", "type": "developer", "source": "website"})
        assert signup.json()["message"] == "Successfully joined NeuroGrid Beta!"

        status = client.get("/api/network/status").json()
        assert status["network"]["total_tasks"] == 2
        assert status["network"]["completed_tasks"] >= 1
        assert status["stats"]["beta_signups"] == 1
        assert status["nodes"][0]["status"] == "online"

        health = client.get("/health").json()
        assert health["status"] == "OK" and health["network"]["nodes_online"] == 1

        bad = client.post("/api/tasks", json={"model": "llama2"})
        assert bad.status_code == 400
        assert bad.json()["details"] == "The 'prompt' field is required"
