# What the dashboard watches: which nodes were seen (so a node that left stays
# listed as `offline`), the last hour's task activity, and the queue per model and
# priority. Sans-IO values fed by the services (time comes in as arguments);
# dashboard.py serves them.
#
# Theory of operation:
#   - NodeRoster compares each coordinator snapshot with the previous one: a node
#     id that appears joined, one that disappears left. A node that left is kept
#     (its last snapshot and when it left) for KEEP_OFFLINE_SECONDS, then forgotten;
#     one that comes back is online again. `observe` returns the joins and leaves
#     (the coordinator logs them).
#   - Activity is a transition listener (transitions.py): it counts the open tasks
#     per (model, priority, state), and, for each minute of the last hour, the
#     tasks that ended and a bounded sample of the completed ones' turnarounds,
#     from which `minutes` builds per-minute throughput and latency percentiles; it
#     keeps the latest tasks for `recent`. Memory is bounded by the window, never
#     by the traffic.
#
# Rules:
# - Status is a registry: NODE_STATUSES names what a listed node may be. A
#   connected node is `online` (taking work), `draining` (leaving: it finishes its
#   tasks and takes no new one) or `quarantined` (it failed verification and takes
#   no work), from the snapshot (`connected_status`); `offline` comes from the roster.
from __future__ import annotations

import collections
import math
import random
from typing import Any

import attrs

from engine.core import NetworkSnapshot, NodeSnapshot

from .transitions import TaskTransition

KEEP_OFFLINE_SECONDS = 3600.0  # a node that left is listed as offline this long
WINDOW_SECONDS = 3600.0  # the dashboard's charts: the last hour
SAMPLES_PER_MINUTE = 500  # completed tasks' turnarounds kept a minute for the percentiles
RECENT_TASKS = 20
NODE_STATUSES = ("online", "draining", "quarantined", "offline")


def connected_status(node: NodeSnapshot) -> str:
    """The status of a connected node (one of NODE_STATUSES but `offline`)."""
    return "quarantined" if node.quarantined else "draining" if node.draining else "online"


@attrs.frozen
class GoneNode:
    node: NodeSnapshot  # as last seen
    left_at: float


