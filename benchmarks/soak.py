# The soak: a live server under a long run of tiny tasks while its workers are
# killed, then an audit of what became of every task.
#
# Theory: `python -m api` runs as a subprocess (coordinator, REST API and worker
# endpoint in one process, `--journal` on, no local workers), with WORKERS no-op
# worker processes (`python -m engine.worker --noop`, SLOTS slots each, one worker
# token apiece, made in the store before the server starts). This process is the
# client: CONNECTIONS keep-alive connections (raw sockets, api_load's) POST tiny
# tasks (max_tokens 1) until N are submitted, and a monitor polls
# `GET /api/network/status` every POLL_SECONDS on its own connection. The monitor
# paces the load (submitters wait while more than MAX_OUTSTANDING tasks are
# accepted but not ended, so the queue stays bounded) and drives the faults: each
# time another `kill_every` tasks (N/10) have completed, one worker (alternately
# the first and the second) gets SIGKILL and a fresh one is started with a new
# token. Its tasks in hand are then re-queued by the coordinator when the socket
# drops (NodeLost -> Requeue) and run elsewhere.
#
# Measured: the server's resident memory (VmRSS) when the first N/10 tasks have
# completed (before the first kill) and once every task has ended; throughput from
# the first submission to the last task ended; the server's CPU per task (/proc).
#
# Audit, after the server has stopped (so the journal is flushed and closed):
# - the database, read-only: every accepted task id must be `completed`; any other
#   final state is an error counted by state and error text; an accepted id not
#   completed is lost.
# - the journal (engine.core's codec, streamed line by line): per task, the
#   `Complete` decisions (more than one: run twice to completion) and the
#   `TaskFinished` events (more than one: a result reported twice). A kill shows
#   as a `NodeLost` of a node that never drained (the workers stopped at the end
#   drain first); the `Requeue` decisions of that step are the tasks it sent back.
#   Any other Requeue, a `Drop` (a node silent past the heartbeat timeout) and a
#   `DeliveryFailed` are errors, counted by kind beside the HTTP ones (non-2xx by
#   status, connections that broke before an answer).
# `NEUROGRID_SOAK_KEEP=DIR python -m benchmarks --only soak` keeps the run's
# database and journal in DIR (a new directory) for a post-mortem.
# Targets: zero lost, zero run twice, RSS at the end <= 1.2 x RSS after the first
# N/10 (issue 9's memory bullet, issue 11's soak bullet).
from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio

from api.__main__ import local_worker_tokens
from engine.core import (
    Complete, DeliveryFailed, Drop, JournalEntry, JournalError, NodeDraining, NodeLost, Requeue,
    TaskFinished, parse_line,
)

from .api_load import (
    REPO, create_bench_key, receive_response, request_bytes, server_cpu_seconds,
    settled_cpu_seconds, start_server,
)
from .harness import Benchmark, Figure, Row

MODEL = "llama2:7b"
WORKERS = 2
SLOTS = 8
CONNECTIONS = 16
MAX_OUTSTANDING = 2_000  # accepted but not ended, before submitters wait
POLL_SECONDS = 0.05
START_SECONDS = 60.0  # for the workers to connect
TASK_BODY = json.dumps({"prompt": "x", "model": MODEL, "max_tokens": 1}).encode()
RSS_TARGET = 1.2
KEEP_VARIABLE = "NEUROGRID_SOAK_KEEP"  # a new directory to keep a run's files in
CONNECTION_CLOSE = re.compile(rb"^connection:\s*close", re.IGNORECASE | re.MULTILINE)


@attrs.frozen
class SoakConfig:
    tasks: int
    kill_every: int  # completed tasks between two worker kills
    drain_seconds: float = 60.0  # how long the last tasks may take to end
    connections: int = CONNECTIONS
    max_outstanding: int = MAX_OUTSTANDING
    keep_in: str | None = None  # leave the database and journal in this new directory


