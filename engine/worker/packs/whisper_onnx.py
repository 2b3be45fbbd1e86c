# Whisper as ONNX graphs, built directly with `onnx` from CTranslate2 weights.
#
# Rules of this module:
# - The graphs have the Hugging Face Optimum Whisper export's interface, so the
#   runner serves an operator's own `optimum-cli export onnx` directory the same way:
#   encoder_model.onnx          input_features [batch, n_mels, 3000] float
#                               -> last_hidden_state [batch, 1500, d_model]
#   decoder_model_merged.onnx   input_ids [batch, seq] int64,
#                               encoder_hidden_states [batch, 1500, d_model],
#                               past_key_values.{i}.decoder.key/.value
#                                 [batch, heads, past_seq, head_dim],
#                               past_key_values.{i}.encoder.key/.value
#                                 [batch, heads, 1500, head_dim],
#                               use_cache_branch bool [1]
#                               -> logits [batch, seq, vocab],
#                                  present.{i}.decoder.key/.value (past + seq),
#                                  present.{i}.encoder.key/.value.
#   With use_cache_branch false the cross-attention keys/values are computed from
#   encoder_hidden_states (the first step, past_seq = 0); with true they are the
#   past encoder inputs passed through (an If node, so only one branch runs).
#   Optimum's older split layout is built too (`decoder_model(..., layout)`):
#   decoder_model.onnx (no past inputs, all presents out) and
#   decoder_with_past_model.onnx (no encoder_hidden_states, decoder presents out).
# - The architecture is OpenAI Whisper's as CTranslate2 stores it: pre-norm
#   transformer layers, LayerNorm eps 1e-5, exact (erf) GELU, attention scaled by
#   head_dim ** -0.5, the self-attention Q/K/V fused in one [3d, d] linear, the
#   cross-attention K/V fused in one [2d, d] linear, learned positions added to
#   the token embeddings (decoder; offset by past_seq) and to the conv output
#   (encoder), logits = hidden @ embeddings^T (tied; a Gemm with transB reads the
#   one stored copy).
# - Weights are float32 (CTranslate2's fp16/bf16/int8 are widened or dequantised
#   on the way in), linear weights stored [in, out] for MatMul. The builders are
#   deterministic: the same weights give byte-identical models.
#
# Theory of operation: `_Graph` collects nodes and initializers under unique names;
# small helpers emit one layer piece each (linear, layer norm, attention), and the
# two builders stack them as the Whisper forward pass does.
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.worker.packs.build import PackError
from engine.worker.packs.ct2 import Ct2Model

__all__ = [
    "AUDIO_CONTEXT",
    "DECODER_FILES",
    "OPSET",
    "TEXT_CONTEXT",
    "WhisperDims",
    "decoder_model",
    "encoder_model",
]

OPSET = 17
AUDIO_CONTEXT = 1500  # encoder positions: 3000 mel frames after the stride-2 conv
TEXT_CONTEXT = 448
# decoder layout -> file name, as Optimum names them
DECODER_FILES = {
    "merged": "decoder_model_merged.onnx",
    "no_past": "decoder_model.onnx",
    "with_past": "decoder_with_past_model.onnx",
}
_EPS = 1e-5
_MASKED = -1e9


@attrs.frozen
class WhisperDims:
    """The sizes of one Whisper model, read from its CTranslate2 variables."""

    n_mels: int
    d_model: int
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    vocab_size: int
    ffn_dim: int
    audio_context: int
    text_context: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_heads

    @classmethod
    def from_ct2(cls, model: Ct2Model) -> WhisperDims:
        if model.spec != "WhisperSpec":
            raise PackError(f"expected a CTranslate2 WhisperSpec model, got {model.spec!r}")

        def count(prefix: str) -> int:
            layers = 0
            while f"{prefix}/layer_{layers}/ffn/linear_0/weight" in model.variables:
                layers += 1
            return layers

        d_model, n_mels, _ = model.get("encoder/conv1/weight").shape
        vocab = model.get("decoder/embeddings/weight").shape[0]
        return cls(
            n_mels=int(n_mels), d_model=int(d_model),
            encoder_layers=count("encoder"), encoder_heads=model.scalar("encoder/num_heads"),
            decoder_layers=count("decoder"), decoder_heads=model.scalar("decoder/num_heads"),
            vocab_size=int(vocab), ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
            audio_context=int(model.get("encoder/position_encodings/encodings").shape[0]),
            text_context=int(model.get("decoder/position_encodings/encodings").shape[0]),
        )


