# A live network for the adversary suite: `python -m api` (coordinator, REST API,
# worker endpoint) on a free port with no local workers, and worker processes of
# benchmarks/adversaries.py - honest ones and liars - joined over the real worker
# protocol, each with its own worker token and, optionally, its own ONNX Runtime
# tuning (NEUROGRID_ORT_THREADS / NEUROGRID_ORT_OPTIMIZATION), so that honest
# workers differ in floating-point detail. Shared by tests/trust and the trust
# benchmark's end-to-end rows (benchmarks/trust_e2e.py).
#
#   with open_trust_net(tmp, [WorkerPlan("validator"), WorkerPlan("liar", "fabricate")],
#                       trusted=("validator",)) as net:
#       ids = [net.submit(f"Task {i}: ...", {"max_tokens": 8}, "always") for i in ...]
#       tasks = net.wait_final(ids)
#       net.ledger("liar")  # what the liar sent (adversaries.py: --ledger)
#
# Rules: 127.0.0.1 only; every process started here is stopped here (SIGINT, then
# SIGKILL after a grace); a worker's token reaches it in its environment. Each
# worker's stderr is kept in TMP/NAME.log for the failure message.
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from benchmarks.adversaries import read_ledger
from benchmarks.api_load import create_bench_key, start_server

__all__ = ["FINAL", "TrustNet", "WorkerPlan", "open_trust_net"]

REPO = Path(__file__).resolve().parents[1]
FINAL = frozenset({"completed", "failed", "cancelled", "expired"})
JOIN_SECONDS = 120.0


@attrs.frozen
class WorkerPlan:
    name: str  # its worker token's name and its node name
    behaviour: str = "honest"  # adversaries.BEHAVIOURS
    threads: int | None = None  # ONNX Runtime intra-op threads (None: its default)
    optimization: str | None = None  # graph optimisation level (disable/basic/extended/all)
    extra: tuple[str, ...] = ()  # more flags (e.g. ("--inflate-factor", "50"))


class TrustNet:
    """A running server and its workers (see the top comment)."""

    def __init__(self, tmp: Path, server: subprocess.Popen[str], port: int) -> None:
        self.tmp = tmp
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.db = str(tmp / "trust.db")
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.key = create_bench_key(self.db)
        self.http = httpx.Client(base_url=self.url, timeout=30.0,
                                 headers={"Authorization": f"Bearer {self.key}"})

    # ---- workers ---------------------------------------------------------------

    def start_worker(self, plan: WorkerPlan) -> None:
        token = _node_token(self.db, plan.name)
        env = {**os.environ, "NEUROGRID_TOKEN": token, "PYTHONUNBUFFERED": "1"}
        if plan.threads is not None:
            env["NEUROGRID_ORT_THREADS"] = str(plan.threads)
        if plan.optimization is not None:
            env["NEUROGRID_ORT_OPTIMIZATION"] = plan.optimization
        command = [sys.executable, "-m", "benchmarks.adversaries", "--behaviour", plan.behaviour,
                   "--coordinator", f"ws://127.0.0.1:{self.port}/api/nodes/connect",
                   "--name", plan.name, "--provider", "cpu", "--ledger",
                   str(self.ledger_path(plan.name)), *plan.extra]
        with open(self.tmp / f"{plan.name}.log", "wb") as log:
            self.workers[plan.name] = subprocess.Popen(command, cwd=REPO, env=env,
                                                       stdout=subprocess.DEVNULL, stderr=log)

    def wait_joined(self, names: Sequence[str], limit: float = JOIN_SECONDS) -> None:
        give_up = time.monotonic() + limit
        while not set(names) <= {n["name"] for n in self.nodes().values()
                                 if n["status"] != "offline"}:
            for name in names:
                process = self.workers.get(name)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"worker {name} exited: {self.log(name)}")
            if time.monotonic() > give_up:
                raise RuntimeError(f"workers {list(names)} did not join in {limit:.0f} s")
            time.sleep(0.2)

    def stop_worker(self, name: str) -> None:
        _stop(self.workers.pop(name))

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    def ledger_path(self, name: str) -> Path:
        return self.tmp / f"{name}.ledger.jsonl"

    def ledger(self, name: str) -> list[dict[str, Any]]:
        """What worker `name` sent: adversaries.py's ledger lines."""
        return read_ledger(self.ledger_path(name))

    # ---- the API ---------------------------------------------------------------

    def submit(self, prompt: str, params: dict[str, Any], verify: str) -> str:
        body = {"prompt": prompt, "model": "llama2:7b", "verify": verify, **params}
        response = self.http.post("/api/tasks", json=body)
        response.raise_for_status()
        return str(response.json()["task_id"])

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/tasks/{task_id}")
        response.raise_for_status()
        return dict(response.json()["task"])

    def wait_final(self, task_ids: Sequence[str], limit: float = 300.0) -> dict[str, dict[str, Any]]:
        """Each task's JSON once it has ended (TimeoutError naming those still open)."""
        done: dict[str, dict[str, Any]] = {}
        give_up = time.monotonic() + limit
        while len(done) < len(task_ids):
            for task_id in task_ids:
                if task_id not in done:
                    task = self.task(task_id)
                    if task["status"] in FINAL:
                        done[task_id] = task
            if len(done) < len(task_ids):
                if time.monotonic() > give_up:
                    open_ = [t for t in task_ids if t not in done]
                    raise TimeoutError(f"{len(open_)} task(s) still open: {open_[:5]}")
                time.sleep(0.1)
        return done

    def status(self) -> dict[str, Any]:
        return dict(self.http.get("/api/network/status").json())

    def nodes(self) -> dict[str, dict[str, Any]]:
        """/api/network/status's nodes by node id."""
        return {node["id"]: node for node in self.status()["nodes"]}

    def node_named(self, name: str) -> dict[str, Any]:
        """The node of worker `name` (its latest, when it joined more than once)."""
        found = [node for node in self.nodes().values() if node["name"] == name]
        if not found:
            raise KeyError(f"no node named {name!r}")
        return found[-1]

    def close(self) -> None:
        self.http.close()
        for name in list(self.workers):
            self.stop_worker(name)
        _stop(self.server)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _node_token(db: str, name: str) -> str:
    from api.store import open_store

    async def create() -> str:
        async with open_store(db) as store:
            return await store.create_node_token(name, time.time())

    return trio.run(create)


@contextmanager
def open_trust_net(tmp: Path, plans: Sequence[WorkerPlan],
                   trusted: Sequence[str] = ()) -> Iterator[TrustNet]:
    """A server (its validators: the workers named in `trusted`) and the planned
    workers, all joined."""
    tmp.mkdir(parents=True, exist_ok=True)
    flags = [flag for name in trusted for flag in ("--trusted-node", name)]
    server, port = start_server(str(tmp / "trust.db"), flags)
    net = TrustNet(tmp, server, port)
    try:
        for plan in plans:
            net.start_worker(plan)
        net.wait_joined([plan.name for plan in plans])
        yield net
    finally:
        net.close()
