# The statistics recorder: what one run counts, sums and keeps, and its summary.
#
# Theory (the formulas are metrics.py's; this is where the loop feeds them).
# - Counts: every submitted task ends exactly once, as completed, failed, expired,
#   cancelled or rejected, or is still unfinished when the run stops; a rejected task
#   is taken back out of `submitted` (it never entered the system). Requeues are
#   counted as they happen.
# - Per completed task submitted in the measurement window [warmup, duration]
#   (`SimTask.measured`): its end-to-end latency, its total queue wait and its
#   priority, in compact arrays; its price and its reference (OpenAI) cost are summed.
# - Little's law: `in_system` is the number of tasks submitted and not ended; its time
#   integral `area` is advanced by `record_event` once per event handed to the core
#   (before the core sees it), so the sum runs event by event, in one fixed order, and
#   a run is byte-identical to itself. `arrivals` counts the tasks present in the
#   window (there at warmup, or submitted after it) and `sojourn` their time in the
#   system within it.
# - Utilization: busy GPU-slot intervals (a run's cold load + service, cut short
#   where it was interrupted) and online slot intervals (a node's session times its
#   slots), integrated over the window at the end.
#
# Rules: the recorder only records; it never decides what happens to a task. Its
# state is plain numbers, arrays and the two interval sets. The loop's fast path
# (loop.py, "Speed") has `record_event` and `record_completed` inlined: a change
# here is a change there.
from __future__ import annotations

from array import array
from typing import Any, Iterable, Sequence

import numpy as np

from engine.core import Event, TaskSubmitted, openai_cost

from .fleet import SimNode, SimTask
from .metrics import PRIORITY_LABELS, Intervals, little_check, summary

UTILIZATION_BINS = 200
OUTCOMES = ("submitted", "completed", "failed", "expired", "requeued", "rejected",
            "cancelled")  # the order of the "tasks" counts in the JSON, then "unfinished"


