# The Scheduler's lifecycle steps (a base class of it): moving a task along the
# lifecycle table, taking it off its node, ending it, re-queueing it, losing a
# node, taking a run back from a faulty node; and the timers that drive some of
# them (task deadlines, node heartbeat timeouts, execution timeouts, the fault
# cooldown's releases).
#
# Theory of operation. A task changes state only through _move, which asserts the
# (from, to) pair is in TRANSITIONS (state.py); _end is the one way out (it frees
# the slot or the queue place, counts the final state in COUNTER_OF's counter and,
# without keep_finished, forgets the record), so each task ends exactly once.
# Timers are lazy heaps of (when, tag, id): an entry whose tag no longer matches
# (the task ended or runs again, the node left or rejoined, a heartbeat moved the
# expiry) is discarded when it reaches the top (_settle_*), never searched for.
# next_deadline settles the heaps and answers the earliest live entry, math.inf
# when there is none; _fire_timers (from Scheduler.handle) fires every entry due
# at `now`: deadlines, then heartbeat timeouts, cooldown releases, execution
# timeouts, each heap in its order.
#
# Complexity: each timer entry costs O(log n) to push and to pop (a heartbeat that
# moved a node's expiry replaces its entry when it reaches the top); a
# node lost is O(k log k) in the k tasks it ran; the other steps are O(1) plus the
# index refresh of one node (O(log n)).
#
# Rules: those of the Scheduler (no I/O, no clocks). The verification steps it uses
# (_job_failed, _held_expired) are verifying.py's: declared here for the type
# checker only, so that they never shadow the definitions in VerificationSteps,
# which comes after this class in the Scheduler's bases.
from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from .events import Decision, Drop, Expire, Fail, Requeue, TaskState
from .index import NodeIndex, NodeState
from .queue import ModelQueue
from .standing import Standing
from .state import COUNTER_OF, LIVE_STATES, TRANSITIONS, SchedulerConfig, TaskRecord
from .verification import Trust

Q, R = TaskState.QUEUED, TaskState.RUNNING