@attrs.define
class _Graph:
    """Nodes and initializers of one graph (or subgraph) under construction."""

    model: Ct2Model
    prefix: str = ""  # keeps a subgraph's value names apart from its parent's
    nodes: list[onnx.NodeProto] = attrs.Factory(list)
    initializers: list[onnx.TensorProto] = attrs.Factory(list)
    _names: set[str] = attrs.Factory(set)
    _counter: int = 0

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{self.prefix}{hint}_{self._counter}"

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs_: Any) -> str:
        """Add a node; returns its first output (the others are `hint_k` names)."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type), **attrs_))
        return names[0]

    def ops(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs_: Any) -> list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.op(op_type, inputs, names, **attrs_)
        return names

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const("const_i64_" + "_".join(str(v).replace("-", "m") for v in values),
                          np.array(values, dtype=np.int64))

    def scalar(self, value: float) -> str:
        return self.const(f"const_f32_{value!r}".replace("-", "m").replace(".", "p"), np.array(value, np.float32))

    def weight(self, ct2_name: str, transpose: bool = False) -> str:
        """A CTranslate2 variable as a float32 initializer (named after it)."""
        name = ct2_name.replace("/", ".") + (".T" if transpose else "")
        if name not in self._names:
            value = self.model.dequantized(ct2_name)
            self.const(name, value.T if transpose else value)
        return name

    # -- layer pieces ---------------------------------------------------------------
    def linear(self, x: str, prefix: str) -> str:
        product = self.op("MatMul", [x, self.weight(prefix + "/weight", transpose=True)])
        return self.op("Add", [product, self.weight(prefix + "/bias")])

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", [x, self.weight(prefix + "/gamma"), self.weight(prefix + "/beta")],
                       axis=-1, epsilon=_EPS)

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", [self.op("Mul", [x, self.scalar(1 / math.sqrt(2))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [erf, self.scalar(1.0)])]), self.scalar(0.5)])

    def heads(self, x: str, heads: int, head_dim: int) -> str:
        """[batch, seq, d] -> [batch, heads, seq, head_dim]."""
        return self.op("Transpose", [self.op("Reshape", [x, self.ints(0, 0, heads, head_dim)])], perm=[0, 2, 1, 3])

    def merge_heads(self, x: str, d_model: int) -> str:
        return self.op("Reshape", [self.op("Transpose", [x], perm=[0, 2, 1, 3]), self.ints(0, 0, d_model)])

    def attention(self, q: str, k: str, v: str, head_dim: int, mask: str | None = None) -> str:
        """softmax(q k^T / sqrt(head_dim) + mask) v, all [batch, heads, seq, head_dim]."""
        scores = self.op("MatMul", [self.op("Mul", [q, self.scalar(head_dim ** -0.5)]),
                                    self.op("Transpose", [k], perm=[0, 1, 3, 2])])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        return self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])

    def ffn(self, x: str, prefix: str) -> str:
        hidden = self.gelu(self.linear(self.layer_norm(x, prefix + "/layer_norm"), prefix + "/linear_0"))
        return self.op("Add", [x, self.linear(hidden, prefix + "/linear_1")])


def _value(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _finish(graph: _Graph, name: str, inputs: list[onnx.ValueInfoProto],
            outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    body = helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers)
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                              producer_name="neurogrid.whisper_ct2")
    onnx.checker.check_model(model, full_check=False)
    return model


def encoder_model(model: Ct2Model, dims: WhisperDims) -> onnx.ModelProto:
    """The encoder: log-mel input_features -> last_hidden_state (see module rules)."""
    g = _Graph(model)
    d, heads = dims.d_model, dims.encoder_heads
    head_dim = d // heads
    x = g.gelu(g.op("Conv", ["input_features", g.weight("encoder/conv1/weight"), g.weight("encoder/conv1/bias")],
                    kernel_shape=[3], pads=[1, 1]))
    x = g.gelu(g.op("Conv", [x, g.weight("encoder/conv2/weight"), g.weight("encoder/conv2/bias")],
                    kernel_shape=[3], pads=[1, 1], strides=[2]))
    x = g.op("Add", [g.op("Transpose", [x], perm=[0, 2, 1]), g.weight("encoder/position_encodings/encodings")])
    for layer in range(dims.encoder_layers):
        prefix = f"encoder/layer_{layer}"
        attn = f"{prefix}/self_attention"
        qkv = g.linear(g.layer_norm(x, attn + "/layer_norm"), attn + "/linear_0")
        q, k, v = (g.heads(part, heads, head_dim) for part in g.ops("Split", [qkv, g.ints(d, d, d)], 3, axis=-1))
        out = g.merge_heads(g.attention(q, k, v, head_dim), d)
        x = g.op("Add", [x, g.linear(out, attn + "/linear_1")])
        x = g.ffn(x, prefix + "/ffn")
    g.op("LayerNormalization", [x, g.weight("encoder/layer_norm/gamma"), g.weight("encoder/layer_norm/beta")],
         ["last_hidden_state"], axis=-1, epsilon=_EPS)
    return _finish(
        g, "whisper_encoder",
        [_value("input_features", TensorProto.FLOAT, ["batch_size", dims.n_mels, 2 * dims.audio_context])],
        [_value("last_hidden_state", TensorProto.FLOAT, ["batch_size", dims.audio_context, d])],
    )


def _computed_cross(target: _Graph, g: _Graph, dims: WhisperDims, layer: int) -> list[str]:
    """Layer `layer`'s cross-attention [key, value] from encoder_hidden_states, as nodes of `target`."""
    prefix = f"decoder/layer_{layer}/attention/linear_1"
    kv = target.op("Add", [target.op("MatMul", ["encoder_hidden_states", g.weight(prefix + "/weight", transpose=True)]),
                           g.weight(prefix + "/bias")])
    return [target.heads(part, dims.decoder_heads, dims.head_dim)
            for part in target.ops("Split", [kv, g.ints(dims.d_model, dims.d_model)], 2, axis=-1)]


