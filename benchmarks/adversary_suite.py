# The adversary suite (issue 13, "What it must show"): lying workers over the real
# protocol beside honest ones, and what became of every result they sent.
#
#   with open_trust_net(tmp, HONEST + liar_plans(), trusted=TRUSTED) as net:
#       report = run_round(net, LIARS, tasks=16, judge=Judge(pack))
#
# A round submits `tasks` text tasks (unique prompts, so that a liar's ledger line -
# adversaries.py - names its task; `verify` alternating `always` and `sampled`, the
# default) to a network of two operator-trusted validators, one untrusted honest
# worker and one worker per liar behaviour, all serving llama2:7b, the honest ones
# with SmolLM2-135M-Instruct under different ONNX Runtime tunings. When every task
# has ended it reports, per liar (LiarReport):
#   sent / bad          results it sent, and those whose output was a wrong answer
#   delivered_unflagged per mode: its bad results that reached the client as the
#                       task's `completed` result without a failed verification
#   until_quarantine    results it sent before it was quarantined (None: never)
#   verdicts            its results that passed and failed verification
#   affected_ok         every task it sent a bad result for ended `completed` with a
#                       correct result (Judge) from a node that sent no wrong answer
#   paid_for_bad        dollars charged for tasks whose delivered result was its bad one
# and, for `inflate`, what it claimed beside what it was billed by; for
# `false-gpu`, the class its measured speed put it in and its price. The honest
# nodes' verification failures are counted too (honest_flagged: must be 0).
#
# "Correct" (Judge): the task's text passes an independent teacher-forced check by
# the real model in this process (TextGenRunner.verify, no proof: the text is
# re-tokenized), i.e. it is a plausible output of SmolLM2 for that prompt and those
# parameters; greedy outputs are also compared with this process's own greedy run.
#
# honest_round: the false-positive run - only honest workers, each of a different
# ONNX Runtime thread count / graph optimisation level, every result verified
# (`always`), greedy and sampled parameters; any failed verification of an honest
# result is a false positive.
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.trust_net import TrustNet, WorkerPlan

__all__ = ["HONEST", "HONEST_TUNINGS", "HonestReport", "Judge", "LIARS", "LiarReport", "MODES",
           "RoundReport", "TRUSTED", "honest_round", "liar_plans", "run_round"]

LIARS = ("fabricate", "substitute", "truncate", "inflate", "false-gpu")
TRUSTED = ("validator-1", "validator-2")
HONEST = (WorkerPlan("validator-1"), WorkerPlan("validator-2", threads=1, optimization="basic"),
          WorkerPlan("honest", threads=2, optimization="disable"))
# (threads, graph optimisation level) of the false-positive run's honest workers
HONEST_TUNINGS = ((1, "disable"), (2, "all"), (1, "basic"), (2, "extended"))
MODES = ("always", "sampled")
TOPICS = ("the history of bread", "how a bicycle works", "why the sky is blue", "the moon",
          "copper and its uses", "a busy train station", "the sea", "volcanoes")
