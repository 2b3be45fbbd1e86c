# The event loop: virtual time, a heap, the real Scheduler.
#
# Theory of operation. Everything that will happen (but arrivals, see below) is an
# item on one heap of
#     (time, seq, handler)
# where `seq` (a counter) breaks ties in the order items were scheduled, so equal
# times never compare handlers and the run is deterministic. A handler is a bound
# method of the Simulation, or one with its arguments bound (functools.partial), one
# per item kind:
#   _finish(task, run)     a node's result      -> TaskFinished
#   _tick                  a WakeAt's time      -> Tick, if `next_deadline()` is due
#   _join / _leave / _fail / _gone(node, epoch)
#                          a node's timers      -> NodeJoined / NodeDraining / NodeLost
#   _cancel(task_id)       a replayed client's cancellation -> TaskCancelled
#   _warmup_ends           the measurement window opens (no event)
# Called with the time, it returns the core event, or None when the item is stale or
# only bookkeeping. `step` is: take the earliest item, call its handler, hand the
# event to `Scheduler.handle(event, now)`, and carry out the decisions (carry.py: a
# handler per decision type; an Assign schedules the node's `_finish`, a WakeAt a
# `_tick`). The statistics are the recorder's (recorder.py).
# Stale items (a result for a run that was interrupted, a timer from a node's
# earlier session) are recognised by a counter bound into the item (`run`, `epoch`)
# and skipped before they reach the core, so the core only ever hears what a real
# network would tell it.
#
# A replayed journal (replay.py) adds two things: its nodes join at their recorded
# times and carry a script (lost or draining at a recorded time: `_fail` / `_leave`
# items pushed at the start), and its clients' cancellations are `_cancel` items.
#
# Arrivals are generated lazily and kept off the big heap: each workload's next
# arrival waits in a small heap of its own (one entry per workload), and `step` takes
# whichever of the two heaps is due first (the big one on a tie, so nodes joined at
# time 0 are there for a trace's first row at time 0). The run ends when every
# workload is exhausted (time `duration`) and every task has ended, or at
# `duration + drain_limit`.
#
# Rules: one run is a pure function of (scenario, policy, pricing, seed); every random
# stream is seeded from the seed and a fixed name, never from the policy, so every
# policy sees the same tasks. Items are scheduled in a fixed order (the decisions'
# order), so equal-time items pop in the same order on every run.
#
# Speed (`python -m benchmarks --only sim`). A task costs the loop, besides the
# core's own work, two `step`s, its arrival and result handlers, the Assign and
# Complete handlers, one recorder call, one Timers call and a partial. Code is
# inlined only where every row of that benchmark passes through it, and each such
# place says "Fast path": the recorder's per-event integration in `step`, the release
# in the Complete handler (carry.py), the busy interval and the departure in
# `StatsRecorder.record_completed`. Inlining `step` itself into `run` was measured
# and left out: 1.4% of the instructions a task on "M/M/c c=16", not worth two
# copies of the loop.
from __future__ import annotations

import gc
import itertools
import math
import time
from functools import partial
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, Callable, Iterator

import attrs
import numpy as np

from engine.core import (
    MODELS, Event, NodeDraining, NodeJoined, NodeLost, Scheduler, SchedulerConfig,
    TaskCancelled, TaskFinished, TaskSpec, TaskSubmitted, Tick, Usage, VerifyMode, work_units,
)
from engine.core.journal import JournalEntry, JournalHeader

from .adversary import AdversaryModel
from .carry import CarryOut
from .fleet import SimNode, SimTask, build_fleet, gpu_names
from .recorder import StatsRecorder
from .scenario import Scenario, Workload
from .workload import Distribution, Recorded, TraceReplay, lognormal_noise

PROGRESS_EVERY = 1 << 14

Progress = Callable[[float], None]  # called with the fraction of `duration` done
Item = Callable[[float], Event | None]  # a heap item's handler, called with the time
Arrival = tuple[float, TaskSpec, float, float, float]  # what task_stream yields

LogEntry = JournalEntry  # one step of a recorded run: (time, event, decisions)


@attrs.frozen(eq=False)
class RunResult:
    summary: dict[str, Any]  # the JSON run: see sim/README.md, "Output"
    latencies: np.ndarray  # end-to-end seconds of the measured completed tasks
    utilization_series: tuple[np.ndarray, np.ndarray]  # (bin middles, utilization)
    log: tuple[LogEntry, ...] | None  # with record=True

    @property
    def policy(self) -> str:
        policy: str = self.summary["policy"]
        return policy


