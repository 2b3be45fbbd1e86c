# Simulated nodes and the simulator's view of a task in flight.
#
# Theory of a simulated node. A node is what a worker process would be: it joins
# with a NodeSpec (GPU class, VRAM, models, slots, price, region), runs what the
# Scheduler assigns to it and reports each result after
#     network latency of its region + (model load time if the Assign says cold)
#     + service time,
# where the service time is the task's work over the GPU class's rate for the model
# (catalog), times the task's noise factor (lognormal, mean 1, cv = service_noise),
# unless the workload gives a service-time distribution, which then wins. Both the
# work and the noise are drawn when the task arrives, so a task is equally big on
# every policy; only the GPU it lands on changes its service time.
#
# Failures are a renewal process per node: up for Exp(mtbf), then lost abruptly
# (NodeLost; its tasks are requeued by the core), down for Exp(mttr), then it rejoins
# cold. Churn is a second process: online for Exp(session_mean), then it drains
# (NodeDraining: finishes what it runs, takes nothing new), leaves (NodeLost,
# reason "left") and comes back after Exp(away_mean). `epoch` counts a node's
# sessions: a timer set in an earlier session is stale and ignored. A replayed
# journal's node (scenario.ScriptedNode) has no random timers: it joins at
# `join_at` and is lost or drains when its `script` says, once.
#
# Rules: plain mutable records (attrs define, slots); the event loop owns them.
from __future__ import annotations

import math
import random

import attrs

from engine.core import GPU_CLASSES, MODELS, NodeSpec, TaskSpec, gpu_rate

from .scenario import NodeGroup, Scenario

GPU_NAMES = tuple(GPU_CLASSES)
LOAD_SECONDS = {name: spec.load_seconds for name, spec in MODELS.items()}


@attrs.define(eq=False)
class SimNode:
    node_id: str
    spec: NodeSpec  # as it joins the first time (warm when the group says so)
    group: NodeGroup
    gpu_index: int
    latency: float  # seconds, round trip to its region
    rates: dict[str, float]  # model -> work units per second
    rng: random.Random | None  # its failure and churn timers (None: it has none)
    join_at: float = 0.0  # when it first joins
    script: tuple[tuple[float, str], ...] = ()  # recorded (time, "lost" | "drain")
    online: bool = False
    leaving: bool = False
    running: int = 0
    epoch: int = 0
    online_since: float = 0.0

    def rejoin_spec(self) -> NodeSpec:
        """After a restart every model is cold."""
        return attrs.evolve(self.spec, loaded=())

    def _exponential(self, mean: float) -> float:
        """An exponential draw of `mean` seconds; never (inf) without a stream or an
        infinite mean."""
        return self.rng.expovariate(1.0 / mean) if self.rng and mean < math.inf else math.inf

    def time_to_failure(self) -> float:
        return self._exponential(self.group.mtbf)

    def time_to_repair(self) -> float:
        return self._exponential(self.group.mttr)

    def time_to_leave(self) -> float:
        return self._exponential(self.group.session_mean)

    def time_away(self) -> float:
        return self._exponential(self.group.away_mean)


@attrs.define(eq=False)
class SimTask:
    """A task from its submission until it ends."""

    spec: TaskSpec
    submitted: float
    work: float  # catalog work units
    service: float  # seconds when the workload overrides the performance model, else -1
    noise: float  # multiplicative factor on work / rate
    measured: bool  # submitted inside [warmup, duration]
    queued_since: float
    waited: float = 0.0
    run: int = 0  # bumped at every assignment and every interruption
    node: SimNode | None = None
    busy_start: float = 0.0  # the current run's GPU time: [busy_start, busy_end]
    busy_end: float = 0.0
    service_seconds: float = 0.0  # of the current run, without the cold load


def gpu_names(scenario: Scenario) -> tuple[str, ...]:
    """The GPU names a run reports utilization by (`SimNode.gpu_index` indexes it):
    the catalog's classes, then any other name a replayed journal's nodes announced
    (e.g. "cpu"; the catalog treats those as its slowest class)."""
    others = {n.spec.gpu for n in scenario.scripted_nodes} - set(GPU_NAMES)
    return GPU_NAMES + tuple(sorted(others))


def build_fleet(scenario: Scenario, seed: int) -> list[SimNode]:
    """Every node of every group, in file order; ids are `g{group}n{index}`. Then the
    scripted nodes of a journal replay, each session its own node (a node that came
    back is `{id}~{k}` from its second session on), with no random timers."""
    index = {name: i for i, name in enumerate(gpu_names(scenario))}
    nodes = []
    for g, group in enumerate(scenario.nodes):
        price = group.price_per_hour
        latency = scenario.region_latency.get(group.region, 0.0)
        rates = {m: gpu_rate(group.gpu, m) * group.speed for m in group.models}
        warm = warm_models(group)
        timed = group.mtbf < math.inf or group.session_mean < math.inf
        for i in range(group.count):
            node_id = f"g{g}n{i}"
            spec = NodeSpec(
                node_id=node_id, gpu=group.gpu, vram_gb=group.vram_gb, models=group.models,
                slots=group.slots, price_per_hour=price, region=group.region,
                loaded=warm, name=node_id, trusted=group.trusted,
            )
            rng = random.Random(f"{seed}/node/{node_id}") if timed else None
            nodes.append(SimNode(node_id, spec, group, index[group.gpu], latency, rates, rng))
    sessions: dict[str, int] = {}
    for scripted in scenario.scripted_nodes:
        spec = scripted.spec
        k = sessions[spec.node_id] = sessions.get(spec.node_id, 0) + 1
        if k > 1:
            spec = attrs.evolve(spec, node_id=f"{spec.node_id}~{k}")
        group = NodeGroup(1, spec.gpu, spec.region, spec.slots, spec.price_per_hour,
                          spec.vram_gb, spec.models)
        script = tuple(sorted((t, what) for t, what in (
            (scripted.lost, "lost"), (scripted.drain, "drain")) if t < math.inf))
        nodes.append(SimNode(
            spec.node_id, spec, group, index[spec.gpu],
            scenario.region_latency.get(spec.region, 0.0),
            {m: gpu_rate(spec.gpu, m) for m in spec.models if m in MODELS}, None,
            scripted.join, script))
    return nodes


def warm_models(group: NodeGroup) -> tuple[str, ...]:
    """The models a warm node starts with: its models in order, while they fit."""
    if not group.warm:
        return ()
    loaded: list[str] = []
    used = 0.0
    for model in group.models:
        if used + MODELS[model].vram_gb <= group.vram_gb:
            loaded.append(model)
            used += MODELS[model].vram_gb
    return tuple(loaded)