class LifecycleSteps:
    tasks: dict[str, TaskRecord]
    queues: dict[str, ModelQueue]
    index: NodeIndex
    config: SchedulerConfig
    counters: dict[str, int]
    standing: Standing
    trust: Trust | None
    _deadlines: list[tuple[float, int, str]]
    _node_timers: list[tuple[float, int, str]]
    _run_timers: list[tuple[float, int, str]]
    _benched: list[tuple[float, int, str]]
    _busy_slots: int
    _total_slots: int
    _queued: int

    if TYPE_CHECKING:  # defined by VerificationSteps (verifying.py)
        def _job_failed(self, job: TaskRecord, to: TaskState, reason: str, now: float,
                        out: list[Decision]) -> None: ...

        def _held_expired(self, record: TaskRecord, now: float,
                          out: list[Decision]) -> None: ...

    # ---- transitions -------------------------------------------------------------

    def _move(self, record: TaskRecord, to: TaskState) -> None:
        assert (record.state, to) in TRANSITIONS, (record.state, to)
        record.state = to

    def _detach(self, record: TaskRecord) -> NodeState | None:
        """Take a running task off its node, freeing the slot."""
        node_id = record.node_id
        node = self.index.nodes.get(node_id) if node_id else None
        if node is not None:
            running, task_id = node.running, record.spec.task_id
            if task_id in running:
                running.remove(task_id)
                if not node.draining:
                    self._busy_slots -= 1
                self.index.refresh(node, False)  # warmth did not change
        return node

    def _end(self, record: TaskRecord, to: TaskState, now: float) -> None:
        state = record.state
        job = record.verifies is not None and self.trust is not None
        if state is R:
            self._detach(record)
        elif state is Q:
            if job:
                assert self.trust is not None
                self.trust.queues[record.model].remove(record.spec.task_id)
                self.trust.queued -= 1
            else:
                self.queues[record.model].remove(record.spec.task_id)
                self._queued -= 1
        assert (state, to) in TRANSITIONS, (state, to)  # _move, inlined: every task ends here
        record.state = to
        record.ended_at = now
        if job:
            assert self.trust is not None
            if to is not TaskState.COMPLETED:
                self.trust.counters["jobs_failed"] += 1
        else:
            self.counters[COUNTER_OF[to]] += 1
        if not self.config.keep_finished:
            del self.tasks[record.spec.task_id]

    def _requeue(self, record: TaskRecord, reason: str, out: list[Decision]) -> None:
        node_id = record.node_id or ""
        self._detach(record)
        self._move(record, Q)
        record.node_id = None
        self.counters["requeued"] += 1
        if record.verifies is not None and self.trust is not None:
            self.trust.queues[record.model].push(record.spec.task_id, record.key, record.seq)
            self.trust.queued += 1
        else:
            self.queues[record.model].push(record.spec.task_id, record.key, record.seq)
            self._queued += 1
        out.append(Requeue(record.spec.task_id, node_id, reason))

    def _lose(self, node: NodeState, reason: str, now: float, out: list[Decision],
              charge: bool = True) -> None:
        for task_id in sorted(node.running, key=lambda t: self.tasks[t].seq):
            record = self.tasks[task_id]
            if charge:
                self._take_back(record, node, f"node lost: {reason}", now, out)
            else:
                record.attempts -= 1  # not the task's fault, nor (a reconnect) a loss
                self._requeue(record, f"node lost: {reason}", out)
        if not node.draining:
            self._total_slots -= node.slots
        self.standing.left(node, now)
        self.index.remove(node)
        if self.trust is not None:
            self.trust.update(None, node.node_id)
        self.counters["nodes_lost"] += 1

    def _take_back(self, record: TaskRecord, node: NodeState, reason: str, now: float,
                   out: list[Decision]) -> None:
        """The task's node failed it (lost, timed out, faulted): charge the task a
        node loss (once per node, with rejoin_grace) and re-queue it, or fail it as
        a poison task after max_node_losses of them."""
        charged = True
        if self.config.rejoin_grace is not None:
            if record.charged_nodes is None:
                record.charged_nodes = set()
            charged = node.node_id not in record.charged_nodes
            record.charged_nodes.add(node.node_id)
        if charged:
            record.node_losses += 1
        if record.node_losses >= self.config.max_node_losses:
            record.error = f"its node was lost {record.node_losses} times"
            if record.verifies is not None:
                self._job_failed(record, TaskState.FAILED, record.error, now, out)
                return
            self._end(record, TaskState.FAILED, now)
            out.append(Fail(record.spec.task_id, record.error, node.node_id))
        else:
            record.attempts -= 1  # not the task's fault
            self._requeue(record, reason, out)

    # ---- timers ------------------------------------------------------------------

    def next_deadline(self) -> float:
        if (not self._deadlines and not self._node_timers and not self._run_timers
                and not self._benched):
            return math.inf
        self._settle_deadlines()
        self._settle_node_timers()
        self._settle_run_timers()
        first = self._deadlines[0][0] if self._deadlines else math.inf
        if self._node_timers:
            first = min(first, self._node_timers[0][0])
        if self._run_timers:
            first = min(first, self._run_timers[0][0])
        if self._benched:
            first = min(first, self.standing.next_release())
        return first

    def _settle_deadlines(self) -> None:
        heap, tasks = self._deadlines, self.tasks
        while heap:
            deadline, seq, task_id = heap[0]
            record = tasks.get(task_id)
            if record is not None and record.seq == seq and record.state in LIVE_STATES:
                return
            heapq.heappop(heap)

    def _settle_node_timers(self) -> None:
        heap, nodes, timeout = self._node_timers, self.index.nodes, self.config.heartbeat_timeout
        while heap:
            expiry, ordinal, node_id = heap[0]
            node = nodes.get(node_id)
            if node is None or node.ordinal != ordinal:
                heapq.heappop(heap)
            elif node.last_seen + timeout > expiry:  # it was heard from since
                heapq.heapreplace(heap, (node.last_seen + timeout, ordinal, node_id))
            else:
                return

    def _settle_run_timers(self) -> None:
        heap, tasks = self._run_timers, self.tasks
        while heap:
            _, run, task_id = heap[0]
            record = tasks.get(task_id)
            if record is not None and record.run == run and record.state is R:
                return
            heapq.heappop(heap)

    def _fire_timers(self, now: float, out: list[Decision]) -> None:
        self._settle_deadlines()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, task_id = heapq.heappop(self._deadlines)
            record = self.tasks[task_id]
            if record.verifies is not None:
                self._job_failed(record, TaskState.EXPIRED, "it timed out", now, out)
            elif record.held is not None:
                self._held_expired(record, now, out)
            else:
                node_id = record.node_id if record.state is R else None
                self._end(record, TaskState.EXPIRED, now)
                out.append(Expire(task_id, node_id))
            self._settle_deadlines()
        self._settle_node_timers()
        while self._node_timers and self._node_timers[0][0] <= now:
            _, _, node_id = heapq.heappop(self._node_timers)
            node = self.index.nodes[node_id]
            reason = f"no heartbeat for {self.config.heartbeat_timeout:g} s"
            out.append(Drop(node_id, reason))
            self._lose(node, reason, now, out)
            self._settle_node_timers()
        if self._benched:
            self.standing.release(now)
        self._settle_run_timers()
        while self._run_timers and self._run_timers[0][0] <= now:
            _, _, task_id = heapq.heappop(self._run_timers)
            record = self.tasks[task_id]
            node = self.index.nodes[record.node_id or ""]
            self._total_slots += self.standing.faulted(node, now)
            self._take_back(record, node, f"no result within "
                            f"{now - record.assigned_at:.3g} s (execution timeout)", now, out)
            self._settle_run_timers()


__all__ = ["LifecycleSteps"]
