# The store: every byte NeuroGrid keeps on disk, and every line of SQL in the
# project, behind one small async interface (`Store`; it and the values it passes
# are in records.py, re-exported here).
#
# Rules:
# - Nothing outside this module knows the database is SQLite. Callers pass and get
#   attrs values (TaskRow, KeyRecord, ...) and wall-clock unix times; a PostgreSQL
#   store for several API processes will implement the same `Store` protocol.
# - Secrets (API keys, worker tokens) are stored as SHA-256 hashes only. They are
#   32 random bytes, so a fast hash is enough: there is nothing to brute-force.
# - A write is durable when its `await` returns. Task rows move forward only:
#   a change to a task that already ended (completed, failed, ...) is ignored.
#
# Theory of operation (SQLite): WAL journal, `synchronous=NORMAL`. In WAL mode that
# setting keeps every committed transaction across a crash of the process (the
# commit is in the OS page cache before `await` returns); only a power loss or
# kernel crash can lose the last transactions before a checkpoint. One writer
# actor owns the write connection: callers queue operations on a channel, the
# writer takes everything queued (group commit), runs it in one transaction
# (should one operation fail, the batch is replayed one transaction per
# operation, so the failure stays with its caller), then wakes the callers. The
# transaction runs on the event loop itself: in WAL mode with synchronous=NORMAL a
# commit is an append to the WAL in the page cache (tens of microseconds for a
# batch), cheaper than the hop to a worker thread and back, and a worker thread
# would also have to win the GIL from the busy event loop once per statement,
# which under load made the slowest commits (and so the API's p99) tens of
# milliseconds long. The loop never waits for a lock, though: when another
# process holds the write lock, or an operation fails, the batch is rolled back
# and goes to a worker thread, which waits for the lock and does the replay.
# Reads are point lookups
# by key, done on the event loop over a second connection (WAL readers never wait
# for the writer). Aggregate figures (`stats`) are computed once at open and then
# kept up to date by the writer after each commit, so status pages never scan.
from __future__ import annotations

import json
import secrets
import sqlite3
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, TypeVar

import attrs
import trio

from .records import (
    FAILED_STATES, OPEN_STATES, DuplicateTaskId, KeyRecord, NodeRecord, NodeTokenRecord,
    Signup, Stats, Store, StoreError, TaskChange, TaskRow, hash_secret, new_secret,
)

