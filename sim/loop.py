# The event loop: virtual time, a heap, the real Scheduler.
#
# Theory of operation. Everything that will happen (but arrivals, see below) is an
# item on one heap of
#     (time, seq, kind, a, b)
# where `seq` (a counter) breaks ties in the order items were scheduled, so equal
# times never compare the payload and the run is deterministic. `step` is: pop the
# earliest item, turn it into one core event (an arrival -> TaskSubmitted, a result
# -> TaskFinished, a failure -> NodeLost, a wake-up -> Tick, ...), call
# `Scheduler.handle(event, now)`, and carry out the decisions:
#   Assign   -> the simulated node will report TaskFinished after latency, cold load
#               and service (fleet.py); a FINISH item is scheduled;
#   Complete / Expire / Fail / Reject / Cancelled -> the task ends; statistics are
#               recorded (Cancel, the order to the node, needs nothing more here);
#   Requeue  -> the task waits again; its pending FINISH becomes stale;
#   WakeAt   -> a TICK item at that time; when it pops, a Tick is fed only if
#               `next_deadline()` is due (later WakeAts supersede earlier ones).
# Stale items (a FINISH for a run that was interrupted, a failure timer from a node's
# earlier session) are recognised by a counter stamped in the item and skipped
# before they reach the core, so the core only ever hears what a real network
# would tell it.
#
# A replayed journal (replay.py) adds two things: its nodes join at their recorded
# times and carry a script (lost or draining at a recorded time: FAIL / LEAVE items
# pushed at the start), and its clients' cancellations are CANCEL items that become
# TaskCancelled when the task has not ended yet.
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
# policy sees the same tasks. The hot loop uses locals and tuples only: no per-event
# objects beyond the core's own events.
from __future__ import annotations

import gc
import heapq
import itertools
import math
import time
from array import array
from typing import Callable, Iterator

import attrs
import numpy as np

from engine.core import (
    MODELS, Assign, Cancel, Cancelled, Complete, Event, Expire, Fail,
    NodeDraining, NodeJoined, NodeLost, Reject, Requeue, Scheduler, SchedulerConfig,
    TaskCancelled, TaskFinished, TaskSpec, TaskSubmitted, Tick, Usage, WakeAt, openai_cost,
    work_units,
)
from engine.core.journal import JournalEntry, JournalHeader

from .fleet import LOAD_SECONDS, SimNode, SimTask, build_fleet, gpu_names
from .metrics import PRIORITY_LABELS, Intervals, little_check, summary
from .scenario import Scenario, Workload
from .workload import Distribution, Recorded, TraceReplay, lognormal_noise

# Item kinds, most frequent first.
FINISH, ARRIVAL, TICK, JOIN, FAIL, LEAVE, GONE, MARK, CANCEL = range(9)
UTILIZATION_BINS = 200
PROGRESS_EVERY = 1 << 14

Progress = Callable[[float], None]  # called with the fraction of `duration` done


LogEntry = JournalEntry  # one step of a recorded run: (time, event, decisions)