GREEDY = {"temperature": 0}
SAMPLED = ({"temperature": 0}, {"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0})


def liar_plans(suffix: str = "") -> list[WorkerPlan]:
    """One worker per liar behaviour (named after it, + suffix: a fresh identity)."""
    return [WorkerPlan(f"{behaviour}{suffix}", behaviour) for behaviour in LIARS]


class Judge:
    """Whether a text is a correct result of SmolLM2 for a prompt (top comment)."""

    def __init__(self, pack: Path) -> None:
        from engine.worker.runners.textgen import TextGenRunner

        self.runner = TextGenRunner("llama2:7b", pack, providers_preference="cpu")
        self.runner.load()

    def correct(self, prompt: str, params: dict[str, Any], text: Any) -> bool:
        if not isinstance(text, str):
            return False
        verdict = self.runner.verify({"prompt": prompt}, params, text, None, lambda: False)
        return bool(verdict.passed)

    def close(self) -> None:
        self.runner.unload()


@attrs.frozen
class LiarReport:
    name: str
    behaviour: str
    sent: int
    bad: int
    bad_by_mode: dict[str, int]
    delivered_unflagged: dict[str, int]
    quarantined: bool
    until_quarantine: int | None
    verdicts: tuple[int, int]  # its results that passed, failed verification (its reputation)
    affected: int  # tasks it sent a bad result for
    affected_ok: bool
    paid_for_bad: float
    figures: dict[str, Any]  # inflate / false-gpu specifics

    @property
    def unflagged_fraction(self) -> float:
        return sum(self.delivered_unflagged.values()) / self.bad if self.bad else 0.0


@attrs.frozen
class RoundReport:
    tasks: int
    completed: int
    liars: dict[str, LiarReport]
    honest_flagged: list[str]  # verification failures of honest nodes' results, why


def _submit(net: TrustNet, count: int, max_tokens: int, params_cycle: Sequence[dict[str, Any]],
            modes: Sequence[str], tag: str) -> dict[str, tuple[str, dict[str, Any], str]]:
    """Submit `count` tasks; task id -> (prompt, params, mode)."""
    sent: dict[str, tuple[str, dict[str, Any], str]] = {}
    cases = zip(range(count), itertools.cycle(TOPICS), itertools.cycle(params_cycle))
    for i, topic, params in cases:
        prompt = f"Task {tag}{i}: Tell me about {topic}."
        full = {**params, "max_tokens": max_tokens}
        mode = modes[i % len(modes)]
        sent[net.submit(prompt, full, mode)] = (prompt, full, mode)
    return sent


def _honest_flagged(tasks: dict[str, dict[str, Any]], honest_ids: set[str]) -> list[str]:
    """Each failed verification of an honest node's result: its task's params and why."""
    flagged = []
    for task in tasks.values():
        verification = task["verification"]
        failures = [f for f in verification["failed_results"] if f["producer"] in honest_ids]
        if verification["status"] == "failed" and verification["producer"] in honest_ids:
            failures.append(verification)
        flagged += [f"{task['id']} {task['params']}: {f['detail']}" for f in failures]
    return flagged


def run_round(net: TrustNet, liars: Sequence[str], honest: Sequence[str], tasks: int,
              judge: Judge, max_tokens: int = 8, tag: str = "") -> RoundReport:
    """Submit and settle a round's tasks; report on each liar (the top comment)."""
    sent = _submit(net, tasks, max_tokens, (GREEDY,), MODES, tag)
    final = net.wait_final(list(sent))
    by_prompt = {prompt: task_id for task_id, (prompt, _, _) in sent.items()}
    nodes = {node["name"]: node for node in net.nodes().values()}
    honest_ids = {nodes[name]["id"] for name in honest if name in nodes}
    ledgers = {name: [line for line in net.ledger(name) if line["prompt"] in by_prompt]
               for name in liars}
    # the nodes that sent a wrong answer: an affected task's result must not be theirs
    wrong = {nodes[name]["id"] for name, lines in ledgers.items()
             if name in nodes and any(line["bad_output"] for line in lines)}
    reports = {}
    for name in liars:
        node, lines = nodes[name], ledgers[name]
        bad_lines = [line for line in lines if line["bad_output"]]
        bad_by_mode = dict.fromkeys(MODES, 0)
        unflagged = dict.fromkeys(MODES, 0)
        affected_ok, paid = True, 0.0
        for line in bad_lines:
            task_id = by_prompt[line["prompt"]]
            prompt, params, mode = sent[task_id]
            task = final[task_id]
            bad_by_mode[mode] += 1
            delivered = task["node"] is not None and task["node"]["id"] == node["id"]
            if delivered and task["status"] == "completed":
                paid += float(task["cost"])
                if task["verification"]["status"] != "failed":
                    unflagged[mode] += 1
            affected_ok = affected_ok and (
                task["status"] == "completed" and task["node"]["id"] not in wrong
                and judge.correct(prompt, params, task["result"]))
        reports[name] = LiarReport(
            name, lines[0]["behaviour"] if lines else name, len(lines), len(bad_lines),
            bad_by_mode, unflagged, bool(node["quarantined"]),
            len(lines) if node["quarantined"] else None,
            (node["reputation"]["verified"] - node["reputation"]["failed"],
             node["reputation"]["failed"]), len(bad_lines), affected_ok, paid,
            _figures(net, node, lines, by_prompt, final))
    completed = sum(task["status"] == "completed" for task in final.values())
    return RoundReport(len(final), completed, reports, _honest_flagged(final, honest_ids))


def _figures(net: TrustNet, node: dict[str, Any], lines: list[dict[str, Any]],
             by_prompt: dict[str, str], final: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What metering made of an inflated usage; what measured speed made of a GPU claim."""
    from engine.runtime.meter import Meter
    from engine.worker.packs.defaults import DEFAULTS

    figures: dict[str, Any] = {}
    mine = [final[by_prompt[line["prompt"]]] for line in lines]
    delivered = [t for t in mine if t["status"] == "completed" and t["node"]["id"] == node["id"]]
    weights = next(e.weights for e in DEFAULTS if e.name == "smollm2-135m-instruct")
    meter = Meter()
    claimed = counted = billed = 0
    for line, task in zip(lines, mine):
        if task["status"] == "completed" and task["node"]["id"] == node["id"]:
            counts = meter.count("llama2:7b", weights, task["result"], {})
            claimed += int(line["tokens"])
            counted += counts.output_tokens if counts is not None else 0
            billed += int(task["tokens_used"])
    figures.update(delivered=len(delivered), claimed_output_tokens=claimed,
                   counted_output_tokens=counted, billed_tokens_used=billed,
                   metered_by=sorted({t["metered_by"] or "" for t in delivered}))
    speed = node.get("measured_speed", {}).get("llama2:7b")
    figures.update(gpu_claimed=node["gpu"], price_claimed=node["price_per_hour"],
                   measured_class=speed["gpu_class"] if speed else None,
                   measured_price=speed["price_per_hour"] if speed else None,
                   reclassed=bool(speed and speed["reclassed"]),
                   charged=sum(float(t["cost"]) for t in delivered))
    return figures


@attrs.frozen
class HonestReport:
    tasks: int
    completed: int
    verified: int  # results a validator checked (status passed or failed)
    false_positives: list[str]  # each failed verification: the task's params and why
    honest_quarantined: int


def honest_round(net: TrustNet, count: int, max_tokens: int = 8, batch: int = 40) -> HonestReport:
    """The false-positive run on a network of honest workers only (top comment)."""
    final: dict[str, dict[str, Any]] = {}
    for start in range(0, count, batch):  # a batch at a time: the queue stays short
        sent = _submit(net, min(batch, count - start), max_tokens, SAMPLED, ("always",),
                       f"h{start}-")
        final.update(net.wait_final(list(sent), limit=600.0))
    nodes = net.nodes().values()
    ids = {node["id"] for node in nodes}
    verified = sum(t["verification"]["status"] in ("passed", "failed") for t in final.values())
    return HonestReport(len(final), sum(t["status"] == "completed" for t in final.values()),
                        verified, _honest_flagged(final, ids),
                        sum(bool(node["quarantined"]) for node in nodes))
