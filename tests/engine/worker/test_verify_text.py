"""Verification of text results with real models: honest results from runners whose
floating-point detail differs (ONNX Runtime thread counts, graph optimisation
levels) pass; fabricated text, another model's output under the same name, truncated
output and forged proofs fail. SmolLM2-135M-Instruct is the real model (skipped with
the install command when it is missing); the demo pack is the substitute."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from engine.worker.runners import InvalidTaskInput, ModelLoadError, RunResult
from engine.worker.runners.demo_pack import ensure_demo_pack
from engine.worker.runners.providers import OPTIMIZATION_ENV, THREADS_ENV, session_tuning
from engine.worker.runners.textgen import TextGenRunner, pick_token
from engine.worker.runners.verify_text import GREEDY_MARGIN, TextProof, greedy_passes, judge_text

PROMPTS = ("What is the capital of France?", "Name a primary color.", "Say hello in Spanish.")
GREEDY = {"temperature": 0, "max_tokens": 12}
SAMPLED = {"temperature": 0.8, "top_p": 0.9, "max_tokens": 12}
PURE = {"temperature": 1.0, "max_tokens": 12}  # top_p 1: every token is a possible sample
TUNINGS = ((1, "disable"), (2, "all"), (1, "basic"))


def tuned(directory: Path, threads: int, level: str) -> TextGenRunner:
    with session_tuning(threads, level):
        runner = TextGenRunner("llama2:7b", directory, providers_preference="cpu")
        runner.load()
    return runner


@pytest.fixture(scope="module")
def smol(smollm2_pack: Path) -> Iterator[list[TextGenRunner]]:
    runners = [tuned(smollm2_pack, threads, level) for threads, level in TUNINGS]
    yield runners
    for runner in runners:
        runner.unload()


@pytest.fixture(scope="module")
def tokenizer(smollm2_pack: Path) -> Tokenizer:
    return Tokenizer.from_file(str(smollm2_pack / "tokenizer.json"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> TextGenRunner:
    runner = TextGenRunner("llama2:7b", ensure_demo_pack(tmp_path_factory.mktemp("demo") / "demo"),
                           providers_preference="cpu")
    runner.load()
    return runner


def produce(runner: TextGenRunner, prompt: str, params: dict[str, Any]) -> RunResult:
    return runner.run({"prompt": prompt}, params, lambda partial: None, lambda: False)


def verify(runner: TextGenRunner, prompt: str, params: dict[str, Any], claimed: Any,
           proof: Any) -> Any:
    return runner.verify({"prompt": prompt}, params, claimed, proof, lambda: False)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED, PURE], ids=["greedy", "top_p", "pure-temperature"])
def test_honest_results_pass_across_threads_and_optimisation_levels(
        smol: list[TextGenRunner], params: dict[str, Any]) -> None:
    for prompt in PROMPTS:
        for p, producer in enumerate(smol):
            result = produce(producer, prompt, params)
            assert result.proof is not None and result.proof["token_ids"]
            validator = smol[(p + 1) % len(smol)]  # another tuning checks it
            verdict = verify(validator, prompt, params, result.output, result.proof)
            assert verdict.passed, (prompt, result.output, verdict)
            assert verdict.score == 1.0


def test_without_a_proof_greedy_results_are_checked_and_sampled_ones_fail(smol: list[TextGenRunner]) -> None:
    result = produce(smol[0], PROMPTS[0], GREEDY)
    verdict = verify(smol[1], PROMPTS[0], GREEDY, result.output, None)
    assert verdict.passed and "re-tokenized" in verdict.detail
    result = produce(smol[0], PROMPTS[0], SAMPLED)
    assert not verify(smol[1], PROMPTS[0], SAMPLED, result.output, None).passed  # nothing to replay
    assert verify(smol[1], PROMPTS[0], {**SAMPLED, "seed": 7},
                  produce(smol[0], PROMPTS[0], {**SAMPLED, "seed": 7}).output, None).passed


def test_the_proof_names_ids_finish_seed_and_commitments(smol: list[TextGenRunner]) -> None:
    result = produce(smol[0], PROMPTS[0], {**SAMPLED, "max_tokens": 20})
    proof = TextProof.from_json(result.proof)
    assert smol[0].prompt_ids("x", {})  # loaded
    assert len(proof.token_ids) == result.usage["tokens"]
    assert proof.finish_reason == result.finish_reason
    assert proof.seed is not None  # drawn by the producer: the task gave none
    assert proof.commitments is not None
    assert proof.commitments.positions == tuple(range(0, len(proof.token_ids), proof.commitments.every))


@pytest.mark.parametrize("params", [GREEDY, SAMPLED, PURE], ids=["greedy", "top_p", "pure-temperature"])
def test_fabricated_text_fails(smol: list[TextGenRunner], tokenizer: Tokenizer, params: dict[str, Any]) -> None:
    honest = produce(smol[0], PROMPTS[0], params)
    fake = "Bananas are purple and the moon is made of cheese."
    assert not verify(smol[1], PROMPTS[0], params, fake, None).passed
    ids = tokenizer.encode(fake, add_special_tokens=False).ids
    forged = {**honest.proof, "token_ids": ids, "finish_reason": "stop"}  # type: ignore[dict-item]
    forged.pop("commitments")
    verdict = verify(smol[1], PROMPTS[0], params, fake, forged)
    assert not verdict.passed, verdict


@pytest.mark.parametrize("params", [GREEDY, PURE], ids=["greedy", "pure-temperature"])
def test_another_model_under_the_same_name_fails(smol: list[TextGenRunner], demo: TextGenRunner,
                                                 params: dict[str, Any]) -> None:
    for prompt in PROMPTS:
        substitute = produce(demo, prompt, params)  # the random-weight demo pack "is" llama2:7b
        assert not verify(smol[0], prompt, params, substitute.output, substitute.proof).passed
        assert not verify(smol[0], prompt, params, substitute.output, None).passed
        # and the other way round: SmolLM2's text is not what the demo pack computes
        real = produce(smol[0], prompt, params)
        assert not verify(demo, prompt, params, real.output, None).passed


def test_the_demo_pack_verifies_its_own_results(demo: TextGenRunner) -> None:
    for params in (GREEDY, SAMPLED, PURE):
        result = produce(demo, PROMPTS[1], params)
        verdict = verify(demo, PROMPTS[1], params, result.output, result.proof)
        assert verdict.passed, verdict


def test_truncated_output_fails(smol: list[TextGenRunner], tokenizer: Tokenizer) -> None:
    params = {"temperature": 0, "max_tokens": 40}
    result = produce(smol[0], PROMPTS[0], params)
    assert result.finish_reason == "stop"  # "The capital of France is Paris."
    ids = result.proof["token_ids"]  # type: ignore[index]
    cut = ids[: len(ids) // 2]
    text = tokenizer.decode(cut)
    for finish in ("stop", "length", None):
        proof = {**result.proof, "token_ids": cut, "finish_reason": finish}  # type: ignore[dict-item]
        proof.pop("commitments")
        verdict = verify(smol[1], PROMPTS[0], params, text, proof)
        assert not verdict.passed, (finish, verdict)
    # a `length` finish needs max_tokens tokens: an honest one has them
    capped = produce(smol[0], PROMPTS[1], {"temperature": 0, "max_tokens": 3})
    assert capped.finish_reason == "length"
    assert verify(smol[1], PROMPTS[1], {"temperature": 0, "max_tokens": 3}, capped.output, capped.proof).passed


def test_forged_commitments_fail(smol: list[TextGenRunner]) -> None:
    result = produce(smol[0], PROMPTS[0], GREEDY)
    proof = dict(result.proof)  # type: ignore[arg-type]
    commitments = dict(proof["commitments"])
    commitments["values"] = [[v + 0.5 for v in row] for row in commitments["values"]]
    assert not verify(smol[1], PROMPTS[0], GREEDY, result.output, {**proof, "commitments": commitments}).passed
    commitments = dict(proof["commitments"], positions=[])  # left out
    commitments["indices"] = commitments["values"] = []
    assert not verify(smol[1], PROMPTS[0], GREEDY, result.output, {**proof, "commitments": commitments}).passed


def test_a_claim_of_the_wrong_shape_or_a_malformed_proof_is_a_failed_verdict(smol: list[TextGenRunner]) -> None:
    result = produce(smol[0], PROMPTS[0], GREEDY)
    for claimed, proof in (({"text": "Paris"}, None), (None, None), (42, result.proof),
                           (result.output, {"scheme": "other"}), (result.output, {**result.proof, "token_ids": "x"}),
                           (result.output, {**result.proof, "token_ids": [10**9]}),
                           (result.output + " extra", result.proof)):
        verdict = verify(smol[1], PROMPTS[0], GREEDY, claimed, proof)
        assert not verdict.passed and verdict.detail, (claimed, proof)


def test_bad_task_params_are_invalid_input_and_unloaded_is_a_load_error(smol: list[TextGenRunner],
                                                                         smollm2_pack: Path) -> None:
    with pytest.raises(InvalidTaskInput, match="temperature"):
        verify(smol[0], PROMPTS[0], {"temperature": 5}, "x", None)
    with pytest.raises(ModelLoadError):
        verify(TextGenRunner("m", smollm2_pack), PROMPTS[0], {}, "x", None)


def test_the_tuning_variables_are_checked(smollm2_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ModelLoadError, match=THREADS_ENV):
        TextGenRunner("m", smollm2_pack, providers_preference="cpu").load()
    monkeypatch.setenv(THREADS_ENV, "1")
    monkeypatch.setenv(OPTIMIZATION_ENV, "max")
    with pytest.raises(ModelLoadError, match=OPTIMIZATION_ENV):
        TextGenRunner("m", smollm2_pack, providers_preference="cpu").load()


# ---- the rules on synthetic logits ------------------------------------------------


def rows_for(tokens: list[int], vocab: int = 10, peak: float = 5.0) -> np.ndarray:
    """Logits that put `peak` on each given token (one row per token, plus an EOS row)."""
    rows = np.zeros((len(tokens) + 1, vocab), np.float32)
    for i, token in enumerate(tokens):
        rows[i, token] = peak
    rows[-1, 9] = peak  # EOS = 9 after the last
    return rows


def test_greedy_accepts_ties_within_the_margin_only() -> None:
    row = np.array([1.0, 3.0, 3.0 - GREEDY_MARGIN / 2, 3.0 - 2 * GREEDY_MARGIN], np.float32)
    assert greedy_passes(row, 1) and greedy_passes(row, 2)
    assert not greedy_passes(row, 3) and not greedy_passes(row, 0)


@pytest.mark.parametrize("top_p", [0.9, 1.0])
def test_the_seeded_sampler_is_replayed(top_p: float) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 2, (41, 50)).astype(np.float32)  # a flat-ish distribution: tails get sampled
    sampler = np.random.default_rng(7)
    ids = [pick_token(row, 1.0, top_p, sampler) for row in rows[:40]]
    eos = frozenset([pick_token(rows[40], 1.0, top_p, sampler)])  # the draw after the last token ended it
    ids_ok = [i for i in ids if i not in eos]
    if len(ids_ok) != len(ids):
        pytest.skip("the sampled text holds the stand-in EOS id")
    noisy = rows + rng.normal(0, 1e-4, rows.shape).astype(np.float32)  # another machine's logits
    assert judge_text(noisy, ids, eos, 1.0, top_p, 40, "stop", False, None, seed=7).passed
    assert not judge_text(noisy, ids, eos, 1.0, top_p, 40, "stop", False, None, seed=8).passed
    assert not judge_text(noisy, ids, eos, 1.0, top_p, 40, "stop", False, None).passed  # no seed: fails closed
    changed = list(ids)
    for i in (5, 15, 25):  # more than the 5% (2 of 40) that may fail
        changed[i] = next(t for t in range(50) if t != ids[i] and t not in eos)
    verdict = judge_text(noisy, changed, eos, 1.0, top_p, 40, "stop", False, None, seed=7)
    assert not verdict.passed and verdict.score == 1 - 3 / 40
    assert not judge_text(noisy, ids[:30], eos, 1.0, top_p, 40, "stop", False, None, seed=7).passed  # cut


def test_the_finish_must_be_plausible() -> None:
    ids = [1, 2, 3]
    eos = frozenset([9])
    assert judge_text(rows_for(ids), ids, eos, 0.0, 1.0, 10, "stop", False, None).passed
    early = rows_for(ids)
    early[-1] = 0.0
    early[-1, 4] = 5.0  # the model would go on: the output was cut
    assert not judge_text(early, ids, eos, 0.0, 1.0, 10, "stop", False, None).passed
    assert not judge_text(early, ids, eos, 0.0, 1.0, 10, None, False, None).passed
    assert judge_text(early, ids, eos, 0.0, 1.0, 3, "length", False, None).passed
    assert not judge_text(early, ids, eos, 0.0, 1.0, 10, "length", False, None).passed
    assert judge_text(early, ids, eos, 0.0, 1.0, 10, "length", True, None).passed  # context full
    assert not judge_text(rows_for([1, 9]), [1, 9], eos, 0.0, 1.0, 10, "stop", False, None).passed
    assert not judge_text(rows_for(ids), ids, eos, 0.0, 1.0, 2, "length", False, None).passed
