# Converting a Llama-architecture GGUF file (llama.cpp's format) into the ONNX layout
# of a Hugging Face / Optimum decoder-only export with KV cache, so that the text
# runner (engine.worker.runners.textgen) serves it exactly as it serves an
# operator's own `optimum-cli export onnx --task text-generation-with-past` output.
#
# Rules:
# - No torch: the `gguf` package reads the file and dequantises every tensor (Q4_1,
#   Q8_0, K-quants, F16, ...) to float32 numpy arrays; the graph is built node by
#   node with `onnx` (packs.onnx_graph). The model is float32.
# - Output files: model.onnx (one file; inputs input_ids, attention_mask,
#   position_ids, past_key_values.{i}.key/.value [batch, kv_heads, past_seq,
#   head_dim]; outputs logits [batch, seq, vocab] and present.{i}.key/.value),
#   tokenizer.json and tokenizer_config.json (with the chat template; see
#   gguf_tokenizer), config.json (HF LlamaConfig fields), generation_config.json
#   (bos/eos ids), README.txt (provenance: the source file's name and SHA-256).
# - Reproducible: the same GGUF file gives the same bytes (deterministic names,
#   no timestamps, sorted JSON).
# - Unsupported inputs are errors that name the GGUF field: another architecture,
#   partial rotary dims, rope scaling, a non-BPE tokenizer.
#
# Theory of operation (the Llama block, as HF's LlamaForCausalLM computes it):
#   h = x + o_proj(attn(rope(q_proj(n1(x))), rope(k_proj(n1(x))), v_proj(n1(x))))
#   x' = h + down_proj(silu(gate_proj(n2(h))) * up_proj(n2(h)))
# with n = RMSNorm (x / sqrt(mean(x^2) + eps) * w), rotary embeddings in HF's
# "rotate_half" form (dims i and i + head_dim/2 form a pair, theta_i =
# base^(-2i/head_dim)), grouped-query attention (each KV head serves
# heads/kv_heads consecutive query heads) and tied embeddings when the file has
# no output.weight. llama.cpp's converter permutes the rows of attn_q/attn_k
# from HF's half-split pair layout into interleaved pairs (2i, 2i+1); we undo
# that permutation (`unpermute_rows`) so the weights, the rotary form and the
# cached keys are exactly HF's. Q, K and V are one fused MatMul and so are gate
# and up (fewer kernel launches per token); the cache concatenates along the
# sequence axis; the causal + padding mask is computed in-graph from the
# attention_mask and the past length.
from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper

from engine.worker.packs.build import PackBuilder, PackError, ensure_pack
from engine.worker.packs.gguf_tokenizer import GGUFError, GGUFTokenizer, dump_json
from engine.worker.packs.onnx_graph import GraphBuilder

__all__ = [
    "CONVERTER_VERSION",
    "GGUFModel",
    "LlamaSpec",
    "build_model",
    "convert_gguf",
    "gguf_pack_builder",
    "main",
    "unpermute_rows",
]

CONVERTER_VERSION = 1
ARCHITECTURES = ("llama",)
PACK_FILES = ("model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json",
              "generation_config.json", "README.txt")
_NEG = float(np.finfo(np.float32).min)


