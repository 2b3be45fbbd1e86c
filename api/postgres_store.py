# The networked store: the `Store` protocol (records.py) on a PostgreSQL database,
# for an operator who outgrows one machine. `--db postgresql://USER@HOST/DB`.
# The schema, its migrations and triggers are in postgres_schema.py, the writer
# actor (group commit) in postgres_writer.py. Same semantics as the SQLite store:
#
# - A write is durable when its `await` returns (PostgreSQL's synchronous commit);
#   `post_task_change` queues without waiting, in order; reads see every write
#   awaited before them. Task rows move forward only.
# - While the server cannot be reached, posted task changes are held in order and
#   written once it can, and `barrier` waits for them (store_writer.py); a change
#   the database refuses fails its task instead (`records.refused_change`).
# - Secrets are stored as SHA-256 hashes only. Statistics are a query of the
#   `task_totals` row the triggers keep.
#
# Driver route: psycopg 3's sync API (connections from a psycopg_pool
# ConnectionPool), each call in a worker thread (`trio.to_thread.run_sync`); the
# writer pays that hop once per batch. psycopg's async API needs asyncio, and
# the project runs on trio. Unlike the SQLite store, a read cannot run on the
# loop: it is a network round trip, and the loop would stand still for it.
# Measured (python -m benchmarks.postgres_route URL: 32 concurrent point lookups,
# this shared 2-core machine, medians of 3 rounds; CPU is this process's):
#
#   route                         server here            server 1 ms away
#   blocking, on the loop         24,600/s 0.027 ms CPU    460/s, loop stalls 144 ms
#   worker thread + pool (this)    9,600/s 0.097 ms        3,400/s, loop lag 7.5 ms
#   asyncio pool in a helper       5,700/s 0.162 ms        3,300/s, loop lag 7.4 ms
#     thread, results handed back
#     to trio by run_sync_soon
#
# Blocking is cheapest only while the database is on this machine, and it
# serializes the whole process behind each round trip as soon as it is not;
# the thread route keeps the loop free at ~0.1 ms of CPU a call, less than the
# asyncio bridge at either distance.
from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, TypeVar

import attrs
import psycopg
import trio
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool

from .postgres_schema import (
    CONNECTION_KWARGS, INSERT_TASK, configure, connect, key_record, migrate, redact, task_row,
)
from .postgres_writer import Connection, Writer
from .records import (
    IDEMPOTENCY_TTL_SECONDS, OPEN_STATES, Blob, DuplicateTaskId, IdempotencyKeyTaken,
    IdempotencyRecord, KeyRecord, NodeRecord, NodeTokenRecord, Signup, Stats,
    StoreError, StoreHealth, StoreUnavailable, TaskChange, TaskRow, hash_secret, new_secret,
    refused_change,
)
from .store_sql import CHANGE_COLUMNS, READ_TOTALS, task_values

T = TypeVar("T")
POOL_SIZE = 8  # connections for concurrent reads (the writer has one of its own)
READ_ATTEMPTS = POOL_SIZE + 1  # a read that finds its connection dead tries another
POOL_TIMEOUT_S = 30.0  # how long a call waits for a free connection
# A pool whose server is away retries its connection with doubling delays (1 s,
# 2 s, 4 s, ...) for this long, then gives up until the next call asks for one,
# which starts again at 1 s: without it, a connection came back up to the
# outage's own length after the server did (measured once by hand, a held change
# after a 40 s outage: written 28 s after the server was back, 0.6 s with this).
RECONNECT_S = 10.0


