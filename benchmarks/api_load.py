# The API under load: POST /api/tasks against a trivial endpoint (/health) on the
# same server, in the same run.
#
# Theory: `python -m api` runs as a subprocess (no local workers, so every task
# stays queued: this measures the API path - validation, limits, quote, the
# durable commit, the coordinator's submit - not inference). This process is the
# load generator: 32 keep-alive HTTP/1.1 connections over raw trio sockets (a
# real client library would cost more CPU than the server it measures), each
# sending its next request as soon as the answer to the last one is in. Rounds
# alternate /health, POST /api/tasks and GET /api/tasks/<id> (in the reverse order
# every other round), so drift on the shared machine hits all of them alike; the
# figures are medians over rounds.
#
# The OpenAI-compatible path (/v1) is measured on a second server of its own, with
# a no-op worker (engine.worker --noop: a fixed text, no inference) so that its
# tasks end: a non-streamed POST /v1/chat/completions answers when its task has
# ended, so it is compared with the same no-op task through the reference API,
# POST /api/tasks and then GET /api/tasks/<id>/stream until its `done` event, in
# alternating rounds of the same run (V1_CONCURRENCY connections, as many as the
# worker's slots: the tasks never queue behind each other). The /v1 overhead is
# the ratio of their latencies (and of the server's CPU per call, the steadier
# figure on a loaded machine). Time to first streamed token: a streamed chat
# completion, from the request to its first content chunk (with the no-op
# runner, which streams nothing, that chunk comes from the ended task).
#
# Durability: every accepted task is committed (SQLite WAL, synchronous=NORMAL:
# durable against a crash of the process, not of the machine's power) before the
# server answers. The load uses one premium key with its own limits raised so the
# rate limiter is exercised but never refuses.
#
# PostgreSQL: when a server is named (`python -m benchmarks --postgres URL`, or
# NEUROGRID_TEST_POSTGRES as the tests use it), the same cases run again in the
# same run with one API process on a fresh schema of that database (PostgreSQL's
# synchronous commit: durable against a power loss too), rows marked
# "[postgresql]". Their CPU per request is the API process's and, apart, the
# database server's (every `postgres` process of the machine: run it on a machine
# where no other cluster is busy): the two together are what one request costs,
# and what predicts how far more API processes scale on a bigger machine.
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from .harness import POSTGRES_VARIABLE, Figure, Row, percentile

CONCURRENCY = 32
POSTGRES_URL_VARIABLES = (POSTGRES_VARIABLE, "NEUROGRID_TEST_POSTGRES")
CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
REPO = Path(__file__).resolve().parents[1]
TASK_BODY = json.dumps({"prompt": "Explain quantum computing in simple terms",
                        "model": "llama2:7b", "priority": "standard"}).encode()


