# open_coordinator: runs a Coordinator (coordinator.py) for the duration of a block -
# its actor, the notifier that awaits `on_update` for every TaskUpdate in order, and
# the journal file's writer - and shuts them all down when the block exits.
#
# Rules: trio `open_*` style (an async context manager yielding the running
# coordinator); a failing `on_update` is logged and the notifier goes on (one bad
# update never stops the stream); the journal file is opened before the actor starts
# and flushed and closed after it stops.
from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from engine.core import Scheduler

from .config import CoordinatorConfig
from .coordinator import Coordinator, TokenVerifier
from .journal import FileJournal, JournalFile, JournalSink, ListJournal
from .updates import TaskUpdate, UpdateSink

log = logging.getLogger(__name__)


async def _notify(updates: trio.MemoryReceiveChannel[TaskUpdate], sink: UpdateSink) -> None:
    async with updates:
        async for update in updates:
            await _deliver(sink, update)
            # What is queued behind it goes out now, in order, without a trip
            # through trio's scheduler for each (the receive above was one);
            # cancellation is still honoured before each.
            while True:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    update = updates.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await _deliver(sink, update)


async def _deliver(sink: UpdateSink, update: TaskUpdate) -> None:
    try:
        await sink(update)
    except Exception:
        log.exception("on_update failed for %s (%s); going on", update.task_id,
                      type(update).__name__)


@asynccontextmanager
async def open_coordinator(config: CoordinatorConfig = CoordinatorConfig(), *,
                           verify_token: TokenVerifier | None = None,
                           on_update: UpdateSink | None = None,
                           scheduler: Scheduler | None = None
                           ) -> AsyncIterator[Coordinator]:
    """Run a Coordinator (its actor, update notifier and journal writer) for the
    duration of the block. `verify_token(token)` returns the worker's NodeIdentity,
    or None to refuse it; without one, any token is accepted (dev mode).
    `on_update` is awaited, in order, for every task state change and progress
    update. `scheduler` replaces the one `config` describes (e.g. the simulator's,
    for a differential run); the coordinator then owns it. With
    `config.journal_path`, the journal file is opened (a new session appended)
    before the actor starts - JournalFileError naming the path if it cannot be -
    and written out, flushed and closed when the block exits."""
    if config.journal_path is not None and scheduler is not None:
        raise ValueError("journal_path and a replacement scheduler cannot be combined: "
                         "the journal's header describes the scheduler the config makes")
    journals: list[JournalSink] = [ListJournal()] if config.record else []
    file_journal = None
    if config.journal_path is not None:
        file_journal = FileJournal(JournalFile.open(config.journal_path,
                                                    config.journal_header()))
        journals.append(file_journal)
    try:
        updates_send = updates_receive = None
        if on_update is not None:
            updates_send, updates_receive = trio.open_memory_channel[TaskUpdate](math.inf)
        coordinator = Coordinator(config, verify_token, updates_send, scheduler, journals)
        async with trio.open_nursery() as nursery:
            if file_journal is not None:
                await nursery.start(file_journal.serve)
            nursery.start_soon(coordinator.run_actor, name="coordinator actor")
            if updates_receive is not None and on_update is not None:
                nursery.start_soon(_notify, updates_receive, on_update,
                                   name="coordinator updates")
            try:
                yield coordinator
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if file_journal is not None:
            file_journal.close()


__all__ = ["open_coordinator"]
