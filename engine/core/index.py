# The node index: which nodes can take a task of a model *right now*, grouped so
# that placement never scans the whole fleet.
#
# Theory: for a given model, every node that serves it falls into a *class*
# keyed by (GPU class, region, warm?, price). All nodes of one class are equal for
# every scoring policy (same speed, latency, cold-start and price), so a policy
# ranks classes, not nodes, and takes any free node of the best class. The number
# of classes depends on the catalog, the regions and the price list, not on the
# number of nodes, which is what keeps placement O(classes) at 100,000 nodes.
#
# Per model the index keeps:
# - `free`: an IndexedSet of the nodes with a free slot (O(1) add, remove, random);
# - `classes`: key -> NodeClass with its own `free` and `online` sets;
# - optionally a lazy heap of (load ratio, ordinal, node id) for least-loaded.
# A node is *accepting* when it is online, not draining and has a free slot; it is
# in a model's free sets exactly when it is accepting and eligible for the model
# (serves it and has the VRAM). `NodeIndex.refresh(node)` restores that invariant
# after any change to the node and costs O(models the node serves).
#
# Rules: pure data structures; no policy decisions here.
from __future__ import annotations

import heapq
from typing import Generic, Hashable, Iterator, TypeVar

import attrs

from .catalog import MODELS, gpu_rate
from .events import NodeSpec

T = TypeVar("T", bound=Hashable)


class IndexedSet(Generic[T]):
    """A set with O(1) add, discard, membership and uniform random access."""

    __slots__ = ("items", "_pos")

    def __init__(self) -> None:
        self.items: list[T] = []
        self._pos: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def add(self, item: T) -> None:
        if item not in self._pos:
            self._pos[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: T) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self.items.pop()
        if pos < len(self.items):
            self.items[pos] = last
            self._pos[last] = pos


@attrs.define(eq=False)
class NodeState:
    """The core's mutable record of one online node."""

    spec: NodeSpec
    ordinal: int  # join order; a stable tie-breaker
    price_per_hour: float
    latency: float  # seconds between the coordinator and the node's region
    last_seen: float
    running: set[str] = attrs.field(factory=set)
    loaded: list[str] = attrs.field(factory=list)  # warm models, least recent first
    draining: bool = False
    tasks_done: int = 0
    busy_since: float = 0.0
    # model -> the NodeClass whose free set holds this node now (absent: none)
    member_of: dict[str, "NodeClass"] = attrs.field(factory=dict)
    classes: dict[str, "NodeClass"] = attrs.field(factory=dict)  # current class per model
    eligible_models: tuple[str, ...] | None = None  # cached by NodeIndex.refresh

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def slots(self) -> int:
        return self.spec.slots

    @property
    def free_slots(self) -> int:
        return self.spec.slots - len(self.running)

    @property
    def load(self) -> float:
        return len(self.running) / self.spec.slots

    @property
    def accepting(self) -> bool:
        return not self.draining and len(self.running) < self.spec.slots

    def is_warm(self, model: str) -> bool:
        return model in self.loaded

    def touch_model(self, model: str) -> list[str]:
        """Mark `model` as most recently used (loading it if cold); evict the least
        recently used models that no longer fit in VRAM. Returns the evicted ones."""
        loaded = self.loaded
        if not loaded or loaded[-1] != model:  # else it is already the most recent
            if model in loaded:
                loaded.remove(model)
            loaded.append(model)
        evicted: list[str] = []
        while len(loaded) > 1 and sum(MODELS[m].vram_gb for m in loaded) > self.spec.vram_gb:
            evicted.append(loaded.pop(0))
        return evicted


@attrs.define(eq=False)
class NodeClass:
    """Nodes of one model that are equal for placement: same GPU, region, warmth and
    price. `rate` is work units per second; `cold_seconds` the load time if cold."""

    key: tuple[str, str, bool, float]
    model: str
    rate: float
    price_per_hour: float
    latency: float
    cold_seconds: float
    free: IndexedSet[str] = attrs.field(factory=IndexedSet)
    online: IndexedSet[str] = attrs.field(factory=IndexedSet)

    @property
    def gpu(self) -> str:
        return self.key[0]

    @property
    def region(self) -> str:
        return self.key[1]

    @property
    def warm(self) -> bool:
        return self.key[2]

    def service_seconds(self, work: float) -> float:
        return work / self.rate

    def cost(self, work: float) -> float:
        return self.price_per_hour / 3600.0 * work / self.rate

    def completion_seconds(self, work: float) -> float:
        """Earliest completion on a free node of this class: network round trip,
        model load if cold, then the work itself."""
        return self.latency + (0.0 if self.warm else self.cold_seconds) + work / self.rate


