# The PostgreSQL store's writer: one actor commits what callers queue, in batches
# (group commit), and keeps going while the server cannot be reached. It is a
# StoreWriter (store_writer.py), as the SQLite store's writer is: what is held,
# retried and reported while a write fails for a reason that may pass, and in
# what order, is stated there once; this module gives PostgreSQL's parts.
#
# Theory of operation: each batch runs in one transaction in a worker thread
# (psycopg's sync API: see postgres_store.py for why), on the writer pool's one
# connection. A PostgreSQL commit waits for the WAL to reach the disk
# (synchronous_commit=on: durable against a power loss, not only a crash of the
# process), so one commit for a batch is what makes many concurrent writes cheap.
#
# Failures (`failure_kind` sorts them):
# - transient: a connection error (psycopg's OperationalError: the server is
#   down, restarting or unreachable, the connection broke, no connection within
#   CONNECT_SECONDS; also what the server reports as passing: too many
#   connections, a disk full, an administrator's shutdown, a deadlock retried
#   past ROLLBACK_ATTEMPTS). A waiting caller gets StoreUnavailable (the API:
#   503); a posted change (a completion) is held and retried until the server
#   takes it. The probe, retried while degraded with nothing held, takes a
#   transaction id (`txid_current()`): only a primary that takes writes gives one.
# - refused: any other error is the operation's own (a constraint, a value the
#   database cannot hold): never held, never retried.
# - fatal: none; a server that is gone for good is an outage that does not end.
#
# Rules:
# - One commit path (`commit`): a transaction around the batch's operations; on
#   any error it is rolled back and, should the batch have more than one
#   operation, each is committed again alone, so a failure stays with its caller
#   (`Pending.error`); one rolled back by a deadlock with another process's
#   transaction (several processes write: api/postgres_cluster.py) is tried
#   again. A batch that cannot be committed fails its callers, never the writer:
#   the writer goes on with the next batch.
# - Each batch takes the connection from the pool and gives it back: a connection
#   that broke (the server restarted) is dropped by the pool, and the next batch
#   waits (up to CONNECT_SECONDS) for a new one. The pool is one connection used
#   by this writer alone, so a wait for it is a wait for the server.
# - A refused change's stand-in is committed at once, in the writer's thread.
from __future__ import annotations

import logging
from typing import Any, Callable

import psycopg
import trio
from psycopg_pool import ConnectionPool

from .records import StoreUnavailable
from .store_writer import HELD_MAX, Pending, StoreWriter

Connection = psycopg.Connection[dict[str, Any]]
Operation = Callable[[Connection], Any]
ROLLBACK_ATTEMPTS = 5  # an operation rolled back by a deadlock is tried this often
CONNECT_SECONDS = 5.0  # how long a batch waits for the writer's connection
log = logging.getLogger("neurogrid.store")


def failure_kind(exc: BaseException) -> str:
    """'transient' or 'refused' (see above)."""
    if isinstance(exc, (psycopg.OperationalError, StoreUnavailable)):
        return "transient"
    return "refused"


def commit(conn: Connection, batch: list[Pending]) -> None:
    """Run the batch's operations in one transaction and commit it; raises what
    failed, with the transaction rolled back and no results kept."""
    try:
        with conn.transaction():
            for pending in batch:
                pending.result = pending.op(conn)
    except BaseException:
        for pending in batch:
            pending.result = None
        raise


def commit_each(conn: Connection, batch: list[Pending]) -> None:
    """Commit the batch; should it fail, commit each operation alone, so a failure
    stays with its caller (`pending.error`). An operation the server rolled back
    for a deadlock or a serialization failure (another process's transaction
    crossed it) is tried again, up to ROLLBACK_ATTEMPTS times."""
    try:
        commit(conn, batch)
        return
    except Exception as exc:
        if len(batch) == 1 and not rolled_back(exc):
            batch[0].error = exc
            return
    for pending in batch:
        for _ in range(ROLLBACK_ATTEMPTS):
            try:
                commit(conn, [pending])
                pending.error = None
                break
            except Exception as exc:
                pending.error = exc
                if not rolled_back(exc):
                    break


def rolled_back(exc: Exception) -> bool:
    """The server rolled the transaction back for what another one did (SQLSTATE
    class 40: a deadlock, a serialization failure): trying again can succeed."""
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40")


def probe(conn: Connection) -> None:
    """A write that changes nothing: does the server take writes again?"""
    conn.execute("SELECT txid_current()")


class Writer(StoreWriter):
    """The actor that commits through `pool` (one connection, its own). Run `serve`
    in a nursery; `write` and `post` queue operations."""

    def __init__(self, pool: ConnectionPool[Connection]) -> None:
        super().__init__(probe, held_max=HELD_MAX)  # read here: tests lower it
        self.pool = pool
        self.thread = trio.CapacityLimiter(1)  # its own: never waits behind other threads

    def run_batch(self, batch: list[Pending]) -> None:
        """In a worker thread: commit `batch` on the pool's connection."""
        try:
            with self.pool.connection(timeout=CONNECT_SECONDS) as conn:
                commit_each(conn, batch)
        except Exception as exc:  # no connection (the server is down, the pool closed)
            for pending in batch:
                if pending.error is None:
                    pending.result, pending.error = None, exc

    def run_together(self, batch: list[Pending]) -> None:
        """In a worker thread: commit `batch` in one transaction; raises what failed."""
        with self.pool.connection(timeout=CONNECT_SECONDS) as conn:
            commit(conn, batch)

    # ---- PostgreSQL's parts of the StoreWriter ---------------------------------------

    async def commit_batch(self, batch: list[Pending]) -> None:
        await trio.to_thread.run_sync(self.run_batch, batch, limiter=self.thread)

    async def commit_together(self, batch: list[Pending]) -> None:
        await trio.to_thread.run_sync(self.run_together, batch, limiter=self.thread)

    def classify(self, error: BaseException) -> str:
        return failure_kind(error)

    def describe(self, error: BaseException) -> str:
        return f"the PostgreSQL database cannot take writes: {str(error).strip()}"

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"the PostgreSQL database cannot take writes now: "
                                f"{str(error).strip()}")

    async def commit_stand_in(self, op: Operation) -> None:
        await self.commit_together([Pending(op)])


__all__ = ["CONNECT_SECONDS", "Connection", "HELD_MAX", "Operation", "ROLLBACK_ATTEMPTS",
           "Writer", "commit", "commit_each", "failure_kind", "probe", "rolled_back"]