@attrs.frozen
class SoakReport:
    tasks: int
    kill_every: int
    connections: int
    accepted: int  # answered 2xx
    db_rows: int  # tasks the database holds (more than accepted: some unanswered)
    completed: int  # accepted tasks whose row says completed
    lost: int  # accepted, not completed
    ran_twice: int  # tasks with more than one Complete in the journal
    reported_twice: int  # tasks with more than one TaskFinished in the journal
    kills: int
    crashes: int  # nodes lost without draining first, in the journal (the kills)
    requeued_by_kill: int  # Requeue decisions taken on those losses
    completes: dict[str, int]  # task id -> Complete decisions (accepted ids only)
    errors: dict[str, int]  # kind -> count: HTTP status, final state + error text,
    #                         drops, requeues and undelivered assignments not from a kill
    rss_first: int  # bytes, after the first kill_every completed
    rss_end: int  # bytes, after every task ended
    seconds: float  # first submission to the last task ended
    server_cpu: float  # seconds, over the same span (and what the server did after)
    peak_outstanding: int
    journal_steps: int

    @property
    def rss_ratio(self) -> float:
        return self.rss_end / self.rss_first if self.rss_first else float("nan")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0


class KeepAlive:
    """One keep-alive HTTP/1.1 connection to the server, opened again when an answer
    says `Connection: close` (hypercorn closes a connection after
    keep_alive_max_requests answers, 1,000 by default; a soak makes more)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buffer = b""

    async def request(self, data: bytes) -> tuple[bytes, bytes]:
        """(head, body) of the answer to `data`; the status code is head[9:12]."""
        if self.stream is None:
            self.stream, self.buffer = await trio.open_tcp_stream("127.0.0.1", self.port), b""
        try:
            await self.stream.send_all(data)
            head, body, self.buffer = await receive_response(self.stream, self.buffer)
        except BaseException:
            await self.aclose()
            raise
        if CONNECTION_CLOSE.search(head):
            await self.aclose()
        return head, body

    async def aclose(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()


class Workers:
    """The no-op worker processes, one per slot; a killed one is replaced by a
    fresh process with the next unused token."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url, self.tokens = url, list(tokens)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def spawn(self) -> subprocess.Popen[bytes]:
        token, name = self.tokens[self.started], f"soak-{self.started + 1}"
        self.started += 1
        return subprocess.Popen(
            [sys.executable, "-m", "engine.worker", "--coordinator", self.url, "--noop",
             "--slots", str(SLOTS), "--name", name, "--log-level", "ERROR"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "NEUROGRID_TOKEN": token})

    def start(self, count: int) -> None:
        self.processes = [self.spawn() for _ in range(count)]

    def kill_and_replace(self, slot: int) -> None:
        victim = self.processes[slot]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.processes[slot] = self.spawn()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@attrs.define
class Drive:
    """What the client side saw while the load ran."""

    accepted: list[str] = attrs.Factory(list)
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    total: int = 0  # tasks the server holds (accepted, answered or not)
    ended: int = 0  # completed + failed + cancelled, as the server counts them
    nodes_online: int = 0
    completed: int = 0
    kills: int = 0
    rss_first: int = 0
    peak_outstanding: int = 0
    seconds: float = 0.0
    changed: trio.Event = attrs.Factory(trio.Event)