class NodeRoster:
    def __init__(self, keep_seconds: float = KEEP_OFFLINE_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self._online: dict[str, NodeSnapshot] = {}
        self._gone: dict[str, GoneNode] = {}

    def observe(self, snapshot: NetworkSnapshot, now: float
                ) -> tuple[list[NodeSnapshot], list[NodeSnapshot]]:
        """Take in the network as it is now: (nodes that joined, nodes that left)
        since the last call."""
        current = {node.node_id: node for node in snapshot.nodes}
        joined = [node for node_id, node in current.items() if node_id not in self._online]
        left = [node for node_id, node in self._online.items() if node_id not in current]
        for node in left:
            self._gone[node.node_id] = GoneNode(node, now)
        for node in joined:
            self._gone.pop(node.node_id, None)
        self._online = current
        for node_id in [k for k, g in self._gone.items() if now - g.left_at > self.keep_seconds]:
            del self._gone[node_id]
        return joined, left

    def offline(self) -> list[GoneNode]:
        """Nodes that left in the last `keep_seconds`, most recent first."""
        return sorted(self._gone.values(), key=lambda g: -g.left_at)


@attrs.frozen
class EndedTask:
    task_id: str
    model: str
    priority: str
    status: str
    at: float
    node_id: str | None
    node_gpu: str | None
    node_location: str | None
    seconds: float
    cost: float
    openai_cost: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@attrs.define
class Minute:
    """One minute of ended tasks: counts, and a bounded sample of the completed
    tasks' turnarounds (for the percentiles)."""

    index: int  # floor(time / 60)
    ended: int = 0
    completed: int = 0
    samples: list[float] = attrs.field(factory=list)


class Activity:
    """A transition listener: open tasks per model, priority and state; the last
    hour's ended tasks, minute by minute; the most recent ones.

    Memory is bounded by the window, never by the traffic: at most one `Minute` a
    minute of the window, each holding at most SAMPLES_PER_MINUTE turnarounds
    (reservoir-sampled with a seeded generator, so a busy minute's percentiles are
    an unbiased estimate), and RECENT_TASKS tasks. A dashboard read is O(window
    minutes x samples), whatever the rate of tasks."""

    def __init__(self, window_seconds: float = WINDOW_SECONDS,
                 samples_per_minute: int = SAMPLES_PER_MINUTE) -> None:
        self.window_seconds = window_seconds
        self.samples_per_minute = samples_per_minute
        self.by_minute: collections.deque[Minute] = collections.deque()
        self.latest: collections.deque[EndedTask] = collections.deque(maxlen=RECENT_TASKS)
        self._state: dict[str, tuple[str, str, str]] = {}  # task -> (model, priority, state)
        self.open_counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._rng = random.Random(0)

    def __call__(self, t: TaskTransition) -> None:
        before = self._state.pop(t.task_id, None)
        if before is not None:
            self.open_counts[before] -= 1
            if self.open_counts[before] <= 0:
                del self.open_counts[before]
        if t.final:
            task = EndedTask(
                t.task_id, t.model, t.priority, t.status, t.at, t.node_id, t.node_gpu,
                t.node_location, t.turnaround_seconds or 0.0, t.cost or 0.0,
                t.openai_cost or 0.0)
            self.latest.append(task)
            self._count(task)
        else:
            key = (t.model, t.priority, t.status)
            self._state[t.task_id] = key
            self.open_counts[key] += 1

    def _count(self, task: EndedTask) -> None:
        index = int(task.at // 60)
        if not self.by_minute or self.by_minute[-1].index < index:
            self.by_minute.append(Minute(index))
        minute = self.by_minute[-1]  # (a late transition counts in the current minute)
        minute.ended += 1
        if task.status == "completed":
            minute.completed += 1
            if len(minute.samples) < self.samples_per_minute:
                minute.samples.append(task.seconds)
            else:  # reservoir sampling: each completed task kept with equal chance
                slot = self._rng.randrange(minute.completed)
                if slot < self.samples_per_minute:
                    minute.samples[slot] = task.seconds

    def prune(self, now: float) -> None:
        oldest = int((now - self.window_seconds) // 60)
        while self.by_minute and self.by_minute[0].index <= oldest:
            self.by_minute.popleft()

    def queue(self) -> dict[str, dict[str, int]]:
        """model -> priority -> tasks queued."""
        out: dict[str, dict[str, int]] = {}
        for (model, priority, state), count in sorted(self.open_counts.items()):
            if state == "queued" and count > 0:
                out.setdefault(model, {})[priority] = count
        return out

    def minutes(self, now: float) -> list[dict[str, Any]]:
        """The last hour, one entry a minute, oldest first: tasks ended, completed,
        and the completed tasks' turnaround percentiles (seconds; null without any)."""
        self.prune(now)
        slots = int(self.window_seconds // 60)
        start = now - slots * 60
        ended: list[int] = [0] * slots
        completed: list[int] = [0] * slots
        latencies: list[list[float]] = [[] for _ in range(slots)]
        for minute in self.by_minute:
            index = min(slots - 1, max(0, int((minute.index * 60 + 30 - start) // 60)))
            ended[index] += minute.ended
            completed[index] += minute.completed
            latencies[index].extend(minute.samples)
        out = []
        for index in range(slots):
            values = sorted(latencies[index])
            out.append({
                "t": start + 60 * (index + 1),
                "ended": ended[index],
                "completed": completed[index],
                "p50": percentile(values, 0.5) if values else None,
                "p95": percentile(values, 0.95) if values else None,
                "p99": percentile(values, 0.99) if values else None,
            })
        return out

    def recent(self, count: int = RECENT_TASKS) -> list[EndedTask]:
        return list(self.latest)[-count:][::-1]

    def hour_totals(self) -> dict[str, Any]:
        samples = sorted(v for minute in self.by_minute for v in minute.samples)
        return {
            "ended": sum(minute.ended for minute in self.by_minute),
            "completed": sum(minute.completed for minute in self.by_minute),
            "p50": percentile(samples, 0.5) if samples else None,
            "p95": percentile(samples, 0.95) if samples else None,
            "p99": percentile(samples, 0.99) if samples else None,
        }


WATCH_KEY = "neurogrid.watch"  # app.extensions key
WATCH_SECONDS = 1.0  # how often the watcher looks at the network


class NetworkWatch:
    """The roster and the activity of one app (dashboard.py and the network
    status route read them). Joins and leaves are logged by the coordinator."""

    def __init__(self) -> None:
        self.roster = NodeRoster()
        self.activity = Activity()

    def look(self, snapshot: NetworkSnapshot, now: float) -> list[GoneNode]:
        self.roster.observe(snapshot, now)
        return self.roster.offline()


__all__ = ["Activity", "EndedTask", "Minute", "GoneNode", "KEEP_OFFLINE_SECONDS", "NODE_STATUSES",
           "NetworkWatch", "NodeRoster", "WATCH_KEY", "WATCH_SECONDS", "WINDOW_SECONDS",
           "connected_status", "percentile"]
