# The PostgreSQL store's writer: one actor commits what callers queue, in batches
# (group commit), as the SQLite store's writer does (sqlite_writer.py).
#
# Theory of operation: callers queue operations (a function of a connection) on a
# channel; the writer takes everything queued (up to MAX_BATCH), runs it in one
# transaction in a worker thread (psycopg's sync API: see postgres_store.py for
# why), then wakes the callers. A PostgreSQL commit waits for the WAL to reach the
# disk (synchronous_commit=on: durable against a power loss, not only a crash of
# the process), so one commit for a batch is what makes many concurrent writes
# cheap. Batches run one after the other, so the order of queued operations is
# the order of their effects.
#
# Rules:
# - One commit path (`commit`): a transaction around the batch's operations; on
#   any error it is rolled back and, should the batch have more than one
#   operation, each is committed again alone, so a failure stays with its caller
#   (`Pending.error`); one rolled back by a deadlock with another process's
#   transaction (several processes write: api/postgres_cluster.py) is tried
#   again. A batch that cannot be committed fails its callers, never the writer:
#   the writer goes on with the next batch.
# - Each batch takes a connection from the pool and gives it back: a connection
#   that broke (the server restarted) is dropped by the pool, and the next batch
#   gets a new one.
# - `post` queues without waiting (the coordinator's task changes); order is kept.
#   A posted operation that fails is logged: it has no caller to tell.
# - Failures, as `health()` reports them (the SQLite writer's vocabulary): a
#   connection error (the server is down or unreachable, no connection within the
#   pool's timeout) is transient: a waiting caller gets StoreUnavailable (the API:
#   503) and the store is degraded until a batch commits again; any other error is
#   the operation's own (refused: a constraint, a value the database cannot hold).
#   Not here yet, unlike SQLite: posted changes that fail for a transient reason
#   are logged and counted, not held and retried.
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import attrs
import psycopg
import trio
from psycopg_pool import ConnectionPool

from .records import StoreHealth, StoreUnavailable
from .sqlite_writer import receive_batch

Connection = psycopg.Connection[dict[str, Any]]
Operation = Callable[[Connection], Any]
MAX_BATCH = 512  # operations per group commit
QUEUE_SIZE = 10_000  # queued operations before `write`/`post` wait for room
ROLLBACK_ATTEMPTS = 5  # an operation rolled back by a deadlock is tried this often
log = logging.getLogger("neurogrid.store")


@attrs.define(eq=False)
class Pending:
    """One queued operation and, once committed (or failed), its outcome."""

    op: Operation
    done: trio.Event | None = None  # None: posted, nobody waits
    result: Any = None
    error: Exception | None = None


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


class Writer:
    """The actor that commits through `pool`. Run `serve` in a nursery; `write` and
    `post` queue operations."""

    def __init__(self, pool: ConnectionPool[Connection]) -> None:
        self.pool = pool
        self._send, self._receive = trio.open_memory_channel[Pending](QUEUE_SIZE)
        self.batches = 0  # committed or failed, since the start: for tests and figures
        self.thread = trio.CapacityLimiter(1)  # its own: never waits behind other threads
        self.reason = ""  # why the store is degraded; "" when it is not
        self.failed_writes = 0
        self.refused_changes = 0
        self.on_commit: Callable[[int, float], None] | None = None  # (operations, seconds)

    def health(self) -> StoreHealth:
        return StoreHealth(degraded=bool(self.reason), reason=self.reason,
                           failed_writes=self.failed_writes,
                           refused_changes=self.refused_changes)

    def account(self, batch: list[Pending]) -> None:
        """Count the batch's failures; degraded while connections fail."""
        transient = [p.error for p in batch if isinstance(p.error, psycopg.OperationalError)]
        failed = [p for p in batch if p.error is not None]
        self.failed_writes += len(failed)
        self.refused_changes += sum(1 for p in failed if p.done is None
                                    and not isinstance(p.error, psycopg.OperationalError))
        if transient:
            self.reason = f"the PostgreSQL database cannot take writes: {str(transient[0]).strip()}"
        elif len(failed) < len(batch):
            self.reason = ""

    def run_batch(self, batch: list[Pending]) -> None:
        """In a worker thread: commit `batch` on a connection of the pool."""
        try:
            with self.pool.connection() as conn:
                commit_each(conn, batch)
        except Exception as exc:  # no connection (the server is down, the pool closed)
            for pending in batch:
                if pending.error is None:
                    pending.result, pending.error = None, exc

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            try:
                batch = await receive_batch(self._receive, MAX_BATCH)
            except trio.EndOfChannel:  # closed by `finish`: all written
                return
            started = time.perf_counter()
            await trio.to_thread.run_sync(self.run_batch, batch, limiter=self.thread)
            if self.on_commit is not None:
                self.on_commit(len(batch), time.perf_counter() - started)
            self.batches += 1
            self.account(batch)
            for pending in batch:
                if pending.done is not None:
                    pending.done.set()
                elif pending.error is not None:
                    log.error("a posted store write failed", exc_info=pending.error)

    async def write(self, op: Operation) -> Any:
        """Queue `op` and wait for its commit: its result, or what it raised."""
        pending = Pending(op, trio.Event())
        try:  # no extra trip through the scheduler: done.wait() is the checkpoint
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            await self._send.send(pending)
        assert pending.done is not None
        await pending.done.wait()
        if isinstance(pending.error, psycopg.OperationalError):
            raise StoreUnavailable(f"the PostgreSQL database cannot take writes now: "
                                   f"{str(pending.error).strip()}") from pending.error
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def post(self, op: Operation) -> None:
        """Queue `op` without waiting for its commit."""
        await self._send.send(Pending(op))

    async def finish(self) -> None:
        """No more writes: `serve` commits what is queued, then returns."""
        await self._send.aclose()


__all__ = ["Connection", "MAX_BATCH", "Operation", "Pending", "ROLLBACK_ATTEMPTS", "Writer",
           "commit", "commit_each", "rolled_back"]