async def drive(port: int, key: str, config: SoakConfig, pid: int, workers: Workers) -> Drive:
    state = Drive()
    kills_planned = max(0, (config.tasks - 1) // config.kill_every)
    next_index = 0
    status_request = request_bytes("GET", "/api/network/status", key)
    submit = request_bytes("POST", "/api/tasks", key, TASK_BODY)

    async def monitor() -> None:
        connection = KeepAlive(port)
        try:
            while True:
                try:
                    _, body = await connection.request(status_request)
                except (trio.BrokenResourceError, OSError) as exc:
                    state.errors[f"status poll: {type(exc).__name__}"] += 1
                    await trio.sleep(POLL_SECONDS)
                    continue
                network = json.loads(body)["network"]
                state.total, state.completed = network["total_tasks"], network["completed_tasks"]
                state.ended = (network["completed_tasks"] + network["failed_tasks"]
                               + network["cancelled_tasks"])
                state.nodes_online = network["nodes_online"]
                outstanding = len(state.accepted) - state.ended
                state.peak_outstanding = max(state.peak_outstanding, outstanding)
                if not state.rss_first and state.completed >= config.kill_every:
                    state.rss_first = rss_bytes(pid)
                # one kill at a time, and only of a connected worker: the last kill's
                # replacement must have joined first
                if (state.kills < kills_planned and state.nodes_online >= WORKERS
                        and state.completed >= (state.kills + 1) * config.kill_every):
                    workers.kill_and_replace(state.kills % WORKERS)
                    state.kills += 1
                state.changed.set()
                state.changed = trio.Event()
                await trio.sleep(POLL_SECONDS)
        finally:
            with trio.CancelScope(shield=True):
                await connection.aclose()

    async def submitter() -> None:
        nonlocal next_index
        connection = KeepAlive(port)
        try:
            while True:
                while len(state.accepted) - state.ended >= config.max_outstanding:
                    await state.changed.wait()
                if next_index >= config.tasks:  # checked after the wait: no await between
                    break                       # the check and the claim
                next_index += 1
                try:
                    head, body = await connection.request(submit)
                except (trio.BrokenResourceError, OSError) as exc:
                    # sent, maybe accepted, never answered: the audit counts the
                    # server's rows, so such a task is not taken for lost
                    state.errors[f"connection: {type(exc).__name__}"] += 1
                    continue
                if head[9:10] == b"2":
                    state.accepted.append(json.loads(body)["task_id"])
                else:
                    state.errors[f"http {head[9:12].decode()}"] += 1
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor)
        with trio.fail_after(START_SECONDS):
            while state.nodes_online < WORKERS:
                await state.changed.wait()
        started = time.perf_counter()
        async with trio.open_nursery() as submitters:
            for _ in range(config.connections):
                submitters.start_soon(submitter)
        with trio.move_on_after(config.drain_seconds):
            while (state.ended < max(state.total, len(state.accepted))
                   or state.kills < kills_planned):
                await state.changed.wait()
        state.seconds = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return state