@attrs.frozen
class LlamaSpec:
    """The hyperparameters of one Llama GGUF file."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied: bool

    @classmethod
    def from_fields(cls, fields: dict[str, Any], vocab: int, tied: bool) -> LlamaSpec:
        arch = fields.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise GGUFError(f"general.architecture is {arch!r}; this converter handles {', '.join(ARCHITECTURES)}")

        def get(key: str, default: Any = None) -> Any:
            value = fields.get(f"{arch}.{key}", default)
            if value is None:
                raise GGUFError(f"the GGUF file has no {arch}.{key}")
            return value

        hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
        head_dim = int(get("attention.key_length", hidden // heads))
        rope_dims = int(get("rope.dimension_count", head_dim))
        if rope_dims != head_dim:
            raise GGUFError(f"{arch}.rope.dimension_count is {rope_dims}; "
                            f"only full rotary (= head_dim {head_dim}) is supported")
        scaling = fields.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", None):
            raise GGUFError(f"{arch}.rope.scaling.type {scaling!r} is not supported")
        kv_heads = int(get("attention.head_count_kv", heads))
        if heads % kv_heads:
            raise GGUFError(f"{arch}.attention.head_count {heads} is not a multiple of head_count_kv {kv_heads}")
        return cls(
            layers=int(get("block_count")),
            hidden=hidden,
            intermediate=int(get("feed_forward_length")),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=int(fields.get(f"{arch}.vocab_size", vocab)),
            context_length=int(get("context_length")),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            tied=tied,
        )


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: interleaved rotary pairs -> HF's halves.

    llama.cpp stores, per head, row 2i + j of the HF row j * head_dim/2 + i.
    """
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@attrs.define
class GGUFModel:
    """An opened GGUF file: its metadata, spec, tokenizer and dequantised tensors."""

    path: Path
    fields: dict[str, Any]
    spec: LlamaSpec
    tokenizer: GGUFTokenizer
    _tensors: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> GGUFModel:
        from gguf import GGUFReader  # lazy: only pack builds need it

        path = Path(path)
        try:
            reader = GGUFReader(str(path))
        except (OSError, ValueError) as exc:
            raise GGUFError(f"cannot read {path} as GGUF: {exc}") from exc
        fields = {key: field.contents() for key, field in reader.fields.items()}
        tensors = {tensor.name: tensor for tensor in reader.tensors}
        for name in ("rope_freqs.weight",):
            if name in tensors:
                raise GGUFError(f"tensor {name} (rope frequency scaling) is not supported")
        context = int(fields.get(f"{fields.get('general.architecture')}.context_length") or 0)
        tokenizer = GGUFTokenizer.from_fields(fields, context)
        spec = LlamaSpec.from_fields(fields, len(tokenizer.tokens), tied="output.weight" not in tensors)
        return cls(path, fields, spec, tokenizer, tensors)

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor, dequantised to float32, in llama.cpp's [rows=out, cols=in] order."""
        from gguf import dequantize

        tensor = self._tensors.get(name)
        if tensor is None:
            raise GGUFError(f"the GGUF file has no tensor {name}")
        return np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def build_model(source: GGUFModel, *, with_past: bool = True,
                on_step: Callable[[str], None] | None = None) -> onnx.ModelProto:
    """The ONNX decoder for `source` (see the module comment for its interface).

    `with_past=False` drops the KV cache inputs and outputs (for checking the cache).
    `on_step(label)` is called after each layer and after the LM head (layers + 1 calls).
    """
    step = on_step or (lambda label: None)
    s = source.spec
    g = GraphBuilder()
    f32, i64 = np.float32, np.int64
    rep = s.heads // s.kv_heads
    q_dim, kv_dim = s.heads * s.head_dim, s.kv_heads * s.head_dim

    embed = g.const(source.tensor("token_embd.weight"), "model.embed_tokens.weight")
    x = g.op("Gather", embed, "input_ids")

    # Rotary tables from position_ids: cos/sin [batch, seq, 1, head_dim].
    inv_freq = (1.0 / s.rope_theta ** (np.arange(0, s.head_dim, 2, dtype=np.float64) / s.head_dim)).astype(f32)
    position = g.op("Unsqueeze", g.op("Cast", "position_ids", to=TensorProto.FLOAT), g.ints(-1))
    freqs = g.op("Mul", position, g.const(inv_freq, "model.rotary_emb.inv_freq"))
    angles = g.op("Unsqueeze", g.op("Concat", freqs, freqs, axis=-1), g.ints(2))
    cos, sin = g.op("Cos", angles), g.op("Sin", angles)

    # allowed[b, 1, 1, s, t]: query s (absolute position past + s) may see key t.
    seq_len = g.op("Gather", g.op("Shape", "input_ids"), g.const(np.array(1, i64)), axis=0)
    if with_past:
        past_len = g.op("Gather", g.op("Shape", "past_key_values.0.key"), g.const(np.array(2, i64)), axis=0)
    else:
        past_len = g.const(np.array(0, i64))
    total = g.op("Add", past_len, seq_len)
    one = g.const(np.array(1, i64))
    key_pos = g.op("Unsqueeze", g.op("Range", g.const(np.array(0, i64)), total, one), g.ints(0))
    query_pos = g.op("Unsqueeze", g.op("Range", past_len, total, one), g.ints(1))
    causal = g.op("LessOrEqual", key_pos, query_pos)
    padding = g.op("Cast", g.op("Unsqueeze", "attention_mask", g.ints(1, 2, 3)), to=TensorProto.BOOL)
    allowed = g.op("And", causal, padding)

    half = s.head_dim // 2
    halves = g.ints(half, half)
    qkv_split = g.ints(q_dim, kv_dim, kv_dim)
    mlp_split = g.ints(s.intermediate, s.intermediate)
    q_shape = g.ints(0, 0, s.kv_heads, rep, s.head_dim)
    kv_shape = g.ints(0, 0, s.kv_heads, s.head_dim)
    merged = g.ints(0, 0, q_dim)
    eps, two = g.scalar(s.rms_eps), g.scalar(2.0)
    neg, scale = g.scalar(_NEG), g.scalar(s.head_dim ** -0.5)

    def rms_norm(h: str, weight_name: str, gguf_name: str) -> str:
        variance = g.op("ReduceMean", g.op("Pow", h, two), axes=[-1], keepdims=1)
        normed = g.op("Div", h, g.op("Sqrt", g.op("Add", variance, eps)))
        return g.op("Mul", normed, g.const(source.tensor(gguf_name), weight_name))

    def rope(t: str) -> str:  # t: [batch, seq, heads, head_dim]
        first, second = g.ops("Split", t, halves, axis=-1, count=2)
        rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
        return g.op("Add", g.op("Mul", t, cos), g.op("Mul", rotated, sin))

    for layer in range(s.layers):
        p, b = f"model.layers.{layer}.", f"blk.{layer}."
        h = rms_norm(x, p + "input_layernorm.weight", b + "attn_norm.weight")
        qkv = np.concatenate([
            unpermute_rows(source.tensor(b + "attn_q.weight"), s.heads),
            unpermute_rows(source.tensor(b + "attn_k.weight"), s.kv_heads),
            source.tensor(b + "attn_v.weight"),
        ])
        q, k, v = g.ops("Split", g.op("MatMul", h, g.const(qkv.T.copy(), p + "self_attn.qkv_proj.weight")),
                        qkv_split, axis=-1, count=3)
        q = rope(g.op("Reshape", q, g.ints(0, 0, s.heads, s.head_dim)))
        k = rope(g.op("Reshape", k, kv_shape))
        # q: [b, s, kv, rep, d] -> [b, kv, rep, s, d]; k, v: [b, s, kv, d] -> [b, kv, s, d].
        q = g.op("Transpose", g.op("Reshape", g.op("Mul", q, scale), q_shape), perm=[0, 2, 3, 1, 4])
        k = g.op("Transpose", k, perm=[0, 2, 1, 3])
        v = g.op("Transpose", g.op("Reshape", v, kv_shape), perm=[0, 2, 1, 3])
        if with_past:
            k = g.op("Concat", f"past_key_values.{layer}.key", k, axis=2, out=f"present.{layer}.key")
            v = g.op("Concat", f"past_key_values.{layer}.value", v, axis=2, out=f"present.{layer}.value")
        keys = g.op("Transpose", g.op("Unsqueeze", k, g.ints(2)), perm=[0, 1, 2, 4, 3])  # [b, kv, 1, d, t]
        scores = g.op("Where", allowed, g.op("MatMul", q, keys), neg)  # [b, kv, rep, s, t]
        attended = g.op("MatMul", g.op("Softmax", scores, axis=-1), g.op("Unsqueeze", v, g.ints(2)))
        attended = g.op("Reshape", g.op("Transpose", attended, perm=[0, 3, 1, 2, 4]), merged)
        o_proj = source.tensor(b + "attn_output.weight").T.copy()
        x = g.op("Add", x, g.op("MatMul", attended, g.const(o_proj, p + "self_attn.o_proj.weight")))

        h = rms_norm(x, p + "post_attention_layernorm.weight", b + "ffn_norm.weight")
        gate_up = np.concatenate([source.tensor(b + "ffn_gate.weight"), source.tensor(b + "ffn_up.weight")])
        gate, up = g.ops("Split", g.op("MatMul", h, g.const(gate_up.T.copy(), p + "mlp.gate_up_proj.weight")),
                         mlp_split, axis=-1, count=2)
        h = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        down = source.tensor(b + "ffn_down.weight").T.copy()
        x = g.op("Add", x, g.op("MatMul", h, g.const(down, p + "mlp.down_proj.weight")))
        step(f"layer {layer + 1}/{s.layers}")

    h = rms_norm(x, "model.norm.weight", "output_norm.weight")
    head = embed if s.tied else g.const(source.tensor("output.weight"), "lm_head.weight")
    flat = g.op("Gemm", g.op("Reshape", h, g.ints(-1, s.hidden)), head, transB=1)
    logits_shape = g.op("Concat", g.op("Slice", g.op("Shape", "input_ids"), g.ints(0), g.ints(2)),
                        g.ints(s.vocab), axis=0)
    g.op("Reshape", flat, logits_shape, out="logits")
    step("lm head")

    tensor = helper.make_tensor_value_info
    past_shape: list[str | int] = ["batch_size", s.kv_heads, "past_sequence_length", s.head_dim]
    present_shape: list[str | int] = ["batch_size", s.kv_heads, "total_sequence_length", s.head_dim]
    inputs = [
        tensor("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        tensor("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        tensor("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [tensor("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", s.vocab])]
    if with_past:
        for layer in range(s.layers):
            for kind in ("key", "value"):
                inputs.append(tensor(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, past_shape))
                outputs.append(tensor(f"present.{layer}.{kind}", TensorProto.FLOAT, present_shape))
    name = str(source.fields.get("general.name", source.path.stem))
    return g.model("llama_decoder", inputs, outputs, producer="neurogrid-llama-gguf",
                   version=str(CONVERTER_VERSION), doc=f"{name}, converted from GGUF {source.path.name}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _configs(source: GGUFModel, sha256: str) -> tuple[dict[str, Any], dict[str, Any]]:
    s, t = source.spec, source.tokenizer
    ends = t.end_ids()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab,
        "max_position_embeddings": s.context_length,
        "rms_norm_eps": s.rms_eps,
        "rope_theta": s.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": s.tied,
        "bos_token_id": t.bos_id,
        "eos_token_id": ends[0] if len(ends) == 1 else ends,
        "pad_token_id": t.pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
        "neurogrid_source": {
            "format": "gguf",
            "file": source.path.name,
            "sha256": sha256,
            "name": source.fields.get("general.name"),
            "converter_version": CONVERTER_VERSION,
        },
    }
    generation = {"bos_token_id": t.bos_id, "eos_token_id": ends, "pad_token_id": t.pad_id}
    return config, generation


def _readme(source: GGUFModel, sha256: str) -> str:
    s = source.spec
    return f"""{source.fields.get('general.name', source.path.stem)} (ONNX, float32)

Converted by NeuroGrid (engine.worker.packs.llama_gguf, converter version {CONVERTER_VERSION})
from the GGUF file {source.path.name} (SHA-256 {sha256}).
License of the weights: {source.fields.get('general.license', 'see the source package')}.

Files follow the Hugging Face / Optimum decoder-only ONNX export layout:
  model.onnx               Llama, {s.layers} layers, hidden {s.hidden}, {s.heads} heads / {s.kv_heads} KV heads, \
with past key/values
  tokenizer.json           byte-level BPE rebuilt from the GGUF tokenizer metadata
  tokenizer_config.json    special tokens and the chat template
  config.json              Hugging Face LlamaConfig fields
  generation_config.json   bos/eos token ids

Rebuild with: python -m engine.worker.packs.llama_gguf GGUF_FILE OUT_DIR
"""


def convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool = False) -> Path:
    """Write the pack for `gguf_path` into the existing, empty directory `out_dir`.

    `progress` shows a bar on stderr: tokenizer, each layer, LM head, writing.
    """
    from tqdm import tqdm

    if progress:
        print(f"reading {Path(gguf_path).name} ...", file=sys.stderr, flush=True)
    source = GGUFModel.open(Path(gguf_path))
    bar = tqdm(total=source.spec.layers + 3, desc="converting GGUF to ONNX", unit="step",
               file=sys.stderr, disable=not progress)

    def step(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update()

    sha256 = _sha256(source.path)
    config, generation = _configs(source, sha256)
    out_dir = Path(out_dir)
    texts = {
        "tokenizer.json": source.tokenizer.tokenizer_json(),
        "tokenizer_config.json": dump_json(source.tokenizer.tokenizer_config()),
        "config.json": dump_json(config),
        "generation_config.json": dump_json(generation),
        "README.txt": _readme(source, sha256),
    }
    for name, text in texts.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    step("tokenizer")
    model = build_model(source, on_step=step)
    (out_dir / "model.onnx").write_bytes(model.SerializeToString())
    step("written")
    bar.close()
    return out_dir


def gguf_pack_builder(gguf_path: Path) -> PackBuilder:
    """A pack builder for an operator's own GGUF file (named by its content hash)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise GGUFError(f"GGUF file {gguf_path} does not exist")

    def write(directory: Path) -> None:
        convert_gguf(gguf_path, directory, progress=True)

    return PackBuilder(
        name=f"gguf:{_sha256(gguf_path)[:16]}",
        version=CONVERTER_VERSION,
        write=write,
        description=f"converted from {gguf_path.name}",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker.packs.llama_gguf",
        description="Convert a Llama-architecture GGUF file into an ONNX model pack for the NeuroGrid text runner.",
    )
    parser.add_argument("gguf_file", type=Path, help="the .gguf file to convert")
    parser.add_argument("out_dir", type=Path,
                        help="directory to create (left as is when it already holds the current pack of this file)")
    args = parser.parse_args(argv)
    try:
        print(ensure_pack(args.out_dir, gguf_pack_builder(args.gguf_file)))
    except (GGUFError, PackError) as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
