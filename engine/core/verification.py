# Verification of results as scheduled work: what the scheduler needs to hold a
# node's result, have another node check it, and act on the verdict.
#
# Theory of operation (the Scheduler drives it; DESIGN.md, "Verification"):
#   1. A result arrives for a task whose `verify` mode asks for it (TaskSpec.verify:
#      `always`, or `sampled` with the probability reputation.sampling_rate gives
#      the producing node) from a node the operator does not trust (an operator-
#      trusted node's results are taken as they are: Verified `skipped`; it is a
#      validator, and a network with one validator could otherwise never check its
#      results). The result is held: not delivered, not charged; the
#      producer's slot is free again. The scheduler emits Hold and creates a
#      verification job: a child task (a TaskRecord with `verifies` = the task's id)
#      whose work is the kind's `verify_fraction` (kinds.py) of the task's, with its
#      own deadline (the task's, or for `sampled` at most `job_deadline` seconds).
#   2. The job waits in a per-model queue of its own (jobs go before ordinary work:
#      each holds a finished result) and is placed on a validator: an online node
#      that serves the model, has a free slot, is trusted by the operator or has
#      earned it (reputation.py), and is not the producer. Among those the one whose
#      node class scores best for the job's work (the placement policy's class score
#      when it ranks classes, else placement.balanced_score; ties: the earliest
#      joined) is taken. A job is assigned, timed, lost with its node and re-queued
#      like any task (Assign.verifies names the task it checks).
#   3. The verdict (VerificationReported) settles the task. Passed: the held result
#      completes (Verified passed, then Complete: charged, the node paid). Failed: it
#      is not delivered nor paid; the task is re-queued, never again on that
#      producer (TaskRecord.excluded), which is charged a node loss (so a task whose
#      results keep failing ends as failed, max_node_losses); the producer's
#      reputation falls and below `quarantine_below` it is quarantined (Quarantine:
#      it takes no new work, its running tasks go elsewhere; the driver tells the
#      worker why).
#   4. No validator: a `sampled` task whose model has no eligible validator online
#      is delivered at once, Verified `unverified` ("no validator"); an `always`
#      task waits for one until its deadline, then fails naming why. A job that
#      fails or times out leaves a `sampled` result delivered as unverified, an
#      `always` one failed.
# The overhead (validator work / work of the verified tasks) is kept in `counters`.
#
# Reputation feeds placement: the probation limit (TrustPolicy.probation_tasks, K).
#   A node that is *limited* - not operator-trusted, and on probation (fewer than
#   `probation` verified results) or scoring below `limit_score` - has at most K
#   unjudged tasks at a time: running on it, or finished and held for a verdict.
#   So a newcomer (or a node that failed a check) can spoil at most K tasks before
#   a verdict on it is in; a fabricator that answers at once cannot race through
#   the queue while its first results wait for a validator (its slot is free again
#   after each result, so a cap on running tasks alone would not bound that); and
#   since its first failure quarantines it (reputation.py), a fresh identity costs
#   the network at most K spoilt runs. The limit is the index's `cap` of the node
#   (NodeIndex.limit): K - (its held results) while limited, none otherwise; the
#   free-slot test reads min(usable slots, cap), kept as one field, so placement -
#   every policy - pays nothing for it on its hot path, and a network without
#   verification runs the code it ran before. The cap is recomputed, O(1) plus the
#   index refresh (O(models the node serves)), only when it can change: the node
#   joins, a result of it is held or settled (Trust.pending), a verdict on it.
#   Honest newcomers lose little: their results are all verified during probation
#   anyway, and K (2) running-or-held tasks keep a slot busy while one waits.
#   The alternatives, and why not: a penalty on the placement score by reputation,
#   or preferring higher-reputation nodes among equal candidates, would put a per-
#   node figure into a ranking that is over node *classes* (placement.py, index.py):
#   a class per reputation value would multiply the classes (placement is
#   O(classes) when saturated), and a per-node tie-break would need a per-class
#   order by score, updated at each verdict; neither bounds what a newcomer can do.
#
# Rules: pure, no I/O; randomness only from the scheduler's rng and only drawn for a
# `sampled` task of a node whose rate is below 1 (so a run without verification, or
# with `none`, draws exactly what it drew before). Costs: the sampling decision and
# the verdict are O(1); placing a job and asking whether a validator exists are
# O(validators online).
from __future__ import annotations