def audit_database(db: str) -> tuple[int, set[str], collections.Counter[str]]:
    """(task rows, ids of completed tasks, final states other than completed by
    error text)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        completed = {row[0] for row in conn.execute(
            "SELECT id FROM tasks WHERE status = 'completed'")}
        others: collections.Counter[str] = collections.Counter()
        for status, error, count in conn.execute(
                "SELECT status, substr(coalesce(error, ''), 1, 60), COUNT(*) FROM tasks "
                "WHERE status != 'completed' GROUP BY 1, 2"):
            others[f"{status}: {error}" if error else status] += count
    finally:
        conn.close()
    return rows, completed, others


@attrs.define
class JournalCounts:
    completes: collections.Counter[str] = attrs.Factory(collections.Counter)
    finishes: collections.Counter[str] = attrs.Factory(collections.Counter)
    crashes: int = 0
    requeued_by_crash: int = 0
    steps: int = 0
    # what went wrong besides the kills, by kind: nodes dropped for silence (and
    # the tasks that sent back), assignments that never reached their node
    faults: collections.Counter[str] = attrs.Factory(collections.Counter)


def audit_journal(path: str) -> JournalCounts:
    """Count, per task, its Complete decisions and TaskFinished events, streaming
    the file one line at a time (a soak's journal is too big to hold parsed)."""
    counts = JournalCounts()
    draining: set[str] = set()
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                item = parse_line(line)
            except JournalError:
                if not line.endswith("\n"):
                    break  # a last line cut short: the steps before it hold
                raise
            if not isinstance(item, JournalEntry):
                continue  # a session header
            counts.steps += 1
            event = item.event
            if isinstance(event, TaskFinished):
                counts.finishes[event.task_id] += 1
            elif isinstance(event, NodeDraining):
                draining.add(event.node_id)
            elif isinstance(event, DeliveryFailed):
                counts.faults["journal: assignment not delivered"] += 1
            # a worker stopped at the end drains first; a killed one just drops
            crash = isinstance(event, NodeLost) and event.node_id not in draining
            counts.crashes += crash
            for decision in item.decisions:
                if isinstance(decision, Complete):
                    counts.completes[decision.task_id] += 1
                elif isinstance(decision, Requeue) and crash:
                    counts.requeued_by_crash += 1
                elif isinstance(decision, Requeue):
                    counts.faults[f"journal: requeued, {decision.reason}"] += 1
                elif isinstance(decision, Drop):
                    counts.faults[f"journal: node dropped, {decision.reason}"] += 1
    return counts


def measure(config: SoakConfig) -> SoakReport:
    """One soak run in a fresh directory: server, workers, load, kills, audit."""
    if config.tasks < 1 or config.kill_every < 1:
        raise ValueError(f"tasks and kill_every must be at least 1, got {config}")
    with contextlib.ExitStack() as stack:
        if config.keep_in is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
        else:
            tmp = config.keep_in
            os.makedirs(tmp)  # a new directory: never mixes with an earlier run
        db, journal = str(Path(tmp) / "soak.db"), str(Path(tmp) / "soak.jsonl")
        key = create_bench_key(db)
        tokens = trio.run(local_worker_tokens, db, WORKERS + config.tasks // config.kill_every)
        process, port = start_server(db, ("--journal", journal))
        workers = Workers(f"ws://127.0.0.1:{port}/api/nodes/connect", tokens)
        try:
            workers.start(WORKERS)
            cpu_start = server_cpu_seconds(process.pid)
            state = trio.run(drive, port, key, config, process.pid, workers)
            server_cpu = settled_cpu_seconds(process.pid) - cpu_start
            rss_end = rss_bytes(process.pid)
        finally:
            workers.stop()
            process.terminate()
            process.wait(timeout=30)
        db_rows, completed, final_errors = audit_database(db)
        counts = audit_journal(journal)
    errors = collections.Counter(state.errors) + final_errors + counts.faults
    completes = {task_id: counts.completes[task_id] for task_id in state.accepted}
    return SoakReport(
        tasks=config.tasks, kill_every=config.kill_every, connections=config.connections,
        accepted=len(state.accepted), db_rows=db_rows,
        completed=sum(1 for t in state.accepted if t in completed),
        lost=sum(1 for t in state.accepted if t not in completed),
        ran_twice=sum(1 for n in counts.completes.values() if n > 1),
        reported_twice=sum(1 for n in counts.finishes.values() if n > 1),
        kills=state.kills, crashes=counts.crashes,
        requeued_by_kill=counts.requeued_by_crash, completes=completes, errors=dict(errors),
        rss_first=state.rss_first, rss_end=rss_end, seconds=state.seconds,
        server_cpu=server_cpu, peak_outstanding=state.peak_outstanding,
        journal_steps=counts.steps,
    )


def rows(report: SoakReport) -> list[Row]:
    mb = 1024 * 1024
    errors: dict[str, Figure] = dict(sorted(report.errors.items())) or {"none": 0}
    return [
        Row(f"soak: {report.tasks:,} tasks, {report.kills} worker kills",
            {"accepted": report.accepted, "db_rows": report.db_rows,
             "completed": report.completed, "lost": report.lost,
             "ran_twice": report.ran_twice, "reported_twice": report.reported_twice,
             "requeued_by_kill": report.requeued_by_kill, "crashes_seen": report.crashes},
            target="0 lost, 0 run twice",
            met=report.lost == 0 and report.ran_twice == 0 and report.accepted == report.tasks),
        Row("soak: server RSS, end vs first tenth",
            {"rss_first_mb": report.rss_first / mb, "rss_end_mb": report.rss_end / mb,
             "end/first": report.rss_ratio, "first_after": report.kill_every},
            target=f"end <= {RSS_TARGET} x first", met=report.rss_ratio <= RSS_TARGET),
        Row("soak: throughput, end to end",
            {"tasks_per_s": report.accepted / report.seconds if report.seconds else 0.0,
             "server_cpu_ms_per_task": 1000 * report.server_cpu / max(1, report.accepted),
             "seconds": report.seconds, "peak_outstanding": report.peak_outstanding,
             "journal_steps": report.journal_steps,
             "setup": f"{WORKERS} no-op workers x {SLOTS} slots, "
                      f"{report.connections} connections"}),
        Row("soak: errors by kind", errors),
    ]


def run(quick: bool) -> list[Row]:
    tasks = 10_000 if quick else 100_000
    keep_in = os.environ.get(KEEP_VARIABLE) or None
    return rows(measure(SoakConfig(tasks=tasks, kill_every=tasks // 10, keep_in=keep_in)))


BENCHMARK = Benchmark(
    name="soak",
    description="live server + no-op workers, a worker killed every tenth; audit",
    run=run,
)
