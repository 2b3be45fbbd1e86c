# Read-only views of a scheduler's state, for status pages and clients: the
# network snapshot and the quote (cost and time before a task runs). They change
# nothing and draw no randomness; the Scheduler's `snapshot()` and `quote(spec)`
# call them.
from __future__ import annotations

from typing import Mapping

import attrs

from .catalog import MODELS, REFERENCE_GPU, default_price, gpu_rate, openai_cost
from .events import TaskSpec
from .index import NodeIndex, newest
from .placement import ScoredPolicy
from .pricing import PricingPolicy, Quote, charge, savings_pct
from .queue import ModelQueue
from .verification import Trust
from .speed import MeasuredSpeed, measured_speeds


@attrs.frozen
class NodeSnapshot:
    node_id: str
    name: str
    gpu: str
    region: str
    location: str
    slots: int
    running: int
    models: tuple[str, ...]
    loaded: tuple[str, ...]
    price_per_hour: float
    draining: bool
    last_seen: float
    tasks_done: int  # `slots` is what it may use now (earned), at most its claim
    # verification (reputation.py), when the scheduler verifies results
    reputation: float = 0.5  # the Beta posterior mean of its verified results
    verified: int = 0  # its results checked by a validator
    failed_verifications: int = 0
    quarantined: bool = False
    validator: bool = False  # it verifies others' results
    # the operator trusts it (CoordinatorConfig.trusted_nodes): a validator whose own
    # results are taken as they are, never verified, and never on probation
    trusted: bool = False
    # the probation limit (verification.py): at most this many of its tasks running
    # or held for a verdict while it is on probation or scores low; None: no limit
    probation_limit: int | None = None
    # per model it has run, its measured speed and the class that puts it in
    # (speed.py; empty unless SchedulerConfig.measured_speed or check_hardware)
    measured: tuple[MeasuredSpeed, ...] = ()

    @property
    def reclassed(self) -> bool:
        """Its measured speed contradicted its claimed GPU for some model."""
        return any(m.reclassed for m in self.measured)


@attrs.frozen
class NetworkSnapshot:
    nodes: tuple[NodeSnapshot, ...]
    queued: int
    running: int
    queued_by_model: Mapping[str, int]
    nodes_by_model: Mapping[str, int]
    counters: Mapping[str, int]
    utilization: float


def network_snapshot(index: NodeIndex, queues: Mapping[str, ModelQueue], running: int,
                     counters: Mapping[str, int], utilization: float,
                     trust: Trust | None = None) -> NetworkSnapshot:
    nodes = tuple(
        NodeSnapshot(
            n.node_id, n.spec.name, n.spec.gpu, n.spec.region, n.spec.location,
            n.slots, len(n.running), n.spec.models, tuple(n.loaded),
            n.price_per_hour, n.draining, n.last_seen, n.tasks_done, trusted=n.spec.trusted,
            measured=measured_speeds(n.spec.gpu, n.price_per_hour, n.paces, index.measured_speed,
                            index.check_hardware) if n.paces else (),
        )
        for n in index.nodes.values()
    )
    if trust is not None:
        nodes = tuple(attrs.evolve(
            n, reputation=(rep := trust.reputation.get(n.node_id)).score,
            verified=rep.verified, failed_verifications=rep.failed,
            quarantined=rep.quarantined, validator=n.node_id in trust.validators,
            probation_limit=(trust.policy.probation_tasks
                             if trust.limited(index.nodes[n.node_id]) else None))
            for n in nodes)
    return NetworkSnapshot(
        nodes=nodes,
        queued=sum(len(q) for q in queues.values()),
        running=running,
        queued_by_model={m: len(q) for m, q in queues.items()},
        nodes_by_model={m: sum(len(c.online) for c in mi.classes.values())
                        for m, mi in index.models.items()},
        counters=dict(counters),
        utilization=utilization,
    )


def quote_task(spec: TaskSpec, index: NodeIndex, queued: int, pricing: PricingPolicy,
               ranking: ScoredPolicy, utilization: float) -> Quote:
    """Cost and time for `spec` on the best class with room (or, when none has,
    after the `queued` tasks of its model ahead of it), or on the reference GPU
    when no node serves the model."""
    model = MODELS[spec.model]
    work = spec.work
    mi = index.models[spec.model]
    multiplier = pricing.multiplier(spec.priority, utilization)
    reference = openai_cost(spec.model, spec.prompt_tokens, spec.output_tokens,
                            spec.steps, spec.audio_seconds)
    ranked = ranking.ranking(mi, work, spec.priority)
    cls = next((c for c in ranked if c.free), None)
    waiting = 0.0
    if cls is None:
        cls = next((c for c in ranked if c.online), None)
        if cls is not None and mi.online_slots:
            # Everyone ahead must start first: (queued + 1) tasks over all slots.
            waiting = (queued + 1) / mi.online_slots * cls.service_seconds(work)
    if cls is None:
        rate = gpu_rate(REFERENCE_GPU, spec.model)
        seconds = model.load_seconds + work / rate
        cost = charge(default_price(REFERENCE_GPU), work / rate, multiplier)
        return Quote(cost, seconds, reference, savings_pct(cost, reference),
                     REFERENCE_GPU, None)
    node = index.nodes[newest(cls.free or cls.online)]
    cost = charge(cls.price_per_hour, cls.service_seconds(work), multiplier)
    return Quote(cost, waiting + cls.completion_seconds(work), reference,
                 savings_pct(cost, reference), cls.gpu, node.node_id,
                 node.spec.region, node.spec.location)


__all__ = ["NetworkSnapshot", "NodeSnapshot", "network_snapshot", "quote_task"]
