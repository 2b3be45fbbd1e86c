"""A live coordinator's journal written to a file (CoordinatorConfig.journal_path):
the file reads back as the in-memory journal, replays to the same decisions,
appends a session per run, fails at startup on a bad path, and never stops the
coordinator when writing fails."""
from __future__ import annotations

import logging
import os
import re

import attrs
import pytest
import trio
import trio.testing

from api.__main__ import api_config, build_parser
from engine.core import TaskState, Tick
from engine.core.journal import JournalEntry, JournalHeader, read_sessions
from engine.runtime import (
    CoordinatorConfig, FileJournal, JournalFile, JournalFileError, ListJournal, open_coordinator,
)
from sim.replay import load_sessions
from tests.engine.runtime.harness import open_net

CONFIG = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, hello_timeout=2.0,
                           policy="balanced", seed=7, record=True)


def _with_path(config: CoordinatorConfig, path) -> CoordinatorConfig:
    return attrs.evolve(config, journal_path=str(path))


def sessions(path) -> list[tuple[JournalHeader, list[JournalEntry]]]:
    with open(path, encoding="utf-8") as f:
        return list(read_sessions(f, str(path)))


def step_count(path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip()) - 1  # less the header


async def test_the_file_holds_the_journal_and_replays_to_the_same_decisions(
        autojump_clock, tmp_path):
    path = tmp_path / "run.jsonl"
    config = _with_path(CONFIG, path)
    async with open_net(config) as net:
        workers = [net.start_worker(f"w{i}", slots=2) for i in range(2)]
        await net.until_nodes(2)
        ids = [f"t{i}" for i in range(8)]
        for t in ids:
            await net.submit(t, seconds=1.0 + int(t[1:]) % 3)
        await net.submit("long", seconds=100.0, steps=100)
        await net.until(lambda: net.of("long", "progress"))
        assert await net.c.cancel("long") is True
        await net.until(lambda: net.of("t5", "progress"))
        workers[0].kill()
        await net.until_final(*ids, "long")
        # idle: what was written is on disk already, before the coordinator exits
        await trio.testing.wait_all_tasks_blocked()
        assert step_count(path) == len(net.c.journal)
    assert net.c.journal_file is not None and not net.c.journal_file.active  # closed
    live = net.c.journal  # with the workers' leaving as the network shut down

    [(header, steps)] = sessions(path)
    assert (header.policy, header.pricing, header.seed) == ("balanced", "static", 7)
    assert header.config == config.scheduler_config()
    assert len(steps) == len(live) > 20
    for step, (now, event, decisions) in zip(steps, live):
        assert step == JournalEntry(now, event, tuple(decisions))
    kinds = {type(s.event).__name__ for s in steps}
    assert {"NodeJoined", "TaskSubmitted", "TaskFinished", "TaskCancelled",
            "NodeLost"} <= kinds

    replay = header.make_scheduler()
    for step in steps:
        assert tuple(replay.handle(step.event, step.time)) == step.decisions


async def test_a_second_run_appends_a_second_session(autojump_clock, tmp_path):
    path = tmp_path / "run.jsonl"
    async with open_net(_with_path(CONFIG, path)) as net:
        net.start_worker("a")
        await net.until_nodes(1)
        await net.submit("first")
        await net.until_final("first")
    first = sessions(path)
    second_config = _with_path(CoordinatorConfig(seed=8, pricing="dynamic"), path)
    async with open_net(second_config) as net:
        net.start_worker("b")
        await net.until_nodes(1)
        await net.submit("second")
        await net.until_final("second")
    both = sessions(path)
    assert len(both) == 2 and both[0] == first[0]
    header, steps = both[1]
    assert (header.seed, header.pricing, header.policy) == (8, "dynamic", second_config.policy)
    submitted = [s.event.task.task_id for s in steps if type(s.event).__name__ ==
                 "TaskSubmitted"]
    assert submitted == ["second"]
    assert steps[0].time >= 0 and all(a.time <= b.time for a, b in zip(steps, steps[1:]))


async def test_a_gz_path_is_written_compressed_and_reads_back(autojump_clock, tmp_path):
    path = tmp_path / "run.jsonl.gz"
    for run in range(2):  # two sessions: two gzip members, one stream
        async with open_net(_with_path(CONFIG, path)) as net:
            net.start_worker(f"w{run}")
            await net.until_nodes(1)
            for i in range(3):
                await net.submit(f"r{run}t{i}")
            await net.until_final(*(f"r{run}t{i}" for i in range(3)))
            await trio.testing.wait_all_tasks_blocked()
            # flushed when idle: readable while the coordinator still runs
            [*_, (_, steps_so_far)] = load_sessions(path)
            assert len(steps_so_far) == len(net.c.journal)
        live = net.c.journal
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip
    both = load_sessions(path)
    assert len(both) == 2
    assert [JournalEntry(t, e, tuple(d)) for t, e, d in live] == both[1][1]


@pytest.mark.parametrize("where", ["directory", "missing parent"])
async def test_an_unopenable_path_fails_at_startup_naming_it(tmp_path, where):
    path = tmp_path if where == "directory" else tmp_path / "nowhere" / "run.jsonl"
    with pytest.raises(OSError, match=re.escape(str(path))):
        async with open_coordinator(_with_path(CoordinatorConfig(), path)):
            pytest.fail("the coordinator started")


