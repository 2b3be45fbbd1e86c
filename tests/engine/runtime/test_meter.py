"""The coordinator's meter (engine/runtime/meter.py): it counts a text result's
tokens with the tokenizer of the weights the node announced, and has no count when
it has no tokenizer for them."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from engine.runtime.meter import Meter, default_tokenizers
from engine.worker.packs.defaults import DEFAULTS, DEMO_WEIGHTS
from engine.worker.runners.demo_pack import build_tokenizer

LLAMA = "llama2:7b"


def test_the_demo_weights_are_counted_with_the_demo_tokenizer():
    meter = Meter()
    reference = Tokenizer.from_str(build_tokenizer())
    text = "the cat sat on the mat"
    counts = meter.count(LLAMA, DEMO_WEIGHTS, text, {"prompt": "a cat"})
    assert counts is not None
    assert counts.output_tokens == len(reference.encode(text, add_special_tokens=False).ids)
    assert counts.prompt_tokens == len(reference.encode("a cat", add_special_tokens=False).ids)


def test_unknown_weights_a_non_text_model_or_output_have_no_count():
    meter = Meter()
    assert meter.count(LLAMA, "the operator's model at /m", "text", {"prompt": "p"}) is None
    assert meter.count("whisper", DEMO_WEIGHTS, "text", {}) is None
    assert meter.count(LLAMA, DEMO_WEIGHTS, {"not": "text"}, {"prompt": "p"}) is None


def test_a_source_that_fails_or_is_absent_means_no_tokenizer():
    def broken() -> str:
        raise OSError("disk gone")

    meter = Meter({"broken": broken, "absent": lambda: None})
    assert meter.tokenizer("broken") is None and meter.tokenizer("absent") is None


def test_every_text_default_pack_has_a_source():
    table = default_tokenizers()
    for entry in DEFAULTS:
        if entry.model == LLAMA:
            assert entry.weights in table
    smollm2 = next(e for e in DEFAULTS if e.name == "smollm2-135m-instruct")
    if not (smollm2.directory() / "tokenizer.json").is_file():
        pytest.skip("the SmolLM2 pack is not built in this cache")
    counts = Meter().count(LLAMA, smollm2.weights, "The capital of France is Paris.", {})
    assert counts is not None and 5 <= counts.output_tokens <= 12