class PostgresStore:
    """The PostgreSQL store. Use `open_store("postgresql://...")`; the writer runs
    in its nursery."""

    def __init__(self, url: str, reads: ConnectionPool[Connection],
                 writes: ConnectionPool[Connection]) -> None:
        self.url = url
        self.reads = reads
        # reads beyond the pool's size wait here, on the loop, not parked in threads
        self.read_slots = trio.CapacityLimiter(POOL_SIZE)
        self.writer = Writer(writes)

    def run_read(self, query: Callable[[Connection], T]) -> T:
        """In a worker thread: `query` on a connection of the read pool; again on
        another when the connection turns out to be dead (the server restarted, an
        idle connection was cut): a read has no effect to repeat."""
        for attempt in range(READ_ATTEMPTS):
            broken = False
            try:
                with self.reads.connection() as conn:
                    try:
                        return query(conn)
                    except psycopg.OperationalError:
                        broken = conn.broken
                        raise
            except psycopg.OperationalError:
                if not broken or attempt == READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def read(self, query: Callable[[Connection], T]) -> T:
        """Run a read-only `query` in a worker thread, on a connection of the pool;
        StoreUnavailable (the API: 503) when no connection works. A cancelled read
        is not waited for (it has no effect); its thread gives its slot back when it
        ends."""
        try:
            return await trio.to_thread.run_sync(self.run_read, query, limiter=self.read_slots,
                                                 abandon_on_cancel=True)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the PostgreSQL database cannot be read now: "
                                   f"{str(exc).strip()}") from exc

    def observe_commits(self, observer: Callable[[int, float], None] | None) -> None:
        """Tell `observer` (operations, seconds) of every batch the writer commits."""
        self.writer.on_commit = observer

    async def health(self) -> StoreHealth:
        return self.writer.health()

    async def barrier(self) -> None:
        """Wait until every write queued before this call is committed, held task
        changes included (while the server cannot be reached, until it can)."""
        await self.writer.write(lambda conn: None, ordered=True)

    # ---- tasks ------------------------------------------------------------------

    async def insert_task(self, row: TaskRow,
                          idempotency: IdempotencyRecord | None = None) -> None:
        """Insert a new task; with `idempotency`, its key too, in the same
        transaction: when the owner holds that key already (a live one), nothing is
        inserted and IdempotencyKeyTaken says which task holds it. Keys past
        IDEMPOTENCY_TTL_SECONDS are purged here."""
        try:
            existing = await self.writer.write(self.insert_op(row, idempotency))
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateTaskId(f"task id {row.id!r} already exists") from exc
        if existing is not None:
            raise IdempotencyKeyTaken(existing)

    @staticmethod
    def insert_op(row: TaskRow, idempotency: IdempotencyRecord | None = None
                  ) -> Callable[[Connection], IdempotencyRecord | None]:
        """`insert_task`'s operation, to be run in a transaction of the writer's: it
        returns the record that holds the key when the key is taken (nothing
        inserted), else None; a task id taken raises UniqueViolation."""
        values = task_values(row, Json)

        def op(conn: Connection) -> IdempotencyRecord | None:
            if idempotency is not None:
                conn.execute("DELETE FROM idempotency_keys WHERE created_at < %s",
                             (idempotency.created_at - IDEMPOTENCY_TTL_SECONDS,))
                inserted = conn.execute(
                    "INSERT INTO idempotency_keys (owner, key, body_hash, task_id, created_at) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, key) DO NOTHING",
                    attrs.astuple(idempotency)).rowcount
                if inserted == 0:  # checked before the task: a lost race inserts nothing
                    held = conn.execute(
                        "SELECT owner, key, body_hash, task_id, created_at FROM "
                        "idempotency_keys WHERE owner = %s AND key = %s",
                        (idempotency.owner, idempotency.key)).fetchone()
                    assert held is not None  # the conflict was on this row
                    return IdempotencyRecord(**held)
            conn.execute(INSERT_TASK, values)
            return None

        return op

    async def find_idempotency_key(self, owner: str, key: str,
                                   now: float) -> IdempotencyRecord | None:
        """The owner's live record of `key` (not older than IDEMPOTENCY_TTL_SECONDS)."""

        def query(conn: Connection) -> IdempotencyRecord | None:
            row = conn.execute(
                "SELECT owner, key, body_hash, task_id, created_at FROM idempotency_keys "
                "WHERE owner = %s AND key = %s AND created_at >= %s",
                (owner, key, now - IDEMPOTENCY_TTL_SECONDS)).fetchone()
            return IdempotencyRecord(**row) if row is not None else None

        return await self.read(query)

    @staticmethod
    def change_op(change: TaskChange) -> Callable[[Connection], TaskRow | None]:
        sets = ["status = %s"]
        args: list[Any] = [change.status]
        for column in CHANGE_COLUMNS:
            value = getattr(change, column)
            if value is not None:
                sets.append(f"{column} = %s")
                args.append(value)
        if change.status == "running":
            sets.append("started_at = COALESCE(started_at, %s)")
            args.append(change.at)
        elif change.status == "queued":  # back in the queue: its node is gone
            sets.append("node_id = NULL, node_location = NULL, node_gpu = NULL")
        elif change.status not in OPEN_STATES:
            sets.append("completed_at = %s")
            args.append(change.at)
        update = (f"UPDATE tasks SET {', '.join(sets)} WHERE id = %s "
                  f"AND status IN ('queued', 'running') RETURNING *")

        def op(conn: Connection) -> TaskRow | None:
            row = conn.execute(update, [*args, change.task_id]).fetchone()
            if row is None:
                return None
            if change.status == "completed" and row["node_id"]:
                conn.execute("UPDATE nodes SET tasks_processed = tasks_processed + 1 "
                             "WHERE id = %s", (row["node_id"],))
            return task_row(row)

        return op

    async def change_task(self, change: TaskChange) -> bool:
        """Apply `change` and wait for the commit; False when the task had already
        ended (or does not exist)."""
        return await self.writer.write(self.change_op(change)) is not None

    async def post_task_change(self, change: TaskChange, blobs: tuple[Blob, ...] = ()) -> None:
        """Queue `change` (and the task files it brings, in the same transaction)
        without waiting for its commit (the coordinator's updates). Order of changes
        is kept; while the server cannot be reached the change is held and written
        once it can (postgres_writer.py). A change the database refuses (a value it
        cannot hold) fails the task instead, saying why."""
        def stand_in(error: Exception) -> Callable[[Connection], TaskRow | None]:
            return self.change_op(refused_change(change, error))

        await self.writer.post(self.change_op_with(change, blobs),
                               f"task {change.task_id} -> {change.status}", stand_in)

    def change_op_with(self, change: TaskChange, blobs: tuple[Blob, ...]
                       ) -> Callable[[Connection], TaskRow | None]:
        """The change, and its task files when it took effect, in one operation."""
        change_op = self.change_op(change)
        if not blobs:
            return change_op
        blobs_op = self.blobs_op(change.task_id, blobs)

        def op(conn: Connection) -> TaskRow | None:
            row = change_op(conn)
            if row is not None:  # only files of a change that took effect
                blobs_op(conn)
            return row

        return op

    @staticmethod
    def blobs_op(task_id: str, blobs: tuple[Blob, ...]) -> Callable[[Connection], None]:
        rows = [(task_id, b.name, b.content_type, b.data) for b in blobs]

        def op(conn: Connection) -> None:
            with conn.cursor() as cursor:  # %b: the bytes go in binary, not hex-escaped
                cursor.executemany(
                    "INSERT INTO task_blobs (task_id, name, content_type, data) VALUES "
                    "(%s, %s, %s, %b) ON CONFLICT (task_id, name) DO UPDATE SET "
                    "content_type = excluded.content_type, data = excluded.data", rows)

        return op

    async def put_blobs(self, task_id: str, blobs: tuple[Blob, ...]) -> None:
        """Store a task's files and wait for the commit."""
        await self.writer.write(self.blobs_op(task_id, blobs))

    async def get_blob(self, task_id: str, name: str) -> Blob | None:
        def query(conn: Connection) -> Blob | None:
            row = conn.execute("SELECT name, content_type, data FROM task_blobs "
                               "WHERE task_id = %s AND name = %s", (task_id, name)).fetchone()
            return Blob(row["name"], row["content_type"], bytes(row["data"])) if row else None

        return await self.read(query)

    async def reopen_tasks(self) -> list[TaskRow]:
        """After a restart: every task not yet ended, running ones put back to
        queued (their node is gone), oldest first."""

        def op(conn: Connection) -> list[TaskRow]:
            conn.execute("UPDATE tasks SET status = 'queued', node_id = NULL, "
                         "node_location = NULL, node_gpu = NULL WHERE status = 'running'")
            rows = conn.execute("SELECT * FROM tasks WHERE status IN ('queued', 'running') "
                                "ORDER BY seq").fetchall()
            return [task_row(r) for r in rows]

        result: list[TaskRow] = await self.writer.write(op)
        return result

    async def get_task(self, task_id: str) -> TaskRow | None:
        def query(conn: Connection) -> TaskRow | None:
            row = conn.execute("SELECT * FROM tasks WHERE id = %s", (task_id,)).fetchone()
            return task_row(row) if row is not None else None

        return await self.read(query)

    async def list_tasks(self, owner: str, limit: int, after_seq: int | None,
                         status: str | None) -> list[TaskRow]:
        """The owner's tasks, newest first, starting below `after_seq` (a cursor)."""
        sql = "SELECT * FROM tasks WHERE owner = %s"
        args: list[Any] = [owner]
        if after_seq is not None:
            sql += " AND seq < %s"
            args.append(after_seq)
        if status is not None:
            sql += " AND status = %s"
            args.append(status)
        sql += " ORDER BY seq DESC LIMIT %s"
        args.append(limit)
        return await self.read(
            lambda conn: [task_row(r) for r in conn.execute(sql, args).fetchall()])

    # ---- API keys and worker tokens ---------------------------------------------

    async def create_key(self, tier: str, name: str, per_hour: int | None,
                         in_flight: int | None, now: float) -> tuple[str, KeyRecord]:
        secret = new_secret("ng_")
        record = KeyRecord("key_" + secrets.token_hex(6), tier, name, per_hour, in_flight,
                           now, None)

        def op(conn: Connection) -> None:
            conn.execute("INSERT INTO api_keys (id, hash, tier, name, per_hour, in_flight, "
                         "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (record.id, hash_secret(secret), tier, name, per_hour, in_flight, now))

        await self.writer.write(op)
        return secret, record

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def op(conn: Connection) -> bool:
            return conn.execute("UPDATE api_keys SET revoked_at = %s WHERE id = %s AND "
                                "revoked_at IS NULL", (now, key_id)).rowcount == 1

        revoked: bool = await self.writer.write(op)
        return revoked

    async def find_key(self, secret: str) -> KeyRecord | None:
        """The live (not revoked) key with this secret."""
        digest = hash_secret(secret)

        def query(conn: Connection) -> KeyRecord | None:
            row = conn.execute("SELECT * FROM api_keys WHERE hash = %s AND revoked_at IS NULL",
                               (digest,)).fetchone()
            return key_record(row) if row is not None else None

        return await self.read(query)

    async def list_keys(self) -> list[KeyRecord]:
        return await self.read(lambda conn: [
            key_record(r) for r in conn.execute(
                "SELECT * FROM api_keys ORDER BY created_at, id").fetchall()])

    async def create_node_token(self, name: str, now: float) -> str:
        """A new worker token for `name`; an older token of that name stops working."""
        token = new_secret("ngw_")

        def op(conn: Connection) -> None:
            conn.execute("INSERT INTO node_tokens (name, hash, created_at) VALUES (%s, %s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, "
                         "created_at = excluded.created_at, revoked_at = NULL",
                         (name, hash_secret(token), now))

        await self.writer.write(op)
        return token

    async def revoke_node_token(self, name: str, now: float) -> bool:
        def op(conn: Connection) -> bool:
            return conn.execute("UPDATE node_tokens SET revoked_at = %s WHERE name = %s AND "
                                "revoked_at IS NULL", (now, name)).rowcount == 1

        revoked: bool = await self.writer.write(op)
        return revoked

    async def find_node_token(self, token: str) -> str | None:
        """The name the live worker token belongs to."""
        digest = hash_secret(token)

        def query(conn: Connection) -> str | None:
            row = conn.execute("SELECT name FROM node_tokens WHERE hash = %s AND "
                               "revoked_at IS NULL", (digest,)).fetchone()
            return row["name"] if row is not None else None

        return await self.read(query)

    async def list_node_tokens(self) -> list[NodeTokenRecord]:
        return await self.read(lambda conn: [
            NodeTokenRecord(**r) for r in conn.execute(
                "SELECT name, created_at, revoked_at FROM node_tokens ORDER BY name").fetchall()])

    # ---- signups, nodes, statistics, service runs ----------------------------------

    async def add_signup(self, signup: Signup) -> tuple[Signup, bool]:
        """Store a beta signup; for an email already signed up, the earlier signup
        and False."""

        def op(conn: Connection) -> tuple[Signup, bool]:
            inserted = conn.execute(
                "INSERT INTO signups (id, email, type, source, created_at) VALUES "
                "(%s, %s, %s, %s, %s) ON CONFLICT (email) DO NOTHING",
                attrs.astuple(signup)).rowcount == 1
            if inserted:
                return signup, True
            row = conn.execute("SELECT * FROM signups WHERE email = %s",
                               (signup.email,)).fetchone()
            assert row is not None
            return Signup(**row), False

        outcome: tuple[Signup, bool] = await self.writer.write(op)
        return outcome

    async def nodes(self) -> dict[str, NodeRecord]:
        return await self.read(lambda conn: {
            r["id"]: NodeRecord(**r) for r in conn.execute("SELECT * FROM nodes").fetchall()})

    async def stats(self) -> Stats:
        def query(conn: Connection) -> Stats:
            row = conn.execute(READ_TOTALS).fetchone()
            assert row is not None, "task_totals has its row from the first migration"
            return Stats(**row)

        return await self.read(query)

    async def start_run(self, now: float) -> int:
        def op(conn: Connection) -> int:
            row = conn.execute("INSERT INTO service_runs (started_at, last_alive) "
                               "VALUES (%s, %s) RETURNING id", (now, now)).fetchone()
            assert row is not None
            return int(row["id"])

        run: int = await self.writer.write(op)
        return run

    async def mark_alive(self, run_id: int, now: float) -> None:
        def op(conn: Connection) -> None:
            conn.execute("UPDATE service_runs SET last_alive = %s WHERE id = %s", (now, run_id))

        await self.writer.write(op)

    async def availability(self, now: float, current_run: int) -> float:
        """The fraction of time since the first start that the service was up: each
        past run counts from its start to its last sign of life, the current one
        until `now`; 1.0 with no history."""

        def query(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                "SELECT MIN(started_at) AS first, COALESCE(SUM(CASE WHEN id = %s THEN "
                "%s - started_at ELSE last_alive - started_at END), 0) AS up "
                "FROM service_runs", (current_run, now)).fetchone()
            assert row is not None
            return row

        row = await self.read(query)
        if row["first"] is None or now <= row["first"]:
            return 1.0
        return float(min(1.0, row["up"] / (now - row["first"])))


def open_pools(url: str) -> tuple[ConnectionPool[Connection], ConnectionPool[Connection]]:
    """Migrate the schema on a connection of its own, then open the pools (all in
    the calling thread: they wait for the network): (reads, writes). The writer's
    pool of one connection checks it before each batch (a round trip per batch,
    not per write), so a connection that died idle costs no write."""
    with connect(url) as conn:
        migrate(conn)
    reads: ConnectionPool[Connection] = ConnectionPool(
        url, min_size=1, max_size=POOL_SIZE, kwargs=CONNECTION_KWARGS, configure=configure,
        open=False, timeout=POOL_TIMEOUT_S, reconnect_timeout=RECONNECT_S,
        name="neurogrid-reads")
    writes: ConnectionPool[Connection] = ConnectionPool(
        url, min_size=1, max_size=1, kwargs=CONNECTION_KWARGS, configure=configure, open=False,
        timeout=POOL_TIMEOUT_S, reconnect_timeout=RECONNECT_S,
        check=ConnectionPool.check_connection, name="neurogrid-writes")
    try:
        reads.open(wait=True, timeout=POOL_TIMEOUT_S)
        writes.open(wait=True, timeout=POOL_TIMEOUT_S)
    except BaseException:
        reads.close()
        writes.close()
        raise
    return reads, writes


def close_pools(*pools: ConnectionPool[Connection]) -> None:
    for pool in pools:
        pool.close()


@asynccontextmanager
async def open_postgres(url: str) -> AsyncIterator[PostgresStore]:
    """The store in the PostgreSQL database at `url` (a libpq URI), its schema
    migrated and its writer running; on the way out, every queued write is
    committed before the pool closes."""
    try:
        reads, writes = await trio.to_thread.run_sync(open_pools, url)
    except psycopg.Error as exc:
        raise StoreError(f"cannot open the PostgreSQL database {redact(url)!r}: "
                         f"{str(exc).strip()}") from exc
    store = PostgresStore(url, reads, writes)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer.serve)
            yield store
            await store.writer.finish()
    finally:
        await trio.to_thread.run_sync(close_pools, reads, writes)


__all__ = ["POOL_SIZE", "PostgresStore", "open_postgres"]
