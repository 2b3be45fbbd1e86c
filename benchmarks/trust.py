# Result verification (issue 13, the worker side): what checking a result costs and
# whether honest results are ever flagged.
#
# Rules:
# - Overhead is the validator's wall time on its job over the producer's wall time on
#   the task, both on this machine, same settings, taken in turn (producer,
#   validator, producer, ...) so that the noise of a shared machine falls on both;
#   the medians are compared. Text: teacher-forced verification (one parallel
#   prefill of prompt + claimed tokens, then the checks) at the default settings
#   (greedy, max_tokens = the kind's default; quick: fewer tokens). Goal < 10%.
#   Speech and images are verified by re-execution: ~100% by construction (the
#   rows say so); the core samples them instead of checking every one.
# - The added latency per task of a verification (under `always`, when the result
#   waits for its verdict) is the validator's seconds: reported beside the
#   producer's.
# - False positives: honest SmolLM2 results, each produced and verified by runners
#   of different ONNX Runtime intra-op thread counts and graph optimisation levels
#   (NEUROGRID_ORT_THREADS / NEUROGRID_ORT_OPTIMIZATION), over greedy, nucleus and
#   pure-temperature sampling; >= 500 verifications in a full run (quick: a few
#   dozen). Goal: 0. Beside them, the same number of the demo pack's results under
#   the same name (a substitute model) verified by SmolLM2: all must be rejected.
# - On CPU the text ratio is bounded by the hardware: a decode step reads every
#   weight for one token (memory-bound), a prefill reads them once for many
#   (compute-bound), so the ratio is about bandwidth / (2 x FLOP rate) per token plus
#   the repeated prompt; a GPU's ratio is far lower. The row says which was measured.
from __future__ import annotations

import base64
import itertools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Benchmark, Row, median_of

__all__ = ["BENCHMARK", "false_positive_rows", "image_rows", "run", "speech_rows", "text_rows"]

TARGET_TEXT_RATIO = 0.10
PROMPTS = ("Tell me a long story about a dragon who learns to fly.", "What is the capital of France?",
           "Explain how a bicycle works.", "Write a short poem about the sea.", "List three uses of copper.",
           "Why is the sky blue?", "Give me a recipe for pancakes.", "Describe a busy train station.")