async def test_a_journal_cannot_describe_a_replacement_scheduler(tmp_path):
    config = _with_path(CoordinatorConfig(), tmp_path / "j.jsonl")
    with pytest.raises(ValueError, match="journal_path"):
        async with open_coordinator(config, scheduler=CoordinatorConfig().make_scheduler()):
            pytest.fail("the coordinator started")
    assert not (tmp_path / "j.jsonl").exists()


class FullDisk:
    """A file whose writes and flushes fail like a full disk."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        self.write("")

    def close(self) -> None:
        self.closed = True


async def test_a_failing_journal_is_logged_once_and_the_coordinator_goes_on(
        autojump_clock, tmp_path, caplog):
    path = tmp_path / "run.jsonl"
    async with open_net(_with_path(CONFIG, path)) as net:
        net.start_worker("a", slots=2)
        await net.until_nodes(1)
        broken = FullDisk()
        net.c.journal_file._file = broken  # the disk fills up
        with caplog.at_level(logging.ERROR, logger="engine.runtime.journal"):
            for i in range(4):
                await net.submit(f"t{i}")
            await net.until_final(*[f"t{i}" for i in range(4)])
        assert all(net.final(f"t{i}").state is TaskState.COMPLETED for i in range(4))
        assert not net.c.journal_file.active and broken.closed
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0].getMessage() and "No space left" in errors[0].getMessage()


def test_flushes_when_idle_or_once_a_second_while_busy(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = JournalFile.open(str(path), CONFIG.journal_header(), flush_every=1.0)
    assert step_count(path) == 0  # the header is on disk at once
    journal.write(10.0, Tick(), [])
    journal.write(10.2, Tick(), [])
    journal.before_wait(10.9, idle=False)
    assert step_count(path) == 0  # busy, and the oldest step is not a second old
    journal.before_wait(11.0, idle=False)
    assert step_count(path) == 2
    journal.write(11.5, Tick(), [])
    journal.before_wait(11.5, idle=True)
    assert step_count(path) == 3
    journal.write(12.0, Tick(), [])
    journal.close()
    journal.close()  # idempotent
    journal.write(13.0, Tick(), [])  # after close: nothing, no error
    [(header, steps)] = sessions(path)
    assert [s.time for s in steps] == [10.0, 10.2, 11.5, 12.0]
    assert header == CONFIG.journal_header()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_open_fails_at_once_when_the_header_cannot_be_written():
    with pytest.raises(JournalFileError, match="/dev/full"):
        JournalFile.open("/dev/full", CONFIG.journal_header())


def test_serve_journal_flag_reaches_the_coordinator_config():
    parser = build_parser()
    args = parser.parse_args(["--journal", "runs/live.jsonl", "--db", "x.db"])
    config = api_config(args)
    assert config.coordinator.journal_path == "runs/live.jsonl"
    assert config.db == "x.db"
    assert api_config(parser.parse_args([])).coordinator.journal_path is None
    assert "python -m sim --replay PATH" in " ".join(parser.format_help().split())


async def test_the_file_sink_writes_in_its_own_task_and_close_writes_the_rest(tmp_path):
    path = tmp_path / "sink.jsonl"
    sink = FileJournal(JournalFile.open(str(path), CONFIG.journal_header(), flush_every=1.0))
    sink.write(1.0, Tick(), [])
    sink.write(1.5, Tick(), [])
    sink.before_wait(1.5, idle=True)
    assert sink.file.steps == 0  # the actor only queued them
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        await trio.testing.wait_all_tasks_blocked()
        assert sink.file.steps == 2 and step_count(path) == 2  # written, and flushed: idle
        sink.write(2.0, Tick(), [])
        sink.write(2.5, Tick(), [])
        await trio.testing.wait_all_tasks_blocked()
        assert sink.file.steps == 4 and step_count(path) == 2  # busy: buffered
        sink.write(3.1, Tick(), [])  # a step over a second newer than the oldest unflushed
        await trio.testing.wait_all_tasks_blocked()
        assert step_count(path) == 5
        sink.write(3.2, Tick(), [])
        nursery.cancel_scope.cancel()
    sink.write(3.3, Tick(), [])  # the writer is gone: close writes what is queued
    sink.close()
    sink.close()  # idempotent
    sink.write(4.0, Tick(), [])  # after close: nothing, no error
    assert not sink.file.active
    [(_, steps)] = sessions(path)
    assert [s.time for s in steps] == [1.0, 1.5, 2.0, 2.5, 3.1, 3.2, 3.3]


async def test_the_journal_sinks_see_the_same_steps(autojump_clock, tmp_path):
    path = tmp_path / "both.jsonl"
    async with open_net(_with_path(CONFIG, path)) as net:
        assert [type(s) for s in net.c.journals] == [ListJournal, FileJournal]
        net.start_worker("a")
        await net.until_nodes(1)
        await net.submit("t")
        await net.until_final("t")
    [(_, steps)] = sessions(path)
    assert steps == [JournalEntry(t, e, tuple(d)) for t, e, d in net.c.journal]
