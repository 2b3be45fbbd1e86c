# The verification steps of the Scheduler (a base class of it): holding a result,
# placing its verification job on a validator, and acting on the verdict. The flow,
# its rules and its costs are verification.py's module comment; this module is the
# part of the Scheduler that carries them out, kept apart so that scheduler.py
# stays about the task lifecycle. The lifecycle steps it uses (_detach, _end,
# _requeue, _assign, _add_record, _running_on, _on_draining) are declared here and
# defined by the Scheduler (_assign) and its bases before this one in its method
# resolution order (lifecycle.py, handlers.py), which override these declarations.
#
# Rules: those of the Scheduler (no I/O, no clocks; randomness from self.rng).
from __future__ import annotations

import random

from .events import (
    Cancel, Complete, Decision, Fail, Hold, NodeDraining, Quarantine, TaskSpec, TaskState,
    Usage, VerificationReported, Verified, VerifyMode,
)
from .index import ModelIndex, NodeIndex, NodeState
from .placement import PlacementPolicy
from .state import SchedulerConfig, TaskRecord
from .verification import HeldResult, Trust

Q, R = TaskState.QUEUED, TaskState.RUNNING


class VerificationSteps:
    tasks: dict[str, TaskRecord]
    trust: Trust | None
    rng: random.Random
    config: SchedulerConfig
    index: NodeIndex
    policy: PlacementPolicy

    # ---- defined by the Scheduler -------------------------------------------------

    def _detach(self, record: TaskRecord) -> NodeState | None:
        raise NotImplementedError

    def _end(self, record: TaskRecord, to: TaskState, now: float) -> None:
        raise NotImplementedError

    def _requeue(self, record: TaskRecord, reason: str, out: list[Decision]) -> None:
        raise NotImplementedError

    def _assign(self, record: TaskRecord, node: NodeState, now: float,
                out: list[Decision]) -> None:
        raise NotImplementedError

    def _add_record(self, spec: TaskSpec, key: float, now: float) -> TaskRecord:
        raise NotImplementedError

    def _running_on(self, task_id: str, node_id: str) -> TaskRecord | None:
        raise NotImplementedError

    def _on_draining(self, event: NodeDraining, now: float, out: list[Decision]) -> None:
        raise NotImplementedError

    # ---- the steps -------------------------------------------------------------------


    def _hold(self, record: TaskRecord, producer: str, usage: Usage, cost: float,
              clamped: bool, now: float, out: list[Decision]) -> bool:
        """Hold the result for verification, or say (Verified) why it goes out
        unchecked; True when held."""
        trust = self.trust
        assert trust is not None
        spec = record.spec
        task_id = spec.task_id
        node = self.index.nodes.get(producer)
        if node is not None and node.spec.trusted:
            trust.counters["skipped"] += 1
            out.append(Verified(task_id, "skipped", producer,
                                detail="produced by an operator-trusted node"))
            return False
        if spec.verify == VerifyMode.SAMPLED:
            chosen, rate = trust.sampled(producer, self.rng)
            if not chosen:
                trust.counters["skipped"] += 1
                out.append(Verified(task_id, "skipped", producer,
                                    detail=f"not sampled (rate {rate:.3g})"))
                return False
            if not trust.has_validator(spec.model, producer):
                trust.counters["unverified"] += 1
                out.append(Verified(task_id, "unverified", producer,
                                    detail=f"no validator serving {spec.model} was online"))
                return False
        job_spec = trust.job_spec(spec, now)
        self._detach(record)  # the producer's slot is free; the task stays running
        record.run = 0  # its run is over: its execution timer is stale (runs count from 1)
        record.held = HeldResult(producer, usage, cost, clamped, job_spec.task_id)
        trust.held(producer, +1)
        job = self._add_record(job_spec, record.key, now)
        job.verifies = task_id
        trust.queues[spec.model].push(job_spec.task_id, job.key, job.seq)
        trust.queued += 1
        trust.counters["held"] += 1
        out.append(Hold(task_id, producer, job_spec.task_id))
        return True

    def _place_jobs(self, now: float, out: list[Decision]) -> None:
        """Place queued verification jobs on validators, per model in queue order."""
        trust = self.trust
        assert trust is not None
        for model, queue in trust.queues.items():
            while queue:
                job_id = queue.peek()
                if job_id is None:
                    break
                job = self.tasks[job_id]
                parent = self.tasks.get(job.verifies or "")
                held = parent.held if parent is not None else None
                node = trust.choose(model, job.work, job.priority,
                                    held.producer if held is not None else "")
                if node is None:
                    break
                queue.pop_peeked()
                trust.queued -= 1
                self._assign(job, node, now, out)

    def _on_verdict(self, event: VerificationReported, now: float,
                    out: list[Decision]) -> None:
        job = self._running_on(event.task_id, event.node_id)
        if job is None or job.verifies is None or self.trust is None:
            return
        parent = self.tasks.get(job.verifies)
        self._end(job, TaskState.COMPLETED, now)
        if parent is None or parent.held is None or parent.held.job_id != event.task_id:
            return
        held = parent.held
        if not event.passed:
            self._unhold(parent)  # (a pass is released below, which unholds it)
        reason = self.trust.judged(held.producer, event.passed, job.work, parent.work)
        if event.passed:
            self._release(parent, Verified(parent.spec.task_id, "passed", held.producer,
                                           event.node_id, event.score, event.detail),
                          now, out)
            return
        if parent.excluded is None:
            parent.excluded = set()
        parent.excluded.add(held.producer)
        parent.node_losses += 1  # charged to the producer, not to the task's attempts
        parent.attempts -= 1
        rerun = parent.node_losses < self.config.max_node_losses
        out.append(Verified(parent.spec.task_id, "failed", held.producer, event.node_id,
                            event.score, event.detail, rerun=rerun))
        if not rerun:
            parent.error = f"its result failed verification {parent.node_losses} times"
            self._end(parent, TaskState.FAILED, now)
            out.append(Fail(parent.spec.task_id, parent.error, held.producer))
        else:
            self._requeue(parent, f"its result failed verification ({event.detail})", out)
        if reason:
            self._quarantine(held.producer, reason, now, out)

    def _release(self, record: TaskRecord, verified: Verified, now: float,
                 out: list[Decision]) -> None:
        """Deliver a held result: it completes, charged, its producer paid."""
        held = self._unhold(record)
        record.cost = held.cost
        out.append(verified)
        self._end(record, TaskState.COMPLETED, now)
        out.append(Complete(record.spec.task_id, held.producer, held.cost, held.usage,
                            held.clamped))

    def _unhold(self, record: TaskRecord) -> HeldResult:
        """The task's held result is settled (delivered, failed or dropped): it no
        longer counts against its producer's probation limit."""
        held = record.held
        assert held is not None and self.trust is not None
        record.held = None
        self.trust.held(held.producer, -1)
        return held

    def _job_failed(self, job: TaskRecord, to: TaskState, reason: str, now: float,
                    out: list[Decision]) -> None:
        """A verification job ended without a verdict: a `sampled` task is delivered
        unverified, an `always` one fails."""
        if job.state is R and to is TaskState.EXPIRED and job.node_id is not None:
            out.append(Cancel(job.spec.task_id, job.node_id))
        self._end(job, to, now)
        parent = self.tasks.get(job.verifies or "")
        if (parent is None or parent.held is None
                or parent.held.job_id != job.spec.task_id):
            return
        self._unverified(parent, f"its verification did not complete: {reason}", now, out)

    def _unverified(self, record: TaskRecord, why: str, now: float,
                    out: list[Decision]) -> None:
        held = record.held
        assert held is not None and self.trust is not None
        self.trust.counters["unverified"] += 1
        task_id = record.spec.task_id
        if record.spec.verify == VerifyMode.SAMPLED:
            self._release(record, Verified(task_id, "unverified", held.producer,
                                           detail=why), now, out)
            return
        out.append(Verified(task_id, "unverified", held.producer, detail=why))
        self._unhold(record)
        record.error = f"its result could not be verified: {why}"
        self._end(record, TaskState.FAILED, now)
        out.append(Fail(task_id, record.error, held.producer))

    def _held_expired(self, record: TaskRecord, now: float, out: list[Decision]) -> None:
        """The deadline of a task whose result waits for a verdict."""
        held = record.held
        assert held is not None and self.trust is not None
        job = self.tasks.get(held.job_id)
        waiting = job is not None and job.state is Q
        why = (f"no validator serving {record.model} was available before the deadline"
               if waiting else "the deadline passed before the verdict")
        self._drop_job(record, now, out)
        self._unverified(record, why, now, out)

    def _drop_job(self, record: TaskRecord, now: float, out: list[Decision]) -> None:
        """End the verification job of a held task that ends otherwise."""
        held = record.held
        job = self.tasks.get(held.job_id) if held is not None else None
        if job is not None and not job.state.is_final:
            if job.state is R and job.node_id is not None:
                out.append(Cancel(job.spec.task_id, job.node_id))
            self._end(job, TaskState.CANCELLED, now)

    def _quarantine(self, node_id: str, reason: str, now: float,
                    out: list[Decision]) -> None:
        """The node takes no new work (as if draining); its running tasks go
        elsewhere. It stays connected so that its operator is told why."""
        out.append(Quarantine(node_id, reason))
        node = self.index.nodes.get(node_id)
        if node is None:
            return
        for task_id in sorted(node.running, key=lambda t: self.tasks[t].seq):
            record = self.tasks[task_id]
            record.attempts -= 1  # not the task's fault
            self._requeue(record, "its node was quarantined", out)
        self._on_draining(NodeDraining(node_id), now, out)

    def _trust_joined(self, node: NodeState, now: float, out: list[Decision]) -> None:
        trust = self.trust
        assert trust is not None
        rep = trust.reputation.get(node.node_id)
        if rep.quarantined:
            out.append(Quarantine(node.node_id, rep.reason))
            self._on_draining(NodeDraining(node.node_id), now, out)
        trust.update(node, node.node_id)
        if trust.policy.probation_tasks is not None:
            trust.relimit(node.node_id)

    def _choose_excluding(self, record: TaskRecord, mi: ModelIndex) -> NodeState | None:
        """The policy's choice among the free nodes, leaving out the task's excluded
        ones (hidden from the free sets for the call: O(excluded))."""
        excluded = record.excluded or set()
        hidden: list[NodeState] = []
        node = self.policy.choose(record, mi, self.index, self.rng)
        while node is not None and node.node_id in excluded:
            self.index.bench(node, True)
            hidden.append(node)
            node = self.policy.choose(record, mi, self.index, self.rng)
        for other in hidden:
            self.index.bench(other, False)
        return node


__all__ = ["VerificationSteps"]