def request_bytes(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def receive_response(stream: trio.abc.ReceiveStream, buffer: bytes
                           ) -> tuple[bytes, bytes, bytes]:
    """The next HTTP/1.1 answer on a keep-alive connection, given what was already
    read from it: (head, body, the bytes that follow). The status code is
    head[9:12]. Raises trio.BrokenResourceError if the server closes first."""
    while b"\r\n\r\n" not in buffer:
        buffer += await receive_more(stream)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    match = CONTENT_LENGTH.search(head)
    length = int(match.group(1)) if match else 0
    while len(buffer) < length:
        buffer += await receive_more(stream)
    return head, buffer[:length], buffer[length:]


async def receive_more(stream: trio.abc.ReceiveStream) -> bytes:
    data = await stream.receive_some(65536)
    if not data:
        raise trio.BrokenResourceError("the server closed the connection")
    return bytes(data)


async def load(port: int | Sequence[int], request: bytes | Sequence[bytes], seconds: float
               ) -> tuple[list[float], int, str]:
    """(latencies of 2xx answers, other answers, the first 2xx body) over `seconds`.
    With several ports (API processes) or requests (one per caller), connection i
    uses the i-th of each, round robin."""
    ports = [port] if isinstance(port, int) else list(port)
    requests = [request] if isinstance(request, bytes) else list(request)
    latencies: list[float] = []
    failures = 0
    sample = ""
    stop_at = time.perf_counter() + seconds

    async def connection(index: int) -> None:
        nonlocal failures, sample
        request = requests[index % len(requests)]
        stream = await trio.open_tcp_stream("127.0.0.1", ports[index % len(ports)])
        buffer = b""
        async with stream:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stream.send_all(request)
                head, body, buffer = await receive_response(stream, buffer)
                if head[9:10] == b"2":
                    latencies.append(time.perf_counter() - started)
                    sample = sample or body.decode()
                else:
                    failures += 1

    async with trio.open_nursery() as nursery:
        for index in range(CONCURRENCY):
            nursery.start_soon(connection, index)
    return latencies, failures, sample


def start_server(db: str, extra_args: Sequence[str] = (), *, launcher: Sequence[str] = (),
                 tree: Path = REPO, env: Mapping[str, str] | None = None
                 ) -> tuple[subprocess.Popen[str], int]:
    """`python -m api` on a free port with no local workers (`extra_args`: more
    flags, e.g. ("--journal", PATH), ("--role", "api")): (the process, its port).
    `launcher` runs it (e.g. under valgrind), in `tree` with `env` (default: this
    checkout, this environment)."""
    process = subprocess.Popen(
        [*launcher, sys.executable, "-m", "api", "--port", "0", "--db", db,
         "--local-workers", "0", *extra_args],
        cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("NeuroGrid ") and " on http" in line:  # any role's first line
            return process, int(line.rsplit(":", 1)[1])
    raise RuntimeError("python -m api did not start")


def create_bench_key(db: str) -> str:
    from api.store import open_store

    async def create() -> str:
        async with open_store(db) as store:
            secret, _ = await store.create_key("premium", "benchmark", 10**9, 10**9, time.time())
            return secret

    return trio.run(create)


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_cpu_seconds(pid: int, limit: float = 5.0) -> float:
    """The server's CPU time once it has gone idle (no CPU tick in two 50 ms looks
    in a row, or `limit` seconds): work a round left behind (the dispatcher hands
    tasks to the coordinator after the answers) is charged to that round, not to
    the next case."""
    give_up = time.perf_counter() + limit
    cpu, quiet = server_cpu_seconds(pid), 0
    while quiet < 2 and time.perf_counter() < give_up:
        time.sleep(0.05)
        now = server_cpu_seconds(pid)
        quiet = quiet + 1 if now == cpu else 0
        cpu = now
    return cpu


def postgres_cpu_seconds() -> float:
    """User + system CPU time so far of every `postgres` process on this machine
    (the database server's share of the work; 0 where there is no /proc)."""
    total = 0.0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as comm:
                if comm.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        total += server_cpu_seconds(int(entry.name))
    return total


def postgres_url() -> str | None:
    """The PostgreSQL database to measure on, if one is named."""
    for variable in POSTGRES_URL_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def run(quick: bool) -> list[Row]:
    rounds, seconds = (2, 4.0) if quick else (3, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_on(str(Path(tmp) / "bench.db"), rounds, seconds)
    url = postgres_url()
    if url is None:
        return rows
    from api.postgres_schema import scratch_schema  # psycopg: only where PostgreSQL runs

    with scratch_schema(url) as schema_url:
        return rows + run_on(schema_url, rounds, seconds, " [postgresql]", postgres_cpu_seconds)


def run_on(db: str, rounds: int, seconds: float, suffix: str = "",
           db_cpu: Callable[[], float] | None = None) -> list[Row]:
    """The cases against one API process on the database `db`; each row's case
    ends with `suffix`; `db_cpu`: the database server's CPU seconds so far."""
    key = create_bench_key(db)
    process, port = start_server(db)
    try:
        return measure(port, key, rounds, seconds, process.pid, suffix, db_cpu)
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(port: int, key: str, rounds: int, seconds: float, pid: int, suffix: str = "",
            db_cpu: Callable[[], float] | None = None) -> list[Row]:
    health = request_bytes("GET", "/health", key)
    submit = request_bytes("POST", "/api/tasks", key, TASK_BODY)
    warm = trio.run(load, port, submit, 1.0)
    task_id = json.loads(warm[2])["task_id"]
    read = request_bytes("GET", f"/api/tasks/{task_id}", key)
    trio.run(load, port, health, 1.0)
    cases: dict[str, bytes] = {"GET /health (trivial)": health, "POST /api/tasks": submit,
                               "GET /api/tasks/<id>": read}
    # per case, per round: (req/s, latencies, failures, server CPU/request, db CPU/request)
    results: dict[str, list[tuple[float, list[float], int, float, float]]] = {
        c: [] for c in cases}
    for round_ in range(rounds):
        # ABC, CBA, ...: a drift of the shared machine's load within a pair of rounds
        # weighs on every case alike, whatever its place in the order
        order = list(cases.items()) if round_ % 2 == 0 else list(cases.items())[::-1]
        for case, request in order:
            cpu_before = settled_cpu_seconds(pid)
            db_before = db_cpu() if db_cpu else 0.0
            latencies, failures, _ = trio.run(load, port, request, seconds)
            cpu = settled_cpu_seconds(pid) - cpu_before
            db_used = db_cpu() - db_before if db_cpu else 0.0
            answers = max(1, len(latencies) + failures)
            results[case].append((len(latencies) / seconds, latencies, failures,
                                  cpu / answers, db_used / answers))

    def figures(case: str) -> dict[str, float]:
        per_round = results[case]
        latencies = [x for _, lat, _, _, _ in per_round for x in lat]
        values: dict[str, float] = {
            "req_per_s": statistics.median(r[0] for r in per_round),
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            # CPU the server spent per request, including what it finished after the
            # round's last answer: unlike req/s, barely moved by other processes on a
            # shared machine
            "server_cpu_ms": statistics.median(r[3] for r in per_round) * 1000,
            "failed": sum(r[2] for r in per_round),
        }
        if db_cpu is not None:  # the database server's CPU per request, apart
            values["db_cpu_ms"] = statistics.median(r[4] for r in per_round) * 1000
        return values

    trivial, tasks = figures("GET /health (trivial)"), figures("POST /api/tasks")
    ratio = tasks["req_per_s"] / trivial["req_per_s"]
    cpu_ratio = trivial["server_cpu_ms"] / tasks["server_cpu_ms"] if tasks["server_cpu_ms"] else 0.0
    note = f"{CONCURRENCY} connections, {rounds} x {seconds:g} s rounds"
    return [
        Row("GET /health (trivial)" + suffix, dict[str, Figure]({**trivial, "setup": note})),
        Row("POST /api/tasks (durable commit)" + suffix,
            dict[str, Figure]({**tasks, "ratio_to_trivial": ratio,
                               "cpu_ratio_to_trivial": cpu_ratio}),
            target=">= 0.8 x trivial req/s, p99 < 50 ms",
            met=ratio >= 0.8 and tasks["p99_ms"] < 50 and tasks["failed"] == 0),
        Row("GET /api/tasks/<id>" + suffix, dict[str, Figure](figures("GET /api/tasks/<id>"))),
    ]


# ---- the OpenAI-compatible path, against a no-op worker ------------------------

V1_CONCURRENCY = 8
NOOP_NAME = "bench-noop"
CHAT_BODY = json.dumps({"model": "llama2:7b", "max_tokens": 16, "messages": [
    {"role": "user", "content": "Explain quantum computing in simple terms"}]}).encode()
STREAM_BODY = json.dumps({**json.loads(CHAT_BODY), "stream": True}).encode()
FIRST_TOKEN = b'"delta":{"content":'  # a content chunk (the role chunk has "role" first)
CHUNKED_END = b"\r\n0\r\n\r\n"


async def exchange(stream: trio.SocketStream, request: bytes, buffer: bytes,
                   marker: bytes = b"") -> tuple[bool, bytes, float, bytes]:
    """One request on a keep-alive connection: (2xx, the body, when `marker` first
    showed in it (perf_counter; 0 if never), what was read beyond the answer).
    Handles a Content-Length body and a chunked one (read to its last chunk)."""
    await stream.send_all(request)
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    seen = 0.0
    match = CONTENT_LENGTH.search(head)
    if match is not None:
        length = int(match.group(1))
        while len(buffer) < length:
            buffer += await stream.receive_some(65536)
        return head[9:10] == b"2", buffer[:length], time.perf_counter(), buffer[length:]
    while CHUNKED_END not in buffer:
        if marker and not seen and marker in buffer:
            seen = time.perf_counter()
        buffer += await stream.receive_some(65536)
    if marker and not seen and marker in buffer:
        seen = time.perf_counter()
    end = buffer.index(CHUNKED_END) + len(CHUNKED_END)
    return head[9:10] == b"2", buffer[:end], seen, buffer[end:]


# case -> the calls of one sample: (request, or a function of the previous body)
Steps = list[tuple[bytes | Callable[[bytes], bytes], bytes]]


async def load_steps(port: int, steps: Steps, seconds: float
                     ) -> tuple[list[float], list[float], int]:
    """(latencies of samples, times to their marker, failures) over `seconds`, each
    sample the steps in order on one keep-alive connection."""
    latencies: list[float] = []
    marks: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal failures
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer, body = b"", b""
        async with stream:
            while time.perf_counter() < stop_at:
                started, ok, mark = time.perf_counter(), True, 0.0
                for request, marker in steps:
                    payload = request(body) if callable(request) else request
                    ok, body, seen, buffer = await exchange(stream, payload, buffer, marker)
                    mark = mark or (seen if marker else 0.0)
                    if not ok:
                        break
                if ok:
                    latencies.append(time.perf_counter() - started)
                    if mark:
                        marks.append(mark - started)
                else:
                    failures += 1

    async with trio.open_nursery() as nursery:
        for _ in range(V1_CONCURRENCY):
            nursery.start_soon(connection)
    return latencies, marks, failures


def start_noop_worker(port: int, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.worker", "--coordinator",
         f"ws://127.0.0.1:{port}/api/nodes/connect", "--name", NOOP_NAME, "--noop",
         "--slots", str(V1_CONCURRENCY)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "NEUROGRID_TOKEN": token})


def create_noop_token(db: str) -> str:
    from api.store import open_store

    async def create() -> str:
        async with open_store(db) as store:
            return await store.create_node_token(NOOP_NAME, time.time())

    return trio.run(create)


def wait_for_node(port: int, limit: float = 60.0) -> None:
    import httpx
    give_up = time.monotonic() + limit
    while httpx.get(f"http://127.0.0.1:{port}/api/network/status").json()[
            "network"]["nodes_online"] < 1:
        if time.monotonic() > give_up:
            raise RuntimeError("the no-op worker never joined")
        time.sleep(0.1)


def run_v1(quick: bool) -> list[Row]:
    rounds, seconds = (2, 4.0) if quick else (3, 8.0)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench-v1.db")
        key, token = create_bench_key(db), create_noop_token(db)
        process, port = start_server(db)
        worker = start_noop_worker(port, token)
        try:
            wait_for_node(port)
            return measure_v1(port, key, rounds, seconds, process.pid)
        finally:
            worker.terminate()
            process.terminate()
            worker.wait(timeout=30)
            process.wait(timeout=30)


def measure_v1(port: int, key: str, rounds: int, seconds: float, pid: int) -> list[Row]:
    def stream_of(created: bytes) -> bytes:
        return request_bytes("GET", f"/api/tasks/{json.loads(created)['task_id']}/stream", key)

    cases: dict[str, Steps] = {
        "POST /api/tasks + wait": [(request_bytes("POST", "/api/tasks", key, TASK_BODY), b""),
                                   (stream_of, b"")],
        "POST /v1/chat/completions": [
            (request_bytes("POST", "/v1/chat/completions", key, CHAT_BODY), b"")],
        "POST /v1/chat/completions stream": [
            (request_bytes("POST", "/v1/chat/completions", key, STREAM_BODY), FIRST_TOKEN)],
    }
    for steps in cases.values():  # warm-up
        trio.run(load_steps, port, steps, 1.0)
    results: dict[str, list[tuple[float, list[float], list[float], int, float]]] = {
        c: [] for c in cases}
    for round_ in range(rounds):
        order = list(cases.items()) if round_ % 2 == 0 else list(cases.items())[::-1]
        for case, steps in order:
            cpu_before = settled_cpu_seconds(pid)
            latencies, marks, failures = trio.run(load_steps, port, steps, seconds)
            cpu = settled_cpu_seconds(pid) - cpu_before
            results[case].append((len(latencies) / seconds, latencies, marks, failures,
                                  cpu / max(1, len(latencies) + failures)))

    def figures(case: str) -> dict[str, float | int]:
        per_round = results[case]
        latencies = [x for _, lat, _, _, _ in per_round for x in lat]
        return {
            "req_per_s": statistics.median(r[0] for r in per_round),
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "server_cpu_ms": statistics.median(r[4] for r in per_round) * 1000,
            "failed": sum(r[3] for r in per_round),
        }

    base, chat = figures("POST /api/tasks + wait"), figures("POST /v1/chat/completions")
    stream = figures("POST /v1/chat/completions stream")
    marks = [x for r in results["POST /v1/chat/completions stream"] for x in r[2]]
    overhead = chat["p50_ms"] / base["p50_ms"] - 1 if base["p50_ms"] else 0.0
    cpu_overhead = (chat["server_cpu_ms"] / base["server_cpu_ms"] - 1
                    if base["server_cpu_ms"] else 0.0)
    note = (f"no-op worker ({V1_CONCURRENCY} slots), {V1_CONCURRENCY} connections, "
            f"{rounds} x {seconds:g} s rounds")
    return [
        Row("POST /api/tasks + wait for the end (no-op worker)",
            dict[str, Figure]({**base, "setup": note})),
        Row("POST /v1/chat/completions (no-op worker)",
            dict[str, Figure]({**chat, "overhead_p50": overhead, "overhead_cpu": cpu_overhead}),
            target="< 10% over POST /api/tasks + wait (p50 latency, or server CPU per call)",
            met=min(overhead, cpu_overhead) < 0.10 and chat["failed"] == 0),
        Row("POST /v1/chat/completions stream: first token",
            dict[str, Figure]({
                **stream, "first_token_p50_ms": percentile(marks, 50) * 1000 if marks else 0.0,
                "first_token_p99_ms": percentile(marks, 99) * 1000 if marks else 0.0})),
    ]


# The `api` benchmark (all its rows, one run) is composed in api_scale.py, which
# builds on this module's load generator and servers.
