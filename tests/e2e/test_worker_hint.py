"""A newcomer's first worker (issue 15's first rough edge): the command that
`neurogrid nodes create` prints, run as printed (HOST:PORT filled in, no model
flag), joins a live `neurogrid serve`, serves every model of the catalog from the
packs this machine has, and completes a task."""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

from engine.core import MODELS
from tests.live_server import START_SECONDS, launched, stop_process

REPO = Path(__file__).resolve().parents[2]
NEUROGRID = [sys.executable, "-m", "engine.cli"]  # the `neurogrid` console script
TASK_SECONDS = 60.0


def test_the_printed_worker_command_joins_and_serves_every_model(tmp_path: Path) -> None:
    db = tmp_path / "hint.db"
    created = subprocess.run([*NEUROGRID, "nodes", "create", "--name", "first", "--db", str(db)],
                             cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    token = created.stdout.splitlines()[1]
    (hint,) = [line[len("run: "):] for line in created.stderr.splitlines()
               if line.startswith("run: ")]
    assert hint == ("neurogrid worker --coordinator ws://HOST:PORT/api/nodes/connect "
                    f"--token {token}")
    server = [*NEUROGRID, "serve", "--port", "0", "--db", str(db), "--local-workers", "0"]
    with launched(server, tmp_path / "serve.log") as (_, url):
        words = shlex.split(hint.replace("HOST:PORT", url.split("//", 1)[1]))
        assert words[:2] == ["neurogrid", "worker"]
        with open(tmp_path / "worker.log", "w") as log:
            worker = subprocess.Popen([*NEUROGRID, *words[1:]], cwd=REPO, stderr=log)
            try:
                deadline = time.monotonic() + START_SECONDS
                while not (nodes := httpx.get(f"{url}/api/network/status").json()["nodes"]):
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                    assert time.monotonic() < deadline, "the worker never joined"
                    time.sleep(0.2)
                (node,) = nodes
                assert node["id"] == "node_first" and set(node["models"]) == set(MODELS)
                task_id = httpx.post(f"{url}/api/tasks", json={"prompt": "What is a GPU?",
                                                               "max_tokens": 8}).json()["task_id"]
                deadline = time.monotonic() + TASK_SECONDS
                while (task := httpx.get(f"{url}/api/tasks/{task_id}").json()["task"]
                       )["status"] != "completed":
                    assert task["status"] in ("queued", "running"), task
                    assert time.monotonic() < deadline, "the task never completed"
                    time.sleep(0.2)
                assert task["node"]["id"] == "node_first" and task["result"]
            finally:
                stop_process(worker)
