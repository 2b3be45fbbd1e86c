# The SQLite store's writer: one actor owns the write connection and commits what
# callers queue, in batches (group commit), and keeps going when the disk fails.
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
# stays with its caller: one bad row never fails the others of its batch.
#
# Failures (`failure_kind` sorts them; the store's health says what happened):
# - transient: the disk is full, an I/O error, the lock held past the wait. A
#   waiting caller gets StoreUnavailable (the API: 503); a posted task change is
#   held, never dropped: kept in order in `held` (bounded: HELD_MAX; beyond it the
#   writer takes nothing new, so `post` and `write` wait: back-pressure, not loss)
#   and retried with exponential backoff (RETRY_FIRST_SECONDS doubling up to
#   RETRY_MAX_SECONDS). While anything is held, every newly posted change is
#   held behind it, so a task's changes are written in the order they were posted.
#   An `ordered` write (the store's barrier) waits its turn behind held changes
#   the same way, and is held rather than failed: it returns once everything
#   queued before it is written.
#   The store is degraded from the first such failure until a write succeeds again
#   with nothing held; while degraded and with nothing held, a probe write (the
#   schema version written again: a real page write) is retried on the same
#   backoff, so recovery shows without waiting for traffic.
# - refused: the database (or the driver) refused the operation's values (a
#   constraint, text that is not valid Unicode, an integer beyond 64 bits).
#   Retrying cannot help: a waiting caller gets the error; a posted change is
#   logged with its task id, counted (`refused_changes`), and replaced by the
#   stand-in its poster gave (the store's: the task fails, saying why), so a task
#   never stays `running` forever because its completion could not be stored.
# - fatal: the file is corrupt, or was deleted or replaced while in use (SQLite
#   would go on writing into the deleted file: the writer checks the file's
#   identity before each batch, and its header every CHECK_SECONDS). Callers get
#   StoreFailed, and `serve` raises it: the store cannot continue, and the process
#   must stop so that a supervisor restarts it.
#
# Rules:
# - One commit path (`commit`): BEGIN IMMEDIATE, the operations, COMMIT; on any
#   error a ROLLBACK, only when a transaction is still open (SQLite rolls back by
#   itself after some failed COMMITs: disk full, I/O error), and a failed ROLLBACK
#   never hides the original error.
# - `post` queues without waiting (the coordinator's task changes); order is kept.
# - At `finish`, held changes are retried for up to FINISH_SECONDS; what is still
#   held then is logged (those tasks are still open in the file: they run again
#   after the restart, none is lost).
from __future__ import annotations

import collections
import functools
import logging
import math
import os
import sqlite3
import time
from typing import Any, Callable, TypeVar

import attrs
import trio

from .records import StoreFailed, StoreHealth, StoreUnavailable
from .sqlite_schema import BUSY_TIMEOUT_MS

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]
MAX_BATCH = 512  # operations per group commit
QUEUE_SIZE = 10_000  # queued operations before `write`/`post` wait for room
HELD_MAX = 100_000  # held task changes, at most (about 1 KB each)
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
CHECK_SECONDS = 5.0  # how often the file's header is checked
FINISH_SECONDS = 10.0  # at shutdown, how long held changes are retried
SQLITE_HEADER = b"SQLite format 3\x00"
log = logging.getLogger("neurogrid.store")

# SQLite's primary result codes (the low byte of an extended code), by kind.
TRANSIENT_CODES = {5: "busy", 6: "locked", 7: "out of memory", 8: "read-only", 10: "I/O error",
                   13: "disk full", 15: "lock protocol"}
FATAL_CODES = {11: "corrupt", 14: "cannot open", 26: "not a database"}
SQLITE_READONLY_DBMOVED = 8 | (4 << 8)  # the file was moved or deleted under SQLite


