# A node's standing: what the scheduler has learnt to trust of it.
#
# Theory. A node announces its slots, GPU and price, and nothing checks a hello.
# So that a false one (256 slots of a "H100" at price 0) cannot swallow the queue,
# and a node that fails its tasks stops being handed new ones, the scheduler keeps
# per node (fields of index.NodeState):
#   usable  slots placement may use: min(initial_slots, claim) at first, one more
#           per `completions_per_slot` completions (`credit` counts them), up to
#           the claim; halved by a fault (at least one). With initial_slots None a
#           node uses its claim at once, as a trusting scheduler does.
#   pace    its runs' measured elapsed / expected time (metering.next_pace), which
#           stretches its execution bound (metering.run_bound).
#   benched after a fault it takes no new work for `fault_cooldown` seconds (it
#           keeps what it runs), so the task it failed goes elsewhere if it can.
#   paces   per model, its runs' measured pace against its claimed GPU (speed.py,
#           with SchedulerConfig.measured_speed or check_hardware), which moves it
#           to the class its measured speed puts it in (NodeIndex.retime).
# A fault is an execution timeout or a report the driver refused (TaskFaulted).
# A node that leaves is remembered for `rejoin_grace` seconds: back within it, it
# keeps its usable slots, credit and pace, and its measured paces if it claims the
# same GPU (a reconnect neither resets a penalty nor costs an honest node what it
# earned, nor wipes what its speed showed); later it is a newcomer again.
#
# Rules: pure, driven by the Scheduler (which owns the counts of slots: resize and
# penalise return the change in usable slots); time is an argument.
from __future__ import annotations

import heapq
import math

from .catalog import gpu_rate
from .index import NodeIndex, NodeState
from .metering import next_pace
from .speed import measured_pace, service_seconds


class Standing:
    def __init__(self, index: NodeIndex, initial_slots: int | None,
                 completions_per_slot: int, rejoin_grace: float | None,
                 fault_cooldown: float | None) -> None:
        self.index = index
        self.initial_slots = initial_slots
        self.completions_per_slot = max(1, completions_per_slot)
        self.rejoin_grace = rejoin_grace
        self.fault_cooldown = fault_cooldown
        self.benched: list[tuple[float, int, str]] = []  # (until, ordinal, node id)
        # node id -> (left at, usable, credit, pace, (claimed GPU, measured paces)),
        # oldest departure first
        self.departed: dict[str, tuple[float, int, int, float,
                                       tuple[str, dict[str, float]]]] = {}

    def resize(self, node: NodeState, usable: int) -> int:
        """Set the node's usable slots (1 to its claim); the change in slots that
        count as online (none while it drains)."""
        before = node.usable
        self.index.resize(node, min(usable, node.spec.slots))
        return 0 if node.draining else node.usable - before

    def completed(self, node: NodeState, expected: float, elapsed: float) -> int:
        """A run of the node completed: its pace, and its credit towards a slot."""
        node.pace = next_pace(node.pace, expected, elapsed)
        if self.initial_slots is not None and node.usable < node.spec.slots:
            node.credit += 1
            if node.credit >= self.completions_per_slot:
                node.credit = 0
                return self.resize(node, node.usable + 1)
        return 0

    def timed(self, node: NodeState, model: str, work: float, elapsed: float,
              cold_seconds: float) -> None:
        """A run of `work` of `model` that the scheduler timed at `elapsed` (with
        `cold_seconds` of model load in it): the node's measured pace, and the
        class its speed puts it in."""
        service = service_seconds(elapsed, node.latency, cold_seconds)
        if service is None:
            return
        node.paces[model] = measured_pace(node.paces.get(model), work,
                                          gpu_rate(node.spec.gpu, model), service)
        self.index.retime(node, model)

    def faulted(self, node: NodeState, now: float) -> int:
        """A fault of the node: its usable slots halve; it is benched a while."""
        delta = 0
        if self.initial_slots is not None:
            node.credit = 0
            delta = self.resize(node, node.usable // 2)
        if self.fault_cooldown is not None and not node.benched:
            self.index.bench(node, True)
            heapq.heappush(self.benched, (now + self.fault_cooldown, node.ordinal,
                                          node.node_id))
        return delta

    def next_release(self) -> float:
        return self.benched[0][0] if self.benched else math.inf

    def release(self, now: float) -> None:
        """Let the nodes whose cooldown is over take work again."""
        benched, nodes = self.benched, self.index.nodes
        while benched and benched[0][0] <= now:
            _, ordinal, node_id = heapq.heappop(benched)
            node = nodes.get(node_id)
            if node is not None and node.ordinal == ordinal:
                self.index.bench(node, False)

    def left(self, node: NodeState, now: float) -> None:
        if self.rejoin_grace is not None:
            self.departed.pop(node.node_id, None)
            self.departed[node.node_id] = (now, node.usable, node.credit, node.pace,
                                           (node.spec.gpu, node.paces))

    def joining(self, node: NodeState, now: float) -> None:
        """A joining node's standing (before it is added to the index): what it had
        if it left within rejoin_grace, else a newcomer's."""
        departed = self.departed
        grace = self.rejoin_grace if self.rejoin_grace is not None else -1.0
        while departed:  # forget who left too long ago (oldest first)
            oldest = next(iter(departed))
            if departed[oldest][0] + grace >= now:
                break
            del departed[oldest]
        kept = departed.pop(node.node_id, None)
        claim = node.spec.slots
        if kept is not None:
            _, usable, node.credit, node.pace, (gpu, paces) = kept
            node.usable = min(claim, usable)
            if gpu == node.spec.gpu:
                node.paces = {m: p for m, p in paces.items() if m in node.spec.models}
        elif self.initial_slots is not None:
            node.usable = min(claim, max(1, self.initial_slots))


__all__ = ["Standing"]
