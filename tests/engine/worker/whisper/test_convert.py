from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.worker.packs import PackError
from engine.worker.packs.ct2 import Ct2Model, read_ct2_model
from engine.worker.packs.whisper_ct2 import SOURCES, SourceFiles, WhisperSource
from engine.worker.packs.whisper_onnx import WhisperDims, decoder_model
from engine.worker.runners.mel import MelSpec, log_mel_spectrogram

# ---------------------------------------------------------------------------------
# The model.bin reader, against files written here by the format's own rules.
_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _ct2_file(variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6,
              bf16: dict[str, np.ndarray] | None = None) -> bytes:
    out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<I", 2)
    entries = [(name, value, _TYPE_IDS[value.dtype.name], value.tobytes()) for name, value in variables.items()]
    for name, value in (bf16 or {}).items():  # bfloat16: the high 16 bits of float32
        entries.append((name, value, 5, (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()))
    out += struct.pack("<I", len(entries))
    for name, value, type_id, data in entries:
        out += _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<B", type_id) + struct.pack("<I", len(data)) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    return out


def test_the_reader_returns_every_variable_alias_and_scalar(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    quantised = np.array([[2, -4], [6, 8]], dtype=np.int8)
    variables: dict[str, np.ndarray] = {"enc/weight": weight, "enc/num_heads": np.array(6, np.int16),
                 "q/weight": quantised, "q/weight_scale": np.array([2.0, 4.0], np.float32)}
    halves = np.array([1.5, -2.25, 3.0], np.float32)  # exact in bfloat16
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_file(variables, {"dec/projection": "enc/weight"}, bf16={"b": halves}))
    model = read_ct2_model(path)
    assert (model.spec, model.revision, model.binary_version) == ("TestSpec", 2, 6)
    np.testing.assert_array_equal(model.get("enc/weight"), weight)
    assert model.get("dec/projection") is model.get("enc/weight")
    assert model.scalar("enc/num_heads") == 6
    np.testing.assert_array_equal(model.get("b"), halves)
    np.testing.assert_array_equal(model.dequantized("q/weight"), [[1.0, -2.0], [1.5, 2.0]])
    data = path.read_bytes()  # split in two parts like the base model's packages
    (tmp_path / "p1").write_bytes(data[:50])
    (tmp_path / "p2").write_bytes(data[50:])
    assert read_ct2_model(tmp_path / "p1", tmp_path / "p2").variables.keys() == model.variables.keys()


@pytest.mark.parametrize("mutate, message", [
    (lambda data: data[:-3], "truncated"),
    (lambda data: data + b"\0", "unexpected bytes"),
    (lambda data: struct.pack("<I", 3) + data[4:], "binary version 3 is not supported"),
])
def test_the_reader_rejects_damaged_files(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.bin"
    path.write_bytes(mutate(_ct2_file({"w": np.ones(4, np.float32)}, {"v": "w"})))
    with pytest.raises(PackError, match=message):
        read_ct2_model(path)


# ---------------------------------------------------------------------------------
# The converted graphs against a plain numpy forward pass of the CTranslate2 weights.

def _erf(x: np.ndarray) -> np.ndarray:  # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7
    sign, x = np.sign(x), np.abs(x)
    t = 1 / (1 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def _norm(m: Ct2Model, prefix: str, x: np.ndarray) -> np.ndarray:
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * m.dequantized(prefix + "/gamma") + m.dequantized(prefix + "/beta")


def _dense(m: Ct2Model, prefix: str, x: np.ndarray) -> np.ndarray:
    return x @ m.dequantized(prefix + "/weight").T + m.dequantized(prefix + "/bias")


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, causal: bool) -> np.ndarray:
    split = lambda x: x.reshape(len(x), heads, -1).transpose(1, 0, 2)  # noqa: E731
    qh, kh, vh = split(q), split(k), split(v)
    scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(qh.shape[-1])
    if causal:
        scores = scores + np.triu(np.full(scores.shape[1:], -np.inf), 1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ vh).transpose(1, 0, 2).reshape(len(q), -1)


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (1, 1)))
    steps = (padded.shape[1] - 3) // stride + 1
    cols = np.stack([padded[:, k:k + stride * steps:stride] for k in range(3)], axis=1)  # [in, 3, steps]
    return weight.reshape(len(weight), -1) @ cols.reshape(-1, steps) + bias[:, None]


def _encoder(m: Ct2Model, mel: np.ndarray) -> np.ndarray:
    heads = m.scalar("encoder/num_heads")
    x = _gelu(_conv(mel, m.dequantized("encoder/conv1/weight"), m.dequantized("encoder/conv1/bias"), 1))
    x = _gelu(_conv(x, m.dequantized("encoder/conv2/weight"), m.dequantized("encoder/conv2/bias"), 2))
    x = x.T + m.dequantized("encoder/position_encodings/encodings")
    layer = 0
    while f"encoder/layer_{layer}/ffn/linear_0/weight" in m.variables:
        p = f"encoder/layer_{layer}"
        h = _norm(m, p + "/self_attention/layer_norm", x)
        q, k, v = np.split(_dense(m, p + "/self_attention/linear_0", h), 3, -1)
        x = x + _dense(m, p + "/self_attention/linear_1", _attend(q, k, v, heads, causal=False))
        h = _norm(m, p + "/ffn/layer_norm", x)
        x = x + _dense(m, p + "/ffn/linear_1", _gelu(_dense(m, p + "/ffn/linear_0", h)))
        layer += 1
    return _norm(m, "encoder/layer_norm", x)