@attrs.frozen(eq=False)
class RunResult:
    summary: dict  # the JSON run: see sim/README.md, "Output"
    latencies: np.ndarray  # end-to-end seconds of the measured completed tasks
    utilization_series: tuple[np.ndarray, np.ndarray]  # (bin middles, utilization)
    log: tuple[LogEntry, ...] | None  # with record=True

    @property
    def policy(self) -> str:
        return self.summary["policy"]


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

    def sizes(dist: Distribution | None, default: float) -> Callable[[], float]:
        return (dist or Distribution.constant(default)).stream(size_gen).__next__

    zero = Distribution.constant(0)
    # Only the sizes that count for the model's work are drawn; the others are 0.
    text, image = model.work_unit == "token", model.work_unit == "step"
    draw_prompt = sizes(workload.prompt_tokens if text else zero, 0)
    draw_output = sizes(workload.output_tokens if text else zero,
                        model.default_output_tokens)
    draw_steps = sizes(workload.steps if image else zero, model.default_steps)
    speech = not (text or image)
    draw_audio = sizes(workload.audio_seconds if speech else zero,
                       model.default_audio_seconds)
    draw_service = (workload.service_time.stream(size_gen).__next__
                    if workload.service_time else None)
    draw_noise = lognormal_noise(scenario.service_noise, size_gen).__next__
    priority, relative_deadline = workload.priority, workload.deadline
    attempts = workload.max_attempts
    arrival = workload.arrival
    if isinstance(arrival, TraceReplay):
        rows: Iterator[tuple[float, int, int]] = arrival.rows(scenario.duration)
    else:
        rows = ((t, round(draw_prompt()), round(draw_output()))
                for t in arrival.times(times_gen, scenario.duration))
    for k, (t, prompt, output) in enumerate(rows):
        steps = round(draw_steps()) if image else 0
        audio = draw_audio() if speech else 0.0
        spec = TaskSpec(f"w{index}.{k}", name, priority, prompt, output, steps, audio,
                        t + relative_deadline, attempts)
        work = work_units(name, prompt, output, steps, audio)
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
        region_latency=dict(scenario.region_latency), max_queued=scenario.max_queued))


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
        self.heap: list[tuple] = []
        self.next_seq = itertools.count().__next__
        self.busy = Intervals()
        self.online = Intervals()

    def push(self, when: float, kind: int, a: object = None, b: object = None) -> None:
        if when == math.inf:
            return  # never happens (no failures or churn configured)
        heapq.heappush(self.heap, (when, self.next_seq(), kind, a, b))

    def run(self, progress: Progress | None) -> RunResult:
        # The loop makes no reference cycles; the cyclic collector would only walk
        # the whole fleet again and again (~4% of the run). Restored on the way out.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(progress)
        finally:
            if collecting:
                gc.enable()

    def _run(self, progress: Progress | None) -> RunResult:
        started = time.perf_counter()
        scenario = self.scenario
        for node in self.nodes:
            self.push(node.join_at, JOIN, node, node.epoch)
            for when, what in node.script:  # a journal's node: lost or drained then
                self.push(when, FAIL if what == "lost" else LEAVE, node, node.epoch)
        for workload in scenario.workloads:
            if isinstance(workload.arrival, Recorded):
                for when, task_id in workload.arrival.cancellations:
                    self.push(when, CANCEL, task_id)
        streams = [task_stream(w, i, scenario, self.seed)
                   for i, w in enumerate(scenario.workloads)]
        arrivals = []  # (time, workload index, stream, task), one per open stream
        for order, stream in enumerate(streams):
            first = next(stream, None)
            if first is not None:
                arrivals.append((first[0], order, stream, first))
        heapq.heapify(arrivals)
        replace = heapq.heapreplace
        if scenario.warmup > 0:
            self.push(scenario.warmup, MARK)

        # Hot-loop locals.
        heap, pop, heappush = self.heap, heapq.heappop, heapq.heappush
        handle, next_deadline = self.scheduler.handle, self.scheduler.next_deadline
        next_seq = self.next_seq
        log = self.log
        online_add = self.online.add
        # The busy intervals are appended inline (the hottest bookkeeping).
        busy_starts, busy_ends = self.busy.starts.append, self.busy.ends.append
        busy_gpus, busy_weights = self.busy.category.append, self.busy.weight.append
        warmup, duration = scenario.warmup, scenario.duration
        stop_at = duration + scenario.drain_limit
        tasks: dict[str, SimTask] = {}
        nodes = {node.node_id: node for node in self.nodes}
        latency, wait, priority_of = array("d"), array("d"), array("B")
        load_seconds, tick = LOAD_SECONDS, Tick()
        counts = dict.fromkeys(("submitted", "completed", "failed", "expired", "requeued",
                                "rejected", "cancelled"), 0)
        submitted = completed = requeued = events = 0
        cost = openai = 0.0
        in_system, area, area_since = 0, 0.0, 0.0
        little_arrivals, little_sojourn = 0, 0.0
        now = 0.0

        while True:
            if arrivals and (not heap or arrivals[0][0] < heap[0][0]):
                now, order, a, b = arrivals[0]
                kind = ARRIVAL
            elif heap:
                now, _, kind, a, b = pop(heap)
            else:
                break
            if now > stop_at:
                now = stop_at
                break
            if kind == FINISH:
                task = tasks.get(a)
                if task is None or task.run != b:
                    continue  # the run was interrupted (node lost, expired)
                spec = task.spec
                event = TaskFinished(a, task.node.node_id, Usage(  # type: ignore[union-attr]
                    task.service_seconds, spec.output_tokens, spec.prompt_tokens,
                    spec.steps, spec.audio_seconds))
            elif kind == ARRIVAL:
                _, spec, work, service, noise = b
                nxt = next(a, None)
                if nxt is None:
                    pop(arrivals)
                else:
                    replace(arrivals, (nxt[0], order, a, nxt))
                tasks[spec.task_id] = SimTask(spec, now, work, service, noise,
                                              warmup <= now < duration, now)
                event = TaskSubmitted(spec)
                submitted += 1
                area += in_system * (now - area_since)
                area_since = now
                in_system += 1
                if now >= warmup:
                    little_arrivals += 1
            elif kind == TICK:
                if now < next_deadline():
                    continue
                event = tick
            elif kind == MARK:  # warmup ends: tasks present now count from now on
                area, area_since = 0.0, now
                little_arrivals = in_system
                continue
            elif kind == CANCEL:  # a replayed client's cancellation
                if a not in tasks:
                    continue  # it has ended already in this run
                event = TaskCancelled(a)
            else:
                event = self._node_event(kind, a, b, now)
                if event is None:
                    continue

            if kind != ARRIVAL:
                area += in_system * (now - area_since)
                area_since = now
            events += 1
            decisions = handle(event, now)
            if log is not None:
                log.append(LogEntry(now, event, tuple(decisions)))
            for d in decisions:
                kind_d = type(d)
                if kind_d is Assign:
                    task = tasks[d.task_id]
                    node = nodes[d.node_id]
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
                        service += load_seconds[d.model]
                    task.busy_end = end = start + service
                    heappush(heap, (end + half_trip, next_seq(), FINISH, d.task_id, task.run))
                    continue
                if kind_d is WakeAt:
                    heappush(heap, (d.time, next_seq(), TICK, None, None))
                    continue
                if kind_d is Cancel:
                    continue  # the Cancelled that follows ends the task
                if kind_d is Reject:
                    del tasks[d.task_id]
                    counts["rejected"] += 1
                    submitted -= 1
                    in_system -= 1
                    if now >= warmup:
                        little_arrivals -= 1
                    continue
                task = tasks[d.task_id]
                node = task.node
                if node is not None:  # it was running: the node is done with it
                    start, end = task.busy_start, task.busy_end
                    busy_starts(start)
                    if now < end:  # interrupted: max(start, min(now, end)), inlined
                        end = now if now > start else start
                    busy_ends(end)
                    busy_gpus(node.gpu_index)
                    busy_weights(1)
                    node.running -= 1
                    task.node = None
                    if node.leaving and node.running == 0:
                        self.push(now, GONE, node, node.epoch)
                if kind_d is Requeue:
                    task.run += 1
                    task.queued_since = now
                    requeued += 1
                    continue
                del tasks[d.task_id]
                in_system -= 1
                if now >= warmup:
                    since = task.submitted
                    little_sojourn += now - (warmup if warmup > since else since)
                if kind_d is Complete:
                    completed += 1
                    if task.measured:
                        spec = task.spec
                        latency.append(now - task.submitted)
                        wait.append(task.waited)
                        priority_of.append(spec.priority)
                        cost += d.cost
                        openai += openai_cost(spec.model, spec.prompt_tokens,
                                              spec.output_tokens, spec.steps,
                                              spec.audio_seconds)
                elif kind_d is Expire:
                    counts["expired"] += 1
                elif kind_d is Fail:
                    counts["failed"] += 1
                elif kind_d is Cancelled:
                    counts["cancelled"] += 1
            if in_system == 0 and not arrivals:
                break
            if progress is not None and events % PROGRESS_EVERY == 0:
                progress(min(1.0, now / duration))

        area += in_system * (now - area_since)
        counts["submitted"], counts["completed"] = submitted, completed
        counts["requeued"] = requeued
        counts["unfinished"] = len(tasks)
        for task in tasks.values():
            little_sojourn += now - max(task.submitted, warmup)
            if task.node is not None:
                start = task.busy_start
                self.busy.add(start, max(start, min(now, task.busy_end)), task.node.gpu_index)
        for node in self.nodes:
            if node.online:
                online_add(node.online_since, now, node.gpu_index, node.spec.slots)
        run = {
            "scenario": scenario.name, "policy": self.policy, "pricing": self.pricing,
            "seed": self.seed, "tasks": counts,
            "queue_wait": summary(np.frombuffer(wait, dtype=np.float64)),
            "latency": summary(np.frombuffer(latency, dtype=np.float64)),
            "by_priority": self._by_priority(latency, wait, priority_of),
            "utilization": self._utilization(now),
            "cost": {
                "total": cost, "per_task_mean": cost / len(latency) if latency else 0.0,
                "openai_equivalent": openai,
                "savings_pct": 100.0 * (1.0 - cost / openai) if openai > 0 else 0.0,
            },
            "little": little_check(area, now - warmup, little_arrivals, little_sojourn),
            "events": events, "sim_seconds": now,
            "wall_seconds": time.perf_counter() - started,
        }
        if progress is not None:
            progress(1.0)
        log = tuple(self.log) if self.log is not None else None
        return RunResult(run, np.frombuffer(latency, dtype=np.float64).copy(),
                         self._utilization_series(now), log)

    # ---- node timers (failures, churn): rare, so a method, not the hot loop ----------

    def _node_event(self, kind: int, node: SimNode, epoch: int, now: float) -> Event | None:
        """The core event for a node timer, or None when the timer is stale."""
        if epoch != node.epoch:
            return None
        if kind == JOIN:
            spec = node.spec if epoch == 0 else node.rejoin_spec()
            node.online, node.leaving, node.online_since = True, False, now
            self.push(now + node.time_to_failure(), FAIL, node, epoch)
            self.push(now + node.time_to_leave(), LEAVE, node, epoch)
            return NodeJoined(spec)
        if kind == LEAVE:
            node.leaving = True
            if node.running == 0:
                self.push(now, GONE, node, epoch)
            return NodeDraining(node.node_id)
        # FAIL or GONE: the node goes offline and comes back later, cold.
        self.online.add(node.online_since, now, node.gpu_index, node.spec.slots)
        node.online = node.leaving = False
        node.epoch += 1
        away = node.time_to_repair() if kind == FAIL else node.time_away()
        self.push(now + away, JOIN, node, node.epoch)
        return NodeLost(node.node_id, "failure" if kind == FAIL else "left")

    # ---- statistics ---------------------------------------------------------------

    def _by_priority(self, latency: array, wait: array, priority_of: array) -> dict:
        latencies = np.frombuffer(latency, dtype=np.float64)
        waits = np.frombuffer(wait, dtype=np.float64)
        priorities = np.frombuffer(priority_of, dtype=np.uint8)
        present = sorted(set().union(*map(_priorities, self.scenario.workloads)))
        out = {}
        for level in present:
            mask = priorities == level
            out[PRIORITY_LABELS[level]] = {
                "completed": int(mask.sum()),
                "queue_wait": summary(waits[mask]),
                "latency": summary(latencies[mask]),
            }
        return out

    def _gpus(self) -> list[int]:
        return sorted({node.gpu_index for node in self.nodes})

    def _utilization(self, end: float) -> dict:
        """Busy over online slot-seconds in [warmup, duration] (the arrival window)."""
        window = np.array([self.scenario.warmup, max(self.scenario.warmup,
                                                    min(self.scenario.duration, end))])

        names = gpu_names(self.scenario)

        def ratio(category: int | None) -> float:
            online = float(self.online.integral(window, category)[-1])
            return float(self.busy.integral(window, category)[-1]) / online if online else 0.0

        return {"overall": ratio(None),
                "by_gpu": {names[g]: ratio(g) for g in self._gpus()}}

    def _utilization_series(self, end: float) -> tuple[np.ndarray, np.ndarray]:
        edges = np.linspace(0.0, max(end, 1e-9), UTILIZATION_BINS + 1)
        busy = np.diff(self.busy.integral(edges))
        online = np.diff(self.online.integral(edges))
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(online > 0, busy / online, 0.0)
        return (edges[:-1] + edges[1:]) / 2.0, share
