"""Model runners: demo pack, text generation, provider choice, registry (CPU only, no network)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from engine.worker.runners import InvalidTaskInput, ModelLoadError, ModelRunner, NoopRunner, RunResult, load_runner
from engine.worker.runners import providers
from engine.worker.runners.demo_pack import build_model, ensure_demo_pack, main, write_demo_pack
from engine.worker.runners.textgen import KvLayout, TextGenRunner, pick_token

PACK_FILES = ("model.onnx", "tokenizer.json", "config.json", "generation_config.json", "README.txt")


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_pack(tmp_path_factory.mktemp("packs") / "demo")


@pytest.fixture(scope="module")
def runner(pack: Path) -> TextGenRunner:
    loaded = load_runner("llama2:7b", pack, providers_preference="cpu")
    assert isinstance(loaded, TextGenRunner)
    return loaded


def generate(
    runner: ModelRunner, prompt: str = "Hello world", **params: Any
) -> tuple[RunResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    result = runner.run({"prompt": prompt}, params, events.append, lambda: False)
    return result, events


def copy_pack(pack: Path, to: Path) -> Path:
    shutil.copytree(pack, to)
    return to


# --- demo pack -----------------------------------------------------------------


def test_demo_pack_builds_fast_small_and_byte_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    start = time.perf_counter()
    write_demo_pack(first)
    assert time.perf_counter() - start < 2
    write_demo_pack(second)
    for name in PACK_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sum((first / name).stat().st_size for name in PACK_FILES) < 5_000_000
    assert "NOT meaningful" in (first / "README.txt").read_text()


def test_ensure_demo_pack_is_idempotent_and_replaces_only_demo_packs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nested" / "demo"
    main([str(target)])
    assert capsys.readouterr().out.strip() == str(target)
    stamp = (target / "model.onnx").stat().st_mtime_ns
    assert ensure_demo_pack(target) == target
    assert (target / "model.onnx").stat().st_mtime_ns == stamp
    assert sorted(path.name for path in tmp_path.joinpath("nested").iterdir()) == ["demo"]  # no temp dirs left

    (target / "model.onnx").unlink()  # a partial pack is rebuilt
    assert (ensure_demo_pack(target) / "model.onnx").is_file()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a NeuroGrid demo pack"):
        ensure_demo_pack(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_past_kv_model_matches_full_sequence_model() -> None:
    options = ort.SessionOptions()
    with_past = ort.InferenceSession(build_model().SerializeToString(), options, providers=["CPUExecutionProvider"])
    no_past = ort.InferenceSession(
        build_model(with_past=False).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    ids = np.array([[1, 5, 17, 42, 9, 100, 3, 250]], np.int64)
    positions = np.arange(ids.shape[1], dtype=np.int64)[None]
    full_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": positions}
    (full,) = no_past.run(["logits"], full_feeds)

    outputs = [o.name for o in with_past.get_outputs()]
    past = {i.name: np.zeros((1, 2, 0, 32), np.float32) for i in with_past.get_inputs() if i.name.startswith("past")}
    prompt = 3  # first step feeds 3 tokens with an empty past, then one token at a time
    steps = [(0, prompt)] + [(n, n + 1) for n in range(prompt, ids.shape[1])]
    for begin, end in steps:
        feeds = {
            "input_ids": ids[:, begin:end],
            "attention_mask": np.ones((1, end), np.int64),
            "position_ids": positions[:, begin:end],
            **past,
        }
        logits, *presents = with_past.run(outputs, feeds)
        past = {name.replace("present.", "past_key_values."): value for name, value in zip(outputs[1:], presents)}
        np.testing.assert_allclose(logits[0], full[0, begin:end], rtol=1e-4, atol=1e-4)
    assert past["past_key_values.0.key"].shape == (1, 2, ids.shape[1], 32)


# --- text generation -------------------------------------------------------------


def test_runner_generates_streamed_text(runner: TextGenRunner) -> None:
    result, events = generate(runner, max_tokens=12, seed=1)
    assert isinstance(result.output, str) and result.output.strip()
    assert result.usage["tokens"] == 12
    assert result.usage["prompt_tokens"] == 3  # <bos> hello world
    assert result.usage["seconds"] > 0
    assert result.finish_reason == "length"
    assert "".join(piece for event in events for piece in event["tokens"]) == result.output
    indexes = [event["index"] for event in events]
    assert indexes == sorted(indexes) and indexes[-1] == 11


def test_greedy_is_deterministic_and_not_one_repeated_token(runner: TextGenRunner) -> None:
    first, _ = generate(runner, temperature=0, max_tokens=30)
    second, _ = generate(runner, temperature=0, max_tokens=30)
    assert first.output == second.output
    assert len(set(first.output.split())) > 10


def test_seed_fixes_sampled_text(runner: TextGenRunner) -> None:
    # Sampling is asked for: the default (the text kind's) is greedy, temperature 0.
    outputs = [generate(runner, seed=seed, max_tokens=20, temperature=0.7, top_p=0.9)[0].output
               for seed in (7, 7, 8, 9, 10)]
    assert outputs[0] == outputs[1]
    assert len(set(outputs)) > 2


def test_eos_stops_generation(runner: TextGenRunner, pack: Path, tmp_path: Path) -> None:
    greedy, events = generate(runner, temperature=0, max_tokens=10)
    words = [event["tokens"][0].strip() for event in events]
    stop_at = next(i for i, word in enumerate(words) if i >= 2 and word not in words[:i])
    model_dir = copy_pack(pack, tmp_path / "eos")
    eos = Tokenizer.from_file(str(pack / "tokenizer.json")).token_to_id(words[stop_at])
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, eos]}))
    stopping = load_runner("llama2", model_dir, providers_preference="cpu")
    params = {"temperature": 0, "max_tokens": 10}
    result = stopping.run({"prompt": "Hello world"}, params, lambda _: None, lambda: False)
    assert result.finish_reason == "stop"
    assert result.usage["tokens"] == stop_at
    assert greedy.output.startswith(result.output)


def test_should_stop_cancels_between_tokens(runner: TextGenRunner) -> None:
    events: list[dict[str, Any]] = []
    result = runner.run({"prompt": "hi"}, {"max_tokens": 50, "seed": 3}, events.append, lambda: len(events) >= 4)
    assert result.finish_reason == "cancelled"
    assert result.usage["tokens"] == 4
    stopped_at_once = runner.run({"prompt": "hi"}, {}, events.append, lambda: True)
    assert stopped_at_once.output == "" and stopped_at_once.usage["tokens"] == 0


def test_runner_without_past_generates_the_same_text(runner: TextGenRunner, pack: Path, tmp_path: Path) -> None:
    model_dir = copy_pack(pack, tmp_path / "nopast")
    (model_dir / "model.onnx").write_bytes(build_model(with_past=False).SerializeToString())
    no_past = load_runner("llama2", model_dir, providers_preference="cpu")
    for params in ({"temperature": 0, "max_tokens": 15}, {"seed": 11, "max_tokens": 15}):
        expected, expected_events = generate(runner, "Explain quantum computing", **params)
        got, got_events = generate(no_past, "Explain quantum computing", **params)
        assert (got.output, got_events) == (expected.output, expected_events)


@pytest.mark.parametrize(
    ("inputs", "params", "match"),
    [
        ({}, {}, "prompt"),
        ({"prompt": "hi"}, {"max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi"}, {"max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "hi"}, {"temperature": -1}, "temperature"),
        ({"prompt": "hi"}, {"top_p": 0}, "top_p"),
        ({"prompt": "hi"}, {"seed": "x"}, "seed"),
    ],
)
def test_bad_task_input_is_rejected(
    runner: TextGenRunner, inputs: dict[str, Any], params: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidTaskInput, match=match):
        runner.run(inputs, params, lambda _: None, lambda: False)


def test_pick_token_greedy_and_nucleus() -> None:
    logits = np.array([0.0, 3.0, 2.9, -1.0], np.float32)
    rng = np.random.default_rng(0)
    assert pick_token(logits, 0.0, 0.9, rng) == 1
    assert {pick_token(logits, 1.0, 1e-6, rng) for _ in range(50)} == {1}  # nucleus keeps the top token only
    assert {pick_token(logits, 1.0, 0.9, rng) for _ in range(200)} == {1, 2}


def test_kv_layout_from_shapes_or_config() -> None:
    static = [SimpleNamespace(name="past_key_values.0.key", shape=["b", 4, "p", 16], type="tensor(float16)")]
    assert KvLayout.from_inputs(static, {}) == KvLayout(("past_key_values.0.key",), 4, 16, np.float16)
    symbolic = [
        SimpleNamespace(name=f"past_key_values.0.{kind}", shape=["b", "h", "p", "d"], type="tensor(float)")
        for kind in ("key", "value")
    ]
    llama = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    layout = KvLayout.from_inputs(symbolic, llama)
    assert layout is not None and (layout.num_kv_heads, layout.head_dim, len(layout.names)) == (8, 128, 2)
    assert layout.empty()["past_key_values.0.value"].shape == (1, 8, 0, 128)
    assert KvLayout.from_inputs([SimpleNamespace(name="input_ids", shape=["b", "s"], type="tensor(int64)")], {}) is None
    with pytest.raises(ModelLoadError, match="config.json"):
        KvLayout.from_inputs(symbolic, {})


def test_missing_tokenizer_names_the_file(pack: Path, tmp_path: Path) -> None:
    model_dir = copy_pack(pack, tmp_path / "broken")
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_runner("llama2:7b", model_dir, providers_preference="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runner("llama2:7b", tmp_path / "nowhere", providers_preference="cpu")


def test_unload_then_load_again(pack: Path) -> None:
    fresh = load_runner("llama2:7b", pack, providers_preference="cpu")
    expected, _ = generate(fresh, temperature=0, max_tokens=5)
    fresh.unload()
    with pytest.raises(ModelLoadError, match="not loaded"):
        generate(fresh)
    fresh.load()
    assert generate(fresh, temperature=0, max_tokens=5)[0].output == expected.output


# --- registry and providers --------------------------------------------------------


def test_registry_noop_and_unknown_models() -> None:
    noop = load_runner("noop", None)
    assert isinstance(noop, NoopRunner)
    result = noop.run({"prompt": "x"}, {}, lambda _: None, lambda: False)
    assert "no inference" in result.output and result.usage["tokens"] == 0
    with pytest.raises(ModelLoadError, match="whisper"):
        load_runner("whisper", None)
    with pytest.raises(ModelLoadError, match="model directory"):
        load_runner("llama2", None)


def test_provider_choice_logs_one_line_and_hides_onnxruntime_spam(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(providers.PROVIDER_ENV, raising=False)
    providers.cuda_problem.cache_clear()
    with caplog.at_level(logging.INFO, logger=providers.__name__):
        chosen = providers.choose_providers()
    problem = providers.cuda_problem()
    assert chosen == ((providers.CUDA, providers.CPU) if problem is None else (providers.CPU,))
    assert len(caplog.records) == 1
    assert chosen[0] in caplog.records[0].getMessage()
    assert "onnxruntime" not in capfd.readouterr().err

    caplog.clear()
    monkeypatch.setenv(providers.PROVIDER_ENV, "cpu")
    with caplog.at_level(logging.INFO, logger=providers.__name__):
        assert providers.choose_providers() == (providers.CPU,)
    assert [record.getMessage() for record in caplog.records] == [
        f"onnxruntime: using CPUExecutionProvider (forced by {providers.PROVIDER_ENV}=cpu)"
    ]
    with pytest.raises(ModelLoadError, match="unknown provider"):
        providers.choose_providers("tpu")
    if problem is not None:
        with pytest.raises(ModelLoadError, match="CUDA is unusable"):
            providers.choose_providers("cuda")
