"""The adversary suite over the real protocol (issue 13): a live `python -m api`, two
operator-trusted validators and one untrusted honest worker serving SmolLM2 (each
with other ONNX Runtime settings), and one lying worker per behaviour of
benchmarks/adversaries.py beside them. One round of tasks, `verify` alternating
`always` and `sampled` (the default); then what became of every result each liar
sent, from its own ledger and the task JSON (benchmarks/adversary_suite.py).

Small on purpose (CI: 2 cores): 16 tasks of 8 tokens; the benchmark
(`python -m benchmarks --only trust`) runs more rounds and the 500-task honest run.
Skipped, with the install command, where SmolLM2 is not installed."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.adversary_suite import (
    HONEST, LIARS, TRUSTED, Judge, RoundReport, liar_plans, run_round,
)
from benchmarks.trust_net import open_trust_net
from engine.core import GPU_CLASSES
from engine.core.metering import PROMPT_ALLOWANCE
from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path

TASKS = 16


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoundReport]:
    try:
        smollm2_gguf_path()
    except PackError as exc:
        pytest.skip(str(exc))
    judge = Judge(ensure_smollm2_pack())  # built before the workers start: they share it
    try:
        with open_trust_net(tmp_path_factory.mktemp("trust-net"), [*HONEST, *liar_plans()],
                            trusted=TRUSTED) as net:
            yield run_round(net, LIARS, [plan.name for plan in HONEST], TASKS, judge)
    finally:
        judge.close()


def test_every_task_completes(played: RoundReport) -> None:
    assert played.tasks == TASKS and played.completed == TASKS


@pytest.mark.parametrize("liar", ["fabricate", "substitute", "truncate"])
def test_wrong_answers_are_caught_and_never_reach_a_client_unflagged(
        played: RoundReport, liar: str) -> None:
    report = played.liars[liar]
    assert report.bad >= 1, f"{liar} got no task to lie about"
    assert report.bad == report.sent  # every result it sent was a wrong answer
    assert report.delivered_unflagged == {"always": 0, "sampled": 0}


@pytest.mark.parametrize("liar", ["fabricate", "substitute", "truncate"])
def test_a_liar_is_quarantined_by_its_first_verdicts(played: RoundReport, liar: str) -> None:
    report = played.liars[liar]  # none of its results passed; a result it finished
    passed, failed = report.verdicts  # after its quarantine went nowhere (re-queued)
    assert report.quarantined and passed == 0 and 1 <= failed <= report.sent


# The goal: quarantined within 10 tasks. A node on probation may have at
# most TrustPolicy.probation_tasks results running or held for a verdict
# (engine/core/verification.py), so a liar faster than the validators cannot race
# through the queue before its first verdict quarantines it.
@pytest.mark.parametrize("liar", ["fabricate", "substitute"])
def test_fabrication_and_substitution_are_quarantined_within_10_tasks(
        played: RoundReport, liar: str) -> None:
    report = played.liars[liar]
    assert report.until_quarantine is not None and report.until_quarantine <= 10


@pytest.mark.parametrize("liar", ["fabricate", "substitute", "truncate"])
def test_every_affected_task_ends_with_a_correct_result_from_another_node(
        played: RoundReport, liar: str) -> None:
    report = played.liars[liar]
    assert report.affected >= 1 and report.affected_ok


@pytest.mark.parametrize("liar", ["fabricate", "substitute", "truncate"])
def test_a_liar_is_not_paid_for_a_wrong_answer(played: RoundReport, liar: str) -> None:
    report = played.liars[liar]
    assert report.paid_for_bad == 0.0 and report.figures["delivered"] == 0


def test_inflated_usage_is_billed_by_the_coordinators_count(played: RoundReport) -> None:
    report = played.liars["inflate"]
    figures = report.figures
    assert figures["delivered"] >= 1 and not report.quarantined  # its answers are right
    assert figures["metered_by"] == ["coordinator"]
    # it claimed twice the output tokens (and 400 prompt tokens more); billed: the
    # coordinator's count of the text, plus prompt tokens held to the coordinator's
    # count of the prompt + the chat template's allowance
    # (twice its own count of the ids it generated; re-tokenizing can differ by a token)
    assert figures["claimed_output_tokens"] >= 1.5 * figures["counted_output_tokens"] > 0
    assert figures["billed_tokens_used"] <= (figures["counted_output_tokens"]
                                             + figures["delivered"] * (32 + PROMPT_ALLOWANCE))


def test_a_false_gpu_claim_is_reclassed_and_priced_by_its_measured_speed(
        played: RoundReport) -> None:
    figures = played.liars["false-gpu"].figures
    assert figures["delivered"] >= 1
    assert figures["gpu_claimed"] == "H100" and figures["price_claimed"] == pytest.approx(
        GPU_CLASSES["H100"].price_per_hour)
    assert figures["reclassed"] and figures["measured_class"] != "H100"
    assert figures["measured_price"] < figures["price_claimed"] / 10


def test_honest_nodes_are_never_flagged(played: RoundReport) -> None:
    assert played.honest_flagged == []
    for name in ("inflate", "false-gpu"):  # honest output, lying metadata
        assert played.liars[name].bad == 0 and not played.liars[name].quarantined