import math
import random

import attrs

from .catalog import MODELS
from .events import Priority, TaskSpec, Usage, VerifyMode
from .index import NO_CAP, NodeIndex, NodeState
from .placement import ClassScore, balanced_score
from .queue import ModelQueue
from .reputation import Reputation, ReputationTable, sampling_rate


@attrs.frozen
class TrustPolicy:
    """The constants of verification and reputation (reputation.py has the
    formulas). SchedulerConfig.trust: None (the default) turns verification off."""

    probation: int = 10  # a node's first this many verified results: rate 1
    rate_floor: float = 0.05  # the lowest sampling rate after probation
    rate_gain: float = 2.0  # rate = gain x (1 - score) after probation
    quarantine_below: float = 0.5  # a failure leaving the score below this: quarantine
    validator_after: int = 20  # verified results a node needs to become a validator
    validator_score: float = 0.95  # ... and the score
    job_deadline: float = 120.0  # seconds a `sampled` task's verification may take
    # the probation limit (module top): a limited node's unjudged tasks (running or
    # held) at most this many; None: no limit
    probation_tasks: int | None = 2
    limit_score: float = 0.9  # ... limited also after probation while its score is below

    def __attrs_post_init__(self) -> None:
        if self.probation_tasks is not None and self.probation_tasks < 1:
            raise ValueError(f"probation_tasks must be at least 1 (or None: no limit), "
                             f"not {self.probation_tasks}")


@attrs.define(eq=False)
class HeldResult:
    """A result waiting for its verdict (TaskRecord.held)."""

    producer: str
    usage: Usage
    cost: float
    clamped: bool
    job_id: str


VERIFY_COUNTERS = ("held", "passed", "failed", "unverified", "skipped", "quarantined",
                   "jobs_failed")


