# Instruction counts under callgrind, for what a timed run on the shared machine
# cannot resolve (a few per cent between two trees):
#     python -m benchmarks.instructions [--versus REV] [--only sim,api]
#                                       [--requests health,post,get] [--json FILE]
# Needs valgrind (`apt-get install valgrind`); not part of `python -m benchmarks`
# (a count takes minutes). Counts are deterministic up to scheduling: the same
# tree's API figures move by ~0.4% between runs on one connection, ~2% on 32.
#
# Theory of operation:
# - Every count is a child process under `valgrind --tool=callgrind`, hash seed 0,
#   with the tree as its working directory and PYTHONPATH (as versus.py runs a
#   tree); `--versus REV` exports REV with versus.export and counts both trees.
# - sim: the simulator on benchmarks.sim_speed's c = 10,000 M/M/c model; the count
#   of a 30,000-task run less that of a 10,000-task run, over 20,000 (start-up and
#   imports cancel out).
# - api: `python -m api --local-workers 0` under callgrind; the client opens C
#   keep-alive connections, sends a warm-up, then has callgrind dump and zero its
#   counters (`callgrind_control -d`); N requests, C at a time (one on each
#   connection, then the C answers); a dump; the connections closed, CLOSE_SECONDS
#   later a dump (that part is not counted); IDLE_SECONDS with no connection; a
#   dump. `raw` is the window's count over N. The `get` case reads one task
#   (GET /api/tasks/<id>, the task submitted on the first connection before the
#   warm-up: queued, as no worker runs). `instructions` also takes off the
#   idle rate times the window's length: the server's own timers (the dashboard's
#   look at the network every second) run on the wall clock, which callgrind
#   slows about fifty times, so in the window they weigh on each request about
#   fifty times what they do at full speed. The idle rate is taken with no
#   connection open: idle keep-alive connections' timers are not the server's
#   own, and a tree's may fire in its idle time and not in its window.
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .api_load import CONTENT_LENGTH, TASK_BODY, request_bytes, start_server

SIM_TASKS = (10_000, 30_000)
API_CASES = (("health", 1), ("post", 1), ("get", 1), ("health", 32), ("post", 32), ("get", 32))
API_CASE_NAMES = {"health": "GET /health", "post": "POST /api/tasks", "get": "GET /api/tasks/<id>"}
API_REQUESTS = 384  # a multiple of every case's connections
WARM_UP_ROUNDS = 2
CLOSE_SECONDS = 5.0
IDLE_SECONDS = 10.0
CHILD_ENV = {"PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}


def tree_env(tree: Path) -> dict[str, str]:
    return dict(os.environ, **CHILD_ENV, PYTHONPATH=os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))


def summary(path: Path) -> int:
    """The instructions a callgrind output file counts."""
    found = re.search(r"^summary: (\d+)", path.read_text(), re.M)
    assert found, f"no summary in {path}"
    return int(found.group(1))


def count_sim(tree: Path, scratch: Path) -> dict[str, Any]:
    counts = []
    for tasks in SIM_TASKS:
        out = scratch / f"sim-{tasks}.out"
        code = ("import sys; from benchmarks.sim_speed import mmc_scenario; "
                "from sim import run_scenario; run_scenario(mmc_scenario(int(sys.argv[1]), 10_000))")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q",
                        sys.executable, "-c", code, str(tasks)], cwd=tree, env=tree_env(tree),
                       check=True)
        counts.append(summary(out))
    per_task = (counts[1] - counts[0]) / (SIM_TASKS[1] - SIM_TASKS[0])
    return {"case": "simulator, a task (c = 10,000 M/M/c)", "instructions": round(per_task)}