SCHEMA_VERSION = 1
T = TypeVar("T")
MAX_BATCH = 512  # operations per group commit
BUSY_TIMEOUT_MS = 5000  # how long a connection waits for another process's lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    priority TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    estimated_cost REAL NOT NULL,
    estimated_seconds REAL NOT NULL,
    openai_cost REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    node_id TEXT,
    node_location TEXT,
    node_gpu TEXT,
    result TEXT,
    error TEXT,
    cost REAL NOT NULL DEFAULT 0,
    tokens_used INTEGER NOT NULL DEFAULT 0,
    processing_time REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, seq);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (status) WHERE status IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    name TEXT NOT NULL,
    per_hour INTEGER,
    in_flight INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS node_tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    gpu TEXT NOT NULL,
    location TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    tasks_processed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signups (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS service_runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    last_alive REAL NOT NULL
);
"""


async def receive_batch(receive: trio.MemoryReceiveChannel[T], limit: int) -> list[T]:
    """Wait for one item, then take whatever else is queued already, up to `limit` in
    all (the group commit here, the relay's batched dispatch). Raises
    trio.EndOfChannel once the channel is closed and empty."""
    batch = [await receive.receive()]
    while len(batch) < limit:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


@attrs.define(eq=False)
class _Pending:
    op: Callable[[sqlite3.Connection], Any]
    after_commit: Callable[[Any], None] | None = None
    done: trio.Event | None = None
    result: Any = None
    error: BaseException | None = None


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _task_row(row: sqlite3.Row) -> TaskRow:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    return TaskRow(**values)


def _key_record(row: sqlite3.Row) -> KeyRecord:
    values = dict(row)
    del values["hash"]
    return KeyRecord(**values)


TASK_COLUMNS = [f.name for f in attrs.fields(TaskRow) if f.name != "seq"]
INSERT_TASK = (f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(TASK_COLUMNS))})")
CHANGE_COLUMNS = [f.name for f in attrs.fields(TaskChange) if f.name not in ("task_id", "status", "at")]


class SqliteStore:
    """The embedded store. Use `open_store(path)`; the writer runs in its nursery."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer_conn = _connect(path)
        self._writer_conn.executescript(SCHEMA)
        self._writer_conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._writer_conn.execute("PRAGMA busy_timeout = 0")  # see _commit_now
        self._reader = _connect(path)
        self._send, self._receive = trio.open_memory_channel[_Pending](10_000)
        self._stats = self._load_stats()

    # ---- the writer -------------------------------------------------------------

    async def serve_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                batch = await receive_batch(self._receive, MAX_BATCH)
            except trio.EndOfChannel:  # closed by open_store on the way out: all written
                return
            if not self._commit_now(batch):  # the lock is taken, or an operation failed
                await trio.to_thread.run_sync(self._apply_waiting, batch)
            for pending in batch:
                if pending.error is None and pending.after_commit is not None:
                    pending.after_commit(pending.result)
                if pending.done is not None:
                    pending.done.set()

    def _commit_now(self, batch: list[_Pending]) -> bool:
        """Commit the batch in one transaction on the event loop, if that means no
        waiting: True when committed; False, with nothing done, when another
        connection (an admin command in another process) holds the write lock or an
        operation failed; the batch then goes to `_apply_waiting` in a thread."""
        conn = self._writer_conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy_timeout is 0 here: never waits
        except sqlite3.OperationalError:
            return False
        try:
            for pending in batch:
                pending.result = pending.op(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise
            for pending in batch:
                pending.result = None
            return False
        return True

    def _apply_waiting(self, batch: list[_Pending]) -> None:
        """`_apply` off the event loop, waiting up to BUSY_TIMEOUT_MS for the lock."""
        conn = self._writer_conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self._apply(batch)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _apply(self, batch: list[_Pending]) -> None:
        """Commit the batch in one transaction. When an operation fails (rare: a
        constraint), the transaction is rolled back and each operation is retried
        in a transaction of its own, so the failure stays with its caller."""
        try:
            self._transaction(batch, isolate=False)
        except Exception:
            for pending in batch:
                pending.result = pending.error = None
                try:
                    self._transaction([pending], isolate=True)
                except Exception as exc:
                    pending.error = exc

    def _transaction(self, batch: list[_Pending], isolate: bool) -> None:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pending in batch:
                pending.result = pending.op(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _write(self, op: Callable[[sqlite3.Connection], Any],
                     after_commit: Callable[[Any], None] | None = None) -> Any:
        pending = _Pending(op, after_commit, trio.Event())
        try:  # no extra trip through the scheduler: done.wait() is the checkpoint
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            await self._send.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def barrier(self) -> None:
        """Wait until every write queued before this call is committed."""
        await self._write(lambda conn: None)

    async def finish_writes(self) -> None:
        """No more writes: the writer commits what is queued, then ends."""
        await self._send.aclose()

    def close(self) -> None:
        self._reader.close()
        self._writer_conn.close()

    # ---- tasks ------------------------------------------------------------------

    async def insert_task(self, row: TaskRow) -> None:
        values = [json.dumps(v) if k == "params" else v
                  for k, v in zip(TASK_COLUMNS, attrs.astuple(row, recurse=False))]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_TASK, values)

        def counted(_: None) -> None:
            self._stats.total_tasks += 1

        try:
            await self._write(op, counted)
        except sqlite3.IntegrityError as exc:
            raise DuplicateTaskId(f"task id {row.id!r} already exists") from exc

    def _change_op(self, change: TaskChange) -> tuple[Callable[[sqlite3.Connection], Any],
                                                      Callable[[Any], None]]:
        sets = ["status = ?"]
        args: list[Any] = [change.status]
        for column in CHANGE_COLUMNS:
            value = getattr(change, column)
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if change.status == "running":
            sets.append("started_at = COALESCE(started_at, ?)")
            args.append(change.at)
        elif change.status == "queued":  # back in the queue: its node is gone
            sets.append("node_id = NULL, node_location = NULL, node_gpu = NULL")
        elif change.status not in OPEN_STATES:
            sets.append("completed_at = ?")
            args.append(change.at)
        update = (f"UPDATE tasks SET {', '.join(sets)} WHERE id = ? "
                  f"AND status IN ('queued', 'running') RETURNING *")

        def op(conn: sqlite3.Connection) -> TaskRow | None:
            row = conn.execute(update, [*args, change.task_id]).fetchone()
            if row is None:
                return None
            if change.status == "completed" and row["node_id"]:
                conn.execute("UPDATE nodes SET tasks_processed = tasks_processed + 1 "
                             "WHERE id = ?", (row["node_id"],))
            return _task_row(row)

        def counted(row: TaskRow | None) -> None:
            if row is None:
                return
            stats = self._stats
            if row.status == "completed":
                stats.completed_tasks += 1
                stats.compute_seconds += row.processing_time
                stats.turnaround_seconds += (row.completed_at or row.created_at) - row.created_at
                stats.cost += row.cost
                stats.openai_cost += row.openai_cost
            elif row.status in FAILED_STATES:
                stats.failed_tasks += 1
            elif row.status == "cancelled":
                stats.cancelled_tasks += 1

        return op, counted

    async def change_task(self, change: TaskChange) -> bool:
        """Apply `change` and wait for the commit; False when the task had already
        ended (or does not exist)."""
        return await self._write(*self._change_op(change)) is not None

    async def post_task_change(self, change: TaskChange) -> None:
        """Queue `change` without waiting for its commit (the coordinator's updates:
        the coordinator must not wait for the disk). Order of changes is kept."""
        op, counted = self._change_op(change)
        await self._send.send(_Pending(op, counted))

    async def reopen_tasks(self) -> list[TaskRow]:
        """After a restart: every task not yet ended, running ones put back to
        queued (their node is gone), oldest first."""

        def op(conn: sqlite3.Connection) -> list[TaskRow]:
            conn.execute("UPDATE tasks SET status = 'queued', node_id = NULL, "
                         "node_location = NULL, node_gpu = NULL WHERE status = 'running'")
            rows = conn.execute("SELECT * FROM tasks WHERE status IN ('queued', 'running') "
                                "ORDER BY seq").fetchall()
            return [_task_row(r) for r in rows]

        return await self._write(op)

    def get_task(self, task_id: str) -> TaskRow | None:
        row = self._reader.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task_row(row) if row is not None else None

    def list_tasks(self, owner: str, limit: int, after_seq: int | None,
                   status: str | None) -> list[TaskRow]:
        """The owner's tasks, newest first, starting below `after_seq` (a cursor)."""
        sql = "SELECT * FROM tasks WHERE owner = ?"
        args: list[Any] = [owner]
        if after_seq is not None:
            sql += " AND seq < ?"
            args.append(after_seq)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [_task_row(r) for r in self._reader.execute(sql, args).fetchall()]

    # ---- API keys and worker tokens ---------------------------------------------

    async def create_key(self, tier: str, name: str, per_hour: int | None,
                         in_flight: int | None, now: float) -> tuple[str, KeyRecord]:
        secret = new_secret("ng_")
        record = KeyRecord("key_" + secrets.token_hex(6), tier, name, per_hour, in_flight,
                           now, None)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO api_keys (id, hash, tier, name, per_hour, in_flight, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (record.id, hash_secret(secret), tier, name, per_hour, in_flight, now))

        await self._write(op)
        return secret, record

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND "
                                "revoked_at IS NULL", (now, key_id)).rowcount == 1

        return await self._write(op)

    def find_key(self, secret: str) -> KeyRecord | None:
        """The live (not revoked) key with this secret."""
        row = self._reader.execute("SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
                                   (hash_secret(secret),)).fetchone()
        return _key_record(row) if row is not None else None

    def list_keys(self) -> list[KeyRecord]:
        rows = self._reader.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        return [_key_record(r) for r in rows]

    async def create_node_token(self, name: str, now: float) -> str:
        """A new worker token for `name`; an older token of that name stops working."""
        token = new_secret("ngw_")

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO node_tokens (name, hash, created_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, "
                         "created_at = excluded.created_at, revoked_at = NULL",
                         (name, hash_secret(token), now))

        await self._write(op)
        return token

    async def revoke_node_token(self, name: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("UPDATE node_tokens SET revoked_at = ? WHERE name = ? AND "
                                "revoked_at IS NULL", (now, name)).rowcount == 1

        return await self._write(op)

    def find_node_token(self, token: str) -> str | None:
        """The name the live worker token belongs to."""
        row = self._reader.execute("SELECT name FROM node_tokens WHERE hash = ? AND "
                                   "revoked_at IS NULL", (hash_secret(token),)).fetchone()
        return row["name"] if row is not None else None

    def list_node_tokens(self) -> list[NodeTokenRecord]:
        rows = self._reader.execute(
            "SELECT name, created_at, revoked_at FROM node_tokens ORDER BY name").fetchall()
        return [NodeTokenRecord(**dict(r)) for r in rows]

    # ---- signups, nodes, service runs -----------------------------------------------

    async def add_signup(self, signup: Signup) -> tuple[Signup, bool]:
        """Store a beta signup; for an email already signed up, the earlier signup
        and False."""

        def op(conn: sqlite3.Connection) -> tuple[Signup, bool]:
            inserted = conn.execute(
                "INSERT INTO signups (id, email, type, source, created_at) VALUES "
                "(?, ?, ?, ?, ?) ON CONFLICT (email) DO NOTHING",
                attrs.astuple(signup)).rowcount == 1
            if inserted:
                return signup, True
            row = conn.execute("SELECT * FROM signups WHERE email = ?", (signup.email,)).fetchone()
            return Signup(**dict(row)), False

        def counted(outcome: tuple[Signup, bool]) -> None:
            self._stats.beta_signups += outcome[1]

        return await self._write(op, counted)

    async def record_node(self, node_id: str, name: str, gpu: str, location: str,
                          now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO nodes (id, name, gpu, location, first_seen, last_seen) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                         "name = excluded.name, gpu = excluded.gpu, "
                         "location = excluded.location, last_seen = excluded.last_seen",
                         (node_id, name, gpu, location, now, now))

        await self._write(op)

    def nodes(self) -> dict[str, NodeRecord]:
        rows = self._reader.execute("SELECT * FROM nodes").fetchall()
        return {r["id"]: NodeRecord(**dict(r)) for r in rows}

    def stats(self) -> Stats:
        return attrs.evolve(self._stats)

    def _load_stats(self) -> Stats:
        conn = self._writer_conn
        row = conn.execute(
            "SELECT COUNT(*) AS total, "
            "COALESCE(SUM(status = 'completed'), 0) AS completed, "
            "COALESCE(SUM(status IN ('failed', 'expired')), 0) AS failed, "
            "COALESCE(SUM(status = 'cancelled'), 0) AS cancelled, "
            "COALESCE(SUM(CASE WHEN status = 'completed' THEN processing_time END), 0) AS compute, "
            "COALESCE(SUM(CASE WHEN status = 'completed' THEN completed_at - created_at END), 0) "
            "AS turnaround, "
            "COALESCE(SUM(CASE WHEN status = 'completed' THEN cost END), 0) AS cost, "
            "COALESCE(SUM(CASE WHEN status = 'completed' THEN openai_cost END), 0) AS openai "
            "FROM tasks").fetchone()
        signups = conn.execute("SELECT COUNT(*) FROM signups").fetchone()[0]
        return Stats(row["total"], row["completed"], row["failed"], row["cancelled"],
                     row["compute"], row["turnaround"], row["cost"], row["openai"], signups)

    async def start_run(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("INSERT INTO service_runs (started_at, last_alive) VALUES (?, ?)",
                                (now, now)).lastrowid

        return await self._write(op)

    async def mark_alive(self, run_id: int, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE service_runs SET last_alive = ? WHERE id = ?", (now, run_id))

        await self._write(op)

    def availability(self, now: float, current_run: int) -> float:
        """The fraction of time since the first start that the service was up: each
        past run counts from its start to its last sign of life, the current one
        until `now`; 1.0 with no history."""
        row = self._reader.execute(
            "SELECT MIN(started_at) AS first, COALESCE(SUM(CASE WHEN id = ? THEN ? - started_at "
            "ELSE last_alive - started_at END), 0) AS up FROM service_runs",
            (current_run, now)).fetchone()
        if row["first"] is None or now <= row["first"]:
            return 1.0
        return min(1.0, row["up"] / (now - row["first"]))


@asynccontextmanager
async def open_store(location: str) -> AsyncIterator[Store]:
    """Open the store at `location` (a SQLite file path; `:memory:` is refused since
    the reader and the writer need to share one database) with its writer running."""
    if location == ":memory:" or location.startswith(("postgres://", "postgresql://")):
        raise StoreError(f"unsupported database {location!r}: give a SQLite file path")
    store = await trio.to_thread.run_sync(SqliteStore, location)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve_writer)
            yield store
            await store.finish_writes()
    finally:
        store.close()


__all__ = [
    "DuplicateTaskId", "KeyRecord", "NodeRecord", "NodeTokenRecord", "Signup", "Stats",
    "Store", "StoreError", "TaskChange", "TaskRow", "hash_secret", "open_store",
    "receive_batch",
]
