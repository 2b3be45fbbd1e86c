# Adversaries and verification in the simulator: what a dishonest node does with a
# share of its tasks, how likely a verification job is to catch it, and what a run
# reports about it.
#
# Theory. A node group may be given a behaviour and a fraction (scenario.py,
# [[nodes]] behaviour / fraction): that share of its runs, drawn per run from the
# node's own stream, goes wrong in the behaviour's way (BEHAVIOURS):
#   fabricate   the output is invented (random text): wrong
#   substitute  the output comes from another (cheaper) model: wrong
#   inflate     the output is right but the reported usage is `INFLATE_FACTOR` times
#               the real one (the client is overcharged unless the charge bound or
#               metering stops it; output verification does not see it)
#   drop        the task is dropped: the node reports it failed (retryable), as a
#               live coordinator learns from the node's heartbeat
# The [verification] table turns the core's verification on (SchedulerConfig.trust,
# with its TrustPolicy constants) and sets every task's verify mode. The core then
# holds results and schedules verification jobs on validators (groups with
# `trusted = true`, or nodes that earn it) exactly as it does live; the simulated
# validator's verdict on a wrong result is "failed" with the behaviour's detection
# probability (`detection`; DEFAULT_DETECTION when not given), and on a right one
# "failed" with `false_positive` (0 by default). Draws come from the run's own
# stream (`{seed}/verification`), so they do not disturb any other stream.
#
# What a run reports (`trust`, only for a scenario with [verification]): results
# produced wrong, wrong results delivered unflagged (completed as passed or
# skipped) and flagged (completed as unverified), overcharged completions, the
# verification overhead (validator work / work of the verified results, and /
# work of every delivered result), and per adversary node the time and the tasks
# it ran until its quarantine.
#
# Rules: pure data here and in the handlers (no clocks, no global randomness); a
# scenario without [verification] never reaches this module's handlers, so its
# runs decide and report exactly as before.
from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping

import attrs

from engine.core import (
    MODELS, Assign, Cancel, Cancelled, Complete, Event, Expire, Fail, Hold, Quarantine,
    Requeue, TaskFailed, TaskFinished, TaskSpec, TrustPolicy, Usage, VerificationReported,
    Verified,
)


@attrs.frozen
class Behaviour:
    wrong: bool = False  # its output is wrong
    usage_factor: float = 1.0  # reported usage / real usage
    drops: bool = False  # it reports the task failed instead of running it


INFLATE_FACTOR = 3.0
BEHAVIOURS: dict[str, Behaviour] = {
    "fabricate": Behaviour(wrong=True),
    "substitute": Behaviour(wrong=True),
    "inflate": Behaviour(usage_factor=INFLATE_FACTOR),
    "drop": Behaviour(drops=True),
}
# The probability that a verification job fails a result of the behaviour. Random
# text fails a teacher-forced check of the real model almost surely; another
# model's text is far less likely under the requested model's distribution, but a
# small model imitating a larger one on easy prompts can pass; usage inflation and
# dropping leave the output right (nothing for a validator to see).
DEFAULT_DETECTION: Mapping[str, float] = {"fabricate": 0.99, "substitute": 0.9,
                                          "inflate": 0.0, "drop": 0.0}


@attrs.frozen
class Verification:
    """A scenario's [verification] table."""

    mode: str = "sampled"  # every task's TaskSpec.verify
    policy: TrustPolicy = TrustPolicy()
    detection: Mapping[str, float] = attrs.field(factory=lambda: dict(DEFAULT_DETECTION))
    false_positive: float = 0.0  # a right result failed by its validator


@attrs.define(eq=False)
class RunOutcome:
    """What the model knows of one run of a task: whether its output is wrong."""

    behaviour: str
    wrong: bool
    overcharged: bool


