# Which way trio reaches PostgreSQL: the measurement behind postgres_store.py's
# driver route. Not one of `python -m benchmarks`' rows (it compares ways to call
# the driver, not the product); run it by hand:
#
#   python -m benchmarks.postgres_route postgresql://postgres@127.0.0.1:55432/neurogrid_test
#
# Three routes for the same point lookup (get_task's query on 2,000 rows, in a
# fresh schema), 32 concurrent trio tasks for a few seconds each, while a ticker
# task measures how late the event loop wakes it (a blocked loop shows there):
#   blocking  psycopg's sync connection called on the loop itself
#   thread    the sync ConnectionPool from trio.to_thread.run_sync (the store's route)
#   asyncio   psycopg's AsyncConnectionPool on an asyncio loop in one helper thread,
#             each result handed back to trio with TrioToken.run_sync_soon
# Each with the server near (this machine) and far (1 ms more per query).
# Figures: reads/s, this process's CPU per read (all threads), the ticker's worst lag.
from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from typing import Any, Awaitable, Callable

import psycopg
import trio
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from api.postgres_schema import CONNECTION_KWARGS, connect, scratch_schema

CONCURRENCY = 32
ROWS = 2000
SECONDS = 3.0
# near: the server on this machine; far: 1 ms more per query (pg_sleep), as a
# database on another machine of the network adds
QUERIES = {"near": "SELECT * FROM route_tasks WHERE id = %s",
           "far": "SELECT t.*, pg_sleep(0.001) FROM route_tasks t WHERE id = %s"}


def prepare(url: str) -> None:
    with connect(url) as conn:
        conn.execute("CREATE TABLE route_tasks (id TEXT PRIMARY KEY, owner TEXT, prompt TEXT, "
                     "params JSON, created_at DOUBLE PRECISION)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO route_tasks VALUES (%s, 'anon:1', 'hello', "
                               "'{\"max_tokens\": 8}', 1.0)", [(f"t{n}",) for n in range(ROWS)])


async def drive(read: Callable[[str], Awaitable[Any]]) -> tuple[float, float, float]:
    """(reads/s, CPU ms per read, worst loop lag ms) of `read` under CONCURRENCY."""
    count = 0
    lag = 0.0
    stop_at = time.perf_counter() + SECONDS

    async def reader(n: int) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await read(f"t{(count * 7 + n) % ROWS}")
            count += 1

    async def ticker() -> None:
        nonlocal lag
        while time.perf_counter() < stop_at:
            before = time.perf_counter()
            await trio.sleep(0.001)
            lag = max(lag, time.perf_counter() - before - 0.001)

    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        for n in range(CONCURRENCY):
            nursery.start_soon(reader, n)
    cpu = time.process_time() - cpu
    return count / SECONDS, cpu / max(count, 1) * 1000, lag * 1000


async def blocking(url: str, query_sql: str) -> tuple[float, float, float]:
    conn = connect(url)

    async def read(task_id: str) -> Any:
        row = conn.execute(query_sql, (task_id,)).fetchone()
        await trio.lowlevel.checkpoint()
        return row

    try:
        return await drive(read)
    finally:
        conn.close()


async def thread(url: str, query_sql: str) -> tuple[float, float, float]:
    pool: ConnectionPool[Any] = ConnectionPool(url, min_size=8, max_size=8,
                                               kwargs=CONNECTION_KWARGS, open=True)
    pool.wait()

    def query(task_id: str) -> Any:
        with pool.connection() as conn:
            return conn.execute(query_sql, (task_id,)).fetchone()

    try:
        return await drive(lambda task_id: trio.to_thread.run_sync(query, task_id))
    finally:
        pool.close()


async def on_asyncio(url: str, query_sql: str) -> tuple[float, float, float]:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def make_pool() -> AsyncConnectionPool[Any]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=8, max_size=8, open=False,
            kwargs={"autocommit": True, "row_factory": dict_row})
        await pool.open(wait=True)
        return pool

    pool = asyncio.run_coroutine_threadsafe(make_pool(), loop).result()
    token = trio.lowlevel.current_trio_token()

    async def query(task_id: str) -> Any:
        async with pool.connection() as conn:
            cursor = await conn.execute(query_sql, (task_id,))
            return await cursor.fetchone()

    async def read(task_id: str) -> Any:
        done = trio.Event()
        future = asyncio.run_coroutine_threadsafe(query(task_id), loop)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        return future.result()

    try:
        return await drive(read)
    finally:
        asyncio.run_coroutine_threadsafe(pool.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        runner.join()


ROUTES = {"blocking": blocking, "thread": thread, "asyncio": on_asyncio}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__ or "usage: python -m benchmarks.postgres_route POSTGRESQL_URL")
        return 2
    results: dict[str, list[tuple[float, float, float]]] = {
        f"{name} {where}": [] for where in QUERIES for name in ROUTES}
    with scratch_schema(argv[0]) as url:
        prepare(url)
        for _ in range(3):  # rounds, each route once per round
            for where, query_sql in QUERIES.items():
                for name, route in ROUTES.items():
                    results[f"{name} {where}"].append(trio.run(route, url, query_sql))
    print(f"{'route':14} {'reads/s':>9} {'cpu ms/read':>12} {'worst lag ms':>13}")
    for name, rows in results.items():
        print(f"{name:14} {statistics.median(r[0] for r in rows):9.0f} "
              f"{statistics.median(r[1] for r in rows):12.3f} {max(r[2] for r in rows):13.1f}")
    print(f"psycopg {psycopg.__version__}, {CONCURRENCY} readers, {SECONDS:g} s x 3 rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