PARAMS: tuple[dict[str, Any], ...] = ({"temperature": 0}, {"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0})
TUNINGS = ((1, "disable"), (2, "all"), (1, "basic"), (2, "extended"))


def _alternate(produce: Callable[[], tuple[Any, float]], check: Callable[[Any], tuple[bool, float]],
               repeats: int) -> tuple[list[float], list[float], int]:
    """Producer and validator seconds, in turn; and how many verdicts failed."""
    made, checked, failed = [], [], 0
    for _ in range(repeats):
        output, seconds = produce()
        made.append(seconds)
        passed, spent = check(output)
        checked.append(spent)
        failed += not passed
    return made, checked, failed


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def text_rows(quick: bool) -> list[Row]:
    from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path
    from engine.worker.runners.textgen import DEFAULT_MAX_TOKENS, TextGenRunner

    try:
        smollm2_gguf_path()
    except PackError as exc:
        return [Row("text verification: not measured", {"why": str(exc)})]
    pack = ensure_smollm2_pack()
    runner = TextGenRunner("llama2:7b", pack, providers_preference="cpu")
    runner.load()
    rows: list[Row] = []
    max_tokens = 32 if quick else DEFAULT_MAX_TOKENS
    stop = lambda: False  # noqa: E731

    def overhead(prompt: str, params: dict[str, Any], repeats: int) -> Row:
        task = {"prompt": prompt}

        def produce() -> tuple[Any, float]:
            result, seconds = _timed(lambda: runner.run(task, params, lambda p: None, stop))
            return result, seconds

        def check(result: Any) -> tuple[bool, float]:
            verdict, seconds = _timed(lambda: runner.verify(task, params, result.output, result.proof, stop))
            return verdict.passed, seconds

        produce()  # warm-up
        made, checked, failed = _alternate(produce, check, repeats)
        last = produce()[0]
        tokens = int(last.usage["tokens"])
        ratio = median_of(checked) / median_of(made)
        return Row(f"text: verify {tokens} claimed tokens vs generating them "
                   f"(prompt {len(runner.prompt_ids(prompt, params))} tokens, cpu)",
                   {"generate_s": median_of(made), "verify_s": median_of(checked),
                    "validator_pct": 100 * ratio, "added_latency_s": median_of(checked), "failed": failed,
                    "proof_bytes": len(json.dumps(last.proof, separators=(",", ":")))},
                   # the goal is stated at the default settings: a quick run's shorter output
                   # costs relatively more (the prompt's prefill is repeated), so it has none
                   target="" if quick else f"validator < {TARGET_TEXT_RATIO:.0%} of the work at the defaults",
                   met=None if quick else ratio < TARGET_TEXT_RATIO)

    default = {"temperature": 0, "max_tokens": max_tokens}
    rows.append(overhead(PROMPTS[0], default, 1 if quick else 3))
    if not quick:
        rows.append(overhead(PROMPTS[0], {"temperature": 0.7, "top_p": 0.9, "max_tokens": max_tokens}, 3))
    runner.unload()
    return rows


def false_positive_rows(quick: bool, count: int | None = None) -> list[Row]:
    """Honest verifications across floating-point detail, and substitutes rejected."""
    from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path
    from engine.worker.runners.demo_pack import ensure_demo_pack
    from engine.worker.runners.providers import session_tuning
    from engine.worker.runners.textgen import TextGenRunner

    try:
        smollm2_gguf_path()
    except PackError as exc:
        return [Row("text false positives: not measured", {"why": str(exc)})]
    pack = ensure_smollm2_pack()
    stop = lambda: False  # noqa: E731
    count = count or (16 if quick else 504)
    tuned = []
    for threads, level in TUNINGS:
        with session_tuning(threads, level):
            tuned.append(TextGenRunner("llama2:7b", pack, providers_preference="cpu"))
            tuned[-1].load()
    demo = TextGenRunner("llama2:7b", ensure_demo_pack(Path(tempfile.mkdtemp(prefix="trust-demo-")) / "demo"),
                         providers_preference="cpu")
    demo.load()
    cases = itertools.islice(itertools.cycle(itertools.product(PROMPTS, PARAMS)), count)
    flagged, substitutes_passed, worst, first = 0, 0, 1.0, ""
    start = time.perf_counter()
    for i, (prompt, params) in enumerate(cases):
        params = {**params, "max_tokens": 16}
        # every (producer, validator) pair of different settings, in turn
        offset = 1 + (i // len(tuned)) % (len(tuned) - 1)
        producer, validator = tuned[i % len(tuned)], tuned[(i + offset) % len(tuned)]
        result = producer.run({"prompt": prompt}, params, lambda p: None, stop)
        verdict = validator.verify({"prompt": prompt}, params, result.output, result.proof, stop)
        flagged += not verdict.passed
        first = first or ("" if verdict.passed else f"{prompt!r} {params}: {verdict.detail}")
        worst = min(worst, verdict.score)
        if i % 4 == 0:  # a substitute: the demo pack's text under the same model name
            fake = demo.run({"prompt": prompt}, params, lambda p: None, stop)
            substitutes_passed += validator.verify({"prompt": prompt}, params, fake.output, fake.proof,
                                                   stop).passed
    return [Row(
        f"text: honest verifications across {len(TUNINGS)} ORT thread/optimisation settings "
        f"x greedy/top_p/temperature",
        {"verifications": count, "false_positives": flagged, "lowest_score": worst,
         "substitutes_tried": (count + 3) // 4, "substitutes_passed": substitutes_passed,
         "seconds": time.perf_counter() - start, **({"first_flagged": first} if first else {})},
        target="0 false positives, 0 substitutes passed", met=flagged == 0 and substitutes_passed == 0)]


def speech_rows(quick: bool) -> list[Row]:
    from engine.worker.packs.whisper_ct2 import ensure_whisper_pack
    from engine.worker.runners.whisper import WhisperRunner
    from tests.engine.worker.whisper.helpers import SENTENCE, espeak_available, espeak_wav

    if not espeak_available():
        return [Row("speech verification: not measured", {"why": "espeak-ng is not installed (no test speech)"})]
    with tempfile.TemporaryDirectory() as tmp:
        pack = ensure_whisper_pack("whisper-tiny.en", Path(tmp) / "whisper-tiny.en", show_progress=False)
        runner = WhisperRunner("whisper", pack, providers_preference="cpu")
        runner.load()
        task = {"audio": base64.b64encode(espeak_wav(SENTENCE)).decode("ascii")}
        stop = lambda: False  # noqa: E731
        runner.run(task, {}, lambda p: None, stop)  # warm-up
        made, checked, failed = _alternate(
            lambda: _timed(lambda: runner.run(task, {}, lambda p: None, stop).output),
            lambda text: (lambda v: (v[0].passed, v[1]))(_timed(lambda: runner.verify(task, {}, text, None, stop))),
            1 if quick else 3)
    ratio = median_of(checked) / median_of(made)
    return [Row("speech (whisper-tiny.en): verify by re-execution + WER",
                {"transcribe_s": median_of(made), "verify_s": median_of(checked), "validator_pct": 100 * ratio,
                 "added_latency_s": median_of(checked), "failed": failed,
                 "note": "re-execution: ~100% by construction; sample these tasks"})]


def image_rows(quick: bool) -> list[Row]:
    from engine.worker.packs.sd_tiny import ensure_sd_tiny
    from engine.worker.runners.diffusion import DiffusionRunner

    with tempfile.TemporaryDirectory() as tmp:
        runner = DiffusionRunner("stable-diffusion", ensure_sd_tiny(Path(tmp) / "sd"), providers_preference="cpu")
        runner.load()
        task, params = {"prompt": "a red fox"}, {"width": 128, "height": 128, "steps": 10, "seed": 3}
        stop = lambda: False  # noqa: E731
        runner.run(task, params, lambda p: None, stop)  # warm-up
        made, checked, failed = _alternate(
            lambda: _timed(lambda: runner.run(task, params, lambda p: None, stop).output),
            lambda out: (lambda v: (v[0].passed, v[1]))(_timed(lambda: runner.verify(task, params, out, None, stop))),
            2 if quick else 5)
    ratio = median_of(checked) / median_of(made)
    return [Row("image (sd-tiny-random 128x128, 10 steps): verify by re-execution + PSNR",
                {"generate_s": median_of(made), "verify_s": median_of(checked), "validator_pct": 100 * ratio,
                 "added_latency_s": median_of(checked), "failed": failed,
                 "note": "re-execution: ~100% by construction; sample these tasks"})]


def run(quick: bool) -> list[Row]:
    from benchmarks.trust_e2e import rows as end_to_end_rows  # the adversary suite, live

    return [*text_rows(quick), *false_positive_rows(quick), *speech_rows(quick), *image_rows(quick),
            *end_to_end_rows(quick)]


BENCHMARK = Benchmark("trust", "result verification: validator overhead, added latency, honest false positives",
                      run)
