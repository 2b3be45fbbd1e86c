# The event loop: virtual time, a heap, the real Scheduler.
#
# Theory of operation. Everything that will happen (but arrivals, see below) is an
# item on one heap of
#     (time, seq, handler, subject, stamp)
# where `seq` (a counter) breaks ties in the order items were scheduled, so equal
# times never compare handlers and the run is deterministic. The handler is a method
# of the Simulation, one per item kind, called as `handler(subject, stamp, now)`:
#   _finish(task, run)     a node's result      -> TaskFinished
#   _on_tick               a WakeAt's time      -> Tick, if `next_deadline()` is due
#   _join / _leave / _fail / _gone(node, epoch)
#                          a node's timers      -> NodeJoined / NodeDraining / NodeLost
#   _cancel(task_id)       a replayed client's cancellation -> TaskCancelled
#   _warmup_ends           the measurement window opens (no event)
# (an item kind without a subject has None and 0). It returns the core event, or None
# when the item is stale or only bookkeeping. `step` is: take the earliest item, call
# its handler, let the recorder see the event (recorder.py), hand it to
# `Scheduler.handle(event, now)`, and carry out the decisions (carry.py: a handler
# per decision type; an Assign schedules the node's `_finish`, a WakeAt an `_on_tick`).
# Stale items (a result for a run that was interrupted, a timer from a node's
# earlier session) are recognised by the stamp (`run`, `epoch`) and skipped before
# they reach the core, so the core only ever hears what a real network would tell it.
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
# Speed (`python -m benchmarks --only sim`). `step` and the handlers are the readable
# definition, and every run without verification goes through them for everything
# but its two commonest items. Those (a task's arrival, a node's result) and their
# commonest decisions (Assign, Complete) are what every task of every benchmark row
# costs, so `run_fast` has them inlined: the statements of `step`, `_arrive`,
# `_finish`, `StatsRecorder.record_event`, `CarryOut.assign` / `complete` and
# `StatsRecorder.record_completed`, in the same order, with the state they touch in
# locals. Any other item is `step`'s, any other decision its handler's, and a run
# with verification (adversary.py, whose handlers wrap these) is `step`'s throughout.
# tests/sim/test_runs.py checks that both loops give byte-identical runs and
# journals. The row that justifies it: "M/M/c c=10,000" (ours vs SimPy), where a
# task is one arrival and one result and nothing else; callgrind instructions a task
# there (PYTHONHASHSEED=0, the task count's difference over 30,000 tasks): `step` for
# every item 144,150, with `run_fast` 135,943 (-5.7%; 9 Python calls a task fewer:
# two steps, _arrive, _finish, the report's partial and its call, assign, complete,
# record_completed), with the recorder's in-system integral in its locals 134,506
# and 135,246 in two runs (these counts vary by about 0.5% from run to run; opcodes
# a task, sys.settrace: 1,965 -> 1,809 -> 1,789). The recorder's other numbers in
# locals as well measured no better (135,211), so they stay attributes.
from __future__ import annotations

import gc
import itertools
import math
import time
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, Callable, Iterator

import attrs
import numpy as np

from engine.core import (
    MODELS, Assign, Complete, Event, NodeDraining, NodeJoined, NodeLost, Scheduler,
    SchedulerConfig, TaskCancelled, TaskFinished, TaskSpec, TaskSubmitted, Tick, Usage,
    VerifyMode, openai_cost, work_units,
)
from engine.core.journal import JournalEntry, JournalHeader

from .adversary import AdversaryModel
from .carry import CarryOut
from .fleet import LOAD_SECONDS, SimNode, SimTask, build_fleet, gpu_names
from .recorder import StatsRecorder
from .scenario import Scenario, Workload
from .workload import Distribution, Recorded, TraceReplay, lognormal_noise

PROGRESS_EVERY = 1 << 14

