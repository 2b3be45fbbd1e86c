"""Verification of results as scheduled work (engine/core/verification.py): held
results, verification jobs on validators, verdicts, reputation and quarantine."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import (
    MODELS, Assign, Cancel, Complete, Fail, Hold, NodeJoined, NodeLost, NodeSpec, Quarantine,
    Requeue, Reputation, Scheduler, SchedulerConfig, TaskCancelled, TaskFinished, TaskSpec,
    TaskSubmitted,
    Tick, TrustPolicy, Usage, VerificationReported, Verified, VerifyMode, sampling_rate,
)
from engine.core.journal import JournalHeader, header_line, parse_line

LLAMA = "llama2:7b"
USAGE = Usage(2.0, tokens=100)


def sched(policy: TrustPolicy | None = TrustPolicy(), **config) -> Scheduler:
    config.setdefault("heartbeat_timeout", math.inf)
    return Scheduler("fastest", rng=random.Random(0),
                     config=SchedulerConfig(trust=policy, **config))


def join(s: Scheduler, node_id: str, trusted=False, now=0.0, slots=1, gpu="RTX 3090"):
    return s.handle(NodeJoined(NodeSpec(node_id, gpu, 80.0, (LLAMA,), slots,
                                        trusted=trusted)), now)


def submit(s: Scheduler, task_id: str, verify="always", now=0.0, **kw):
    kw.setdefault("output_tokens", 100)
    return s.handle(TaskSubmitted(TaskSpec(task_id, LLAMA, verify=verify, **kw)), now)


def of(kind, decisions):
    return [d for d in decisions if isinstance(d, kind)]


def finish(s: Scheduler, task_id: str, node_id: str, now=1.0):
    return s.handle(TaskFinished(task_id, node_id, USAGE), now)


def test_reputation_is_the_beta_posterior_mean():
    assert Reputation().score == 0.5
    assert Reputation(passed=3, failed=1).score == pytest.approx(4 / 6)
    # probation: every result verified; after it the rate falls with the score
    assert sampling_rate(Reputation(passed=9), 10, 0.05, 2.0) == 1.0
    assert sampling_rate(Reputation(passed=10), 10, 0.05, 2.0) == pytest.approx(2 / 12)
    assert sampling_rate(Reputation(passed=1000), 10, 0.05, 2.0) == 0.05
    assert sampling_rate(Reputation(passed=10, failed=10), 10, 0.05, 2.0) == 1.0


def test_a_verified_result_is_held_then_delivered_on_a_pass():
    s = sched()
    join(s, "validator", trusted=True)
    join(s, "worker")
    assigned = of(Assign, submit(s, "t"))
    producer = assigned[0].node_id
    out = finish(s, "t", producer)
    assert not of(Complete, out)  # held: not delivered, not charged
    [hold] = of(Hold, out)
    [job] = of(Assign, out)
    other = "worker" if producer == "validator" else "validator"
    assert job.node_id == other and job.verifies == "t" and job.task_id == hold.job_id
    assert s.task("t").state.value == "running"
    # the job's work is the kind's fraction of the task's
    assert s.task(job.task_id).work == pytest.approx(
        s.task("t").work * MODELS[LLAMA].kind.verify_fraction)
    out = s.handle(VerificationReported(job.task_id, other, True, 0.99, "ok"), 2.0)
    [verified] = of(Verified, out)
    assert (verified.status, verified.validator, verified.producer) == ("passed", other, producer)
    [complete] = of(Complete, out)
    assert complete.node_id == producer and complete.cost > 0
    assert s.task("t").state.value == "completed"
    assert s.trust.reputation.get(producer).passed == 1


def test_a_failed_result_is_rerun_elsewhere_and_its_producer_quarantined():
    s = sched()
    join(s, "validator", trusted=True, slots=2)
    join(s, "bad", gpu="RTX 4090")  # the fastest class: the policy places there first
    join(s, "good")
    [a] = of(Assign, submit(s, "t"))
    assert a.node_id == "bad"
    [job] = of(Assign, finish(s, "t", "bad"))
    assert job.node_id == "validator"
    out = s.handle(VerificationReported(job.task_id, "validator", False, 0.1, "mismatch"), 2.0)
    assert not of(Complete, out)
    [verified] = of(Verified, out)
    assert verified.status == "failed" and verified.rerun
    assert of(Requeue, out)[0].task_id == "t"
    # a newcomer whose first verified result fails: score 1/3 < 0.5
    [q] = of(Quarantine, out)
    assert q.node_id == "bad" and "1 of 1" in q.reason
    rerun = [d for d in of(Assign, out) if d.task_id == "t"]
    assert rerun and rerun[0].node_id != "bad"
    # the quarantined node takes nothing new, even after a reconnect
    s.handle(NodeLost("bad"), 3.0)
    out = join(s, "bad", now=4.0, gpu="RTX 4090")
    assert of(Quarantine, out)
    placed = of(Assign, submit(s, "u", verify="none", now=5.0))
    assert placed and placed[0].node_id != "bad"
    assert s.trust.reputation.get("bad").quarantined


def test_a_failed_result_is_never_placed_back_on_its_producer():
    # a lenient threshold: the producer stays in service, but not for this task
    s = sched(TrustPolicy(quarantine_below=0.0))
    join(s, "validator", trusted=True)
    join(s, "bad", gpu="RTX 4090")
    join(s, "good")
    of(Assign, submit(s, "t"))
    [job] = of(Assign, finish(s, "t", "bad"))
    out = s.handle(VerificationReported(job.task_id, "validator", False), 2.0)
    assert not of(Quarantine, out)
    assert s.index.nodes["bad"].in_free  # free, and the fastest: the policy's first choice
    [rerun] = [d for d in of(Assign, out) if d.task_id == "t"]
    assert rerun.node_id != "bad"


def test_a_trusted_nodes_result_is_taken_as_it_is():
    s = sched()
    join(s, "v", trusted=True)
    of(Assign, submit(s, "t"))
    out = finish(s, "t", "v")
    [verified] = of(Verified, out)
    assert verified.status == "skipped" and "trusted" in verified.detail
    assert of(Complete, out)


def test_the_producer_never_validates_its_own_result():
    # every node has earned the validator role (no verified results needed)
    s = sched(TrustPolicy(validator_after=0, validator_score=0.0))
    join(s, "only")
    of(Assign, submit(s, "t", deadline=100.0))
    out = finish(s, "t", "only")
    assert of(Hold, out) and not of(Assign, out)
    # the waiting job goes to the first other validator to join
    [job] = of(Assign, join(s, "v2", now=2.0))
    assert job.node_id == "v2" and job.verifies == "t"


def test_sampled_without_a_validator_is_delivered_marked_unverified():
    s = sched()
    join(s, "worker")
    of(Assign, submit(s, "t", verify="sampled"))
    out = finish(s, "t", "worker")
    [verified] = of(Verified, out)
    assert verified.status == "unverified" and "no validator" in verified.detail
    assert of(Complete, out)


def test_always_without_a_validator_waits_for_the_deadline_then_fails_saying_why():
    s = sched()
    join(s, "worker")
    of(Assign, submit(s, "t", deadline=50.0))
    out = finish(s, "t", "worker")
    assert of(Hold, out) and not of(Complete, out)
    out = s.handle(Tick(), 50.0)
    [fail] = of(Fail, out)
    assert fail.task_id == "t" and "no validator" in fail.error
    assert s.task("t").state.value == "failed"


def test_a_lost_validator_hands_its_job_to_another():
    s = sched()
    join(s, "worker", gpu="RTX 4090")
    join(s, "v1", trusted=True)
    of(Assign, submit(s, "t"))
    [job] = of(Assign, finish(s, "t", "worker"))
    first = job.node_id
    join(s, "v2", trusted=True, now=1.5)
    out = s.handle(NodeLost(first), 2.0)
    [again] = [d for d in of(Assign, out) if d.verifies == "t"]
    assert again.task_id == job.task_id and again.node_id != first
    out = s.handle(VerificationReported(job.task_id, again.node_id, True), 3.0)
    assert of(Complete, out)


def test_a_sampled_job_that_times_out_delivers_the_result_unverified():
    s = sched(TrustPolicy(job_deadline=30.0))
    join(s, "worker", gpu="RTX 4090")
    join(s, "v", trusted=True)
    of(Assign, submit(s, "t", verify="sampled"))
    [job] = of(Assign, finish(s, "t", "worker"))
    out = s.handle(Tick(), 1.0 + 30.0)
    assert Cancel(job.task_id, "v") in out
    [verified] = of(Verified, out)
    assert verified.status == "unverified" and "timed out" in verified.detail
    assert of(Complete, out)


def test_a_late_verdict_or_a_second_result_changes_nothing():
    s = sched()
    join(s, "worker", gpu="RTX 4090")
    join(s, "v", trusted=True)
    of(Assign, submit(s, "t"))
    [job] = of(Assign, finish(s, "t", "worker"))
    assert finish(s, "t", "worker", now=1.5) == []  # a duplicate result of a held task
    assert s.handle(VerificationReported(job.task_id, "worker", True), 2.0) == []  # not its node
    assert of(Complete, s.handle(VerificationReported(job.task_id, "v", True), 3.0))
    assert s.handle(VerificationReported(job.task_id, "v", True), 4.0) == []


def test_verify_none_and_trust_off_decide_as_before():
    def run(config):
        s = Scheduler(rng=random.Random(7), config=config)
        s.handle(NodeJoined(NodeSpec("n", "RTX 4090", 80.0, (LLAMA,), 2)), 0.0)
        out = []
        for i in range(5):
            out += s.handle(TaskSubmitted(TaskSpec(f"t{i}", LLAMA, output_tokens=50)), i)
            out += s.handle(TaskFinished(f"t{i}", "n", USAGE), i + 0.5)
        return out, s.rng.random()
    plain = run(SchedulerConfig(heartbeat_timeout=math.inf))
    trusting = run(SchedulerConfig(heartbeat_timeout=math.inf, trust=TrustPolicy()))
    assert plain == trusting  # verify="none": no Verified, no draw from the rng
    assert TaskSpec("x", LLAMA).verify is VerifyMode.NONE


def test_probation_then_sampling_by_reputation():
    s = sched(TrustPolicy(probation=3, rate_floor=0.0, rate_gain=0.0))
    join(s, "worker", gpu="RTX 4090")
    join(s, "v", trusted=True)
    now = 0.0
    statuses = []
    for i in range(6):
        now += 1
        of(Assign, submit(s, f"t{i}", verify="sampled", now=now))
        out = finish(s, f"t{i}", "worker", now=now + 0.1)
        jobs = [d for d in of(Assign, out) if d.verifies]
        if jobs:
            out += s.handle(VerificationReported(jobs[0].task_id, "v", True), now + 0.2)
        statuses.append(of(Verified, out)[0].status)
    # three on probation are verified; then the rate is 0 (gain 0, floor 0)
    assert statuses == ["passed"] * 3 + ["skipped"] * 3


def test_a_node_earns_the_validator_role():
    s = sched(TrustPolicy(validator_after=2, validator_score=0.7))
    join(s, "a", gpu="RTX 4090")
    join(s, "v", trusted=True)
    for i in range(2):
        of(Assign, submit(s, f"t{i}", now=i))
        [job] = [d for d in of(Assign, finish(s, f"t{i}", "a", now=i + 0.1)) if d.verifies]
        s.handle(VerificationReported(job.task_id, "v", True), i + 0.2)
    assert "a" in s.trust.validators  # 2 verified, score 3/4
    # v's own result can now be verified by a (never by v itself)
    join(s, "b", now=5.0)
    s.handle(NodeLost("a"), 5.0)
    assert "a" not in s.trust.validators


def test_the_trust_policy_round_trips_through_a_journal_header():
    header = JournalHeader("balanced", "static", 3,
                           SchedulerConfig(trust=TrustPolicy(probation=4)))
    assert parse_line(header_line(header)) == header


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=25),
       st.sampled_from(["fastest", "random", "least_loaded", "round_robin"]))
def test_every_delivered_always_result_passed_a_verdict_by_another_node(gaps, policy):
    """Tasks at random times under several policies; the node "bad" fails every
    verification, the others pass: every task ends once; a completed task's last
    Verified passed and was given by a node other than its producer; a quarantined
    node is never assigned afterwards, and "bad" is quarantined once it produced."""
    s = Scheduler(policy, rng=random.Random(len(gaps)),
                  config=SchedulerConfig(heartbeat_timeout=math.inf, max_node_losses=100,
                                         trust=TrustPolicy()))
    join(s, "v", trusted=True, slots=4)
    join(s, "v2", trusted=True, slots=4)  # a result of v is checked by v2
    join(s, "honest", gpu="RTX 4090")
    join(s, "bad", gpu="RTX 4090")
    now, quarantined, ended = 0.0, set(), {}
    last_verified = {}
    produced_by_bad = False
    for i, gap in enumerate(gaps):
        now += gap
        decisions = submit(s, f"t{i}", now=now)
        for _ in range(10):
            for d in decisions:
                if isinstance(d, Assign):
                    assert d.node_id not in quarantined
                if isinstance(d, Quarantine):
                    quarantined.add(d.node_id)
                if isinstance(d, Verified):
                    last_verified[d.task_id] = d
                if isinstance(d, (Complete, Fail)):
                    assert d.task_id not in ended
                    ended[d.task_id] = d
                if isinstance(d, Complete):
                    v = last_verified[d.task_id]
                    if d.node_id in ("v", "v2"):  # operator-trusted: taken as it is
                        assert v.status == "skipped"
                    else:
                        assert v.status == "passed" and v.validator != d.node_id
            runs = [d for d in decisions if isinstance(d, Assign)]
            if not runs:
                break
            now += 0.1
            decisions = []
            for d in runs:
                if d.verifies is None:
                    produced_by_bad |= d.node_id == "bad"
                    decisions += finish(s, d.task_id, d.node_id, now)
                else:
                    producer = s.task(d.verifies).held.producer
                    decisions += s.handle(VerificationReported(
                        d.task_id, d.node_id, producer != "bad"), now)
    assert ("bad" in quarantined) is produced_by_bad
    assert set(ended) == {f"t{i}" for i in range(len(gaps))}
    assert all(isinstance(d, Complete) for d in ended.values())


def test_a_task_whose_results_keep_failing_fails_saying_so():
    # every node is a validator (earned at once) and none is ever quarantined
    s = sched(TrustPolicy(quarantine_below=0.0, validator_after=0, validator_score=0.0),
              max_node_losses=2)
    for name in ("a", "b", "c"):
        join(s, name)
    [run] = of(Assign, submit(s, "t"))
    statuses = []
    now = 1.0
    for _ in range(2):
        out = finish(s, "t", run.node_id, now)
        [job] = [d for d in of(Assign, out) if d.verifies]
        out = s.handle(VerificationReported(job.task_id, job.node_id, False), now + 0.1)
        statuses += [(v.status, v.rerun) for v in of(Verified, out)]
        reruns = [d for d in of(Assign, out) if d.task_id == "t"]
        if reruns:
            run = reruns[0]
        now += 1
    assert statuses == [("failed", True), ("failed", False)]
    [fail] = of(Fail, out)
    assert "failed verification 2 times" in fail.error


@given(st.integers(0, 500), st.integers(0, 500), st.floats(0.0, 1.0), st.floats(0.0, 10.0))
def test_the_sampling_rate_is_a_probability_that_falls_with_passes(passed, failed, floor, gain):
    rate = sampling_rate(Reputation(passed, failed), 10, floor, gain)
    assert 0.0 <= rate <= 1.0
    assert rate >= min(1.0, floor)
    more = sampling_rate(Reputation(passed + 1, failed), 10, floor, gain)
    if passed + failed >= 10:
        assert more <= rate
    score = Reputation(passed, failed).score
    assert 0.0 < score < 1.0
    assert Reputation(passed + 1, failed).score > score > Reputation(passed, failed + 1).score


def test_a_held_result_outlives_its_runs_timer_and_its_producer():
    s = sched(execution_timeout_factor=2.0, execution_timeout_floor=10.0)
    join(s, "worker", gpu="RTX 4090")
    of(Assign, submit(s, "t", deadline=1000.0))
    assert of(Hold, finish(s, "t", "worker"))  # no validator yet: it waits
    s.handle(NodeLost("worker"), 2.0)
    out = s.handle(Tick(), 500.0)  # long past the run's execution bound
    assert not of(Requeue, out) and not of(Fail, out)
    [job] = of(Assign, join(s, "v", trusted=True, now=501.0))
    out = s.handle(VerificationReported(job.task_id, "v", True), 502.0)
    [complete] = of(Complete, out)
    assert complete.node_id == "worker"  # paid, though it has left


# ---- the probation limit: reputation feeds placement -------------------------------


def running_on(s: Scheduler, node_id: str) -> int:
    return len(s.index.nodes[node_id].running)


def test_a_newcomer_has_at_most_k_unjudged_tasks_running_or_held():
    s = sched(TrustPolicy(probation_tasks=2))
    join(s, "validator", trusted=True, slots=1)
    join(s, "new", gpu="RTX 4090", slots=8)  # the fastest class: placed there first
    for i in range(3):
        submit(s, f"t{i}")
    assert running_on(s, "new") == 2  # of its 8 slots: t2 went to the slower node
    assert s.task("t2").node_id == "validator"
    finish(s, "t2", "validator")  # operator-trusted: delivered as it is
    out = finish(s, "t0", "new")
    [hold] = of(Hold, out)
    [job] = of(Assign, out)
    assert job.node_id == "validator"
    # one held, one running: two unjudged, so a new task waits rather than go there
    assert not of(Assign, submit(s, "t3", now=1.5))
    assert running_on(s, "new") == 1 and s.trust.pending == {"new": 1}
    out = s.handle(VerificationReported(job.task_id, "validator", True), 2.0)
    assert of(Complete, out)
    # the verdict is in: the waiting task goes to it
    assert [(d.task_id, d.node_id) for d in of(Assign, out)] == [("t3", "new")]
    assert running_on(s, "new") == 2 and "new" not in s.trust.pending


def test_without_the_limit_a_newcomer_takes_as_many_tasks_as_it_claims_slots():
    s = sched(TrustPolicy(probation_tasks=None))
    join(s, "validator", trusted=True, slots=1)
    join(s, "new", gpu="RTX 4090", slots=8)
    for i in range(6):
        submit(s, f"t{i}")
    assert running_on(s, "new") == 6
    plain = Scheduler("fastest", rng=random.Random(0),
                      config=SchedulerConfig(heartbeat_timeout=math.inf))  # trust off
    plain.handle(NodeJoined(NodeSpec("new", "RTX 4090", 80.0, (LLAMA,), 8)), 0.0)
    for i in range(6):
        submit(plain, f"t{i}", verify="none")
    assert running_on(plain, "new") == 6


def test_the_limit_lifts_after_probation_and_returns_with_a_low_score():
    s = sched(TrustPolicy(probation=2, limit_score=0.7, probation_tasks=1,
                          quarantine_below=0.0))
    join(s, "validator", trusted=True, slots=1)
    join(s, "new", gpu="RTX 4090", slots=4)

    def judge(task_id: str, passed: bool, now: float) -> list:
        finish(s, task_id, "new", now)
        job = s.task(s.task(task_id).held.job_id)
        return s.handle(VerificationReported(job.spec.task_id, job.node_id, passed), now)

    submit(s, "a")
    assert running_on(s, "new") == 1
    judge("a", True, 1.0)
    submit(s, "b", now=1.5)
    judge("b", True, 2.0)  # two passes: score 3/4 >= 0.7, off probation
    for i in range(4):
        submit(s, f"c{i}", now=3.0)
    assert running_on(s, "new") == 4  # its whole claim
    [job] = of(Assign, finish(s, "c0", "new", 4.0))
    s.handle(VerificationReported(job.task_id, job.node_id, False), 4.5)
    # a failure: score 3/5 < 0.7, limited again; c0 goes elsewhere, the other three
    # keep running (the limit holds back new work, it takes nothing away)
    assert s.trust.reputation.get("new").score == pytest.approx(3 / 5)
    assert s.index.nodes["new"].cap == 1 and running_on(s, "new") == 3
    assert s.task("c0").node_id == "validator"
    s2 = sched(TrustPolicy(probation=2, limit_score=0.8, probation_tasks=1,
                           quarantine_below=0.0))
    s2.trust.reputation.nodes["new"] = Reputation(passed=5, failed=1)  # 6/8 < 0.8
    join(s2, "validator", trusted=True, slots=1)
    join(s2, "new", gpu="RTX 4090", slots=4)
    for i in range(4):
        submit(s2, f"t{i}")
    assert running_on(s2, "new") == 1  # limited again: its score is below limit_score


def test_an_operator_trusted_node_is_never_limited():
    s = sched(TrustPolicy(probation_tasks=1))
    join(s, "v", trusted=True, slots=4, gpu="RTX 4090")
    join(s, "v2", trusted=True, slots=1)
    for i in range(4):
        submit(s, f"t{i}")
    assert running_on(s, "v") == 4


def test_the_probation_limit_is_at_least_one():
    with pytest.raises(ValueError):
        TrustPolicy(probation_tasks=0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit"] * 4 + ["finish"] * 3 + [
                                           "verdict", "cancel", "lose", "tick"]),
                          st.integers(0, 1000), st.booleans()),
                min_size=1, max_size=80),
       st.integers(1, 3), st.sampled_from(["fastest", "random", "round_robin"]))
def test_a_limited_node_never_has_more_than_k_unjudged_tasks(ops, k, policy):
    """Random submissions (some with deadlines), finishes, verdicts (pass or fail),
    cancels and node losses: after every event, every limited node runs or has held
    at most K tasks, and Trust.pending counts exactly the held results by producer."""
    s = Scheduler(policy, rng=random.Random(k),
                  config=SchedulerConfig(heartbeat_timeout=math.inf, max_node_losses=100,
                                         trust=TrustPolicy(probation_tasks=k,
                                                           quarantine_below=0.2)))
    join(s, "v", trusted=True, slots=1)
    for name, slots in (("a", 4), ("b", 3)):
        join(s, name, gpu="RTX 4090", slots=slots)
    now, n = 0.0, 0
    trust = s.trust
    assert trust is not None
    for kind, pick, flag in ops:
        now += 0.5
        running = sorted((r for r in s.tasks.values() if r.state.value == "running"
                          and r.held is None), key=lambda r: r.seq)
        if kind == "submit":
            n += 1
            submit(s, f"t{n}", now=now, deadline=now + 5.0 if pick % 4 == 0 else math.inf)
        elif kind == "finish" and running:
            r = running[pick % len(running)]
            if r.verifies is None:
                finish(s, r.spec.task_id, r.node_id, now)
            else:
                s.handle(VerificationReported(r.spec.task_id, r.node_id, flag), now)
        elif kind == "verdict":
            jobs = [r for r in running if r.verifies is not None]
            if jobs:
                r = jobs[pick % len(jobs)]
                s.handle(VerificationReported(r.spec.task_id, r.node_id, flag), now)
        elif kind == "cancel" and n:
            s.handle(TaskCancelled(f"t{pick % n + 1}"), now)
        elif kind == "lose":
            name = "ab"[pick % 2]
            if name in s.index.nodes:
                s.handle(NodeLost(name), now)
            else:
                join(s, name, gpu="RTX 4090", slots=4, now=now)
        else:
            s.handle(Tick(), now)
        held: dict[str, int] = {}
        for r in s.tasks.values():
            if r.held is not None:
                held[r.held.producer] = held.get(r.held.producer, 0) + 1
        assert trust.pending == held
        for node in s.index.nodes.values():
            if trust.limited(node):
                assert len(node.running) + held.get(node.node_id, 0) <= k, node.node_id
