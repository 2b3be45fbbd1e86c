# A long-running server's memory: the API's services (store, coordinator,
# dispatcher, update writer) with no-op worker processes, through many tiny tasks.
#
# Theory: what a live server keeps per task must go when the task ends - the
# coordinator forgets ended tasks (CoordinatorConfig.keep_finished=False), the
# update writer closes their in-flight count, the feed and dispatcher drop them -
# so resident memory after N tasks is about what it was after the first N/10 (the
# warm-up: allocator arenas, SQLite's page cache, imported code). Tasks go in
# through the dispatcher in this process, as the POST route hands them over after
# its durable commit (no HTTP: that is benchmarks/api_load.py), at most WINDOW
# open at once, and run on WORKERS `neurogrid worker --noop` processes connected
# to the coordinator's own websocket server with store-issued tokens. RSS is read
# from /proc (api.app.process_memory) in this process, which holds everything but
# the workers.
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from api.app import ApiConfig, Services, process_memory, serve_services
from api.submission import new_id
from api.store import TaskRow
from engine.protocol import serve_websocket
from engine.runtime import CoordinatorConfig

from .harness import Benchmark, Row

WORKERS = 2
SLOTS = 16
WINDOW = 256  # tasks open at once, at most
TARGET_GROWTH = 1.2  # RSS at the end / RSS after the first tenth


def _row(now: float) -> TaskRow:
    return TaskRow(new_id("task", now), "anon:bench", "llama2:7b", "standard", "x",
                   {"max_tokens": 1}, "queued", now, 0.0, 0.0, 0.0)


def _open_count(services: Services) -> int:
    return sum(services.limiter.in_flight.values())


async def _load(services: Services, port: int, tasks: int) -> tuple[int, int, float]:
    url = f"ws://127.0.0.1:{port}/api/nodes/connect"
    procs = []
    for i in range(WORKERS):
        token = await services.store.create_node_token(f"mem-{i}", time.time())
        procs.append(await trio.lowlevel.open_process(
            [sys.executable, "-m", "engine.worker", "--coordinator", url, "--token", token,
             "--noop", "--slots", str(SLOTS), "--name", f"mem-{i}", "--log-level", "ERROR"],
            stdout=subprocess.DEVNULL))
    try:
        with trio.fail_after(60):
            while len(services.coordinator.snapshot().nodes) < WORKERS:
                await trio.sleep(0.05)
        warm_rss = 0
        start = time.perf_counter()
        for i in range(tasks):
            while _open_count(services) >= WINDOW:
                await trio.sleep(0.001)
            await services.dispatcher.submit(_row(time.time()), lambda: new_id("task", 0))
            if i + 1 == tasks // 10:  # the warm-up: let it drain, then read
                with trio.fail_after(120):
                    while _open_count(services):
                        await trio.sleep(0.005)
                warm_rss = process_memory()[0]
        with trio.fail_after(300):
            while _open_count(services):
                await trio.sleep(0.005)
        return warm_rss, process_memory()[0], time.perf_counter() - start
    finally:
        for proc in procs:
            proc.terminate()
        with trio.move_on_after(10):
            for proc in procs:
                await proc.wait()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()


async def _run(tasks: int, db: str) -> tuple[int, int, float]:
    """(RSS after tasks // 10, RSS after all, seconds for all)."""
    stop = trio.Event()
    config = ApiConfig(db=db, coordinator=CoordinatorConfig(heartbeat_timeout=60.0))
    async with trio.open_nursery() as nursery:
        services: Services = await nursery.start(serve_services, config, stop)
        async with trio.open_nursery() as workers:
            server = await workers.start(serve_websocket, services.coordinator, "127.0.0.1", 0)
            warm_rss, end_rss, elapsed = await _load(services, server.port, tasks)
            workers.cancel_scope.cancel()
        stop.set()
    return warm_rss, end_rss, elapsed


def run(quick: bool) -> list[Row]:
    tasks = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        warm, end, elapsed = trio.run(_run, tasks, str(Path(tmp) / "memory.db"))
    growth = end / warm
    return [
        Row(f"memory: API services + {WORKERS} no-op workers, {tasks:,} tiny tasks",
            {"rss_mb_after_tenth": warm / 2**20, "rss_mb_at_end": end / 2**20,
             "growth": growth, "tasks_per_s": tasks / elapsed},
            target=f"end RSS <= {TARGET_GROWTH:g} x RSS after the first tenth",
            met=growth <= TARGET_GROWTH),
    ]


BENCHMARK = Benchmark(
    name="memory",
    description="a long-running server's resident memory through many tiny tasks",
    run=run,
)
