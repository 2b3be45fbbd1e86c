# Journal replay: a live coordinator's recorded run, audited or studied.
#
# A journal (engine/core/journal.py; `neurogrid serve --journal FILE` writes one)
# holds, per session, how the scheduler was made and every event it was handed with
# its time and decisions. Two uses:
# - check (`python -m sim --replay FILE --check`): feed every recorded event, at its
#   recorded time, to a fresh scheduler made as the session's was, and compare the
#   decisions with the recorded ones. The core is pure, so they must be identical;
#   the first difference is reported.
# - what-if (`python -m sim --replay FILE --policy all`): turn a session into a
#   scenario: the clients' submissions and cancellations at the times they came
#   (workload.Recorded), the nodes joining, draining and being lost when they were
#   (scenario.ScriptedNode; each session of a node is its own simulated node), and
#   each task as big as it measured: the GPU seconds its node reported times that
#   node's rate for the model, i.e. work units, so another GPU class takes longer or
#   shorter in proportion (the catalog's estimate for a task that never completed).
#   Then any placement or pricing policy runs on exactly that traffic and fleet.
#   Not replayed: heartbeats and heartbeat timeouts (a node is lost when the journal
#   says it was), failures a worker reported (the task runs normally), placements
#   (that is what the policy decides). Latency between regions is the session's.
#
# Rules: times are shifted so that the session's first step is at 0 (deadlines with
# them); a file that cannot be read raises ScenarioError (one line, exit 2).
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import attrs

from engine.core import (
    DEFAULT_MODEL, MODELS, Complete, Decision, Drop, NodeDraining, NodeJoined, NodeLost,
    NodeSpec, TaskCancelled, TaskSpec, TaskSubmitted, gpu_rate, work_units,
)
from engine.core.journal import (
    JournalEntry, JournalError, JournalHeader, entry_line, header_line, read_sessions,
)

from .scenario import Scenario, ScenarioError, ScriptedNode, Workload
from .workload import Recorded

Session = tuple[JournalHeader, list[JournalEntry]]


