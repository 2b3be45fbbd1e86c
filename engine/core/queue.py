# The waiting room: one queue per model, ordered by priority with aging.
#
# Theory: every task gets a *virtual arrival time* = real arrival - head start,
# where the head start depends on its priority (standard 0 s, high 30 s, critical
# 120 s by default). Queues serve the smallest virtual arrival time first. So a high
# task jumps ahead of standard tasks that arrived up to 30 s before it, but never
# ahead of one that has waited longer than that: aging is built into the key and
# nothing starves. The bound: a task is never overtaken by a task of the same model
# that arrived more than `head_start[its priority] - head_start[own priority]`
# seconds after it (at most the largest head start).
#
# A task that comes back (its node was lost, a retryable failure) keeps its key, so
# it goes back to the front it had earned.
#
# Rules: pure; removal is lazy (a removed task's entry stays in the heap and is
# skipped when it reaches the top), so every operation is O(log n).
from __future__ import annotations

import heapq
from typing import Mapping

import attrs

from .events import Priority

DEFAULT_HEAD_START: Mapping[Priority, float] = {
    Priority.STANDARD: 0.0,
    Priority.HIGH: 30.0,
    Priority.CRITICAL: 120.0,
}


@attrs.define
class ModelQueue:
    """Queued task ids of one model, smallest key first; removal is lazy."""

    _heap: list[tuple[float, int, str]] = attrs.field(factory=list)
    _live: dict[str, tuple[float, int]] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self._live)

    def push(self, task_id: str, key: float, seq: int) -> None:
        self._live[task_id] = (key, seq)
        heapq.heappush(self._heap, (key, seq, task_id))

    def remove(self, task_id: str) -> None:
        del self._live[task_id]
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._live):
            self._heap = [(k, s, t) for t, (k, s) in self._live.items()]
            heapq.heapify(self._heap)

    def peek(self) -> str | None:
        heap, live = self._heap, self._live
        while heap:  # drop stale entries (removed tasks) from the top
            key, seq, task_id = heap[0]
            if live.get(task_id) == (key, seq):
                return task_id
            heapq.heappop(heap)
        return None

    def pop_peeked(self) -> str:
        """Pop the head that `peek()` has just returned (peek settled it: no stale
        entry can be on top, so this skips the settling pass)."""
        _, _, task_id = heapq.heappop(self._heap)
        del self._live[task_id]
        return task_id