def _decoder(m: Ct2Model, ids: list[int], audio: np.ndarray) -> np.ndarray:
    """Logits at every position of `ids` (whole sequence, causal mask, no cache)."""
    heads = m.scalar("decoder/num_heads")
    embed = m.dequantized("decoder/embeddings/weight")
    x = embed[ids] + m.dequantized("decoder/position_encodings/encodings")[:len(ids)]
    layer = 0
    while f"decoder/layer_{layer}/ffn/linear_0/weight" in m.variables:
        p = f"decoder/layer_{layer}"
        h = _norm(m, p + "/self_attention/layer_norm", x)
        q, k, v = np.split(_dense(m, p + "/self_attention/linear_0", h), 3, -1)
        x = x + _dense(m, p + "/self_attention/linear_1", _attend(q, k, v, heads, causal=True))
        q = _dense(m, p + "/attention/linear_0", _norm(m, p + "/attention/layer_norm", x))
        k, v = np.split(_dense(m, p + "/attention/linear_1", audio), 2, -1)
        x = x + _dense(m, p + "/attention/linear_2", _attend(q, k, v, heads, causal=False))
        h = _norm(m, p + "/ffn/layer_norm", x)
        x = x + _dense(m, p + "/ffn/linear_1", _gelu(_dense(m, p + "/ffn/linear_0", h)))
        layer += 1
    return _norm(m, "decoder/layer_norm", x) @ embed.T


@pytest.fixture(scope="module")
def tiny_ct2() -> Ct2Model:
    return read_ct2_model(*SOURCES["whisper-tiny.en"].files().model_parts)


def test_converted_encoder_and_cached_decoder_match_a_numpy_forward_pass(tiny_pack: Path, tiny_ct2: Ct2Model) -> None:
    t = np.arange(4 * 16000) / 16000
    mel = log_mel_spectrogram((0.3 * np.sin(2 * np.pi * (150 + 600 * t) * t)).astype(np.float32), MelSpec.default())
    encoder = ort.InferenceSession(str(tiny_pack / "encoder_model.onnx"), providers=["CPUExecutionProvider"])
    audio = encoder.run(None, {"input_features": mel[None]})[0]
    expected_audio = _encoder(tiny_ct2, mel.astype(np.float64))
    assert audio.shape == (1, 1500, 384)
    np.testing.assert_allclose(audio[0], expected_audio, atol=2e-3, rtol=1e-3)

    ids = [50257, 50362, 383, 2068, 7586, 21831]  # <|startoftranscript|> <|notimestamps|> " The quick brown fox"
    expected = _decoder(tiny_ct2, ids, audio[0].astype(np.float64))
    decoder = ort.InferenceSession(str(tiny_pack / "decoder_model_merged.onnx"), providers=["CPUExecutionProvider"])
    past_names = [i.name for i in decoder.get_inputs() if i.name.startswith("past_key_values.")]
    outputs = [o.name for o in decoder.get_outputs()]
    past = {name: np.zeros((1, 6, 0, 64), np.float32) for name in past_names}
    fed, position = ids[:2], 0
    while position < len(ids):
        feeds = {"input_ids": np.array([fed], np.int64), "encoder_hidden_states": audio,
                 "use_cache_branch": np.array([position > 0]), **past}
        result = dict(zip(outputs, decoder.run(outputs, feeds)))
        np.testing.assert_allclose(result["logits"][0], expected[position:position + len(fed)], atol=5e-3, rtol=1e-3)
        past = {"past_key_values." + n[len("present."):]: v for n, v in result.items() if n.startswith("present.")}
        position += len(fed)
        fed = ids[position:position + 1]
    assert past["past_key_values.0.decoder.key"].shape == (1, 6, len(ids), 64)
    assert past["past_key_values.3.encoder.value"].shape == (1, 6, 1500, 64)


def test_the_pack_has_the_hugging_face_layout_and_the_config_suppression_lists(tiny_pack: Path) -> None:
    names = {path.name for path in tiny_pack.iterdir()}
    assert {"encoder_model.onnx", "decoder_model_merged.onnx", "config.json", "generation_config.json",
            "preprocessor_config.json", "tokenizer.json"} <= names
    ct2_config = json.loads(SOURCES["whisper-tiny.en"].files().config.read_text())
    generation = json.loads((tiny_pack / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == ct2_config["suppress_ids"]
    assert generation["begin_suppress_tokens"] == ct2_config["suppress_ids_begin"]
    assert generation["is_multilingual"] is False and generation["decoder_start_token_id"] == 50257
    config = json.loads((tiny_pack / "config.json").read_text())
    assert (config["d_model"], config["encoder_layers"], config["decoder_attention_heads"]) == (384, 4, 6)


def test_conversion_is_reproducible(tiny_ct2: Ct2Model) -> None:
    dims = WhisperDims.from_ct2(tiny_ct2)
    assert decoder_model(tiny_ct2, dims).SerializeToString() == decoder_model(tiny_ct2, dims).SerializeToString()


def test_a_directory_source_needs_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="no CTranslate2 model.bin"):
        SourceFiles.from_directory(tmp_path)


def test_a_missing_source_package_names_the_pip_install() -> None:
    absent = ("neurogrid_test_absent_package", "model/model.bin")
    source = WhisperSource("absent", ("absent-package==1.0",), (absent,), absent, absent, "not installed")
    with pytest.raises(PackError, match="pip install absent-package==1.0"):
        source.files()
