# Placement policies: given a task and the node index of its model, pick the node.
#
# Rules:
# - A policy only ever picks a node with a free slot for the model (one that serves
#   the model, has the VRAM and a free slot, and is not draining): from a class's
#   `free` set or the model's `free_list`. Returning None means "wait".
# - A policy says which optional index structures it reads (`needs_free_list`,
#   `needs_load_heap`), so the others cost nothing on the hot path.
# - A policy may keep small state (a cursor) but no I/O; randomness only from the
#   `rng` argument, so the same events and seed give the same choices.
# - Every policy is listed in POLICIES under its name; the simulator's `--policy` and
#   the live coordinator's configuration both go through `make_policy(name)`.
#
# Scoring policies (fastest, cheapest, balanced) rank node *classes* (see index.py):
# a class's score is A + W * B for a task of work W, so the ranking depends on W.
# Ranking every class per task would cost O(classes); instead the ranking is cached
# per (work class, priority), where work classes are quarter-octaves of W
# (W in [2^(q/4), 2^((q+1)/4))), and ranked at the class's geometric middle. Within a
# quarter-octave the ranking can only differ from the exact one for classes whose
# scores cross inside that 19% band of work. A placement then walks the cached
# ranking to the first class with a free node: O(1) while the best classes have
# room, O(classes) when the fleet is saturated.
from __future__ import annotations

import heapq
import math
import random
from typing import Callable, Mapping, Protocol

import attrs

from .events import Priority
from .index import ModelIndex, NodeClass, NodeIndex, NodeState, newest


class PlacementTask(Protocol):
    """What a policy sees of the task it places: its model, size and priority. The
    scheduler hands over its TaskRecord, which has these attributes (no object is
    built per placement)."""

    @property
    def model(self) -> str: ...

    @property
    def work(self) -> float: ...  # work units (see catalog)

    @property
    def priority(self) -> Priority: ...


class PlacementPolicy(Protocol):
    name: str
    needs_free_list: bool
    needs_load_heap: bool

    def choose(self, task: PlacementTask, mi: ModelIndex, index: NodeIndex,
               rng: random.Random) -> NodeState | None: ...


@attrs.define
class RoundRobin:
    """Rotate through the nodes that have a free slot."""

    name: str = "round_robin"
    needs_free_list: bool = True
    needs_load_heap: bool = False
    _cursor: dict[str, int] = attrs.field(factory=dict)

    def choose(self, task: PlacementTask, mi: ModelIndex, index: NodeIndex,
               rng: random.Random) -> NodeState | None:
        assert mi.free_list is not None  # needs_free_list
        free = mi.free_list.items
        if not free:
            return None
        cursor = self._cursor.get(mi.model, 0)
        self._cursor[mi.model] = cursor + 1
        return index.nodes[free[cursor % len(free)]]


@attrs.define
class RandomChoice:
    """Uniformly random among the nodes that have a free slot."""

    name: str = "random"
    needs_free_list: bool = True
    needs_load_heap: bool = False

    def choose(self, task: PlacementTask, mi: ModelIndex, index: NodeIndex,
               rng: random.Random) -> NodeState | None:
        assert mi.free_list is not None  # needs_free_list
        free = mi.free_list.items
        if not free:
            return None
        return index.nodes[free[rng.randrange(len(free))]]


@attrs.define
class LeastLoaded:
    """The free node with the lowest share of busy slots (ties: earliest joined)."""

    name: str = "least_loaded"
    needs_free_list: bool = True
    needs_load_heap: bool = True

    def choose(self, task: PlacementTask, mi: ModelIndex, index: NodeIndex,
               rng: random.Random) -> NodeState | None:
        heap, free, nodes = mi.load_heap, mi.free_list, index.nodes
        assert heap is not None and free is not None  # needs_load_heap, needs_free_list
        while heap:
            load, _, node_id = heap[0]
            node = nodes.get(node_id) if node_id in free else None
            if node is not None and node.load == load:
                return node
            heapq.heappop(heap)
        return None