def task_stream(workload: Workload, index: int, scenario: Scenario,
                seed: int) -> Iterator[tuple[float, TaskSpec, float, float, float]]:
    """(arrival time, spec, work, service override or -1, noise) of each task of one
    workload, in time order. Arrival times and sizes use separate streams, so a
    change of size distribution leaves the arrival times alone."""
    if isinstance(workload.arrival, Recorded):  # a journal's tasks, as they came
        for t, spec, work in workload.arrival.tasks:
            yield t, spec, work, -1.0, 1.0
        return
    times_gen = np.random.default_rng([seed, index, 0])
    size_gen = np.random.default_rng([seed, index, 1])
    model = MODELS[workload.model]
    name = workload.model

    def sizes(dist: Distribution | None, default: float) -> Iterator[float]:
        return (dist or Distribution.constant(default)).stream(size_gen)

    zero = Distribution.constant(0)
    # Only the sizes that count for the model's work (its task kind's quantities)
    # are drawn; the others are 0.
    uses = model.kind.quantities
    prompts = sizes(workload.prompt_tokens if "prompt_tokens" in uses else zero, 0)
    outputs = sizes(workload.output_tokens if "output_tokens" in uses else zero,
                    model.default_output_tokens)
    image, speech = "steps" in uses, "audio_seconds" in uses
    draw_steps = sizes(workload.steps if image else zero, model.default_steps).__next__
    draw_audio = sizes(workload.audio_seconds if speech else zero,
                       model.default_audio_seconds).__next__
    draw_service = (workload.service_time.stream(size_gen).__next__
                    if workload.service_time else None)
    draw_noise = lognormal_noise(scenario.service_noise, size_gen).__next__
    priority, relative_deadline = workload.priority, workload.deadline
    verify = VerifyMode(scenario.verification.mode if scenario.verification is not None
                        else "none")
    attempts = workload.max_attempts
    arrival = workload.arrival
    # A trace's rows carry their token counts; otherwise they are drawn at each
    # arrival time, prompt then output (zipped: no Python frame a task).
    if isinstance(arrival, TraceReplay):
        rows: Iterator[tuple[float, int, int]] = arrival.rows(scenario.duration)
    else:
        rows = zip(arrival.times(times_gen, scenario.duration), map(round, prompts),
                   map(round, outputs), strict=False)  # the draws never end
    for k, (t, prompt, output) in enumerate(rows):
        steps = round(draw_steps()) if image else 0
        audio = draw_audio() if speech else 0.0
        work = work_units(name, prompt, output, steps, audio)
        spec = TaskSpec(f"w{index}.{k}", name, priority, prompt, output, steps, audio,
                        t + relative_deadline, attempts, work=work, verify=verify)
        service = draw_service() if draw_service is not None else -1.0
        yield t, spec, work, service, draw_noise()


def _priorities(workload: Workload) -> set[int]:
    """The priorities a workload's tasks have: its own, or a journal's tasks' ones."""
    if isinstance(workload.arrival, Recorded):
        return {int(spec.priority) for _, spec, _ in workload.arrival.tasks}
    return {int(workload.priority)}


def journal_header(scenario: Scenario, policy: str, pricing: str, seed: int) -> JournalHeader:
    """How a run's Scheduler is made: no heartbeats (failures arrive as NodeLost), ended
    tasks forgotten, the scenario's region latencies and queue limit. With a run's
    `.log` it is that run's journal (engine/core/journal.py)."""
    return JournalHeader(policy, pricing, f"{seed}/scheduler", SchedulerConfig(
        heartbeat_timeout=math.inf, keep_finished=False,
        region_latency=dict(scenario.region_latency), max_queued=scenario.max_queued,
        measured_speed=scenario.measured_speed, check_hardware=scenario.check_hardware,
        trust=scenario.verification.policy if scenario.verification is not None else None))


def make_scheduler(scenario: Scenario, policy: str, pricing: str, seed: int) -> Scheduler:
    """The Scheduler a run drives. A recorded `.log` replayed into a fresh one of these
    gives the same decisions."""
    return journal_header(scenario, policy, pricing, seed).make_scheduler()


def run_scenario(scenario: Scenario, policy: str | None = None, seed: int | None = None,
                 *, pricing: str | None = None, record: bool = False,
                 progress: Progress | None = None) -> RunResult:
    """Run one configuration of a scenario (defaults: its first policy and pricing,
    its seed). `record=True` keeps every (time, event, decisions) in `.log`."""
    return Simulation(scenario, policy or scenario.policies[0],
                      pricing or scenario.pricings[0],
                      scenario.seed if seed is None else seed, record).run(progress)


