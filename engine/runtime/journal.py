# The journal: a live coordinator's steps (time, event, decisions), kept for an
# audit or a replay (`python -m sim --replay PATH`). The coordinator's actor hands
# every step to its journal sinks (`JournalSink`: `write` per step, `before_wait`
# when it is about to wait for its next message); two sinks exist:
#   ListJournal  keeps the steps in memory (`steps`), for tests and differential
#                runs (CoordinatorConfig.record);
#   FileJournal  appends them to a JournalFile (CoordinatorConfig.journal_path).
#                `write` only queues the step on a channel; a writer task
#                (`FileJournal.serve`, in the coordinator's nursery) encodes and
#                writes what is queued, so encoding, file writes and gzip leave
#                the actor. The actor sends an "idle" mark when it is about to wait
#                with nothing pending; the writer flushes on it, and while busy
#                once the oldest unflushed step is `flush_every` seconds older
#                than the newest. `close` (the coordinator exits) writes whatever
#                is still queued, flushes and closes.
# The writer task runs on the actor's own event loop (not a thread): the channel
# is unbounded, and the writer drains all of it each time it runs, which it does
# whenever the actor waits; and a test that waits until every task is blocked
# finds the file flushed.
#
# The file itself (JournalFile), in the format of engine.core.journal:
#
#     journal = JournalFile.open("run.jsonl", JournalHeader(policy, pricing, seed, cfg))
#     journal.write(now, event, decisions)          # after every Scheduler.handle
#     journal.before_wait(now, idle=...)            # the actor is about to wait
#     journal.close()                               # the coordinator exits
#
# Theory of operation. Opening appends a new session: the header line, flushed at
# once, so a path that cannot be written fails at startup with the path named
# (JournalFileError, an OSError). Steps then go through Python's buffered file
# object; nothing is flushed per step. The actor calls `before_wait` each time it
# is about to wait for its next message: when nothing else is pending (`idle`) the
# buffer is flushed, and while busy it is flushed once its oldest unflushed step is
# `flush_every` seconds old, so a reader (or a crash) loses at most about that much.
# There is no fsync: a journal survives the process dying, not the machine.
#
# Size: a step is ~380 bytes of JSON and a task makes about three (submitted,
# finished, a heartbeat or two between), so a busy coordinator writes megabytes a
# second. A path ending in `.gz` is written gzip-compressed (about a tenth of the
# size, ~5 us of CPU a step); each session is its own gzip member, and every flush
# is a zlib sync flush, so what was flushed can be read while the file grows.
#
# Rules:
# - The journal never stops the coordinator: after opening, no method raises. The
#   first write or flush that fails (disk full, file gone read-only, a value the
#   codec cannot write) logs one error line naming the path, closes the file, and
#   journaling stops for good; every later call is a no-op.
# - Times are whatever the caller passes (the coordinator's trio clock), the same
#   clock the steps' times are in.
# - `close` flushes and closes; it is idempotent and safe in a `finally` (also
#   when the coordinator is cancelled).
from __future__ import annotations

import gzip
import logging
import math
from typing import IO, Iterable, Protocol, Sequence

import attrs
import trio

from engine.core import Decision, Event
from engine.core.journal import JournalHeader, entry_line, header_line

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds: the longest a step waits in the buffer while busy
BUFFER_BYTES = 1 << 16


class JournalFileError(OSError):
    """The journal file cannot be opened or its header written; names the path."""