@attrs.define(eq=False)
class ModelIndex:
    model: str
    free: IndexedSet[str] = attrs.field(factory=IndexedSet)
    classes: dict[tuple[str, str, bool, float], NodeClass] = attrs.field(factory=dict)
    online_slots: int = 0  # slots of online, non-draining eligible nodes
    generation: int = 0  # bumped when a class appears: cached class orders go stale
    track_load: bool = False
    load_heap: list[tuple[float, int, str]] = attrs.field(factory=list)

    def push_load(self, node: NodeState) -> None:
        heapq.heappush(self.load_heap, (node.load, node.ordinal, node.node_id))
        if len(self.load_heap) > 64 + 4 * len(self.free):
            self.load_heap = [e for e in self.load_heap if e[2] in self.free]
            heapq.heapify(self.load_heap)


class NodeIndex:
    """All online nodes, and per model the free-slot structures described above."""

    def __init__(self, track_load: bool = False) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.models: dict[str, ModelIndex] = {
            m: ModelIndex(m, track_load=track_load) for m in MODELS
        }

    def eligible(self, spec: NodeSpec, model: str) -> bool:
        return model in spec.models and spec.vram_gb >= MODELS[model].vram_gb

    def add(self, node: NodeState) -> None:
        self.nodes[node.node_id] = node
        for model in node.spec.models:
            if self.eligible(node.spec, model):
                self.models[model].online_slots += node.slots
        self.refresh(node)

    def remove(self, node: NodeState) -> None:
        for model, cls in list(node.classes.items()):
            cls.online.discard(node.node_id)
            cls.free.discard(node.node_id)
            mi = self.models[model]
            mi.free.discard(node.node_id)
            if not node.draining:
                mi.online_slots -= node.slots
        node.classes.clear()
        node.member_of.clear()
        del self.nodes[node.node_id]

    def set_draining(self, node: NodeState) -> None:
        if not node.draining:
            node.draining = True
            for model in node.classes:
                self.models[model].online_slots -= node.slots
            self.refresh(node)

    def _class_for(self, node: NodeState, model: str) -> NodeClass:
        mi = self.models[model]
        key = (node.spec.gpu, node.spec.region, model in node.loaded, node.price_per_hour)
        cls = mi.classes.get(key)
        if cls is None:
            cls = NodeClass(
                key, model, rate=gpu_rate(node.spec.gpu, model),
                price_per_hour=node.price_per_hour, latency=node.latency,
                cold_seconds=MODELS[model].load_seconds,
            )
            mi.classes[key] = cls
            mi.generation += 1
        return cls

    def refresh(self, node: NodeState) -> None:
        """Put the node in exactly the sets its current state calls for."""
        node_id = node.node_id
        accepting = node.accepting
        models = node.eligible_models
        if models is None:
            models = node.eligible_models = tuple(
                m for m in node.spec.models if self.eligible(node.spec, m))
        loaded = node.loaded
        for model in models:
            mi = self.models[model]
            old_cls = node.classes.get(model)
            # A node's GPU, region and price never change: only warmth can move it.
            if old_cls is not None and old_cls.key[2] == (model in loaded):
                cls = old_cls
            else:
                cls = self._class_for(node, model)
            if old_cls is not cls:
                if old_cls is not None:
                    old_cls.online.discard(node_id)
                    old_cls.free.discard(node_id)
                node.classes[model] = cls
                cls.online.add(node_id)
            current = node.member_of.get(model)
            if accepting:
                if current is not cls:
                    if current is not None:
                        current.free.discard(node_id)
                    cls.free.add(node_id)
                    node.member_of[model] = cls
                    mi.free.add(node_id)
                if mi.track_load:
                    mi.push_load(node)
            elif current is not None:
                current.free.discard(node_id)
                del node.member_of[model]
                mi.free.discard(node_id)