def count_api(tree: Path, scratch: Path, kind: str, connections: int) -> dict[str, Any]:
    db = scratch / f"api-{kind}-{connections}.db"
    key = subprocess.run(  # by the tree's own code: its store makes the database
        [sys.executable, "-c", "import sys; from benchmarks.api_load import create_bench_key; "
         "print(create_bench_key(sys.argv[1]))", str(db)], cwd=tree, env=tree_env(tree),
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    out = scratch / f"api-{kind}-{connections}.out"
    server, port = start_server(
        str(db), launcher=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        tree=tree, env=tree_env(tree))
    try:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
        buffers = [b""] * connections
        submit = request_bytes("POST", "/api/tasks", key, TASK_BODY)
        if kind == "get":
            socks[0].sendall(submit)
            body, buffers[0] = read_answer_body(socks[0], buffers[0])
            request = request_bytes("GET", f"/api/tasks/{json.loads(body)['task_id']}", key)
        else:
            request = request_bytes("GET", "/health", key) if kind == "health" else submit

        def exchange(rounds: int) -> None:
            for _ in range(rounds):
                for sock in socks:
                    sock.sendall(request)
                for i, sock in enumerate(socks):
                    buffers[i] = read_answer(sock, buffers[i])

        def dump() -> None:
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True,
                           check=True)

        exchange(WARM_UP_ROUNDS * max(1, 32 // connections))
        dump()
        started = time.monotonic()
        exchange(API_REQUESTS // connections)
        window = time.monotonic() - started
        dump()
        for sock in socks:
            sock.close()
        time.sleep(CLOSE_SECONDS)  # the server sees the closes (not counted)
        dump()
        idle_from = time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle = time.monotonic() - idle_from
        dump()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=600)
    counted, idled = summary(Path(f"{out}.2")), summary(Path(f"{out}.4"))
    return {"case": f"{API_CASE_NAMES[kind]}, {connections} connection(s)",
            "instructions": round((counted - idled / idle * window) / API_REQUESTS),
            "raw": round(counted / API_REQUESTS), "idle_per_s": round(idled / idle),
            "window_s": round(window, 1)}


def read_answer(sock: socket.socket, buffer: bytes) -> bytes:
    """Read one HTTP answer (it must be a 200); what came after it."""
    return read_answer_body(sock, buffer)[1]


def read_answer_body(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    """Read one HTTP answer (it must be a 200): (its body, what came after it)."""
    while b"\r\n\r\n" not in buffer:
        buffer += received(sock)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    assert head[9:12] == b"200", head[:80]
    length = CONTENT_LENGTH.search(head)
    assert length, head[:200]
    size = int(length.group(1))
    while len(buffer) < size:
        buffer += received(sock)
    return buffer[:size], buffer[size:]


def received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:  # e.g. kept idle past the keep-alive timeout by a slow round
        raise SystemExit("the server closed a connection in the middle of the count")
    return data


def count_tree(tree: Path, names: list[str], kinds: list[str]) -> list[dict[str, Any]]:
    rows = []
    print(f"-- {tree}", flush=True)
    with tempfile.TemporaryDirectory(prefix="neurogrid-instructions-") as scratch:
        if "sim" in names:
            rows.append(count_sim(tree, Path(scratch)))
            print(f"  {rows[-1]}", flush=True)
        if "api" in names:
            for kind, connections in (case for case in API_CASES if case[0] in kinds):
                rows.append(count_api(tree, Path(scratch), kind, connections))
                print(f"  {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--versus", metavar="REV", help="also count REV's tree, and compare")
    parser.add_argument("--only", default="sim,api", help="comma-separated: sim, api")
    parser.add_argument("--requests", default=",".join(API_CASE_NAMES),
                        help=f"the api count's requests, comma-separated: {', '.join(API_CASE_NAMES)}")
    parser.add_argument("--json", metavar="FILE", help="write the counts as JSON")
    args = parser.parse_args(argv)
    names, kinds = args.only.split(","), args.requests.split(",")
    if unknown := set(names) - {"sim", "api"}:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (sim, api)")
    if unknown := set(kinds) - set(API_CASE_NAMES):
        parser.error(f"--requests: unknown {', '.join(sorted(unknown))} ({', '.join(API_CASE_NAMES)})")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("python -m benchmarks.instructions: needs valgrind (apt-get install valgrind)",
              file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent.parent
    report: dict[str, Any] = {"here": count_tree(here, names, kinds)}
    if args.versus:
        from .versus import export

        with tempfile.TemporaryDirectory(prefix="neurogrid-versus-") as base:
            report["base_commit"] = export(args.versus, Path(base), here)
            report["base"] = count_tree(Path(base), names, kinds)
        print(f"\n{'case':<40} {args.versus:>12} {'here':>12} here/base")
        for then, now in zip(report["base"], report["here"]):
            print(f"{now['case']:<40} {then['instructions']:>12,} {now['instructions']:>12,} "
                  f"{now['instructions'] / then['instructions']:9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
