# Carrying out the core's decisions on the simulated fleet.
#
# Theory of operation. The Scheduler answers every event with decisions; in a live
# network the coordinator carries them out by talking to nodes and clients
# (engine/runtime/carrying.py, DecisionSteps). Here the nodes are simulated
# (fleet.py), so carrying a decision out means updating the SimTask / SimNode records
# and telling the event loop what the simulated network will report later:
#   Assign    the node starts the task after half a round trip, loads the model
#             first when the Assign says cold, runs it for its service time, and its
#             result arrives half a round trip later: `Timers.report(at, task, run)`;
#   WakeAt    `Timers.wake(at)`: the core wants a Tick then;
#   Requeue   the node is done with the task (its GPU time so far is busy time); the
#             task waits again, and `run` is bumped so that its pending report is
#             stale;
#   Complete / Fail / Expire / Cancelled
#             the task ends: the node (if it ran it) is done with it, and the
#             statistics recorder counts the outcome;
#   Reject    the task never entered the system;
#   Cancel    nothing: the order to the node; the Cancelled that follows ends it;
#   Drop      nothing: the core already treats the node as lost (it requeued its
#             tasks). It only happens to a node without slots or one whose heartbeats
#             stopped; simulated nodes have slots and no heartbeats.
# A node that drains and has nothing left to run leaves: `Timers.gone(node, now)`.
#
# Rules: one handler per decision type, chosen from a table by type (data, not an
# if-chain); a decision type missing from the table is a KeyError, never ignored.
# The loop's fast path (loop.py, "Speed") has `assign` and `complete` inlined: a
# change here is a change there (tests/sim/test_runs.py compares the two).
# Handlers change only the records and the recorder, and schedule through `Timers`,
# in the order the decisions came (which fixes the order of equal-time items).
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from engine.core import (
    Assign, Cancel, Cancelled, Complete, Decision, Drop, Expire, Fail, Reject, Requeue,
    WakeAt,
)

from .fleet import LOAD_SECONDS, SimNode, SimTask
from .recorder import StatsRecorder


class Timers(Protocol):
    """What the carry-out asks the event loop to schedule."""

    def report(self, when: float, task: SimTask, run: int) -> None:
        """The node reports run `run` of the task at `when` (it may be stale then)."""

    def wake(self, when: float) -> None:
        """The core asked for a Tick at `when`."""

    def gone(self, node: SimNode, now: float) -> None:
        """The draining `node` has nothing left to run: it leaves at `now`."""


class CarryOut:
    """The simulated fleet's tasks in the system and nodes, and what the core's
    decisions do to them. `carry_out(decisions, now)` runs one handler a decision."""

    def __init__(self, nodes: Iterable[SimNode], stats: StatsRecorder,
                 timers: Timers) -> None:
        self.tasks: dict[str, SimTask] = {}  # submitted and not ended, by task id
        self.nodes = {node.node_id: node for node in nodes}
        self.stats, self.timers = stats, timers
        # Handlers take the decision typed as their own type; the table holds them
        # all, so its values take Any.
        self.handlers: dict[type, Callable[[Any, float], None]] = {
            Assign: self.assign, WakeAt: self.wake_at, Cancel: self.cancel,
            Complete: self.complete, Requeue: self.requeue, Reject: self.reject,
            Expire: self.expire, Fail: self.fail, Cancelled: self.cancelled,
            Drop: self.drop,
        }

    def carry_out(self, decisions: Iterable[Decision], now: float) -> None:
        handlers = self.handlers
        for decision in decisions:
            handlers[type(decision)](decision, now)

    # ---- the handlers, one per decision type -----------------------------------

    def assign(self, d: Assign, now: float) -> None:
        task, node = self.tasks[d.task_id], self.nodes[d.node_id]
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
        self.timers.report(end + half_trip, task, task.run)

    def wake_at(self, d: WakeAt, now: float) -> None:
        self.timers.wake(d.time)

    def cancel(self, d: Cancel, now: float) -> None:
        pass  # the Cancelled that follows ends the task

    def drop(self, d: Drop, now: float) -> None:
        pass  # see the module comment: never happens to a simulated node

    def reject(self, d: Reject, now: float) -> None:
        del self.tasks[d.task_id]
        self.stats.record_rejected(now)

    def requeue(self, d: Requeue, now: float) -> None:
        task = self.tasks[d.task_id]
        self.stats.record_requeued(task, self.release(task, now), now)
        task.run += 1
        task.queued_since = now

    # The task ends: it leaves `tasks`, its node (if it ran it) is done with it, and
    # the recorder counts the outcome.

    def complete(self, d: Complete, now: float) -> None:
        task = self.tasks.pop(d.task_id)
        self.stats.record_completed(task, self.release(task, now), now, d.cost)

    def fail(self, d: Fail, now: float) -> None:
        task = self.tasks.pop(d.task_id)
        self.stats.record_failed(task, self.release(task, now), now)

    def expire(self, d: Expire, now: float) -> None:
        task = self.tasks.pop(d.task_id)
        self.stats.record_expired(task, self.release(task, now), now)

    def cancelled(self, d: Cancelled, now: float) -> None:
        task = self.tasks.pop(d.task_id)
        self.stats.record_cancelled(task, self.release(task, now), now)

    # ---- shared steps -------------------------------------------------------------

    def release(self, task: SimTask, now: float) -> SimNode | None:
        """If `task` was running, its node is done with it at `now`; that node."""
        node = task.node
        if node is not None:
            node.running -= 1
            task.node = None
            if node.leaving and node.running == 0:
                self.timers.gone(node, now)
        return node
