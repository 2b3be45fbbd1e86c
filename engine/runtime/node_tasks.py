# NodeTasks: which tasks one worker connection holds, as the coordinator side
# knows them, and what a heartbeat says about them. Pure: no trio, no clock, no
# scheduler; the coordinator's actor and the session's reader drive it.
#
#     tasks = NodeTasks()
#     tasks.assigned("t1")            # an `assign` frame went out
#     tasks.accept("t1")              # the worker said `accepted` (False: not ours)
#     tasks.report("t1")              # `result` / `failed` came (False: not ours)
#     for task_id in tasks.lost(beat.running, still_here):   # then, in this order:
#         ...fail it ("the node dropped the task"), retryable
#     for task_id in tasks.strangers(beat.running):
#         ...tell the worker to cancel it
#
# Theory (heartbeat reconciliation). Frames on one connection arrive in order.
# A task is *held* from its `assign` until the worker reports on it (result or
# failed); a held task the worker *accepted* and no longer lists in a heartbeat's
# `running` was dropped by the worker: it is lost. A held task the worker has not
# accepted yet may simply not have reached it (its `assign` is in flight), so it
# is kept. A held task the scheduler no longer runs on this node (it expired, was
# cancelled or re-queued meanwhile; `still_here` says) and that the worker no
# longer lists is just forgotten. A task the worker lists but does not hold is a
# stranger: the worker runs something this coordinator never gave it (or already
# took back), and is told to cancel it.
#
# Rules:
# - Results come out sorted by task id, so the decisions they lead to do not
#   depend on set order.
# - `still_here` is asked only about held tasks missing from `running`, all before
#   the caller fails any lost task (failing one never changes whether another is
#   still the node's: a held task is running there or has ended).
# - Ask for `strangers` after carrying out the lost tasks' failures: those may
#   assign the node a task it lists (one it ran before a reconnect), which is then
#   held and no stranger.
from __future__ import annotations

from typing import Callable, Iterable

import attrs


@attrs.define
class NodeTasks:
    """The tasks assigned to one node's connection and not yet reported on."""

    _held: set[str] = attrs.field(factory=set, alias="held")
    _accepted: set[str] = attrs.field(factory=set, alias="accepted")

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._held

    def holds(self, task_id: str) -> bool:
        return task_id in self._held

    def accepted(self, task_id: str) -> bool:
        """True when the worker confirmed a held task."""
        return task_id in self._accepted

    def assigned(self, task_id: str) -> None:
        """An `assign` frame for the task went to the worker."""
        self._held.add(task_id)

    def accept(self, task_id: str) -> bool:
        """The worker confirmed the task; False (a protocol error) when it is not held."""
        if task_id not in self._held:
            return False
        self._accepted.add(task_id)
        return True

    def report(self, task_id: str) -> bool:
        """The worker reported on the task (result or failed): it is no longer
        held. False (a protocol error) when it was not held."""
        if task_id not in self._held:
            return False
        self._forget(task_id)
        return True

    def lost(self, running: Iterable[str], still_here: Callable[[str], bool]
             ) -> tuple[str, ...]:
        """Apply a heartbeat listing `running`: the held tasks the worker dropped
        (accepted, missing, and still the node's by `still_here(task_id)`), which
        are no longer held; held tasks that are missing and no longer the node's
        are forgotten."""
        listed = set(running)
        lost = []
        for task_id in sorted(self._held - listed):
            if not still_here(task_id):
                self._forget(task_id)
            elif task_id in self._accepted:
                self._forget(task_id)
                lost.append(task_id)
        return tuple(lost)

    def strangers(self, running: Iterable[str]) -> tuple[str, ...]:
        """The tasks a heartbeat lists that the node does not hold."""
        return tuple(sorted(set(running) - self._held))

    def _forget(self, task_id: str) -> None:
        self._held.discard(task_id)
        self._accepted.discard(task_id)


__all__ = ["NodeTasks"]