class Trust:
    """Reputation, validators and the queues of verification jobs."""

    def __init__(self, policy: TrustPolicy, index: NodeIndex,
                 score: ClassScore = balanced_score) -> None:
        self.policy = policy
        self.index = index
        self.score = score
        self.reputation = ReputationTable()
        self.validators: dict[str, None] = {}  # online validator node ids, join order
        self.queues: dict[str, ModelQueue] = {m: ModelQueue() for m in MODELS}
        self.queued = 0
        self.jobs = 0
        self.pending: dict[str, int] = {}  # node id -> its results held for a verdict
        self.counters: dict[str, float] = dict.fromkeys(VERIFY_COUNTERS, 0)
        self.counters["validator_work"] = 0.0  # work units the validators ran
        self.counters["verified_work"] = 0.0  # work units of the results they checked

    # ---- who validates ---------------------------------------------------------

    def earned(self, rep: Reputation) -> bool:
        policy = self.policy
        return (not rep.quarantined and rep.verified >= policy.validator_after
                and rep.score >= policy.validator_score)

    def update(self, node: NodeState | None, node_id: str) -> None:
        """Whether the node (online, or None) validates now."""
        rep = self.reputation.get(node_id)
        if (node is not None and not rep.quarantined
                and (node.spec.trusted or self.earned(rep))):
            self.validators[node_id] = None
        else:
            self.validators.pop(node_id, None)

    def candidates(self, model: str, producer: str) -> list[NodeState]:
        """Online validators that serve `model`, other than the producer."""
        nodes = self.index.nodes
        out = []
        for node_id in self.validators:
            node = nodes.get(node_id)
            if node is not None and node_id != producer and model in node.classes:
                out.append(node)
        return out

    def has_validator(self, model: str, producer: str) -> bool:
        return bool(self.candidates(model, producer))

    def choose(self, model: str, work: float, priority: Priority,
               producer: str) -> NodeState | None:
        """The free validator whose class scores best for this work (module top)."""
        best: NodeState | None = None
        best_key: tuple[float, ...] = ()
        for node in self.candidates(model, producer):
            if not node.in_free:
                continue
            key = (*self.score(node.classes[model], work, priority), node.ordinal)
            if best is None or key < best_key:
                best, best_key = node, key
        return best

    # ---- the probation limit (module top) ------------------------------------------

    def limited(self, node: NodeState) -> bool:
        policy = self.policy
        if policy.probation_tasks is None or node.spec.trusted:
            return False
        rep = self.reputation.get(node.node_id)
        return rep.verified < policy.probation or rep.score < policy.limit_score

    def cap(self, node: NodeState) -> int:
        """How many tasks may run on the node now: K less its held results while
        it is limited, else no limit."""
        k = self.policy.probation_tasks
        if k is None or not self.limited(node):
            return NO_CAP
        return k - self.pending.get(node.node_id, 0)

    def relimit(self, node_id: str) -> None:
        """Apply the node's cap to the index (if it is online)."""
        node = self.index.nodes.get(node_id)
        if node is not None:
            self.index.limit(node, self.cap(node))

    def held(self, producer: str, delta: int) -> None:
        """One more (+1) or one fewer (-1) result of the producer is held."""
        pending = self.pending
        count = pending.get(producer, 0) + delta
        if count:
            pending[producer] = count
        else:
            pending.pop(producer, None)
        if self.policy.probation_tasks is not None:
            self.relimit(producer)

    # ---- what is verified ------------------------------------------------------

    def rate(self, node_id: str) -> float:
        policy = self.policy
        return sampling_rate(self.reputation.get(node_id), policy.probation,
                             policy.rate_floor, policy.rate_gain)

    def sampled(self, node_id: str, rng: random.Random) -> tuple[bool, float]:
        """Whether a `sampled` result of the node is verified, and the rate drawn
        against (no draw when the rate is 1)."""
        rate = self.rate(node_id)
        return (rate >= 1.0 or rng.random() < rate), rate

    def job_spec(self, parent: TaskSpec, now: float) -> TaskSpec:
        """The verification job of `parent`'s result: the same model, priority and
        owner, the kind's fraction of its work, and its own deadline."""
        self.jobs += 1
        deadline = parent.deadline
        if parent.verify == VerifyMode.SAMPLED:
            deadline = min(deadline, now + self.policy.job_deadline)
        fraction = MODELS[parent.model].kind.verify_fraction
        return TaskSpec(f"{parent.task_id}/verify-{self.jobs}", parent.model,
                        parent.priority, deadline=deadline, owner=parent.owner,
                        work=parent.work * fraction)

    # ---- the verdict ------------------------------------------------------------

    def judged(self, producer: str, passed: bool, job_work: float,
               task_work: float) -> str:
        """Record a verdict on the producer's result; the reason to quarantine it
        now, or "" (no quarantine, or already quarantined)."""
        counters = self.counters
        counters["passed" if passed else "failed"] += 1
        counters["validator_work"] += job_work
        counters["verified_work"] += task_work
        rep = self.reputation.record(producer, passed)
        if self.policy.probation_tasks is not None:
            self.relimit(producer)  # its score and count moved
        if passed or rep.quarantined or rep.score >= self.policy.quarantine_below:
            self.update(self.index.nodes.get(producer), producer)
            return ""
        reason = (f"quarantined: {rep.failed} of {rep.verified} verified results failed "
                  f"verification (reputation {rep.score:.2f} < "
                  f"{self.policy.quarantine_below:g})")
        self.reputation.quarantine(producer, reason)
        self.validators.pop(producer, None)
        counters["quarantined"] += 1
        return reason

    @property
    def overhead(self) -> float:
        """Validator work as a share of the work of the results it checked."""
        verified = self.counters["verified_work"]
        return self.counters["validator_work"] / verified if verified else math.nan


__all__ = ["HeldResult", "TrustPolicy", "Trust", "VERIFY_COUNTERS"]
