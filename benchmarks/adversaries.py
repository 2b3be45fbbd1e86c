# The adversary suite's lying workers (issue 13): the real worker - its command
# line, start-up, protocol agent and model runners - with one lie wrapped around
# its executor, for the trust tests (tests/trust) and `python -m benchmarks --only
# trust` (benchmarks/trust_e2e.py).
#
#   python -m benchmarks.adversaries --behaviour fabricate \
#       --coordinator ws://HOST:PORT/api/nodes/connect --token T [--ledger FILE] ...
#
# Every flag of `neurogrid worker` works (engine/worker/__main__.py builds the
# parser and runs the worker; this module is its WorkerVariant). What each
# behaviour does (BEHAVIOURS; `honest` is the control):
#   honest      serves the honest pack (SmolLM2-135M-Instruct for llama2:7b) and
#               tells the truth.
#   fabricate   answers every task with random words, as a natural stop, with no
#               proof and a plausible usage; nothing runs.
#   substitute  serves the random-weight demo pack but announces the honest
#               pack's weights: a different, cheaper model under the requested name.
#   truncate    runs the honest model for half the task's max_tokens, then claims
#               a natural stop (finish_reason "stop", in the result and the proof).
#   inflate     honest output; its usage inflated as far as the coordinator's
#               plausibility bounds allow (metering.usage_problem, count_problem:
#               tokens x --inflate-factor, 2 by default, seconds + 4.5 s, prompt
#               tokens + 400), so what it is billed by shows whether the
#               coordinator meters it; a factor beyond the bounds is a protocol error.
#   false-gpu   honest output on this CPU, but claims an H100 in its hello.
# The lies are in the results (and the hello), never in the protocol's form: each
# liar is a well-behaved worker that the coordinator cannot tell apart by frames.
# Verification jobs (when a liar is picked as a validator) run honestly on what it
# serves.
#
# --ledger FILE: one JSON line per result the worker sent (the task's prompt - the
# suite makes each prompt unique, so it names the task -, the behaviour, whether
# its output is a wrong answer (`bad_output`: fabricated, substituted, cut short;
# an inflated usage or a false GPU claim leave the output honest), the output,
# finish and tokens it claimed), the ground
# truth that the suite's measurements are taken against. A `truncate` result whose
# honest run ended before half of max_tokens is no lie (it is the honest output).
#
# Rules: nothing here is on the production worker's code path (engine.worker never
# imports it); the random text comes from the --seed'ed rng only.
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from engine.worker.__main__ import build_parser, main as worker_main
from engine.worker.agent import Executor, WorkerConfig
from engine.worker.node import ModelSource, ThreadedExecutor
from engine.worker.packs.defaults import DEFAULTS, DefaultPack
from engine.worker.runners.base import RunResult, Verdict

__all__ = ["BEHAVIOURS", "Behaviour", "FALSE_GPU", "HONEST_PACK", "LyingExecutor", "SUBSTITUTE_PACK",
           "main", "read_ledger"]

PROG = "python -m benchmarks.adversaries"
HONEST_PACK = "smollm2-135m-instruct"  # packs/defaults.py names
SUBSTITUTE_PACK = "demo-pack"
MODEL = "llama2:7b"
FALSE_GPU = ("H100", 80.0)  # the claim of `false-gpu`: a catalog class and its memory
WORDS = ("river", "blue", "seven", "engine", "quietly", "paper", "north", "apple", "signal",
         "under", "garden", "copper", "fast", "window", "the", "of", "and", "is", "cloud")

RunCall = Callable[[str, Mapping[str, Any], Mapping[str, Any], Callable[[dict[str, Any]], None]], Any]


@attrs.frozen
class Behaviour:
    """One lie: the pack that really runs, the GPU claimed, and how a result is told."""

    name: str
    lie: str  # in words, for reports
    serves: str = HONEST_PACK  # the pack that really runs (DefaultPack.name)
    gpu: tuple[str, float] | None = None  # (GPU name, memory GB) claimed in the hello
    tell: str = "truth"  # a key of TELLERS


def _pack(name: str) -> DefaultPack:
    for entry in DEFAULTS:
        if entry.name == name:
            return entry
    raise ValueError(f"no default pack named {name!r}")


BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in (
    Behaviour("honest", "none (the control)"),
    Behaviour("fabricate", "random text as a natural stop, nothing run", tell="fabricate"),
    Behaviour("substitute", "the random-weight demo pack under the honest pack's weights",
              serves=SUBSTITUTE_PACK),
    Behaviour("truncate", "half of max_tokens, claimed as a natural stop", tell="truncate"),
    Behaviour("inflate", "honest output, usage inflated to the plausibility bounds",
              tell="inflate"),
    Behaviour("false-gpu", "honest output on the CPU, an H100 claimed", gpu=FALSE_GPU),
)}


@attrs.frozen
class Told:
    """A result as the liar sends it, and whether its output is a wrong answer."""

    result: RunResult
    bad_output: bool


async def _truth(run: RunCall, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                 progress: Callable[[dict[str, Any]], None], rng: random.Random,
                 factor: float) -> Told:
    return Told(await run(model, inputs, params, progress), False)