class StatsRecorder:
    """The statistics of one run. `gpu_names` is what `SimNode.gpu_index` indexes,
    `gpus` the indices present in the fleet, `priorities` the priority levels the
    scenario's tasks can have (every one gets a `by_priority` entry)."""

    def __init__(self, warmup: float, duration: float, gpu_names: Sequence[str],
                 gpus: Iterable[int], priorities: Iterable[int]) -> None:
        self.warmup, self.duration = warmup, duration
        self.gpu_names = tuple(gpu_names)
        self.gpus = sorted(set(gpus))
        self.priorities = sorted(set(priorities))
        self.submitted = self.completed = self.failed = self.expired = 0
        self.requeued = self.rejected = self.cancelled = 0
        self.latency, self.wait, self.priority = array("d"), array("d"), array("B")
        self.cost = self.openai = 0.0
        self.in_system = 0
        self.area, self.area_since = 0.0, 0.0  # integral of in_system dt up to area_since
        self.arrivals, self.sojourn = 0, 0.0  # Little's lambda and W sides, see above
        self.busy, self.online = Intervals(), Intervals()

    # ---- as the run goes (the loop and the carry-out call these) ----------------

    def record_event(self, event: Event, now: float) -> None:
        """Every event, just before the core handles it: integrate the number of
        tasks in the system up to `now`; a submitted task enters the system."""
        self.area += self.in_system * (now - self.area_since)
        self.area_since = now
        if type(event) is TaskSubmitted:
            self.submitted += 1
            self.in_system += 1
            if now >= self.warmup:
                self.arrivals += 1

    def warmup_ends(self, now: float) -> None:
        """The measurement window opens: the tasks present now count from now on."""
        self.area, self.area_since = 0.0, now
        self.arrivals = self.in_system

    def record_rejected(self, now: float) -> None:
        """A submitted task turned away: it never was in the system."""
        self.rejected += 1
        self.submitted -= 1
        self.in_system -= 1
        if now >= self.warmup:
            self.arrivals -= 1

    def record_online(self, node: SimNode, until: float) -> None:
        """`node`'s session, from `online_since` to `until`, times its slots."""
        self.online.add(node.online_since, until, node.gpu_index, node.spec.slots)

    # A task's run stops (it was requeued or it ended) at `now`; `node` is where it
    # ran, or None when it was not running: the run's GPU time is busy time.

    def record_requeued(self, task: SimTask, node: SimNode | None, now: float) -> None:
        self.requeued += 1
        self._busy(task, node, now)

    def record_completed(self, task: SimTask, node: SimNode | None, now: float,
                         cost: float) -> None:
        self.completed += 1
        self._busy(task, node, now)
        self._left(task, now)
        if task.measured:
            spec = task.spec
            self.latency.append(now - task.submitted)
            self.wait.append(task.waited)
            self.priority.append(spec.priority)
            self.cost += cost
            self.openai += openai_cost(spec.model, spec.prompt_tokens, spec.output_tokens,
                                       spec.steps, spec.audio_seconds)

    def record_failed(self, task: SimTask, node: SimNode | None, now: float) -> None:
        self.failed += 1
        self._busy(task, node, now)
        self._left(task, now)

    def record_expired(self, task: SimTask, node: SimNode | None, now: float) -> None:
        self.expired += 1
        self._busy(task, node, now)
        self._left(task, now)

    def record_cancelled(self, task: SimTask, node: SimNode | None, now: float) -> None:
        self.cancelled += 1
        self._busy(task, node, now)
        self._left(task, now)

    def _busy(self, task: SimTask, node: SimNode | None, now: float) -> None:
        """The run's GPU time, cut at `now` when it was interrupted: [start,
        max(start, min(now, end))]."""
        if node is not None:
            start, end = task.busy_start, task.busy_end
            if now < end:
                end = now if now > start else start
            self.busy.add(start, end, node.gpu_index)

    def _left(self, task: SimTask, now: float) -> None:
        """`task` leaves the system: Little's W side."""
        self.in_system -= 1
        if now >= self.warmup:
            since, warmup = task.submitted, self.warmup
            self.sojourn += now - (warmup if warmup > since else since)

    # ---- at the end ---------------------------------------------------------------

    def close(self, now: float, unfinished: Iterable[SimTask],
              nodes: Iterable[SimNode]) -> None:
        """The run stops at `now`: integrate up to it, and count what is still going
        (unfinished tasks' time so far, running tasks' GPU time, online sessions)."""
        self.area += self.in_system * (now - self.area_since)
        warmup = self.warmup
        for task in unfinished:
            self.sojourn += now - max(task.submitted, warmup)
            if task.node is not None:
                start = task.busy_start
                self.busy.add(start, max(start, min(now, task.busy_end)),
                              task.node.gpu_index)
        for node in nodes:
            if node.online:
                self.record_online(node, now)

    def report(self, end: float, unfinished: int) -> dict[str, Any]:
        """The statistics part of the JSON run (sim/README.md, "Output"): tasks,
        queue_wait, latency, by_priority, utilization, cost, little; `end` is when the
        run stopped, after `close`."""
        counts = {name: getattr(self, name) for name in OUTCOMES}
        counts["unfinished"] = unfinished
        latency, cost, openai = self.latency, self.cost, self.openai
        return {
            "tasks": counts,
            "queue_wait": summary(np.frombuffer(self.wait, dtype=np.float64)),
            "latency": summary(np.frombuffer(latency, dtype=np.float64)),
            "by_priority": self.by_priority(),
            "utilization": self.utilization(end),
            "cost": {
                "total": cost, "per_task_mean": cost / len(latency) if latency else 0.0,
                "openai_equivalent": openai,
                "savings_pct": 100.0 * (1.0 - cost / openai) if openai > 0 else 0.0,
            },
            "little": little_check(self.area, end - self.warmup, self.arrivals,
                                   self.sojourn),
        }

    def latencies(self) -> np.ndarray:
        """End-to-end seconds of the measured completed tasks (a copy)."""
        return np.frombuffer(self.latency, dtype=np.float64).copy()

    def by_priority(self) -> dict[str, dict[str, Any]]:
        latencies = np.frombuffer(self.latency, dtype=np.float64)
        waits = np.frombuffer(self.wait, dtype=np.float64)
        priorities = np.frombuffer(self.priority, dtype=np.uint8)
        out = {}
        for level in self.priorities:
            mask = priorities == level
            out[PRIORITY_LABELS[level]] = {
                "completed": int(mask.sum()),
                "queue_wait": summary(waits[mask]),
                "latency": summary(latencies[mask]),
            }
        return out

    def utilization(self, end: float) -> dict[str, Any]:
        """Busy over online slot-seconds in [warmup, duration] (the arrival window)."""
        window = np.array([self.warmup, max(self.warmup, min(self.duration, end))])

        def ratio(category: int | None) -> float:
            online = float(self.online.integral(window, category)[-1])
            return float(self.busy.integral(window, category)[-1]) / online if online else 0.0

        return {"overall": ratio(None),
                "by_gpu": {self.gpu_names[g]: ratio(g) for g in self.gpus}}

    def utilization_series(self, end: float) -> tuple[np.ndarray, np.ndarray]:
        """(bin middles, busy over online) in UTILIZATION_BINS bins over [0, end]."""
        edges = np.linspace(0.0, max(end, 1e-9), UTILIZATION_BINS + 1)
        busy = np.diff(self.busy.integral(edges))
        online = np.diff(self.online.integral(edges))
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(online > 0, busy / online, 0.0)
        return (edges[:-1] + edges[1:]) / 2.0, share