@attrs.define
class PowerOfTwo:
    """Sparrow-style: sample two free nodes, take the less loaded (warm breaks ties)."""

    name: str = "power_of_two"
    needs_free_list: bool = True
    needs_load_heap: bool = False

    def choose(self, task: PlacementTask, mi: ModelIndex, index: NodeIndex,
               rng: random.Random) -> NodeState | None:
        assert mi.free_list is not None  # needs_free_list
        free = mi.free_list.items
        if not free:
            return None
        n = len(free)
        a = index.nodes[free[rng.randrange(n)]]
        b = index.nodes[free[rng.randrange(n)]]
        key_a = (a.load, not a.is_warm(task.model))
        key_b = (b.load, not b.is_warm(task.model))
        return b if key_b < key_a else a


ClassScore = Callable[[NodeClass, float, Priority], tuple[float, ...]]


@attrs.define
class ScoredPolicy:
    """Rank classes by `score` (lower is better); take a node of the best class that
    has one free. See the module comment for the ranking cache."""

    name: str
    score: ClassScore
    needs_free_list: bool = False
    needs_load_heap: bool = False
    _cache: dict[tuple[str, int, int, Priority], list[NodeClass]] = attrs.field(factory=dict)

    def ranking(self, mi: ModelIndex, work: float, priority: Priority) -> list[NodeClass]:
        q = math.floor(4.0 * math.log2(work)) if work > 0 else -1000
        key = (mi.model, mi.generation, q, priority)
        ranked = self._cache.get(key)
        if ranked is None:
            middle = 2.0 ** ((q + 0.5) / 4.0) if work > 0 else 0.0
            ranked = sorted(mi.classes.values(),
                            key=lambda c: (*self.score(c, middle, priority), c.key))
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = ranked
        return ranked

    def choose(self, task: PlacementTask, mi: ModelIndex, index: NodeIndex,
               rng: random.Random) -> NodeState | None:
        if not mi.free_count:
            return None
        for cls in self.ranking(mi, task.work, task.priority):
            free = cls.free
            if free:
                return index.nodes[newest(free)]
        return None


def fastest_score(cls: NodeClass, work: float, priority: Priority) -> tuple[float, ...]:
    return (cls.completion_seconds(work), cls.price_per_hour)


def cheapest_score(cls: NodeClass, work: float, priority: Priority) -> tuple[float, ...]:
    return (cls.cost(work), cls.completion_seconds(work))


# The value a client puts on a second of waiting, dollars per hour, by priority.
# `balanced` minimises cost + value_of_time * completion time: a standard task
# takes a cheaper, slower GPU unless the faster one saves more time than it costs.
VALUE_OF_TIME_PER_HOUR: Mapping[Priority, float] = {
    Priority.STANDARD: 2.0,
    Priority.HIGH: 10.0,
    Priority.CRITICAL: 50.0,
}


def balanced_score(cls: NodeClass, work: float, priority: Priority) -> tuple[float, ...]:
    value_of_time = VALUE_OF_TIME_PER_HOUR[priority] / 3600.0
    return (cls.cost(work) + value_of_time * cls.completion_seconds(work),)


POLICIES: dict[str, Callable[[], PlacementPolicy]] = {
    "round_robin": RoundRobin,
    "random": RandomChoice,
    "least_loaded": LeastLoaded,
    "power_of_two": PowerOfTwo,
    "cheapest": lambda: ScoredPolicy("cheapest", cheapest_score),
    "fastest": lambda: ScoredPolicy("fastest", fastest_score),
    "balanced": lambda: ScoredPolicy("balanced", balanced_score),
}
DEFAULT_POLICY = "balanced"


def make_policy(name: str) -> PlacementPolicy:
    factory = POLICIES.get(name)
    if factory is None:
        raise ValueError(f"unknown placement policy {name!r} (known: {', '.join(POLICIES)})")
    return factory()
