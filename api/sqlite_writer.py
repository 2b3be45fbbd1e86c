# The SQLite store's writer: one actor owns the write connection and commits what
# callers queue, in batches (group commit), and keeps going when the disk fails.
# It is a StoreWriter (store_writer.py): what is held, retried and reported while
# a write fails for a reason that may pass, and in what order, is stated there;
# this module gives SQLite's parts.
#
# Theory of operation: the transaction runs on the event loop itself: in WAL mode
# with synchronous=NORMAL a commit is an append to the WAL in the page cache (tens
# of microseconds for a batch), cheaper than the hop to a worker thread and back,
# and a worker thread would also have to win the GIL from the busy event loop
# once per statement, which under load made the slowest commits (and so the API's
# p99) tens of milliseconds long. The loop never waits for a lock, though: the
# write connection's busy timeout is 0 on the loop, and when another process
# holds the write lock, or an operation fails, the batch goes to a worker thread,
# which waits for the lock (BUSY_TIMEOUT_MS) and commits it again, one
# transaction per operation should the whole batch fail, so a failure stays with
# its caller: one bad row never fails the others of its batch. Held changes are
# retried in a worker thread too, waiting for the lock.
#
# Failures (`failure_kind` sorts them; store_writer.py says what each one does):
# - transient: the disk is full, an I/O error, the lock held past the wait (the
#   reason in health names the SQLite result code). The probe, retried while
#   degraded with nothing held, writes the schema version again: a real page write.
# - refused: the database (or the driver) refused the operation's values (a
#   constraint, text that is not valid Unicode, an integer beyond 64 bits).
# - fatal: the file is corrupt, or was deleted or replaced while in use (SQLite
#   would go on writing into the deleted file: the writer checks the file's
#   identity before each batch, and its header every CHECK_SECONDS).
#
# Rules:
# - One commit path (`commit`): BEGIN IMMEDIATE, the operations, COMMIT; on any
#   error a ROLLBACK, only when a transaction is still open (SQLite rolls back by
#   itself after some failed COMMITs: disk full, I/O error), and a failed ROLLBACK
#   never hides the original error.
# - A refused change's stand-in is committed at once, on the loop.
from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
from typing import Any, Callable, TypeVar

import trio

from .records import StoreFailed, StoreUnavailable
from .sqlite_schema import BUSY_TIMEOUT_MS
from .store_writer import HELD_MAX, Pending, StoreWriter

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]
CHECK_SECONDS = 5.0  # how often the file's header is checked
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


class Writer(StoreWriter):
    """The actor that owns `conn` (which it closes when done). Run `serve` in a
    nursery; `write` and `post` queue operations."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(probe, held_max=HELD_MAX)  # read here: tests lower it
        self.conn = conn
        self.path = next(row[2] for row in conn.execute("PRAGMA database_list")
                         if row[1] == "main")
        self.database = f"the database {self.path!r}"
        conn.execute("PRAGMA busy_timeout = 0")  # on the loop: never wait for a lock
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

    def close(self) -> None:
        """Close the connection, then the header's descriptor (last: see __init__)."""
        self.conn.close()
        if self._header_fd >= 0:
            os.close(self._header_fd)
            self._header_fd = -1

    # ---- SQLite's parts of the StoreWriter -------------------------------------------

    async def commit_batch(self, batch: list[Pending]) -> None:
        try:
            commit(self.conn, batch)  # on the loop: no wait for the lock
        except Exception:  # the lock is taken, or an operation failed
            await trio.to_thread.run_sync(commit_each, self.conn, batch)

    async def commit_together(self, batch: list[Pending]) -> None:
        await trio.to_thread.run_sync(patiently, self.conn,
                                      functools.partial(commit, self.conn, batch))

    def classify(self, error: BaseException) -> str:
        return failure_kind(error)

    def describe(self, error: BaseException) -> str:
        code = getattr(error, "sqlite_errorcode", None)
        kind = TRANSIENT_CODES.get(code & 0xFF, "") if isinstance(code, int) else ""
        return f"{kind}: {error}" if kind and kind not in str(error) else str(error)

    async def commit_stand_in(self, op: Operation) -> None:
        commit(self.conn, [Pending(op)])

    def check(self) -> None:
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

    def fail(self, error: BaseException) -> StoreFailed:
        """Stop the writer because of a fatal `error` someone else found (a read):
        `serve` raises StoreFailed at its next turn; the same StoreFailed is
        returned, for the finder to raise."""
        failed = self.fatal(error)

        def stop(conn: sqlite3.Connection) -> None:
            raise failed

        try:
            self.queue_nowait(Pending(stop, label="stop: the database failed"))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # the writer is busy or done: its own next write finds the same failure
        return failed


__all__ = ["CHECK_SECONDS", "HELD_MAX", "Operation", "Writer", "commit", "commit_each",
           "failure_kind", "file_identity", "patiently", "probe"]