def failure_kind(exc: BaseException) -> str:
    """'transient', 'fatal' or 'refused' (see above)."""
    if isinstance(exc, StoreFailed):
        return "fatal"
    if isinstance(exc, StoreUnavailable):
        return "transient"
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return "refused"
    if code == SQLITE_READONLY_DBMOVED or code & 0xFF in FATAL_CODES:
        return "fatal"
    if code & 0xFF in TRANSIENT_CODES:
        return "transient"
    return "refused"


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
    label: str = ""  # what a posted operation is about (for the log)
    # a posted operation's stand-in should the database refuse it (given the error)
    fallback: Callable[[Exception], Operation] | None = None
    # waits its turn behind held changes, and is held itself rather than failed
    # (a barrier: "everything queued before me is written"); must be idempotent
    ordered: bool = False

    @property
    def holdable(self) -> bool:
        return self.done is None or self.ordered


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


def patiently(conn: sqlite3.Connection, run: Callable[[], T]) -> T:
    """`run()` with the connection waiting for another process's lock (in a worker
    thread: the loop never waits)."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        return run()
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


def commit_each(conn: sqlite3.Connection, batch: list[Pending]) -> None:
    """Commit the batch, waiting for the lock; should it fail, commit each
    operation alone, so a failure stays with its caller (`pending.error`)."""

    def run() -> None:
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

    patiently(conn, run)


def probe(conn: sqlite3.Connection) -> None:
    """A real page write that changes nothing: is the disk writable again?"""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.execute(f"PRAGMA user_version = {int(version)}")


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class Writer:
    """The actor that owns `conn` (which it closes when done). Run `serve` in a
    nursery; `write` and `post` queue operations."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.path = next(row[2] for row in conn.execute("PRAGMA database_list")
                         if row[1] == "main")
        conn.execute("PRAGMA busy_timeout = 0")  # on the loop: never wait for a lock
        # told (operations, seconds) of each batch committed (or failed): metrics
        self.on_commit: Callable[[int, float], None] | None = None
        self._send, self._receive = trio.open_memory_channel[Pending](QUEUE_SIZE)
        self._identity = file_identity(self.path)
        # The header is read through a descriptor held open for the store's life:
        # closing ANY descriptor of the file drops every POSIX lock this process
        # holds on it (fcntl semantics), so an open()/close() here released SQLite's
        # locks; another process then took the file for unused, checkpointed and
        # deleted the WAL, and this process's readers kept reading their old
        # snapshot (keys created by `neurogrid keys create` were refused as unknown).
        # SQLite's "How To Corrupt An SQLite Database File", 2.2.
        self._header_fd = os.open(self.path, os.O_RDONLY) if self._identity else -1
        self._checked_at = -math.inf
        self.held: collections.deque[Pending] = collections.deque()
        self._retry_at = math.inf  # when held changes (or the probe) are tried again
        self._backoff = RETRY_FIRST_SECONDS
        self._reason = ""  # why the store is degraded; "" when it is not
        self._failed_writes = 0
        self._refused_changes = 0

    def close(self) -> None:
        """Close the connection, then the header's descriptor (last: see __init__)."""
        self.conn.close()
        if self._header_fd >= 0:
            os.close(self._header_fd)
            self._header_fd = -1

    def health(self) -> StoreHealth:
        return StoreHealth(bool(self._reason), self._reason, len(self.held),
                           self._failed_writes, self._refused_changes)

    # ---- the actor ---------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            try:
                batch = await self._next_batch()
            except trio.EndOfChannel:  # closed by `finish`
                break
            if batch:
                await self._run(batch)
            if trio.current_time() >= self._retry_at:
                await self._retry()
        await self._drain_held()

    async def _next_batch(self) -> list[Pending]:
        """The next batch; [] when it is time to retry first."""
        if len(self.held) >= HELD_MAX:  # take nothing new: writers wait (back-pressure)
            await trio.sleep_until(self._retry_at)
            return []
        room = HELD_MAX - len(self.held)  # so that `held` never grows past HELD_MAX
        with trio.move_on_at(self._retry_at):
            return await receive_batch(self._receive, min(MAX_BATCH, room))
        return []

    async def _run(self, batch: list[Pending]) -> None:
        try:
            self._check_file()
        except StoreFailed as exc:
            self._wake(batch, exc)
            raise
        if self.held:  # posted changes wait behind the held ones: order per task
            self.held.extend(p for p in batch if p.holdable)
            batch = [p for p in batch if not p.holdable]
            if not batch:
                return
        started = time.perf_counter()
        try:
            commit(self.conn, batch)  # on the loop: no wait for the lock
        except Exception:  # the lock is taken, or an operation failed
            await trio.to_thread.run_sync(commit_each, self.conn, batch)
        if self.on_commit is not None:
            self.on_commit(len(batch), time.perf_counter() - started)
        fatal: Exception | None = None
        transient = False
        for pending in batch:
            error = pending.error
            if error is None and pending.ordered and transient:
                self.held.append(pending)  # behind what was held before it (idempotent)
                continue
            if error is not None:
                self._failed_writes += 1
                kind = failure_kind(error)
                if kind == "fatal":
                    fatal = fatal or error
                    pending.error = self._fatal(error)
                elif kind == "transient":
                    transient = True
                    self._degrade(error)
                    if pending.holdable:
                        pending.error = None
                        self.held.append(pending)
                        continue
                    pending.error = StoreUnavailable(f"the database cannot be written now: "
                                                     f"{self._reason}; retry later")
                    pending.error.__cause__ = error
                elif pending.done is None:
                    self._refuse(pending, error)
            if pending.done is not None:
                pending.done.set()
        if fatal is not None:
            raise self._fatal(fatal)
        if not transient:
            if self.held:  # the disk takes writes again: write what is held now
                self._retry_at = min(self._retry_at, trio.current_time())
            else:
                self._recover()

    async def _retry(self) -> None:
        """Try the held changes (in order) again, or the probe while degraded."""
        chunk = [self.held[i] for i in range(min(len(self.held), MAX_BATCH))]
        attempt = chunk or [Pending(probe)]
        try:
            await trio.to_thread.run_sync(patiently, self.conn,
                                          functools.partial(commit, self.conn, attempt))
        except Exception as exc:
            kind = failure_kind(exc)
            if kind == "fatal":
                raise self._fatal(exc) from exc
            if kind == "transient" or not chunk:
                self._degrade(exc)
                return
            if not await self._retry_one_by_one(chunk):
                return
        else:
            for _ in chunk:
                self._written(self.held.popleft())
        if self.held:
            self._retry_at = trio.current_time()  # more to write: go on at once
        else:
            self._recover()

    async def _retry_one_by_one(self, chunk: list[Pending]) -> bool:
        """A chunk with a refused change in it: each alone, in order, up to the first
        transient failure. True when the whole chunk is done with."""
        for pending in chunk:
            try:
                await trio.to_thread.run_sync(patiently, self.conn,
                                              functools.partial(commit, self.conn, [pending]))
            except Exception as exc:
                kind = failure_kind(exc)
                if kind == "fatal":
                    raise self._fatal(exc) from exc
                if kind == "transient":
                    self._degrade(exc)
                    return False
                if pending.done is None:
                    self._refuse(pending, exc)
                else:
                    pending.error = exc
            self._written(self.held.popleft())
        return True

    @staticmethod
    def _written(pending: Pending) -> None:
        """A held operation is done with: wake its caller, if it has one."""
        if pending.done is not None:
            pending.done.set()

    async def _drain_held(self) -> None:
        with trio.move_on_after(FINISH_SECONDS):
            while self.held:
                await trio.sleep_until(self._retry_at)
                await self._retry()
        if self.held:
            log.error("%d task changes could not be written before shutdown (%s); those "
                      "tasks are still open in the database and run again after the "
                      "restart", len(self.held), self._reason)
            self._wake(list(self.held), StoreUnavailable(
                f"the database could not be written before shutdown: {self._reason}"))

    # ---- the state ------------------------------------------------------------------

    def _degrade(self, error: BaseException) -> None:
        code = getattr(error, "sqlite_errorcode", None)
        kind = TRANSIENT_CODES.get(code & 0xFF, "") if isinstance(code, int) else ""
        reason = f"{kind}: {error}" if kind and kind not in str(error) else str(error)
        if not self._reason:
            log.error("the database cannot be written (%s): degraded; held task changes "
                      "are retried", reason)
        self._reason = reason or type(error).__name__
        now = trio.current_time()
        self._retry_at = now + self._backoff
        self._backoff = min(RETRY_MAX_SECONDS, self._backoff * 2)

    def _recover(self) -> None:
        if self._reason:
            log.warning("the database takes writes again: recovered (was: %s)", self._reason)
        self._reason = ""
        self._retry_at = math.inf
        self._backoff = RETRY_FIRST_SECONDS

    def _refuse(self, pending: Pending, error: Exception) -> None:
        """A posted operation the database refused: logged, counted, and replaced by
        its fallback (committed at once; it fails only if the disk does)."""
        self._refused_changes += 1
        log.error("the database refused a posted write (%s): %s", pending.label or "no label",
                  error, exc_info=error)
        if pending.fallback is None:
            return
        try:
            commit(self.conn, [Pending(pending.fallback(error))])
        except Exception:
            log.exception("the stand-in of a refused write (%s) failed too", pending.label)

    def _fatal(self, error: BaseException) -> StoreFailed:
        if isinstance(error, StoreFailed):
            return error
        failed = StoreFailed(f"the database {self.path!r} cannot be used any more: {error}")
        failed.__cause__ = error
        return failed

    def fail(self, error: BaseException) -> StoreFailed:
        """Stop the writer because of a fatal `error` someone else found (a read):
        `serve` raises StoreFailed at its next turn; the same StoreFailed is
        returned, for the finder to raise."""
        failed = self._fatal(error)

        def stop(conn: sqlite3.Connection) -> None:
            raise failed

        try:
            self._send.send_nowait(Pending(stop, label="stop: the database failed"))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # the writer is busy or done: its own next write finds the same failure
        return failed

    def _check_file(self) -> None:
        """StoreFailed when the file was deleted or replaced, or (every
        CHECK_SECONDS) when its header is not SQLite's."""
        if file_identity(self.path) != self._identity:
            raise StoreFailed(f"the database file {self.path!r} was deleted or replaced "
                              "while in use; restart to open it again")
        now = trio.current_time()
        if now - self._checked_at < CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            header = os.pread(self._header_fd, len(SQLITE_HEADER), 0)
        except OSError as exc:
            raise StoreFailed(f"the database file {self.path!r} cannot be read: {exc}") from exc
        if header and header != SQLITE_HEADER:
            raise StoreFailed(f"the database file {self.path!r} is corrupt (its header is "
                              "not SQLite's); restore it from a backup")

    def _wake(self, batch: list[Pending], error: Exception) -> None:
        for pending in batch:
            if pending.done is not None:
                pending.error = error
                pending.done.set()

    # ---- callers -----------------------------------------------------------------------

    async def write(self, op: Operation, ordered: bool = False) -> Any:
        """Queue `op` and wait for its commit: its result, or what it raised
        (StoreUnavailable for a failure that may pass). `ordered`: committed only
        after every change held before it, and held itself (so waiting until the
        disk takes writes again) rather than failed by a transient error."""
        pending = Pending(op, trio.Event(), ordered=ordered)
        try:  # no extra trip through the scheduler: done.wait() is the checkpoint
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            await self._send.send(pending)
        assert pending.done is not None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def post(self, op: Operation, label: str = "",
                   fallback: Callable[[Exception], Operation] | None = None) -> None:
        """Queue `op` without waiting for its commit; should the disk refuse it, it
        is held and retried (see above); should the database refuse its values,
        `fallback(error)` is committed instead."""
        await self._send.send(Pending(op, label=label, fallback=fallback))

    async def finish(self) -> None:
        """No more writes: `serve` commits what is queued (and held), then returns."""
        await self._send.aclose()


__all__ = ["CHECK_SECONDS", "FINISH_SECONDS", "HELD_MAX", "MAX_BATCH", "Operation", "Pending",
           "RETRY_FIRST_SECONDS", "RETRY_MAX_SECONDS", "Writer", "commit", "commit_each",
           "failure_kind", "file_identity", "patiently", "probe", "receive_batch"]