class JournalFile:
    """One session appended to a journal file. Make with `JournalFile.open`."""

    def __init__(self, path: str, file: IO[str], flush_every: float = FLUSH_EVERY) -> None:
        self.path = path
        self.flush_every = flush_every
        self._file: IO[str] | None = file
        self._dirty_since = math.inf  # time of the oldest unflushed step
        self.steps = 0  # steps written (to the buffer)

    @classmethod
    def open(cls, path: str, header: JournalHeader,
             flush_every: float = FLUSH_EVERY) -> JournalFile:
        """Open `path` for appending and write the session's header; raises
        JournalFileError naming the path when it cannot."""
        try:
            if path.endswith(".gz"):  # a new gzip member; members concatenate
                file = gzip.open(path, "at", encoding="utf-8", newline="\n",
                                 compresslevel=6)
            else:
                file = open(path, "a", encoding="utf-8", newline="\n", buffering=BUFFER_BYTES)
        except OSError as e:
            raise JournalFileError(
                f"cannot open the journal file {path!r} for appending: {e.strerror or e}"
            ) from e
        try:
            file.write(header_line(header) + "\n")
            file.flush()
        except OSError as e:
            _close_quietly(file)
            raise JournalFileError(
                f"cannot write to the journal file {path!r}: {e.strerror or e}") from e
        return cls(path, file, flush_every)

    @property
    def active(self) -> bool:
        """False once closed or stopped by an error."""
        return self._file is not None

    def write(self, time: float, event: Event, decisions: Iterable[Decision]) -> None:
        """Append one step (buffered)."""
        if self._file is None:
            return
        try:
            self._file.write(entry_line(time, event, decisions) + "\n")
        except Exception as e:  # noqa: BLE001 - the journal must never stop the actor
            self._stop("write", e)
            return
        self.steps += 1
        if self._dirty_since == math.inf:
            self._dirty_since = time

    def before_wait(self, now: float, idle: bool) -> None:
        """The actor is about to wait for its next message: flush when nothing else
        is pending (`idle`), or when the oldest unflushed step is `flush_every` old."""
        if self._dirty_since != math.inf and (idle or now - self._dirty_since >= self.flush_every):
            self.flush()

    def flush(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        except Exception as e:  # noqa: BLE001
            self._stop("flush", e)
            return
        self._dirty_since = math.inf

    def close(self) -> None:
        """Flush and close; idempotent, never raises."""
        if self._file is None:
            return
        self.flush()
        if self._file is not None:
            _close_quietly(self._file)
            self._file = None

    def _stop(self, what: str, error: Exception) -> None:
        log.error("journal %s: %s failed (%s); journaling stops, the coordinator goes on",
                  self.path, what, getattr(error, "strerror", None) or error)
        file, self._file = self._file, None
        if file is not None:
            _close_quietly(file)


def _close_quietly(file: IO[str]) -> None:
    try:
        file.close()
    except Exception:  # noqa: BLE001 - a failed flush at close: already reported or moot
        pass


# ---- the sinks the coordinator writes to -----------------------------------------

Step = tuple[float, Event, list[Decision]]


class JournalSink(Protocol):
    """Where the coordinator's actor hands its steps. Neither method blocks or
    raises."""

    def write(self, time: float, event: Event, decisions: list[Decision]) -> None: ...

    def before_wait(self, now: float, idle: bool) -> None: ...


class ListJournal:
    """The steps in memory, in order: `steps[i] == (time, event, decisions)`."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def write(self, time: float, event: Event, decisions: list[Decision]) -> None:
        self.steps.append((time, event, decisions))

    def before_wait(self, now: float, idle: bool) -> None:
        pass


@attrs.frozen
class _Idle:
    now: float


class FileJournal:
    """A JournalFile written by a writer task; see the top of this module."""

    def __init__(self, file: JournalFile) -> None:
        self.file = file
        self._send, self._receive = trio.open_memory_channel[Step | _Idle](math.inf)
        self._dirty = False  # steps sent since the last idle mark

    # ---- the actor's side (never blocks) ------------------------------------------

    def write(self, time: float, event: Event, decisions: list[Decision]) -> None:
        try:
            self._send.send_nowait((time, event, decisions))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # closed: the coordinator is gone
        self._dirty = True

    def before_wait(self, now: float, idle: bool) -> None:
        if idle and self._dirty:
            self._dirty = False
            try:
                self._send.send_nowait(_Idle(now))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    # ---- the writer's side --------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Write what is queued until cancelled (or closed)."""
        task_status.started()
        while True:
            try:
                first = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._write_queued([first])

    def _write_queued(self, items: list[Step | _Idle]) -> None:
        while True:  # everything queued now, in one go
            try:
                items.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._write(items)

    def _write(self, items: Sequence[Step | _Idle]) -> None:
        file, newest = self.file, -math.inf
        for item in items:
            if isinstance(item, _Idle):
                file.before_wait(item.now, idle=True)
            else:
                newest = item[0]
                file.write(*item)
        if newest > -math.inf:
            file.before_wait(newest, idle=False)

    def close(self) -> None:
        """Write what is still queued, flush and close; idempotent, never raises."""
        self._send.close()
        self._write_queued([])
        self._receive.close()
        self.file.close()


__all__ = ["FLUSH_EVERY", "FileJournal", "JournalFile", "JournalFileError", "JournalSink",
           "ListJournal", "Step"]
