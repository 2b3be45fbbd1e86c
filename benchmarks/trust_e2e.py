# The trust benchmark's end-to-end rows (`python -m benchmarks --only trust`): the
# adversary suite (benchmarks/adversary_suite.py) on a live network, and the honest
# false-positive run.
#
# Rules:
# - Liars: rounds of text tasks (12 x 8 tokens quick; full: 3 rounds of 24), `verify`
#   alternating `always` and `sampled`, on one server with two operator-trusted
#   validators and an untrusted honest worker; each round brings every liar back
#   under a fresh identity (a new worker token: the Sybil case - a new name starts
#   on probation). Per behaviour: the fraction of its wrong answers that reached a
#   client as `completed` and unflagged (per mode), the results it sent before it
#   was quarantined (the worst round), and whether every affected task ended with a
#   correct result from a node that sent no wrong answer. Goals: fabrication and
#   substitution quarantined within 10 tasks; at most 1% of wrong answers delivered
#   unflagged under `always`.
# - Inflated usage: what the liar claimed beside what the coordinator billed; a
#   false GPU claim: the class and price its measured speed gave it.
# - Honest: >= 500 tasks (quick: 24 on two of the workers, and the row says so) on a
#   trusted validator and four honest workers of different ONNX Runtime thread counts
#   and graph optimisation levels (adversary_suite.HONEST_TUNINGS), all verified (`always`),
#   greedy and sampled; goal: 0 false positives. CPU only here (no CUDA machine).
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.adversary_suite import (
    HONEST, HONEST_TUNINGS, LIARS, MODES, TRUSTED, Judge, LiarReport, honest_round, liar_plans,
    run_round,
)
from benchmarks.harness import Row
from benchmarks.trust_net import WorkerPlan, open_trust_net

__all__ = ["adversary_rows", "honest_rows", "main", "rows"]

QUARANTINE_GOAL = 10  # results a fabricator or substitute may send before quarantine
UNFLAGGED_GOAL = 0.01  # wrong answers delivered unflagged under `always`, at most


def _merge(reports: list[LiarReport]) -> dict[str, Any]:
    bad = {mode: sum(r.bad_by_mode[mode] for r in reports) for mode in MODES}
    unflagged = {mode: sum(r.delivered_unflagged[mode] for r in reports) for mode in MODES}
    until = [r.until_quarantine for r in reports]
    return {"rounds": len(reports), "results_sent": sum(r.sent for r in reports),
            "wrong_answers": sum(r.bad for r in reports),
            "wrong_always": bad["always"], "unflagged_always": unflagged["always"],
            "wrong_sampled": bad["sampled"], "unflagged_sampled": unflagged["sampled"],
            "unflagged_fraction_always": unflagged["always"] / bad["always"] if bad["always"] else 0.0,
            "quarantined_rounds": sum(r.quarantined for r in reports),
            "max_results_until_quarantine": max((u for u in until if u is not None), default=-1),
            "affected_tasks": sum(r.affected for r in reports),
            "affected_ended_correct": all(r.affected_ok for r in reports),
            "paid_for_wrong": sum(r.paid_for_bad for r in reports)}