def _cross_if(g: _Graph, dims: WhisperDims, outputs: list[str]) -> None:
    """An If on use_cache_branch yielding every layer's cross K/V: the past inputs, or computed."""
    cached, computed = _Graph(g.model, prefix="cached/"), _Graph(g.model, prefix="computed/")
    cached_out, computed_out = [], []
    for layer in range(dims.decoder_layers):
        for part, value in zip(("key", "value"), _computed_cross(computed, g, dims, layer)):
            cached_out.append(cached.op("Identity", [f"past_key_values.{layer}.encoder.{part}"],
                                        [f"cached/{layer}.{part}"]))
            computed_out.append(computed.op("Identity", [value], [f"computed/{layer}.{part}"]))
    shape: list[int | str] = ["batch_size", dims.decoder_heads, "encoder_sequence_length", dims.head_dim]
    then = helper.make_graph(cached.nodes, "cross_kv_cached", [],
                             [_value(name, TensorProto.FLOAT, shape) for name in cached_out])
    other = helper.make_graph(computed.nodes, "cross_kv_computed", [],
                              [_value(name, TensorProto.FLOAT, shape) for name in computed_out],
                              computed.initializers)
    g.op("If", ["use_cache_branch"], outputs, then_branch=then, else_branch=other)


def _causal_mask(g: _Graph, past: str, seq: str) -> str:
    """[seq, past_seq + seq] additive mask: query i (at position past + i) sees keys <= past + i.

    `past` and `seq` are int64 [1] tensors."""
    zero, one = g.const("zero_i64", np.array(0, np.int64)), g.const("one_i64", np.array(1, np.int64))
    total = g.op("Add", [past, seq])
    rows = g.op("Add", [g.op("Range", [zero, g.op("Squeeze", [seq, g.ints(0)]), one]), past])
    cols = g.op("Range", [zero, g.op("Squeeze", [total, g.ints(0)]), one])
    allowed = g.op("LessOrEqual", [g.op("Unsqueeze", [cols, g.ints(0)]), g.op("Unsqueeze", [rows, g.ints(1)])])
    return g.op("Where", [allowed, g.scalar(0.0), g.scalar(_MASKED)])


