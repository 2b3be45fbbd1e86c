# The SQLite store's writer: one actor owns the write connection and commits what
# callers queue, in batches (group commit).
#
# Theory of operation: callers queue operations (a function of the connection) on
# a channel; the writer takes everything queued (up to MAX_BATCH), runs it in one
# transaction, then wakes the callers. The transaction runs on the event loop
# itself: in WAL mode with synchronous=NORMAL a commit is an append to the WAL in
# the page cache (tens of microseconds for a batch), cheaper than the hop to a
# worker thread and back, and a worker thread would also have to win the GIL from
# the busy event loop once per statement, which under load made the slowest
# commits (and so the API's p99) tens of milliseconds long. The loop never waits
# for a lock, though: the write connection's busy timeout is 0 on the loop, and
# when another process holds the write lock, or an operation fails, the batch goes
# to a worker thread, which waits for the lock (BUSY_TIMEOUT_MS) and commits it
# again, one transaction per operation should the whole batch fail, so a failure
# stays with its caller.
#
# Rules:
# - One commit path (`commit`): BEGIN IMMEDIATE, the operations, COMMIT; on any
#   error a ROLLBACK, only when a transaction is still open (SQLite rolls back by
#   itself after some failed COMMITs: disk full, I/O error), and a failed ROLLBACK
#   never hides the original error. So a batch that cannot be committed fails its
#   callers, never the writer: the writer keeps serving the next batch.
# - `post` queues without waiting (the coordinator's task changes); order is kept.
#   A posted operation that fails is logged: it has no caller to tell.
from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, Callable, TypeVar

import attrs
import trio

from .sqlite_schema import BUSY_TIMEOUT_MS

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]
MAX_BATCH = 512  # operations per group commit
QUEUE_SIZE = 10_000  # queued operations before `write`/`post` wait for room
log = logging.getLogger("neurogrid.store")


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
class Pending:
    """One queued operation and, once committed (or failed), its outcome."""

    op: Operation
    done: trio.Event | None = None  # None: posted, nobody waits
    result: Any = None
    error: Exception | None = None


def commit(conn: sqlite3.Connection, batch: list[Pending]) -> None:
    """Run the batch's operations in one transaction and commit it; raises what
    failed, with the transaction rolled back and no results kept."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for pending in batch:
            pending.result = pending.op(conn)
        conn.execute("COMMIT")
    except BaseException:
        for pending in batch:
            pending.result = None
        if conn.in_transaction:  # not when SQLite ended it already (a failed COMMIT)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("ROLLBACK failed after a failed transaction")
        raise


def commit_each(conn: sqlite3.Connection, batch: list[Pending]) -> None:
    """Commit the batch, waiting for the lock; should it fail, commit each
    operation alone, so a failure stays with its caller (`pending.error`)."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        try:
            commit(conn, batch)
            return
        except Exception:
            pass
        for pending in batch:
            try:
                commit(conn, [pending])
            except Exception as exc:
                pending.error = exc
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


class Writer:
    """The actor that owns `conn` (which it closes when done). Run `serve` in a
    nursery; `write` and `post` queue operations."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute("PRAGMA busy_timeout = 0")  # on the loop: never wait for a lock
        # told (operations, seconds) of each batch committed (or failed): metrics
        self.on_commit: Callable[[int, float], None] | None = None
        self._send, self._receive = trio.open_memory_channel[Pending](QUEUE_SIZE)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            try:
                batch = await receive_batch(self._receive, MAX_BATCH)
            except trio.EndOfChannel:  # closed by `finish`: all written
                return
            started = time.perf_counter()
            try:
                commit(self.conn, batch)  # on the loop: no wait for the lock
            except Exception:  # the lock is taken, or an operation failed
                await trio.to_thread.run_sync(commit_each, self.conn, batch)
            if self.on_commit is not None:
                self.on_commit(len(batch), time.perf_counter() - started)
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
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def post(self, op: Operation) -> None:
        """Queue `op` without waiting for its commit."""
        await self._send.send(Pending(op))

    async def finish(self) -> None:
        """No more writes: `serve` commits what is queued, then returns."""
        await self._send.aclose()


__all__ = ["MAX_BATCH", "Operation", "Pending", "Writer", "commit", "commit_each",
           "receive_batch"]
