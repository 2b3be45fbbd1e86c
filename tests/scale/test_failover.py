"""Several processes on one real PostgreSQL (NEUROGRID_TEST_POSTGRES; skipped without
it): 2 API processes (`neurogrid serve --role api`), 2 coordinator processes
(`--role coordinator`), 2 workers each given both coordinators' URLs (the demo
model). Tasks go in through both API processes; the leader coordinator is killed
with SIGKILL while they run; the standby must lead within 5 seconds, every
accepted task must complete exactly once, and an SSE client on either API process
must see its task finish. A beta key hitting both API processes gets exactly its
hourly quota."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import attrs
import httpx
import pytest
import trio

from tests.live_server import REPO, launched, stop_process

POSTGRES = os.environ.get("NEUROGRID_TEST_POSTGRES", "")
pytestmark = pytest.mark.skipif(not POSTGRES, reason=(
    "NEUROGRID_TEST_POSTGRES is not set: give it the postgresql:// URL of a database "
    "(bash .ci/postgres.sh prints one)"))

TAKEOVER_SECONDS = 5.0
TASK_SECONDS = 120.0
TASKS = 30
WORKER_PATH = "/api/nodes/connect"


@attrs.frozen
class Deployment:
    db: str  # the schema's URL
    apis: tuple[str, ...]  # http://127.0.0.1:PORT
    coordinators: dict[int, subprocess.Popen[str]]  # pid -> process
    coordinator_urls: tuple[str, ...]
    premium: str  # API keys (secrets)
    beta: str
    logs: Path


def sql(db: str, query: str, *args: Any) -> list[dict[str, Any]]:
    from api.postgres_schema import connect
    with connect(db) as conn:
        return conn.execute(query.encode(), args or None).fetchall()


def prepare(db: str) -> tuple[list[str], str, str]:
    """Worker tokens (2) and API keys (premium, beta) in the new schema."""
    from api.store import open_store

    async def create() -> tuple[list[str], str, str]:
        async with open_store(db) as store:
            tokens = [await store.create_node_token(f"w{i}", time.time()) for i in (1, 2)]
            premium, _ = await store.create_key("premium", "scale", None, None, time.time())
            beta, _ = await store.create_key("beta", "scale-beta", None, None, time.time())
            return tokens, premium, beta

    return trio.run(create)


def serve(role: str, db: str) -> list[str]:
    return [sys.executable, "-m", "api", "--role", role, "--port", "0", "--db", db]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from api.postgres_schema import scratch_schema
    logs = tmp_path_factory.mktemp("scale")
    with scratch_schema(POSTGRES) as db, ExitStack() as stack:
        tokens, premium, beta = prepare(db)
        coordinators: dict[int, subprocess.Popen[str]] = {}
        worker_urls, coordinator_urls = [], []
        for i in (1, 2):
            process, url = stack.enter_context(launched(
                serve("coordinator", db), logs / f"coordinator{i}.log",
                "NeuroGrid coordinator on"))
            coordinators[process.pid] = process
            coordinator_urls.append(url)
            worker_urls.append(url.replace("http://", "ws://") + WORKER_PATH)
        apis = tuple(stack.enter_context(launched(serve("api", db), logs / f"api{i}.log"))[1]
                     for i in (1, 2))
        for i, token in enumerate(tokens, start=1):
            command = [sys.executable, "-m", "engine.worker", "--name", f"w{i}", "--demo",
                       "--location", "test"]
            for url in worker_urls:
                command += ["--coordinator", url]
            log = stack.enter_context(open(logs / f"worker{i}.log", "w"))
            worker = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, text=True,
                                      env={**os.environ, "NEUROGRID_TOKEN": token})
            stack.callback(stop_process, worker)
        deadline = time.monotonic() + 60
        while not all(httpx.get(f"{api}/api/network/status").json()["network"]["nodes_online"]
                      == 2 for api in apis):
            assert time.monotonic() < deadline, "the workers never joined: see " + str(logs)
            time.sleep(0.2)
        yield Deployment(db, apis, coordinators, tuple(coordinator_urls), premium, beta, logs)


def leader_pid(db: str) -> int | None:
    rows = sql(db, "SELECT holder FROM coordinator_leader WHERE id = 1")
    return int(rows[0]["holder"].rsplit(":", 1)[1]) if rows else None


def follow(api: str, key: str, task_id: str, seen: dict[str, Any]) -> None:
    """An SSE client: the stream's events until `done` (in a thread)."""
    events = []
    with httpx.stream("GET", f"{api}/api/tasks/{task_id}/stream", timeout=TASK_SECONDS,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
                if kind == "done":
                    break
    seen[task_id] = events


def test_each_process_serves_its_role(deployment: Deployment) -> None:
    d = deployment
    for url in d.coordinator_urls:  # a coordinator serves workers, health and metrics
        answer = httpx.get(f"{url}/api/tasks")
        assert answer.status_code == 404 and "coordinator process" in answer.json()["details"]
        assert httpx.get(f"{url}/health").status_code == 200
    for api in d.apis:  # the whole network, as the leader sees it, from any API process
        health = httpx.get(f"{api}/health").json()
        assert health["status"] == "OK" and health["network"]["nodes_online"] == 2, health
        models = httpx.get(f"{api}/api/models").json()["models"]
        assert next(m for m in models if m["id"] == "llama2:7b")["nodes_online"] == 2


def test_the_standby_takes_over_and_every_accepted_task_completes_once(
        deployment: Deployment) -> None:
    d = deployment
    headers = {"Authorization": f"Bearer {d.premium}"}
    clients = [httpx.Client(base_url=api, headers=headers, timeout=30) for api in d.apis]
    ids = []
    for i in range(TASKS):  # through both API processes, in turn
        answer = clients[i % 2].post("/api/tasks", json={
            "model": "llama2:7b", "prompt": f"task {i} of the failover test", "max_tokens": 400})
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["task_id"])
    seen: dict[str, Any] = {}
    followers = [threading.Thread(target=follow, args=(d.apis[i], d.premium, ids[-1 - i], seen))
                 for i in (0, 1)]  # the last tasks: still open when the leader dies
    for thread in followers:
        thread.start()

    deadline = time.monotonic() + TASK_SECONDS
    while True:  # some tasks done, some running, the rest queued: kill the leader now
        counts = {r["status"]: r["n"] for r in sql(
            d.db, "SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")}
        if counts.get("completed", 0) >= 4 and counts.get("running"):
            break
        assert time.monotonic() < deadline, f"the tasks do not run: {counts}"
        time.sleep(0.01)
    old = leader_pid(d.db)
    assert old in d.coordinators
    d.coordinators[old].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert sql(d.db, "SELECT 1 FROM tasks WHERE status IN ('queued', 'running')"), (
        "every task ended before the leader was killed: make them longer")
    while leader_pid(d.db) in (old, None):
        assert time.monotonic() - killed < TAKEOVER_SECONDS, "the standby did not take over"
        time.sleep(0.05)
    assert time.monotonic() - killed < TAKEOVER_SECONDS
    standby = leader_pid(d.db)
    assert standby in d.coordinators and standby != old

    while sql(d.db, "SELECT 1 FROM tasks WHERE status IN ('queued', 'running')"):
        assert time.monotonic() < deadline, "tasks left open: see " + str(d.logs)
        time.sleep(0.2)
    for i, task_id in enumerate(ids):  # read back through either API process
        task = clients[(i + 1) % 2].get(f"/api/tasks/{task_id}").json()["task"]
        assert task["status"] == "completed", task
        assert task["result"]
    # Exactly once: each accepted task is one row, completed; the totals, kept by
    # the row triggers on every transition into an end, count each of them once.
    rows = sql(d.db, "SELECT id, status FROM tasks")
    assert sorted(r["id"] for r in rows) == sorted(ids)
    totals = sql(d.db, "SELECT completed_tasks, failed_tasks, cancelled_tasks "
                       "FROM task_totals")[0]
    assert totals == {"completed_tasks": TASKS, "failed_tasks": 0, "cancelled_tasks": 0}

    for thread in followers:
        thread.join(timeout=TASK_SECONDS)
    for task_id in ids[-2:]:
        kinds = [kind for kind, _ in seen[task_id]]
        assert kinds[-1] == "done" and seen[task_id][-1][1]["status"] == "completed", kinds
    for client in clients:
        client.close()
    status = httpx.get(f"{d.apis[1]}/api/network/status").json()
    assert status["network"]["completed_tasks"] == TASKS
    survivor = d.coordinators[standby]
    survivor.send_signal(signal.SIGINT)
    assert survivor.wait(timeout=30) == 0


def test_a_beta_key_gets_exactly_its_hourly_quota_across_api_processes(
        deployment: Deployment) -> None:
    d = deployment
    accepted, refused = [], []
    lock = threading.Lock()

    def hammer(api: str) -> None:
        with httpx.Client(base_url=api, timeout=30,
                          headers={"Authorization": f"Bearer {d.beta}"}) as client:
            while True:
                answer = client.post("/api/tasks", json={"model": "llama2:7b",
                                                         "prompt": "quota", "max_tokens": 1})
                if answer.status_code == 200:
                    task_id = answer.json()["task_id"]
                    with lock:
                        accepted.append(task_id)
                    client.delete(f"/api/tasks/{task_id}")  # out of flight: not the limit
                    continue
                assert answer.status_code == 429, answer.text
                details = answer.json()["details"]
                if "per hour" in details:
                    with lock:
                        refused.append(api)
                    return
                time.sleep(0.02)  # the in-flight limit: a task ends soon

    threads = [threading.Thread(target=hammer, args=(d.apis[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(accepted) == 100 == len(set(accepted))
    assert sorted(set(refused)) == sorted(d.apis)
