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
# - `classes`: key -> NodeClass with its own `free` and `online` node sets;
# - `free_count`: how many nodes could take one of its tasks now;
# - only where the policy needs them: `free_list`, an IndexedSet of those nodes
#   (O(1) uniform random pick), and a lazy heap of (load, ordinal, node id).
# A node is *accepting* when it is online, not draining nor benched and has a free
# slot (of its `open_slots`: its `usable` ones, SchedulerConfig.initial_slots, and
# at most its trust `cap`, verification.py's probation limit); it is
# in a model's free sets exactly when it is accepting and eligible for the model
# (serves it and has the VRAM). `NodeIndex.refresh(node)` restores that invariant
# after any change to the node and costs O(models the node serves).
#
# Rules: pure data structures; no policy decisions here.
from __future__ import annotations

import heapq
from typing import Generic, Hashable, Iterator, Sequence, TypeVar

import attrs

from .catalog import MODELS, gpu_rate
from .events import NodeSpec
from .speed import class_terms

T = TypeVar("T", bound=Hashable)
# (GPU class, region, warm?, price per hour, measured rate or 0.0)
ClassKey = tuple[str, str, bool, float, float]
VRAM_GB = {name: model.vram_gb for name, model in MODELS.items()}
NO_CAP = 1 << 30  # NodeState.cap when nothing limits the node's tasks
_NOTHING_EVICTED: tuple[str, ...] = ()  # touch_model's answer when nothing moved


def newest(members: dict[str, None]) -> str:
    """The most recently added key of a dict used as an insertion-ordered set (not
    empty), in O(1) amortised. `next(reversed(members))` scans past every deleted
    entry at the dict's tail on each call (CPython leaves them until a resize), and
    placement deletes the newest free node of a class whenever it fills up, so they
    pile up there: 3.6% of a simulated task was that scan. popitem() drops them as it
    goes, and putting the key back leaves the set and its order as they were."""
    key = members.popitem()[0]
    members[key] = None
    return key


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
    classes: dict[str, NodeClass] = attrs.field(factory=dict)  # current class per model
    in_free: bool = False  # whether the node is in its classes' free sets now
    eligible_models: tuple[str, ...] = ()  # set by NodeIndex.add
    # Slots placement may use now: the claim (spec.slots), or fewer while the node
    # earns them (SchedulerConfig.initial_slots); changed through NodeIndex.resize.
    usable: int = attrs.field(default=attrs.Factory(lambda self: self.spec.slots,
                                                    takes_self=True))
    # At most this many tasks may run on it now (verification.py: the probation
    # limit; NodeIndex.limit); no limit by default.
    cap: int = NO_CAP
    # What the free-slot test reads: min(usable, cap), kept by NodeIndex (add,
    # resize, limit), so the hot path reads one field, as it did before the cap.
    open_slots: int = attrs.field(default=attrs.Factory(lambda self: self.usable,
                                                        takes_self=True))
    credit: int = 0  # completions towards the next earned slot
    pace: float = 1.0  # measured elapsed / expected of its runs (metering.next_pace)
    benched: bool = False  # after a fault: takes no new work for a while (NodeIndex.bench)
    # model -> its runs' measured pace against its claimed GPU (speed.py); absent
    # until it has completed a run of the model under measured_speed/check_hardware
    paces: dict[str, float] = attrs.field(factory=dict)

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def slots(self) -> int:
        return self.usable

    @property
    def free_slots(self) -> int:
        return self.open_slots - len(self.running)

    @property
    def load(self) -> float:
        return len(self.running) / self.usable

    @property
    def accepting(self) -> bool:
        return not self.draining and not self.benched and len(self.running) < self.open_slots

    def is_warm(self, model: str) -> bool:
        return model in self.loaded

    def touch_model(self, model: str) -> Sequence[str]:
        """Mark `model` as most recently used (loading it if cold); evict the least
        recently used models that no longer fit in VRAM. Returns the evicted ones."""
        loaded = self.loaded
        if len(loaded) == 1 and loaded[0] == model:
            return _NOTHING_EVICTED  # the only model: the most recent, and it is never evicted
        if not loaded or loaded[-1] != model:  # else it is already the most recent
            if model in loaded:
                loaded.remove(model)
            loaded.append(model)
        evicted: list[str] = []
        while len(loaded) > 1 and sum(map(VRAM_GB.__getitem__, loaded)) > self.spec.vram_gb:
            evicted.append(loaded.pop(0))
        return evicted