def adversary_rows(quick: bool) -> list[Row]:
    from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except PackError as exc:
        return [Row("adversaries end to end: not measured", {"why": str(exc)})]
    rounds, tasks = (1, 12) if quick else (3, 24)
    judge = Judge(ensure_smollm2_pack())
    reports: dict[str, list[LiarReport]] = {b: [] for b in LIARS}
    honest_flagged: list[str] = []
    start = time.perf_counter()
    try:
        with open_trust_net(Path(tempfile.mkdtemp(prefix="trust-adversaries-")),
                            [*HONEST, *liar_plans()], trusted=TRUSTED) as net:
            for index in range(rounds):
                suffix = f"-r{index + 1}" if index else ""
                if index:  # the liars again, under new identities
                    for behaviour in LIARS:
                        net.stop_worker(f"{behaviour}-r{index}" if index > 1 else behaviour)
                    plans = liar_plans(suffix)
                    for plan in plans:
                        net.start_worker(plan)
                    net.wait_joined([plan.name for plan in plans])
                report = run_round(net, [f"{b}{suffix}" for b in LIARS],
                                   [plan.name for plan in HONEST], tasks, judge, tag=f"r{index}-")
                honest_flagged += report.honest_flagged
                for behaviour in LIARS:
                    reports[behaviour].append(report.liars[f"{behaviour}{suffix}"])
    finally:
        judge.close()
    seconds = time.perf_counter() - start
    rows = []
    for behaviour in ("fabricate", "substitute", "truncate"):
        merged = _merge(reports[behaviour])
        within = (0 <= merged["max_results_until_quarantine"] <= QUARANTINE_GOAL
                  and merged["quarantined_rounds"] == rounds)
        met = (merged["wrong_answers"] > 0 and merged["unflagged_fraction_always"] <= UNFLAGGED_GOAL
               and merged["affected_ended_correct"] and merged["paid_for_wrong"] == 0.0
               and (within or behaviour == "truncate"))
        target = (f"quarantined within {QUARANTINE_GOAL} results, " if behaviour != "truncate" else "")
        rows.append(Row(f"adversary {behaviour} beside honest workers ({rounds} x {tasks} tasks, "
                        f"always/sampled)", merged,
                        target=f"{target}<= {UNFLAGGED_GOAL:.0%} unflagged under always, "
                               f"affected tasks end correct, unpaid", met=met))
    inflate = [r.figures for r in reports["inflate"]]
    claimed = sum(f["claimed_output_tokens"] for f in inflate)
    counted = sum(f["counted_output_tokens"] for f in inflate)
    rows.append(Row("adversary inflate: output tokens claimed x2 (+4.5 s, +400 prompt tokens)",
                    {"delivered": sum(f["delivered"] for f in inflate), "claimed_output_tokens": claimed,
                     "counted_output_tokens": counted,
                     "billed_tokens_used": sum(f["billed_tokens_used"] for f in inflate),
                     "metered_by": ",".join(sorted({m for f in inflate for m in f["metered_by"]})),
                     "quarantined_rounds": sum(r.quarantined for r in reports["inflate"])},
                    target="output tokens billed by the coordinator's count",
                    met=claimed >= 1.5 * counted > 0))
    gpu = [r.figures for r in reports["false-gpu"]]
    rows.append(Row("adversary false-gpu: claims an H100, runs on this CPU",
                    {"delivered": sum(f["delivered"] for f in gpu), "gpu_claimed": gpu[0]["gpu_claimed"],
                     "price_claimed": gpu[0]["price_claimed"],
                     "measured_class": ",".join(sorted({str(f["measured_class"]) for f in gpu})),
                     "measured_price_max": max(float(f["measured_price"] or 0) for f in gpu),
                     "reclassed_rounds": sum(bool(f["reclassed"]) for f in gpu),
                     "charged": sum(f["charged"] for f in gpu)},
                    target="re-classed by measured speed, priced by it",
                    met=all(f["reclassed"] and f["measured_class"] != "H100" for f in gpu)))
    rows.append(Row("adversary rounds: honest nodes' results flagged",
                    {"false_positives": len(honest_flagged), "seconds": seconds,
                     "why": " | ".join(honest_flagged)[:2000]},
                    target="0", met=not honest_flagged))
    return rows


def honest_rows(quick: bool) -> list[Row]:
    from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except PackError as exc:
        return [Row("honest end to end: not measured", {"why": str(exc)})]
    ensure_smollm2_pack()
    count, tunings = (24, HONEST_TUNINGS[:2]) if quick else (504, HONEST_TUNINGS)
    plans = [WorkerPlan("validator-1")] + [
        WorkerPlan(f"honest-t{threads}-{level}", threads=threads, optimization=level)
        for threads, level in tunings]
    start = time.perf_counter()
    with open_trust_net(Path(tempfile.mkdtemp(prefix="trust-honest-")), plans,
                        trusted=("validator-1",)) as net:
        report = honest_round(net, count)
    note = "quick: fewer than the 500 of a full run" if quick else "CPU provider only (no GPU here)"
    return [Row(f"honest end to end: {count} tasks on {len(tunings)} workers of different "
                f"ORT threads/optimisation, all verified, greedy/top_p/temperature",
                {"tasks": report.tasks, "completed": report.completed, "verified": report.verified,
                 "false_positives": len(report.false_positives),
                 "why": " | ".join(report.false_positives)[:2000],
                 "honest_quarantined": report.honest_quarantined,
                 "seconds": time.perf_counter() - start, "note": note},
                target="0 false positives", met=not report.false_positives
                and report.honest_quarantined == 0 and report.completed == report.tasks)]


def rows(quick: bool) -> list[Row]:
    return [*adversary_rows(quick), *honest_rows(quick)]


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.trust_e2e [--quick]`: these rows alone."""
    import argparse

    from benchmarks.harness import render

    parser = argparse.ArgumentParser(prog="python -m benchmarks.trust_e2e", description=main.__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("adversaries", "honest"))
    args = parser.parse_args(argv)
    chosen = {"adversaries": adversary_rows, "honest": honest_rows}
    found: list[Row] = []
    for name, make in chosen.items():
        if args.only in (None, name):
            found += make(args.quick)
    print(render("trust (end to end)", found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
