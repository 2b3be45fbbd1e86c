# The embedded store: the `Store` protocol (records.py) on one SQLite file, and
# every query NeuroGrid runs on it. The schema and its triggers are in
# sqlite_schema.py, the writer actor (group commit) in sqlite_writer.py.
#
# Rules:
# - Secrets (API keys, worker tokens) are stored as SHA-256 hashes only. They are
#   32 random bytes, so a fast hash is enough: there is nothing to brute-force.
# - A write is durable when its `await` returns. Task rows move forward only:
#   a change to a task that already ended (completed, failed, ...) is ignored.
# - A write the disk cannot take now fails with StoreUnavailable (the API: 503) and
#   the store goes on; a task change posted by the coordinator is then held and
#   retried, never dropped; a file that is gone or corrupt stops the store
#   (StoreFailed). The writer's modules say how (sqlite_writer.py, and
#   store_writer.py for what both stores share); `health()` reports it.
# - Text a task change carries (result, error) is stored as valid Unicode: a lone
#   surrogate, which no UTF-8 database can hold, becomes U+FFFD rather than making
#   the completion unwritable.
# - Statistics are a query: `stats()` reads the `task_totals` row the schema's
#   triggers keep equal to the aggregate over all tasks (one row, not a scan).
#
# Theory of operation: WAL journal, `synchronous=NORMAL`. In WAL mode that setting
# keeps every committed transaction across a crash of the process (the commit is
# in the OS page cache before `await` returns); only a power loss or kernel crash
# can lose the last transactions before a checkpoint. Writes go through the
# writer actor. Reads are async but run on the event loop, over a reader
# connection of their own: WAL readers never wait for the writer, and a point
# lookup by key (tens of microseconds) is cheaper than the hop to a worker thread
# and back (measured: see `read`). The loop never waits for a lock, though:
# the loop's reader has a busy timeout of 0, and a read that finds the database
# locked (another process recovering the WAL, a rare case) is retried in a worker
# thread on a second, patient reader connection.
from __future__ import annotations

import secrets
import sqlite3
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, TypeVar

import attrs
import trio

from .records import (
    IDEMPOTENCY_TTL_SECONDS, OPEN_STATES, Blob, DuplicateTaskId, IdempotencyKeyTaken,
    IdempotencyRecord, KeyRecord, NodeRecord, NodeTokenRecord, Signup, Stats, StoreError,
    StoreFailed, StoreHealth, TaskChange, TaskRow, hash_secret, new_secret, refused_change,
)
from .sqlite_schema import (
    CHANGE_COLUMNS, READ_TOTALS, connect, key_record, prepare, row_values, task_insert, task_row,
)
from .store_sql import task_values
from .sqlite_writer import Writer, failure_kind

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