class AdversaryModel:
    """The adversaries and validators of one run; `finish` is the node's report of
    a run (the loop's report item), `handlers` the carry-out of the verification
    decisions (and of jobs' Assign, Requeue and Cancel)."""

    def __init__(self, verification: Verification, nodes: Mapping[str, Any],
                 tasks: dict[str, Any], seed: int,
                 make_job: Callable[[TaskSpec, Any, float], Any],
                 release: Callable[[Any, float], Any],
                 gone: Callable[[Any, float], None]) -> None:
        self.verification = verification
        self.nodes = nodes
        self.tasks = tasks  # the carry-out's open tasks
        self.make_job = make_job  # (job spec, its task's SimTask, now) -> a SimTask
        self.release = release  # carry.CarryOut.release: the node is done with a task
        self.gone = gone  # carry.Timers.gone: a draining node with nothing left leaves
        # tasks whose result is held: their node's slot was given back at the Hold
        # (as the core does); the task keeps its node for the statistics
        self.held: set[str] = set()
        self.rng = random.Random(f"{seed}/verification")
        self.jobs: dict[str, Any] = {}  # open verification jobs' SimTasks
        self.parent_of: dict[str, str] = {}  # job -> the task it checks
        self.job_of: dict[str, str] = {}  # task -> its job now
        self.outcome: dict[str, RunOutcome] = {}  # task -> its latest run's outcome
        self.verdicts: dict[str, str] = {}  # task -> its latest Verified status
        self.node_runs: dict[str, int] = {}  # adversary node -> runs reported
        self.quarantined: dict[str, tuple[float, int]] = {}  # node -> (when, its runs)
        self.counters: dict[str, float] = dict.fromkeys((
            "wrong_results", "wrong_delivered_unflagged", "wrong_delivered_flagged",
            "overcharged_delivered", "dropped", "results", "delivered",
            "false_quarantines", "delivered_work"), 0)

    # ---- the node's report ---------------------------------------------------------

    def finish(self, task: Any, run: int, now: float) -> Event | None:
        node = task.node
        if node is None or task.run != run:
            return None
        spec = task.spec
        parent_id = self.parent_of.get(spec.task_id)
        if parent_id is not None:  # a verification job: the validator's verdict
            return VerificationReported(spec.task_id, node.node_id, self._passes(parent_id))
        behaviour = node.group.behaviour
        seconds = task.service_seconds
        outcome = RunOutcome("", False, False)
        if behaviour:
            self.node_runs[node.node_id] = self.node_runs.get(node.node_id, 0) + 1
            if self.rng.random() < node.group.fraction:
                effect = BEHAVIOURS[behaviour]
                if effect.drops:
                    self.counters["dropped"] += 1
                    return TaskFailed(spec.task_id, node.node_id, "the node dropped the task")
                outcome = RunOutcome(behaviour, effect.wrong, effect.usage_factor > 1.0)
                seconds *= effect.usage_factor
                self.counters["wrong_results"] += effect.wrong
        self.counters["results"] += 1
        self.outcome[spec.task_id] = outcome
        return TaskFinished(spec.task_id, node.node_id, Usage(
            seconds, spec.output_tokens, spec.prompt_tokens, spec.steps, spec.audio_seconds))

    def _passes(self, parent_id: str) -> bool:
        outcome = self.outcome.get(parent_id)
        if outcome is not None and outcome.wrong:
            return self.rng.random() >= self.verification.detection[outcome.behaviour]
        return self.rng.random() >= self.verification.false_positive

    # ---- carrying out ----------------------------------------------------------------

    def handlers(self, base: Mapping[type, Callable[[Any, float], None]]
                 ) -> dict[type, Callable[[Any, float], None]]:
        """The carry-out's table with verification: `base` (carry.CarryOut's) for
        ordinary tasks, these for jobs and the verification decisions."""
        assign, requeue, complete = base[Assign], base[Requeue], base[Complete]
        cancel = base[Cancel]

        def on_assign(d: Assign, now: float) -> None:
            if d.verifies is None:
                assign(d, now)
            else:
                self._with_job(d.task_id, assign, d, now)

        def on_requeue(d: Requeue, now: float) -> None:
            if d.task_id in self.jobs:
                job = self.jobs[d.task_id]
                self.release(job, now)
                job.run += 1
                job.queued_since = now
            else:
                self._unhold(d.task_id)
                requeue(d, now)

        def on_cancel(d: Cancel, now: float) -> None:
            job = self.jobs.pop(d.task_id, None)
            if job is None:
                cancel(d, now)
            else:
                self.release(job, now)
                self.job_of.pop(self.parent_of.pop(d.task_id, ""), None)

        def on_complete(d: Complete, now: float) -> None:
            self._delivered(d.task_id)
            self._unhold(d.task_id)
            complete(d, now)

        return {**base, Assign: on_assign, Requeue: on_requeue, Cancel: on_cancel,
                Complete: on_complete, Hold: self._on_hold, Verified: self._on_verified,
                Quarantine: self._on_quarantine, Fail: self._wrap_end(base[Fail]),
                Expire: self._wrap_end(base[Expire]), Cancelled: self._wrap_end(base[Cancelled])}

    def _with_job(self, job_id: str, assign: Callable[[Any, float], None], d: Assign,
                  now: float) -> None:
        # the base Assign handler reads the task from the open tasks: lend it the job
        self.tasks[job_id] = self.jobs[job_id]
        try:
            assign(d, now)
        finally:
            del self.tasks[job_id]

    def _wrap_end(self, handler: Callable[[Any, float], None]) -> Callable[[Any, float], None]:
        def on_end(d: Fail | Expire | Cancelled, now: float) -> None:
            self.outcome.pop(d.task_id, None)
            self.verdicts.pop(d.task_id, None)
            self._unhold(d.task_id)
            handler(d, now)
        return on_end

    def _unhold(self, task_id: str) -> None:
        """A held task's end or requeue is about to give its node's slot back: it
        was given back at the Hold already."""
        if task_id in self.held:
            self.held.discard(task_id)
            node = self.tasks[task_id].node
            if node is not None:
                node.running += 1

    def _on_hold(self, d: Hold, now: float) -> None:
        parent = self.tasks[d.task_id]
        node = parent.node
        if node is not None:
            self.held.add(d.task_id)
            node.running -= 1
            if node.leaving and node.running == 0:
                self.gone(node, now)
        fraction = MODELS[parent.spec.model].kind.verify_fraction
        spec = TaskSpec(d.job_id, parent.spec.model, parent.spec.priority,
                        work=parent.work * fraction)
        self.jobs[d.job_id] = self.make_job(spec, parent, now)
        self.parent_of[d.job_id] = d.task_id
        self.job_of[d.task_id] = d.job_id

    def _on_verified(self, d: Verified, now: float) -> None:
        self.verdicts[d.task_id] = d.status
        job_id = self.job_of.pop(d.task_id, None)
        if job_id is not None:
            self.parent_of.pop(job_id, None)
            job = self.jobs.pop(job_id, None)
            if job is not None:
                self.release(job, now)

    def _on_quarantine(self, d: Quarantine, now: float) -> None:
        if d.node_id not in self.quarantined:
            node = self.nodes[d.node_id]
            if not node.group.behaviour:
                self.counters["false_quarantines"] += 1
            self.quarantined[d.node_id] = (now, self.node_runs.get(d.node_id, 0))

    def _delivered(self, task_id: str) -> None:
        counters = self.counters
        counters["delivered"] += 1
        counters["delivered_work"] += self.tasks[task_id].work
        outcome = self.outcome.pop(task_id, None)
        status = self.verdicts.pop(task_id, "")
        if outcome is None:
            return
        if outcome.wrong:
            counters["wrong_delivered_flagged" if status == "unverified"
                     else "wrong_delivered_unflagged"] += 1
        if outcome.overcharged:
            counters["overcharged_delivered"] += 1

    # ---- the report -------------------------------------------------------------------

    def report(self, trust_counters: Mapping[str, float], overhead: float,
               join_times: Mapping[str, float]) -> dict[str, Any]:
        """The run's `trust` section (sim/README.md, "Output")."""
        counters = self.counters
        adversaries = [n for n, node in self.nodes.items() if node.group.behaviour]
        times = [self.quarantined[n][0] - join_times.get(n, 0.0)
                 for n in adversaries if n in self.quarantined]
        runs = [self.quarantined[n][1] for n in adversaries if n in self.quarantined]
        wrong = counters["wrong_results"]
        return {
            "mode": self.verification.mode,
            "results": int(counters["results"]),
            "wrong_results": int(wrong),
            "wrong_delivered_unflagged": int(counters["wrong_delivered_unflagged"]),
            "wrong_delivered_flagged": int(counters["wrong_delivered_flagged"]),
            "wrong_delivered_unflagged_share": (
                counters["wrong_delivered_unflagged"] / wrong if wrong else 0.0),
            "overcharged_delivered": int(counters["overcharged_delivered"]),
            "dropped": int(counters["dropped"]),
            "verified": int(trust_counters["passed"] + trust_counters["failed"]),
            "failed_verification": int(trust_counters["failed"]),
            "unverified": int(trust_counters["unverified"]),
            "overhead": overhead if not math.isnan(overhead) else 0.0,
            "overhead_of_all_work": (trust_counters["validator_work"]
                                     / counters["delivered_work"]
                                     if counters["delivered_work"] else 0.0),
            "adversary_nodes": len(adversaries),
            "quarantined_adversaries": len(runs),
            "false_quarantines": int(counters["false_quarantines"]),
            # NaN (null in JSON) when no adversary was quarantined
            "mean_seconds_to_quarantine": sum(times) / len(times) if times else math.nan,
            "max_tasks_to_quarantine": max(runs) if runs else math.nan,
            "mean_tasks_to_quarantine": sum(runs) / len(runs) if runs else math.nan,
        }


__all__ = ["AdversaryModel", "BEHAVIOURS", "Behaviour", "DEFAULT_DETECTION", "INFLATE_FACTOR",
           "RunOutcome", "Verification"]