@attrs.define(eq=False)
class NodeClass:
    """Nodes of one model that are equal for placement: same GPU, region, warmth,
    price and measured rate (0.0 when the catalog's: speed.py). `rate` is work
    units per second; `cold_seconds` the load time if cold.
    `free` and `online` are dicts used as insertion-ordered sets (node id -> None):
    C-speed add and remove, and `newest(free)` takes the newest in O(1)."""

    key: ClassKey
    model: str
    rate: float
    price_per_hour: float
    latency: float
    cold_seconds: float
    warm: bool
    model_index: ModelIndex = attrs.field(repr=False)  # its model's (free_count)
    free: dict[str, None] = attrs.field(factory=dict)
    online: dict[str, None] = attrs.field(factory=dict)

    @property
    def gpu(self) -> str:
        return self.key[0]

    @property
    def region(self) -> str:
        return self.key[1]

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
    """Per model: its node classes, how many nodes can take one of its tasks now
    (`free_count`), and - only for the policies that need them - every such node in
    one IndexedSet (`free_list`, for uniform picks) and a lazy heap by load."""

    model: str
    classes: dict[ClassKey, NodeClass] = attrs.field(factory=dict)
    free_count: int = 0
    online_slots: int = 0  # slots of online, non-draining eligible nodes
    generation: int = 0  # bumped when a class appears: cached class orders go stale
    free_list: IndexedSet[str] | None = None
    load_heap: list[tuple[float, int, str]] | None = None

    def push_load(self, node: NodeState, nodes: dict[str, NodeState]) -> None:
        """Record the node's current load. Entries go stale when a node's load
        changes; readers skip them, and when stale ones outnumber the live ones 3 to 1
        the heap is rebuilt from the live ones alone (amortised O(log n) a push)."""
        heap = self.load_heap
        assert heap is not None, "push_load on an index built without load heaps"
        heapq.heappush(heap, (node.load, node.ordinal, node.node_id))
        if len(heap) > 64 + 4 * self.free_count:
            members = self.free_list
            assert members is not None
            live = {e for e in heap if e[2] in members and nodes[e[2]].load == e[0]}
            self.load_heap = sorted(live)


