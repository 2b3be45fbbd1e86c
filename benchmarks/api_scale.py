# The `api` benchmark (BENCHMARK: api_load.py's rows, then these) and its rows for
# several API processes on one PostgreSQL database: POST /api/tasks through one
# and through two `neurogrid serve --role api` processes, with one
# `--role coordinator` process taking the tasks from the database, in the same
# run as api_load.py's single-process rows (SQLite, and PostgreSQL in one
# process), when a PostgreSQL server is named (NEUROGRID_BENCH_POSTGRES or
# NEUROGRID_TEST_POSTGRES; without one there are no rows).
#
# Theory: the load generator is api_load.py's (CONCURRENCY keep-alive connections
# over raw sockets), spread over the API processes, one API key per connection
# (callers, not one hot key: each submission locks its caller's rate-limit row,
# so one key would serialize every API process behind that row). No workers: the
# tasks stay queued with the coordinator, as in api_load.py; this measures the
# API path over the database (shared admission, the task and inbox rows, NOTIFY)
# and the coordinator's pick-up. Each configuration runs on a fresh schema.
#
# Figures: req/s and latency percentiles of the client; CPU per request of the
# API processes together (`api_cpu_ms`), of the coordinator, and of the database
# server (every `postgres` process of the machine), and their sum
# (`total_cpu_ms`): on a machine whose cores the processes already fill (this
# 2-core one), req/s cannot grow with a second API process, and the CPU per
# request is what predicts how far it grows where there are cores to spare:
# about cores / total_cpu_ms requests a second.
from __future__ import annotations

import os
import statistics
import time

import trio

from .api_load import (
    CONCURRENCY, TASK_BODY, load, postgres_cpu_seconds, postgres_url, request_bytes, run,
    run_v1, settled_cpu_seconds, start_server,
)
from .harness import Benchmark, Figure, Row, percentile

API_PROCESSES = (1, 2)


def create_keys(db: str, count: int) -> list[str]:
    """`count` premium keys with limits no load reaches (the limiter works, never refuses)."""
    from api.store import open_store

    async def create() -> list[str]:
        async with open_store(db) as store:
            return [(await store.create_key("premium", f"bench-{i}", 10**9, 10**9,
                                            time.time()))[0] for i in range(count)]

    return trio.run(create)


def measure_processes(db: str, processes: int, rounds: int, seconds: float) -> dict[str, float]:
    """The figures of POST /api/tasks through `processes` API processes on `db`."""
    keys = create_keys(db, CONCURRENCY)
    coordinator, _ = start_server(db, ("--role", "coordinator"))
    apis = [start_server(db, ("--role", "api")) for _ in range(processes)]
    try:
        ports, pids = [port for _, port in apis], [p.pid for p, _ in apis]
        requests = [request_bytes("POST", "/api/tasks", key, TASK_BODY) for key in keys]
        trio.run(load, ports, requests, 1.0)  # warm: connections, plans, the first buckets
        per_round: list[tuple[float, list[float], int, float, float, float]] = []
        for _ in range(rounds):
            api_before = sum(settled_cpu_seconds(pid) for pid in pids)
            coordinator_before = settled_cpu_seconds(coordinator.pid)
            db_before = postgres_cpu_seconds()
            latencies, failures, _ = trio.run(load, ports, requests, seconds)
            api_cpu = sum(settled_cpu_seconds(pid) for pid in pids) - api_before
            coordinator_cpu = settled_cpu_seconds(coordinator.pid) - coordinator_before
            db_cpu = postgres_cpu_seconds() - db_before
            answers = max(1, len(latencies) + failures)
            per_round.append((len(latencies) / seconds, latencies, failures, api_cpu / answers,
                              coordinator_cpu / answers, db_cpu / answers))
    finally:
        for process in [p for p, _ in apis] + [coordinator]:
            process.terminate()
        for process in [p for p, _ in apis] + [coordinator]:
            process.wait(timeout=30)
    latencies = [x for r in per_round for x in r[1]]
    api_ms = statistics.median(r[3] for r in per_round) * 1000
    coordinator_ms = statistics.median(r[4] for r in per_round) * 1000
    db_ms = statistics.median(r[5] for r in per_round) * 1000
    return {
        "req_per_s": statistics.median(r[0] for r in per_round),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "api_cpu_ms": api_ms, "coordinator_cpu_ms": coordinator_ms, "db_cpu_ms": db_ms,
        "total_cpu_ms": api_ms + coordinator_ms + db_ms,
        "failed": sum(r[2] for r in per_round),
    }


def run_scale(quick: bool) -> list[Row]:
    url = postgres_url()
    if url is None:
        return []
    from api.postgres_schema import scratch_schema  # psycopg: only where PostgreSQL runs

    rounds, seconds = (2, 4.0) if quick else (3, 10.0)
    results: dict[int, dict[str, float]] = {}
    for processes in API_PROCESSES:
        with scratch_schema(url) as schema_url:
            results[processes] = measure_processes(schema_url, processes, rounds, seconds)
    note = (f"{CONCURRENCY} connections, one key each, {rounds} x {seconds:g} s rounds, "
            f"{os.cpu_count()} cores, + 1 coordinator process")
    rows = []
    for processes, figures in results.items():
        values: dict[str, Figure] = {**figures, "setup": note}
        if processes > 1:
            values["speedup_vs_one"] = figures["req_per_s"] / results[1]["req_per_s"]
        plural = "es" if processes > 1 else ""
        rows.append(Row(f"POST /api/tasks [postgresql, {processes} API process{plural}]",
                        values))
    return rows


def run_all(quick: bool) -> list[Row]:
    """Every row of the `api` benchmark, in one run: one process (SQLite, then
    PostgreSQL), several API processes on PostgreSQL, the OpenAI-compatible path."""
    return run(quick) + run_scale(quick) + run_v1(quick)


BENCHMARK = Benchmark(
    name="api",
    description="REST API under 32 concurrent connections: task submission vs /health, "
                "one process and several on PostgreSQL; the OpenAI-compatible path vs the "
                "reference one on a no-op worker",
    run=run_all,
)

__all__ = ["API_PROCESSES", "BENCHMARK", "create_keys", "measure_processes", "run_all",
           "run_scale"]