Progress = Callable[[float], None]  # called with the fraction of `duration` done
# a heap item's handler, called with the item's (subject, stamp) and the time
Item = Callable[[Any, int, float], 'Event | None']
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
        self.heap: list[tuple[float, int, Item, Any, int]] = []
        self.next_seq = itertools.count().__next__
        # (time, workload index, stream, its next task), one per open stream
        self.arrivals: list[tuple[float, int, Iterator[Arrival], Arrival]] = []
        self.stop_at = scenario.duration + scenario.drain_limit
        self.now = 0.0
        self.events = 0  # handed to the core
        self.progress: Progress | None = None
        self.tick = Tick()
        self.handlers = self.carry.handlers
        self.finish: Item = self._finish  # a node's report
        self.adversary: AdversaryModel | None = None
        if scenario.verification is not None:  # adversary.py
            self.adversary = AdversaryModel(
                scenario.verification, self.carry.nodes, self.tasks, seed,
                lambda spec, parent, now: SimTask(spec, now, spec.work, -1.0, parent.noise,
                                                  False, now),
                self.carry.release, self.gone)
            self.carry.handlers = self.handlers = self.adversary.handlers(self.carry.handlers)
            self.finish = self.adversary.finish

    def push(self, when: float, handler: Item, subject: Any = None, stamp: int = 0) -> None:
        if when == math.inf:
            return  # never happens (no failures or churn configured)
        heappush(self.heap, (when, self.next_seq(), handler, subject, stamp))

    def run(self, progress: Progress | None, fast: bool = True) -> RunResult:
        """The whole run. `fast=False` takes every item through `step` (the same
        run: see the module comment, "Speed")."""
        # The loop makes no reference cycles; the cyclic collector would only walk
        # the whole fleet again and again (~4% of the run). Restored on the way out.
        collecting = gc.isenabled()
        gc.disable()
        try:
            started = time.perf_counter()
            self.progress = progress
            self.start()
            if fast and self.adversary is None:
                self.run_fast()
            else:
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
            self.push(node.join_at, self._join, node, node.epoch)
            for when, what in node.script:  # a journal's node: lost or drained then
                self.push(when, self._fail if what == "lost" else self._leave, node,
                          node.epoch)
        for workload in self.scenario.workloads:
            if isinstance(workload.arrival, Recorded):
                for when, task_id in workload.arrival.cancellations:
                    self.push(when, self._cancel, task_id)
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
        handler: Item
        if arrivals and (not heap or arrivals[0][0] < heap[0][0]):
            now, handler, subject, stamp = arrivals[0][0], self._arrive, None, 0
        elif heap:
            now, _, handler, subject, stamp = heappop(heap)
        else:
            return False
        if now > self.stop_at:
            self.now = self.stop_at
            return False
        self.now = now
        event = handler(subject, stamp, now)
        if event is None:
            return True
        self.stats.record_event(event, now)
        self.events += 1
        decisions = self.scheduler.handle(event, now)
        if self.log is not None:
            self.log.append(LogEntry(now, event, tuple(decisions)))
        self.carry.carry_out(decisions, now)
        return self.going(now)

    def going(self, now: float) -> bool:
        """After an event at `now`: False when the run is over (every workload is
        exhausted and every task has ended); tells the progress callback."""
        if self.stats.in_system == 0 and not self.arrivals:
            return False
        if self.progress is not None and self.events % PROGRESS_EVERY == 0:
            self.progress(min(1.0, now / self.scenario.duration))
        return True

    def run_fast(self) -> None:
        """`while self.step(): pass` with the commonest items and decisions inlined
        (the module comment's "Speed"): the same statements in the same order, so
        the same run. Only for a run without verification."""
        heap, arrivals, stats, carry = self.heap, self.arrivals, self.stats, self.carry
        tasks, nodes, handlers = carry.tasks, carry.nodes, carry.handlers
        handle, log, step, finish = self.scheduler.handle, self.log, self.step, self._finish
        next_seq, gone, progress = self.next_seq, self.gone, self.progress
        warmup, duration, stop_at = self.scenario.warmup, self.scenario.duration, self.stop_at
        busy = stats.busy
        busy_starts, busy_ends = busy.starts.append, busy.ends.append
        busy_gpus, busy_weights = busy.category.append, busy.weight.append
        latencies, waits = stats.latency.append, stats.wait.append
        priorities = stats.priority.append
        now, events = self.now, self.events
        # The recorder's integral of the tasks in the system (read and written at
        # every event) lives in locals, written back around any call that may use it
        # (`step`, a decision's handler) and at the end.
        in_system, area, area_since = stats.in_system, stats.area, stats.area_since
        while True:
            if arrivals and (not heap or arrivals[0][0] < heap[0][0]):
                # _arrive
                now, order, stream, (_, spec, work, service, noise) = arrivals[0]
                if now > stop_at:
                    now = stop_at
                    break
                following = next(stream, None)
                if following is None:
                    heappop(arrivals)
                else:
                    heapreplace(arrivals, (following[0], order, stream, following))
                tasks[spec.task_id] = SimTask(spec, now, work, service, noise,
                                              warmup <= now < duration, now)
                event: Event = TaskSubmitted(spec)
                # stats.record_event(event, now) for a TaskSubmitted
                area += in_system * (now - area_since)
                area_since = now
                stats.submitted += 1
                in_system += 1
                if now >= warmup:
                    stats.arrivals += 1
            elif heap and heap[0][2] is finish:
                # _finish
                now, _, _, task, run = heappop(heap)
                if now > stop_at:
                    now = stop_at
                    break
                node = task.node
                if node is None or task.run != run:
                    continue
                spec = task.spec
                event = TaskFinished(spec.task_id, node.node_id, Usage(
                    task.service_seconds, spec.output_tokens, spec.prompt_tokens,
                    spec.steps, spec.audio_seconds))
                # stats.record_event(event, now) for any other event
                area += in_system * (now - area_since)
                area_since = now
            else:  # any other item, and the end
                self.now, self.events = now, events
                stats.in_system, stats.area, stats.area_since = in_system, area, area_since
                if not step():
                    return
                now, events = self.now, self.events
                in_system, area, area_since = stats.in_system, stats.area, stats.area_since
                continue
            events += 1
            decisions = handle(event, now)
            if log is not None:
                log.append(LogEntry(now, event, tuple(decisions)))
            d: Any  # Assign or Complete where it is read below
            for d in decisions:
                kind = type(d)
                if kind is Assign:
                    # carry.assign(d, now), then self.report(...)
                    task, node = tasks[d.task_id], nodes[d.node_id]
                    task.waited += now - task.queued_since
                    task.run += 1
                    task.node = node
                    node.running += 1
                    service = task.service
                    if service < 0:
                        service = task.work / node.rates[d.model] * task.noise
                    task.service_seconds = service
                    half_trip = node.latency / 2.0
                    task.busy_start = start = now + half_trip
                    if d.cold:
                        service += LOAD_SECONDS[d.model]
                    task.busy_end = end = start + service
                    heappush(heap, (end + half_trip, next_seq(), finish, task, task.run))
                elif kind is Complete:
                    # carry.complete(d, now): carry.release, then
                    # stats.record_completed (its _busy and _left)
                    task = tasks.pop(d.task_id)
                    node = task.node
                    if node is not None:
                        node.running -= 1
                        task.node = None
                        if node.leaving and node.running == 0:
                            gone(node, now)
                        start, end = task.busy_start, task.busy_end
                        if now < end:
                            end = now if now > start else start
                        busy_starts(start)
                        busy_ends(end)
                        busy_gpus(node.gpu_index)
                        busy_weights(1)
                    stats.completed += 1
                    in_system -= 1
                    if now >= warmup:
                        since = task.submitted
                        stats.sojourn += now - (warmup if warmup > since else since)
                    if task.measured:
                        spec = task.spec
                        latencies(now - task.submitted)
                        waits(task.waited)
                        priorities(spec.priority)
                        stats.cost += d.cost
                        stats.openai += openai_cost(spec.model, spec.prompt_tokens,
                                                    spec.output_tokens, spec.steps,
                                                    spec.audio_seconds)
                else:
                    stats.in_system, stats.area, stats.area_since = in_system, area, area_since
                    handlers[kind](d, now)
                    in_system, area, area_since = stats.in_system, stats.area, stats.area_since
            # self.going(now)
            if in_system == 0 and not arrivals:
                break
            if progress is not None and events % PROGRESS_EVERY == 0:
                progress(min(1.0, now / duration))
        self.now, self.events = now, events
        stats.in_system, stats.area, stats.area_since = in_system, area, area_since

    # ---- what the carry-out schedules (carry.Timers) -----------------------------

    def report(self, when: float, task: SimTask, run: int) -> None:
        heappush(self.heap, (when, self.next_seq(), self.finish, task, run))

    def wake(self, when: float) -> None:
        heappush(self.heap, (when, self.next_seq(), self._on_tick, None, 0))

    def gone(self, node: SimNode, now: float) -> None:
        self.push(now, self._gone, node, node.epoch)

    # ---- the item handlers: the core event an item stands for, or None ------------

    def _arrive(self, _subject: Any, _stamp: int, now: float) -> Event:
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

    @staticmethod
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

    def _on_tick(self, _subject: Any, _stamp: int, now: float) -> Event | None:
        return self.tick if now >= self.scheduler.next_deadline() else None

    def _warmup_ends(self, _subject: Any, _stamp: int, now: float) -> None:
        self.stats.warmup_ends(now)

    def _cancel(self, task_id: str, _stamp: int, now: float) -> Event | None:
        """A replayed client's cancellation, unless the task has ended in this run."""
        return TaskCancelled(task_id) if task_id in self.tasks else None

    # Node timers (failures, churn, a journal's script): stale when set in an
    # earlier session of the node.

    def _join(self, node: SimNode, epoch: int, now: float) -> Event | None:
        if epoch != node.epoch:
            return None
        spec = node.spec if epoch == 0 else node.rejoin_spec()
        node.online, node.leaving, node.online_since = True, False, now
        self.push(now + node.time_to_failure(), self._fail, node, epoch)
        self.push(now + node.time_to_leave(), self._leave, node, epoch)
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
        self.push(now + away, self._join, node, node.epoch)

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