class Simulation:
    """The state of one run. Use `run_scenario`; this class exists for its loop."""

    def __init__(self, scenario: Scenario, policy: str, pricing: str, seed: int,
                 record: bool) -> None:
        self.scenario, self.policy, self.pricing, self.seed = scenario, policy, pricing, seed
        self.scheduler = make_scheduler(scenario, policy, pricing, seed)
        self.nodes = build_fleet(scenario, seed)
        self.log: list[LogEntry] | None = [] if record else None
        self.stats = StatsRecorder(
            scenario.warmup, scenario.duration, gpu_names(scenario),
            (node.gpu_index for node in self.nodes),
            (p for workload in scenario.workloads for p in _priorities(workload)))
        self.carry = CarryOut(self.nodes, self.stats, self)
        self.tasks = self.carry.tasks
        self.heap: list[tuple[float, int, Item]] = []
        self.next_seq = itertools.count().__next__
        # (time, workload index, stream, its next task), one per open stream
        self.arrivals: list[tuple[float, int, Iterator[Arrival], Arrival]] = []
        self.stop_at = scenario.duration + scenario.drain_limit
        self.now = 0.0
        self.events = 0  # handed to the core
        self.progress: Progress | None = None
        self.tick = Tick()
        self.arrive: Item = self._arrive  # bound once: step takes it at every arrival
        self.handlers = self.carry.handlers
        self.adversary: AdversaryModel | None = None
        if scenario.verification is not None:  # adversary.py
            self.adversary = AdversaryModel(
                scenario.verification, self.carry.nodes, self.tasks, seed,
                lambda spec, parent, now: SimTask(spec, now, spec.work, -1.0, parent.noise,
                                                  False, now),
                self.carry.release, self.gone)
            self.carry.handlers = self.handlers = self.adversary.handlers(self.carry.handlers)

    def push(self, when: float, item: Item) -> None:
        if when == math.inf:
            return  # never happens (no failures or churn configured)
        heappush(self.heap, (when, self.next_seq(), item))

    def run(self, progress: Progress | None) -> RunResult:
        # The loop makes no reference cycles; the cyclic collector would only walk
        # the whole fleet again and again (~4% of the run). Restored on the way out.
        collecting = gc.isenabled()
        gc.disable()
        try:
            started = time.perf_counter()
            self.progress = progress
            self.start()
            while self.step():
                pass
            return self.result(time.perf_counter() - started)
        finally:
            if collecting:
                gc.enable()

    def start(self) -> None:
        """Schedule what is known before the first step: the nodes' joins (and a
        journal's node scripts), a journal's cancellations, every workload's first
        arrival, the end of the warmup."""
        for node in self.nodes:
            self.push(node.join_at, partial(self._join, node, node.epoch))
            for when, what in node.script:  # a journal's node: lost or drained then
                handler = self._fail if what == "lost" else self._leave
                self.push(when, partial(handler, node, node.epoch))
        for workload in self.scenario.workloads:
            if isinstance(workload.arrival, Recorded):
                for when, task_id in workload.arrival.cancellations:
                    self.push(when, partial(self._cancel, task_id))
        for order, workload in enumerate(self.scenario.workloads):
            stream = task_stream(workload, order, self.scenario, self.seed)
            first = next(stream, None)
            if first is not None:
                self.arrivals.append((first[0], order, stream, first))
        heapify(self.arrivals)
        if self.scenario.warmup > 0:
            self.push(self.scenario.warmup, self._warmup_ends)

    def step(self) -> bool:
        """Take the earliest item, hand its event to the core and carry out the
        decisions. False when the run is over."""
        heap, arrivals = self.heap, self.arrivals
        item: Item
        if arrivals and (not heap or arrivals[0][0] < heap[0][0]):
            now, item = arrivals[0][0], self.arrive
        elif heap:
            now, _, item = heappop(heap)
        else:
            return False
        if now > self.stop_at:
            self.now = self.stop_at
            return False
        self.now = now
        event = item(now)
        if event is None:
            return True
        # Fast path (every event of every row of `python -m benchmarks --only sim`;
        # 1.4% of the instructions a task on "M/M/c c=16"): stats.record_event(event,
        # now), inlined, the same statements.
        stats = self.stats
        stats.area += stats.in_system * (now - stats.area_since)
        stats.area_since = now
        if type(event) is TaskSubmitted:
            stats.submitted += 1
            stats.in_system += 1
            if now >= stats.warmup:
                stats.arrivals += 1
        self.events += 1
        decisions = self.scheduler.handle(event, now)
        if self.log is not None:
            self.log.append(LogEntry(now, event, tuple(decisions)))
        handlers = self.handlers  # the carry-out table (carry.py), by decision type
        for decision in decisions:
            handlers[type(decision)](decision, now)
        if stats.in_system == 0 and not arrivals:
            return False
        if self.progress is not None and self.events % PROGRESS_EVERY == 0:
            self.progress(min(1.0, now / self.scenario.duration))
        return True

    # ---- what the carry-out schedules (carry.Timers) -----------------------------

    def report(self, when: float, task: SimTask, run: int) -> None:
        item: Item = partial(self._finish if self.adversary is None else self.adversary.finish,
                             task, run)
        heappush(self.heap, (when, self.next_seq(), item))

    def wake(self, when: float) -> None:
        heappush(self.heap, (when, self.next_seq(), self._on_tick))

    def gone(self, node: SimNode, now: float) -> None:
        self.push(now, partial(self._gone, node, node.epoch))

    # ---- the item handlers: the core event an item stands for, or None ------------

    def _arrive(self, now: float) -> Event:
        """The earliest workload's next task is submitted."""
        arrivals = self.arrivals
        _, order, stream, (_, spec, work, service, noise) = arrivals[0]
        following = next(stream, None)
        if following is None:
            heappop(arrivals)
        else:
            heapreplace(arrivals, (following[0], order, stream, following))
        scenario = self.scenario
        self.tasks[spec.task_id] = SimTask(spec, now, work, service, noise,
                                           scenario.warmup <= now < scenario.duration, now)
        return TaskSubmitted(spec)  # the recorder counts it in (record_event)

    @staticmethod  # no `self`: its partial then calls the function itself
    def _finish(task: SimTask, run: int, now: float) -> Event | None:
        """The node reports run `run` of the task, unless that run was interrupted:
        the task was requeued since (`run` moved on) or ended (it has no node)."""
        node = task.node
        if node is None or task.run != run:
            return None
        spec = task.spec
        return TaskFinished(spec.task_id, node.node_id, Usage(
            task.service_seconds, spec.output_tokens, spec.prompt_tokens, spec.steps,
            spec.audio_seconds))

    def _on_tick(self, now: float) -> Event | None:
        return self.tick if now >= self.scheduler.next_deadline() else None

    def _warmup_ends(self, now: float) -> None:
        self.stats.warmup_ends(now)

    def _cancel(self, task_id: str, now: float) -> Event | None:
        """A replayed client's cancellation, unless the task has ended in this run."""
        return TaskCancelled(task_id) if task_id in self.tasks else None

    # Node timers (failures, churn, a journal's script): stale when set in an
    # earlier session of the node.

    def _join(self, node: SimNode, epoch: int, now: float) -> Event | None:
        if epoch != node.epoch:
            return None
        spec = node.spec if epoch == 0 else node.rejoin_spec()
        node.online, node.leaving, node.online_since = True, False, now
        self.push(now + node.time_to_failure(), partial(self._fail, node, epoch))
        self.push(now + node.time_to_leave(), partial(self._leave, node, epoch))
        return NodeJoined(spec)

    def _leave(self, node: SimNode, epoch: int, now: float) -> Event | None:
        """The node drains: it finishes what it runs, then it is gone."""
        if epoch != node.epoch:
            return None
        node.leaving = True
        if node.running == 0:
            self.gone(node, now)
        return NodeDraining(node.node_id)

    def _fail(self, node: SimNode, epoch: int, now: float) -> Event | None:
        """The node is lost abruptly; it is repaired and rejoins cold."""
        if epoch != node.epoch:
            return None
        self._offline(node, now, node.time_to_repair())
        return NodeLost(node.node_id, "failure")

    def _gone(self, node: SimNode, epoch: int, now: float) -> Event | None:
        """The drained node leaves; it comes back later, cold."""
        if epoch != node.epoch:
            return None
        self._offline(node, now, node.time_away())
        return NodeLost(node.node_id, "left")

    def _offline(self, node: SimNode, now: float, away: float) -> None:
        """End the node's session at `now`; its next one starts `away` later."""
        self.stats.record_online(node, now)
        node.online = node.leaving = False
        node.epoch += 1
        self.push(now + away, partial(self._join, node, node.epoch))

    # ---- the end ------------------------------------------------------------------

    def result(self, wall_seconds: float) -> RunResult:
        now, stats = self.now, self.stats
        stats.close(now, self.tasks.values(), self.nodes)
        run = {
            "scenario": self.scenario.name, "policy": self.policy, "pricing": self.pricing,
            "seed": self.seed, **stats.report(now, len(self.tasks)),
            "events": self.events, "sim_seconds": now, "wall_seconds": wall_seconds,
        }
        trust = self.scheduler.trust
        if self.adversary is not None and trust is not None:
            run["trust"] = self.adversary.report(
                trust.counters, trust.overhead, {n.node_id: n.join_at for n in self.nodes})
        if self.progress is not None:
            self.progress(1.0)
        log = tuple(self.log) if self.log is not None else None
        return RunResult(run, stats.latencies(), stats.utilization_series(now), log)