class SqliteStore:
    """The embedded store. Use `open_store("sqlite:PATH")`; the writer runs in its
    nursery."""

    def __init__(self, path: str) -> None:
        self.path = path
        writer_conn = connect(path)
        prepare(writer_conn)
        self.writer = Writer(writer_conn)
        self._reader = connect(path)
        self._reader.execute("PRAGMA busy_timeout = 0")  # on the loop: never wait
        self._patient_reader = connect(path)  # in a worker thread: may wait
        self._patient_lock = trio.Lock()

    def close(self) -> None:
        self._reader.close()
        self._patient_reader.close()
        self.writer.close()

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `query` on the loop's reader; when the database is locked,
        again in a worker thread that waits for the lock.

        On the loop, not in a thread, because it is cheaper: measured with 32
        concurrent readers doing get_task on a 5,000-task file (WAL), a direct read
        costs 17 us of CPU (30,000-39,000 reads/s on one core), one through
        trio.to_thread.run_sync 71 us (9,000-10,000 reads/s) with 4x the latency.
        So a read that finds no lock is not a trio checkpoint (as the synchronous
        reads it replaces were not).

        A read that finds the file corrupt (or not a database any more) raises
        StoreFailed and stops the writer with it: the store cannot continue."""
        try:
            return query(self._reader)
        except sqlite3.OperationalError:  # locked (or a failing query: it fails again)
            pass
        except sqlite3.DatabaseError as exc:
            if failure_kind(exc) == "fatal":
                raise self.writer.fail(exc) from exc
            raise
        async with self._patient_lock:
            try:
                return await trio.to_thread.run_sync(query, self._patient_reader)
            except sqlite3.DatabaseError as exc:
                if failure_kind(exc) == "fatal":
                    raise self.writer.fail(exc) from exc
                raise

    def observe_commits(self, observer: Callable[[int, float], None] | None) -> None:
        """Tell `observer` (operations, seconds) of every batch the writer commits."""
        self.writer.on_commit = observer

    async def barrier(self) -> None:
        """Wait until every write queued before this call is committed, held task
        changes included (while the disk refuses writes, until it takes them again)."""
        await self.writer.write(lambda conn: None, ordered=True)

    # ---- tasks ------------------------------------------------------------------

    async def insert_task(self, row: TaskRow,
                          idempotency: IdempotencyRecord | None = None) -> None:
        """Insert a new task; with `idempotency`, its key too, in the same
        transaction: when the owner holds that key already (a live one), nothing is
        inserted and IdempotencyKeyTaken says which task holds it. Keys past
        IDEMPOTENCY_TTL_SECONDS are purged here."""
        insert = task_insert(task_values(row))

        def op(conn: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None:
                conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?",
                             (idempotency.created_at - IDEMPOTENCY_TTL_SECONDS,))
                taken = conn.execute(
                    "INSERT INTO idempotency_keys (owner, key, body_hash, task_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, key) DO NOTHING",
                    attrs.astuple(idempotency)).rowcount == 0
                if taken:  # checked before the task: a lost race inserts nothing
                    held = conn.execute("SELECT * FROM idempotency_keys WHERE owner = ? AND "
                                        "key = ?", (idempotency.owner, idempotency.key)).fetchone()
                    return IdempotencyRecord(**row_values(held))
            conn.execute(*insert)
            return None

        try:
            existing = await self.writer.write(op)
        except sqlite3.IntegrityError as exc:
            raise DuplicateTaskId(f"task id {row.id!r} already exists") from exc
        if existing is not None:
            raise IdempotencyKeyTaken(existing)

    async def find_idempotency_key(self, owner: str, key: str,
                                   now: float) -> IdempotencyRecord | None:
        """The owner's live record of `key` (not older than IDEMPOTENCY_TTL_SECONDS)."""

        def query(conn: sqlite3.Connection) -> IdempotencyRecord | None:
            row = conn.execute("SELECT * FROM idempotency_keys WHERE owner = ? AND key = ? "
                               "AND created_at >= ?",
                               (owner, key, now - IDEMPOTENCY_TTL_SECONDS)).fetchone()
            return IdempotencyRecord(**row_values(row)) if row is not None else None

        return await self.read(query)

    async def health(self) -> StoreHealth:
        return self.writer.health()

    @staticmethod
    def change_op(change: TaskChange) -> Callable[[sqlite3.Connection], TaskRow | None]:
        sets = ["status = ?"]
        args: list[Any] = [change.status]
        for column in CHANGE_COLUMNS:
            value = getattr(change, column)
            if isinstance(value, str):
                value = valid_text(value)
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
            return task_row(row)

        return op

    async def change_task(self, change: TaskChange) -> bool:
        """Apply `change` and wait for the commit; False when the task had already
        ended (or does not exist)."""
        return await self.writer.write(self.change_op(change)) is not None

    async def post_task_change(self, change: TaskChange, blobs: tuple[Blob, ...] = ()) -> None:
        """Queue `change` (and the task files it brings, in the same transaction)
        without waiting for its commit (the coordinator's updates: the coordinator
        must not wait for the disk). Order of changes is kept. A change the database
        refuses (a value it cannot hold) fails the task instead, saying why."""
        def stand_in(error: Exception) -> Callable[[sqlite3.Connection], TaskRow | None]:
            return self.change_op(refused_change(change, error))

        await self.writer.post(self.change_op_with(change, blobs),
                               f"task {change.task_id} -> {change.status}", stand_in)

    def change_op_with(self, change: TaskChange, blobs: tuple[Blob, ...]
                       ) -> Callable[[sqlite3.Connection], TaskRow | None]:
        """The change, and its task files when it took effect, in one operation."""
        change_op = self.change_op(change)
        if not blobs:
            return change_op
        blobs_op = self.blobs_op(change.task_id, blobs)

        def op(conn: sqlite3.Connection) -> TaskRow | None:
            row = change_op(conn)
            if row is not None:  # only files of a change that took effect
                blobs_op(conn)
            return row

        return op

    @staticmethod
    def blobs_op(task_id: str, blobs: tuple[Blob, ...]) -> Callable[[sqlite3.Connection], None]:
        rows = [(task_id, b.name, b.content_type, b.data) for b in blobs]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR REPLACE INTO task_blobs (task_id, name, content_type, "
                             "data) VALUES (?, ?, ?, ?)", rows)

        return op

    async def put_blobs(self, task_id: str, blobs: tuple[Blob, ...]) -> None:
        """Store a task's files and wait for the commit."""
        await self.writer.write(self.blobs_op(task_id, blobs))

    async def get_blob(self, task_id: str, name: str) -> Blob | None:
        def query(conn: sqlite3.Connection) -> Blob | None:
            row = conn.execute("SELECT name, content_type, data FROM task_blobs "
                               "WHERE task_id = ? AND name = ?", (task_id, name)).fetchone()
            return Blob(row["name"], row["content_type"], bytes(row["data"])) if row else None

        return await self.read(query)

    async def reopen_tasks(self) -> list[TaskRow]:
        """After a restart: every task not yet ended, running ones put back to
        queued (their node is gone), oldest first."""

        def op(conn: sqlite3.Connection) -> list[TaskRow]:
            conn.execute("UPDATE tasks SET status = 'queued', node_id = NULL, "
                         "node_location = NULL, node_gpu = NULL WHERE status = 'running'")
            rows = conn.execute("SELECT * FROM tasks WHERE status IN ('queued', 'running') "
                                "ORDER BY seq").fetchall()
            return [task_row(r) for r in rows]

        result: list[TaskRow] = await self.writer.write(op)
        return result

    async def get_task(self, task_id: str) -> TaskRow | None:
        def query(conn: sqlite3.Connection) -> TaskRow | None:
            row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return task_row(row) if row is not None else None

        return await self.read(query)

    async def list_tasks(self, owner: str, limit: int, after_seq: int | None,
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
        return await self.read(
            lambda conn: [task_row(r) for r in conn.execute(sql, args).fetchall()])

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

        await self.writer.write(op)
        return secret, record

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND "
                                "revoked_at IS NULL", (now, key_id)).rowcount == 1

        revoked: bool = await self.writer.write(op)
        return revoked

    async def find_key(self, secret: str) -> KeyRecord | None:
        """The live (not revoked) key with this secret."""
        digest = hash_secret(secret)

        def query(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute("SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
                               (digest,)).fetchone()
            return key_record(row) if row is not None else None

        return await self.read(query)

    async def list_keys(self) -> list[KeyRecord]:
        return await self.read(lambda conn: [
            key_record(r) for r in conn.execute("SELECT * FROM api_keys ORDER BY created_at")])

    async def create_node_token(self, name: str, now: float) -> str:
        """A new worker token for `name`; an older token of that name stops working."""
        token = new_secret("ngw_")

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO node_tokens (name, hash, created_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, "
                         "created_at = excluded.created_at, revoked_at = NULL",
                         (name, hash_secret(token), now))

        await self.writer.write(op)
        return token

    async def revoke_node_token(self, name: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("UPDATE node_tokens SET revoked_at = ? WHERE name = ? AND "
                                "revoked_at IS NULL", (now, name)).rowcount == 1

        revoked: bool = await self.writer.write(op)
        return revoked

    async def find_node_token(self, token: str) -> str | None:
        """The name the live worker token belongs to."""
        digest = hash_secret(token)

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT name FROM node_tokens WHERE hash = ? AND "
                               "revoked_at IS NULL", (digest,)).fetchone()
            return row["name"] if row is not None else None

        return await self.read(query)

    async def list_node_tokens(self) -> list[NodeTokenRecord]:
        return await self.read(lambda conn: [
            NodeTokenRecord(**row_values(r)) for r in conn.execute(
                "SELECT name, created_at, revoked_at FROM node_tokens ORDER BY name")])

    # ---- signups, nodes, statistics, service runs ----------------------------------

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
            return Signup(**row_values(row)), False

        outcome: tuple[Signup, bool] = await self.writer.write(op)
        return outcome

    async def nodes(self) -> dict[str, NodeRecord]:
        return await self.read(lambda conn: {
            r["id"]: NodeRecord(**row_values(r)) for r in conn.execute("SELECT * FROM nodes")})

    async def stats(self) -> Stats:
        return await self.read(lambda conn: Stats(**row_values(conn.execute(READ_TOTALS).fetchone())))

    async def start_run(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            run_id = conn.execute("INSERT INTO service_runs (started_at, last_alive) "
                                  "VALUES (?, ?)", (now, now)).lastrowid
            assert run_id is not None
            return run_id

        run: int = await self.writer.write(op)
        return run

    async def mark_alive(self, run_id: int, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE service_runs SET last_alive = ? WHERE id = ?", (now, run_id))

        await self.writer.write(op)

    async def availability(self, now: float, current_run: int) -> float:
        """The fraction of time since the first start that the service was up: each
        past run counts from its start to its last sign of life, the current one
        until `now`; 1.0 with no history."""

        def query(conn: sqlite3.Connection) -> sqlite3.Row:
            row: sqlite3.Row = conn.execute(
                "SELECT MIN(started_at) AS first, COALESCE(SUM(CASE WHEN id = ? THEN "
                "? - started_at ELSE last_alive - started_at END), 0) AS up FROM service_runs",
                (current_run, now)).fetchone()
            return row

        row = await self.read(query)
        if row["first"] is None or now <= row["first"]:
            return 1.0
        return float(min(1.0, row["up"] / (now - row["first"])))


def valid_text(text: str) -> str:
    """`text`, with lone surrogates (which UTF-8 cannot encode) as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@asynccontextmanager
async def open_sqlite(path: str) -> AsyncIterator[SqliteStore]:
    """The store in the SQLite file at `path`, with its writer running; on the way
    out, every queued write is committed before the file is closed."""
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        raise StoreError(f"unsupported SQLite database {path!r}: give a file path "
                         "(the reader and the writer connections must share one database)")
    try:
        store = await trio.to_thread.run_sync(SqliteStore, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the SQLite database {path!r}: {exc}"
                         f"{open_advice(exc)}") from None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer.serve)
            yield store
            await store.writer.finish()
    except BaseExceptionGroup as group:  # the writer stopped: say why, plainly
        failed = first_leaf(group, StoreFailed)
        if failed is None:
            raise
        raise failed from group
    finally:
        store.close()


def first_leaf(group: BaseExceptionGroup, kind: type[E]) -> E | None:
    """The first exception of type `kind` in a (nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_leaf(exc, kind)
            if found is not None:
                return found
    return None


def open_advice(exc: sqlite3.Error) -> str:
    """What an operator can do about a database that does not open."""
    kind = failure_kind(exc)
    code = getattr(exc, "sqlite_errorcode", 0) or 0
    if code & 0xFF == 14:  # cannot open
        return "; check that its directory exists and is writable"
    if kind == "fatal":
        return ("; the file is not a SQLite database or is corrupt: restore it from a "
                "backup, or move it aside to start with an empty database")
    if kind == "transient":
        return "; free disk space (or wait for the other process holding it) and start again"
    return ""


__all__ = ["SqliteStore", "open_sqlite", "valid_text"]