async def _fabricate(run: RunCall, model: str, inputs: Mapping[str, Any],
                     params: Mapping[str, Any], progress: Callable[[dict[str, Any]], None],
                     rng: random.Random, factor: float) -> Told:
    limit = int(params.get("max_tokens", 16))
    words = [rng.choice(WORDS) for _ in range(max(1, rng.randint(limit // 2, limit) // 2))]
    text = " ".join(words).capitalize() + "."
    usage = {"tokens": len(words) + 1, "prompt_tokens": 0, "seconds": 0.01}
    return Told(RunResult(text, usage, "stop"), True)


async def _truncate(run: RunCall, model: str, inputs: Mapping[str, Any],
                    params: Mapping[str, Any], progress: Callable[[dict[str, Any]], None],
                    rng: random.Random, factor: float) -> Told:
    limit = int(params.get("max_tokens", 16))
    result: RunResult = await run(model, inputs, {**params, "max_tokens": max(1, limit // 2)},
                                  progress)
    cut = result.finish_reason == "length"  # it stopped on its own first: no lie
    proof = None if result.proof is None else {**result.proof, "finish_reason": "stop"}
    return Told(attrs.evolve(result, finish_reason="stop", proof=proof), cut)


async def _inflate(run: RunCall, model: str, inputs: Mapping[str, Any],
                   params: Mapping[str, Any], progress: Callable[[dict[str, Any]], None],
                   rng: random.Random, factor: float) -> Told:
    result: RunResult = await run(model, inputs, params, progress)
    usage = dict(result.usage)
    usage["tokens"] = int(round(float(usage.get("tokens", 0)) * factor))
    usage["seconds"] = float(usage.get("seconds", 0.0)) + 4.5
    usage["prompt_tokens"] = int(usage.get("prompt_tokens", 0)) + 400
    return Told(attrs.evolve(result, usage=usage), False)  # the output is honest


TELLERS = {"truth": _truth, "fabricate": _fabricate, "truncate": _truncate, "inflate": _inflate}


class LyingExecutor:
    """The real executor with one behaviour's lie around `run`; `verify` is honest.
    Each result it sends is recorded in the ledger (when one is given)."""

    def __init__(self, inner: ThreadedExecutor, behaviour: Behaviour, rng: random.Random,
                 ledger: Path | None = None, factor: float = 2.0) -> None:
        self.inner = inner
        self.behaviour = behaviour
        self.models = inner.models
        self.loaded = inner.loaded
        self.rng = rng
        self.ledger = ledger
        self.factor = factor
        self.lock = threading.Lock()

    async def run(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                  on_progress: Callable[[dict[str, Any]], None]) -> RunResult:
        teller = TELLERS[self.behaviour.tell]
        told = await teller(self.inner.run, model, inputs, params, on_progress, self.rng,
                            self.factor)
        self.record(inputs, told)
        return told.result

    async def verify(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                     claimed: Any, proof: Mapping[str, Any] | None) -> Verdict:
        return await self.inner.verify(model, inputs, params, claimed, proof)

    def record(self, inputs: Mapping[str, Any], told: Told) -> None:
        if self.ledger is None:
            return
        line = {"prompt": inputs.get("prompt"), "behaviour": self.behaviour.name,
                # the output is a wrong answer (another model's counts as one)
                "bad_output": told.bad_output or self.behaviour.serves != HONEST_PACK,
                "finish_reason": told.result.finish_reason,
                "tokens": told.result.usage.get("tokens", 0), "output": told.result.output}
        with self.lock, self.ledger.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


class Adversary:
    """The WorkerVariant (engine/worker/__main__.py) of one behaviour."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    def sources(self, args: argparse.Namespace, sources: list[ModelSource]) -> list[ModelSource]:
        entry = _pack(self.behaviour.serves)
        missing = entry.missing()
        if missing:
            raise SystemExit(f"{PROG}: {self.behaviour.name} needs the {entry.name} pack: "
                             f"{missing}")
        return [ModelSource.default_pack(entry)]

    def adapt(self, args: argparse.Namespace, config: WorkerConfig,
              executor: ThreadedExecutor) -> tuple[WorkerConfig, Executor]:
        behaviour = self.behaviour
        # every liar announces the honest pack's weights: what it claims to run
        config = attrs.evolve(config, weights={MODEL: _pack(HONEST_PACK).weights})
        if behaviour.gpu is not None:
            config = attrs.evolve(config, gpu=behaviour.gpu[0], vram_gb=behaviour.gpu[1])
        return config, LyingExecutor(executor, behaviour, random.Random(args.seed),
                                     args.ledger, args.inflate_factor)


def build_adversary_parser() -> argparse.ArgumentParser:
    parser = build_parser(PROG)
    parser.add_argument("--behaviour", required=True, choices=sorted(BEHAVIOURS),
                        help="the lie this worker tells (benchmarks/adversaries.py)")
    parser.add_argument("--ledger", type=Path, help="append one JSON line per result sent")
    parser.add_argument("--seed", type=int, default=0, help="the liar's rng seed (0)")
    parser.add_argument("--inflate-factor", type=float, default=2.0,
                        help="inflate: reported tokens = real x this (2)")
    return parser


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger's lines (none when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    parser = build_adversary_parser()
    args, _ = parser.parse_known_args(argv)
    return worker_main(argv, parser=parser, variant=Adversary(BEHAVIOURS[args.behaviour]))


if __name__ == "__main__":
    sys.exit(main())