def decoder_model(model: Ct2Model, dims: WhisperDims, layout: str = "merged") -> onnx.ModelProto:
    """A decoder graph of `layout` (a key of DECODER_FILES; see module rules for the interface)."""
    if layout not in DECODER_FILES:
        raise PackError(f"unknown decoder layout {layout!r}; known: {', '.join(DECODER_FILES)}")
    g = _Graph(model)
    d, heads, head_dim = dims.d_model, dims.decoder_heads, dims.head_dim
    has_past, has_states = layout != "no_past", layout != "with_past"
    # positions past_seq .. past_seq + seq of the learned position table
    past = g.op("Slice", [g.op("Shape", ["past_key_values.0.decoder.key"]), g.ints(2), g.ints(3)]) \
        if has_past else g.ints(0)
    seq = g.op("Slice", [g.op("Shape", ["input_ids"]), g.ints(1), g.ints(2)])
    positions = g.op("Slice", [g.weight("decoder/position_encodings/encodings"), past, g.op("Add", [past, seq]),
                               g.ints(0)])
    x = g.op("Add", [g.op("Gather", [g.weight("decoder/embeddings/weight"), "input_ids"]), positions])
    mask = _causal_mask(g, past, seq)
    cross = [f"present.{layer}.encoder.{part}" for layer in range(dims.decoder_layers) for part in ("key", "value")]
    if layout == "merged":
        _cross_if(g, dims, cross)
    elif layout == "no_past":
        for layer in range(dims.decoder_layers):
            for part, value in zip(("key", "value"), _computed_cross(g, g, dims, layer)):
                g.op("Identity", [value], [f"present.{layer}.encoder.{part}"])
    else:
        cross = [name.replace("present.", "past_key_values.") for name in cross]
    outputs = [_value("logits", TensorProto.FLOAT, ["batch_size", "decoder_sequence_length", dims.vocab_size])]
    inputs = [_value("input_ids", TensorProto.INT64, ["batch_size", "decoder_sequence_length"])]
    if has_states:
        inputs.append(_value("encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "encoder_sequence_length", d]))
    for layer in range(dims.decoder_layers):
        prefix = f"decoder/layer_{layer}"
        attn = prefix + "/self_attention"
        qkv = g.linear(g.layer_norm(x, attn + "/layer_norm"), attn + "/linear_0")
        q, k, v = (g.heads(part, heads, head_dim) for part in g.ops("Split", [qkv, g.ints(d, d, d)], 3, axis=-1))
        keys, values = (g.op("Concat", [f"past_key_values.{layer}.decoder.{part}", new],
                             [f"present.{layer}.decoder.{part}"], axis=2) if has_past
                        else g.op("Identity", [new], [f"present.{layer}.decoder.{part}"])
                        for part, new in (("key", k), ("value", v)))
        x = g.op("Add", [x, g.linear(g.merge_heads(g.attention(q, keys, values, head_dim, mask), d),
                                     attn + "/linear_1")])
        cross_prefix = prefix + "/attention"
        q = g.heads(g.linear(g.layer_norm(x, cross_prefix + "/layer_norm"), cross_prefix + "/linear_0"), heads,
                    head_dim)
        out = g.attention(q, cross[2 * layer], cross[2 * layer + 1], head_dim)
        x = g.op("Add", [x, g.linear(g.merge_heads(out, d), cross_prefix + "/linear_2")])
        x = g.ffn(x, prefix + "/ffn")
        for kind, length in (("decoder", "past_decoder_sequence_length"), ("encoder", "encoder_sequence_length")):
            for part in ("key", "value"):
                if has_past:
                    inputs.append(_value(f"past_key_values.{layer}.{kind}.{part}", TensorProto.FLOAT,
                                         ["batch_size", heads, length, head_dim]))
                if kind == "decoder" or layout != "with_past":
                    outputs.append(_value(f"present.{layer}.{kind}.{part}", TensorProto.FLOAT,
                                          ["batch_size", heads, length if kind == "encoder"
                                           else "past_decoder_sequence_length + 1", head_dim]))
    if layout == "merged":
        inputs.append(_value("use_cache_branch", TensorProto.BOOL, [1]))
    x = g.layer_norm(x, "decoder/layer_norm")
    flat = g.op("Reshape", [x, g.ints(-1, d)])
    logits = g.op("Gemm", [flat, g.weight("decoder/embeddings/weight")], transB=1)
    batch_seq = g.op("Slice", [g.op("Shape", ["input_ids"]), g.ints(0), g.ints(2)])
    g.op("Reshape", [logits, g.op("Concat", [batch_seq, g.ints(dims.vocab_size)], axis=0)], ["logits"])
    return _finish(g, f"whisper_decoder_{layout}", inputs, outputs)