def load_sessions(path: str | Path) -> list[Session]:
    """Every session of a journal file."""
    try:
        gzipped = str(path).endswith(".gz")  # as engine/runtime/journal.py writes them
        with (gzip.open(path, "rt", encoding="utf-8") if gzipped
              else open(path, encoding="utf-8")) as lines:
            sessions = list(read_sessions(_until_cut(lines), str(path)))
    except OSError as e:
        raise ScenarioError(str(path), "", f"a readable journal file ({e.strerror})") from None
    except (JournalError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise ScenarioError(str(path), "", f"a journal ({e})") from None
    if not sessions:
        raise ScenarioError(str(path), "", "a journal with at least one session header")
    return sessions


def _until_cut(lines: Iterable[str]) -> Iterator[str]:
    """The lines of a gzip journal whose writer died before closing its last member
    (no end-of-stream marker): everything up to the cut."""
    try:
        yield from lines
    except EOFError:
        return


def pick_session(sessions: list[Session], number: int | None, source: str) -> Session:
    """Session `number` (1-based; None: the last one)."""
    if number is None:
        return sessions[-1]
    if not 1 <= number <= len(sessions):
        raise ScenarioError("command line", "--session",
                            f"a session number from 1 to {len(sessions)} ({source})", number)
    return sessions[number - 1]


@attrs.frozen
class Divergence:
    """Where a replay first decided otherwise than the journal says."""

    step: int  # 1-based
    entry: JournalEntry
    replayed: tuple[Decision, ...]


def check_session(header: JournalHeader, steps: list[JournalEntry]) -> Divergence | None:
    """Replay the session into a fresh scheduler; None when every decision matches."""
    scheduler = header.make_scheduler()
    for number, entry in enumerate(steps, start=1):
        replayed = tuple(scheduler.handle(entry.event, entry.time))
        if replayed != entry.decisions:
            return Divergence(number, entry, replayed)
    return None


@attrs.define
class _OpenNode:
    spec: NodeSpec
    join: float
    drain: float = math.inf


def scenario_from_session(header: JournalHeader, steps: list[JournalEntry],
                          name: str, source: str) -> Scenario:
    """The what-if scenario of one session (see the module comment)."""
    if not steps:
        raise ScenarioError(source, "", "a session with at least one step")
    t0 = steps[0].time
    for number, (before, after) in enumerate(zip(steps, steps[1:]), start=2):
        if after.time < before.time:
            raise ScenarioError(source, f"step {number}",
                                f"times that never go backwards ({before.time} before it)",
                                after.time)
    arrivals: list[tuple[float, TaskSpec]] = []
    model_of: dict[str, str] = {}  # task id -> model, of the tasks replayed
    cancellations: list[tuple[float, str]] = []
    measured: dict[str, float] = {}  # task id -> work units, as it ran
    gpu_of: dict[str, str] = {}  # node id -> its GPU, as it said last
    open_nodes: dict[str, _OpenNode] = {}
    fleet: list[ScriptedNode] = []

    def close(node_id: str, lost: float) -> None:
        node = open_nodes.pop(node_id, None)
        if node is not None:
            fleet.append(ScriptedNode(node.spec, node.join, lost, node.drain))

    for entry in steps:
        t, event = entry.time - t0, entry.event
        if isinstance(event, TaskSubmitted):
            spec = event.task
            if spec.task_id not in model_of:  # a repeated id was refused live as well
                model_of[spec.task_id] = spec.model
                if spec.deadline < math.inf:
                    spec = attrs.evolve(spec, deadline=spec.deadline - t0)
                arrivals.append((t, spec))
        elif isinstance(event, TaskCancelled):
            cancellations.append((t, event.task_id))
        elif isinstance(event, NodeJoined):
            close(event.node.node_id, t)  # it came back before it was noticed gone
            open_nodes[event.node.node_id] = _OpenNode(event.node, t)
            gpu_of[event.node.node_id] = event.node.gpu
        elif isinstance(event, NodeDraining) and event.node_id in open_nodes:
            open_nodes[event.node_id].drain = min(open_nodes[event.node_id].drain, t)
        elif isinstance(event, NodeLost):
            close(event.node_id, t)
        for decision in entry.decisions:
            if isinstance(decision, Complete) and decision.task_id in model_of:
                measured[decision.task_id] = decision.usage.seconds * gpu_rate(
                    gpu_of.get(decision.node_id, ""), model_of[decision.task_id])
            elif isinstance(decision, Drop):  # the core timed the node out
                close(decision.node_id, t)
    end = steps[-1].time - t0
    for node_id in list(open_nodes):
        close(node_id, math.inf)
    fleet.sort(key=lambda n: (n.join, n.spec.node_id))

    tasks = []
    for t, spec in arrivals:
        work = measured.get(spec.task_id)
        if spec.model not in MODELS:
            work = 0.0  # the core refuses it, as it did live
        elif work is None:  # it never completed: the catalog's estimate
            work = work_units(spec.model, spec.prompt_tokens, spec.output_tokens, spec.steps,
                              spec.audio_seconds)
        tasks.append((t, spec, work))
    model = tasks[0][1].model if tasks else DEFAULT_MODEL
    seed = header.seed if isinstance(header.seed, int) else 0
    return Scenario(
        name=name, nodes=(), source=source,
        workloads=(Workload(model, Recorded(tuple(tasks), tuple(cancellations))),),
        scripted_nodes=tuple(fleet),
        description=(f"replay of {source}: {len(tasks)} tasks, {len(fleet)} node sessions, "
                     f"{end:.1f} s"),
        seed=seed, duration=end + 1.0, warmup=0.0, policies=(header.policy,),
        pricings=(header.pricing,), service_noise=0.0,
        max_queued=header.config.max_queued,
        region_latency=dict(header.config.region_latency),
    )


def write_session(out: TextIO, header: JournalHeader,
                  log: Iterable[JournalEntry]) -> None:
    """Append one session (a header, then its steps) to an open journal file."""
    out.write(header_line(header) + "\n")
    for entry in log:
        out.write(entry_line(entry.time, entry.event, entry.decisions) + "\n")


__all__ = ["Divergence", "Session", "check_session", "load_sessions", "pick_session",
           "scenario_from_session", "write_session"]