class NodeIndex:
    """All online nodes, and per model the free-slot structures described above."""

    def __init__(self, free_list: bool = False, load_heap: bool = False,
                 measured_speed: bool = False, check_hardware: bool = False) -> None:
        self.nodes: dict[str, NodeState] = {}
        # classes by measured speed (speed.py; SchedulerConfig's options of these names)
        self.measured = measured_speed or check_hardware
        self.measured_speed, self.check_hardware = measured_speed, check_hardware
        self.free_lists = free_list  # every model has a free_list, or none has
        self.load_heaps = load_heap  # the same for the load heaps
        self.models: dict[str, ModelIndex] = {
            m: ModelIndex(m, free_list=IndexedSet() if free_list else None,
                          load_heap=[] if load_heap else None)
            for m in MODELS
        }

    @staticmethod
    def eligible(spec: NodeSpec, model: str) -> bool:
        return model in spec.models and spec.vram_gb >= MODELS[model].vram_gb

    def add(self, node: NodeState) -> None:
        self.nodes[node.node_id] = node
        node.eligible_models = tuple(m for m in node.spec.models if self.eligible(node.spec, m))
        node.open_slots = min(node.usable, node.cap)
        for model in node.eligible_models:
            self.models[model].online_slots += node.slots
        self.refresh(node)

    def remove(self, node: NodeState) -> None:
        node_id = node.node_id
        for model, cls in node.classes.items():
            del cls.online[node_id]
            mi = self.models[model]
            if node.in_free:
                del cls.free[node_id]
                self._left_free(mi, node_id)
            if not node.draining:
                mi.online_slots -= node.slots
        node.classes.clear()
        node.in_free = False
        del self.nodes[node_id]

    def set_draining(self, node: NodeState) -> None:
        if not node.draining:
            node.draining = True
            for model in node.classes:
                self.models[model].online_slots -= node.slots
            self.refresh(node, warmth_changed=False)

    def bench(self, node: NodeState, benched: bool) -> None:
        """Keep the node out of the free sets (True) or let it back (False)."""
        node.benched = benched
        self.refresh(node, warmth_changed=False)

    def resize(self, node: NodeState, usable: int) -> None:
        """Change how many of its slots the node may use (at least one)."""
        usable = max(1, usable)
        if usable != node.usable:
            if not node.draining:
                for model in node.classes:
                    self.models[model].online_slots += usable - node.usable
            node.usable = usable
            node.open_slots = min(usable, node.cap)
            self.refresh(node, warmth_changed=False)

    def limit(self, node: NodeState, cap: int) -> None:
        """At most `cap` tasks may run on the node (0: none now), whatever its usable
        slots (verification.py's probation limit). Its slot counts do not change: the
        cap holds back what it may take, not what it has."""
        cap = max(0, cap)
        if cap != node.cap:
            node.cap = cap
            node.open_slots = min(node.usable, cap)
            self.refresh(node, warmth_changed=False)

    def _class_for(self, node: NodeState, model: str, warm: bool) -> NodeClass:
        mi = self.models[model]
        spec = node.spec
        if self.measured:
            terms = class_terms(spec.gpu, model, node.price_per_hour, node.paces.get(model),
                                self.measured_speed, self.check_hardware)
            gpu, rate, price, measured = (terms.gpu, terms.rate, terms.price_per_hour,
                                          terms.measured_rate)
        else:
            gpu, rate, price, measured = spec.gpu, 0.0, node.price_per_hour, 0.0
        key = (gpu, spec.region, warm, price, measured)
        cls = mi.classes.get(key)
        if cls is None:
            cls = NodeClass(
                key, model, rate=rate or gpu_rate(spec.gpu, model),
                price_per_hour=price, latency=node.latency,
                cold_seconds=MODELS[model].load_seconds, warm=warm, model_index=mi,
            )
            mi.classes[key] = cls
            mi.generation += 1
        return cls

    @staticmethod
    def _left_free(mi: ModelIndex, node_id: str) -> None:
        mi.free_count -= 1
        if mi.free_list is not None:
            mi.free_list.discard(node_id)

    def retime(self, node: NodeState, model: str) -> None:
        """The node's measured pace for `model` changed: move it to the class its
        speed now puts it in (speed.py), if that is another."""
        if self.measured and model in node.classes:
            self._reclass(node, retimed=model)

    def _reclass(self, node: NodeState, retimed: str = "") -> None:
        """Move the node to the class that matches its warmth, per model (and, for
        the `retimed` model, its measured speed). A node's GPU, region and price
        never change: only warmth and measured speed move it."""
        node_id, loaded, classes, in_free = node.node_id, node.loaded, node.classes, node.in_free
        for model in node.eligible_models:
            cls = classes.get(model)
            warm = model in loaded
            if cls is not None and cls.warm is warm and model != retimed:
                continue
            new = self._class_for(node, model, warm)
            if new is cls:
                continue
            if cls is not None:
                del cls.online[node_id]
                if in_free:
                    del cls.free[node_id]
            cls = classes[model] = new
            cls.online[node_id] = None
            if in_free:
                cls.free[node_id] = None

    def refresh(self, node: NodeState, warmth_changed: bool = True) -> None:
        """Put the node in exactly the sets its current state calls for. Hot path:
        assignments and finishes call it with `warmth_changed=False` when the node's
        warm models did not change, which leaves only the free-slot flip."""
        if warmth_changed:
            self._reclass(node)
        accepting = (not node.draining and not node.benched
                     and len(node.running) < node.open_slots)
        if accepting is not node.in_free:
            node.in_free = accepting
            node_id = node.spec.node_id
            if accepting:
                for cls in node.classes.values():
                    cls.free[node_id] = None
                    cls.model_index.free_count += 1
            else:
                for cls in node.classes.values():
                    del cls.free[node_id]
                    cls.model_index.free_count -= 1
            if self.free_lists:
                for cls in node.classes.values():
                    free_list = cls.model_index.free_list
                    assert free_list is not None
                    if accepting:
                        free_list.add(node_id)
                    else:
                        free_list.discard(node_id)
        if accepting and self.load_heaps:
            for model in node.classes:
                self.models[model].push_load(node, self.nodes)
