# The demo pack: a tiny, locally generated text model so that NeuroGrid runs end to
# end with no downloads. ITS TEXT IS NOT MEANINGFUL: the weights are random numbers
# from a fixed seed, arranged so that greedy decoding walks through a fixed list of
# English words; it exercises the whole inference path (tokenizer, ONNX Runtime,
# KV cache, sampling, streaming), never language understanding.
#
# Rules of this module:
# - The pack has exactly the files and interface of a Hugging Face / Optimum
#   decoder-only ONNX export: model.onnx (inputs input_ids, attention_mask,
#   position_ids, past_key_values.{i}.key/.value; outputs logits, present.{i}.key/
#   .value), tokenizer.json, config.json, generation_config.json; plus README.txt.
#   The text-generation runner loads it exactly as it loads a real export.
# - Building is pure: same code => same bytes (fixed numpy seed, sorted JSON, no
#   timestamps). It takes well under a second and about 0.6 MB.
# - `ensure_demo_pack(dir)` is idempotent and atomic: the pack is built in a
#   temporary sibling directory and renamed into place, so a reader never sees a
#   half-written pack; it refuses to replace a directory that is not a demo pack.
#
# Theory of operation (the model): a 2-layer pre-LayerNorm transformer, hidden 64,
# 2 heads of 32, sinusoidal positions computed in-graph from position_ids, causal
# + padding mask, KV cache by concatenation along the sequence axis, SiLU MLP.
# The LM head is `scale * E^T @ A` where E is the token embedding and A a 0/1
# "successor" matrix: the residual stream stays close to the current token's
# embedding, so the top logit is that token's successor in a cycle over the words
# of `_WALK` (in order of first appearance). Attention and MLP weights are small
# random values, so context nudges the logits and sampling varies, while greedy
# output reads as a never-repeating walk over the word list.
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DEMO_PACK_VERSION", "build_model", "build_tokenizer", "ensure_demo_pack", "main", "write_demo_pack"]

DEMO_PACK_VERSION = 1
SEED = 20240917
LAYERS, HIDDEN, HEADS = 2, 64, 2
HEAD_DIM = HIDDEN // HEADS
OPSET, IR_VERSION = 17, 9
LOGIT_SCALE = 0.12  # sets how peaked the successor logit is (sampling variety)
SPECIALS = ("<unk>", "<bos>", "<eos>")

# Greedy output walks through these words in order of first appearance.
_WALK = """
the network of many small computers can share work across the world . each node
runs a model and sends back tokens , while a scheduler decides where every task
should go next . prices change with load , so busy hours cost more and quiet
nights cost less . this demo model is tiny and knows nothing ; its words follow
a simple loop that was written by hand for testing how text streams from one
machine to another over sockets , queues and threads without any real meaning
behind them at all . clients ask questions in plain language , workers answer
them quickly , then report how long they took ! what happens when someone leaves
early ? their unfinished jobs return into line again until another worker picks
them up later : nothing gets lost forever because time moves on
"""
_EXTRA_WORDS = """
i you he she it we they me him her us my your his our hello hi yes no not is are
was were be been being do does did have has had will would could may might must
here there now today good bad new old big little first last long great right
very just only also about into out up down if but or because how why who which
what when where one two three four five six seven eight nine ten please thank
thanks python code function write explain simple terms quantum computing data
""".split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?;:'\"()-")


def _vocab() -> tuple[list[str], list[str]]:
    """(all tokens in id order, the walk's words in order of first appearance)."""
    walk = list(dict.fromkeys(_WALK.split()))
    tokens = [*SPECIALS, *walk]
    tokens += [w for w in dict.fromkeys(_EXTRA_WORDS + _CHARS) if w not in tokens]
    tokens += ["##" + c for c in _CHARS if c.isalnum()]
    return tokens, walk


def build_tokenizer() -> str:
    """The demo tokenizer as tokenizer.json text: WordPiece over words + characters.

    Known words are single tokens; any other word falls back to letter pieces
    (`##x` continuations), so no English text maps to <unk>. Input is lowercased.
    A <bos> token is prepended to every encoding.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tokens, _ = _vocab()
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=64))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer.to_str(pretty=True)


class _Graph:
    """Accumulates nodes and initializers with generated, unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        self._count += 1
        name = name or f"c{self._count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes: Any) -> str:
        self._count += 1
        output = out or f"{op_type.lower()}{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output


def _weights(rng: np.random.Generator, vocab_size: int, walk_ids: list[int]) -> dict[str, np.ndarray]:
    f32 = np.float32
    embed = rng.standard_normal((vocab_size, HIDDEN)).astype(f32)
    successor = np.zeros((vocab_size, vocab_size), f32)
    cycle = dict(zip(walk_ids, walk_ids[1:] + walk_ids[:1]))
    for token in range(vocab_size):  # tokens outside the walk lead back into it
        successor[token, cycle.get(token, walk_ids[token % len(walk_ids)])] = 1.0
    weights = {"embed": embed, "lm_head": (LOGIT_SCALE * embed.T @ successor).astype(f32)}
    for layer in range(LAYERS):
        for name, shape, std in (
            ("q", (HIDDEN, HIDDEN), 0.3),
            ("k", (HIDDEN, HIDDEN), 0.3),
            ("v", (HIDDEN, HIDDEN), 0.1),
            ("o", (HIDDEN, HIDDEN), 0.1),
            ("up", (HIDDEN, 4 * HIDDEN), 0.1),
            ("down", (4 * HIDDEN, HIDDEN), 0.05),
        ):
            weights[f"l{layer}.{name}"] = (std * rng.standard_normal(shape)).astype(f32)
    return weights


def build_model(*, with_past: bool = True) -> onnx.ModelProto:
    """The demo decoder as an ONNX model; `with_past=False` drops the KV cache I/O.

    Both variants compute the same logits for the same token sequence (the
    no-past variant exists to check that the cache is right).
    """
    tokens, walk = _vocab()
    index = {token: i for i, token in enumerate(tokens)}
    w = _weights(np.random.default_rng(SEED), len(tokens), [index[word] for word in walk])
    g = _Graph()
    i64, f32 = np.int64, np.float32
    ones, zeros = g.const(np.ones(HIDDEN, f32)), g.const(np.zeros(HIDDEN, f32))

    # Token embedding + sinusoidal position encoding of position_ids.
    x = g.op("Gather", g.const(w["embed"], "embed"), "input_ids")
    position = g.op("Unsqueeze", g.op("Cast", "position_ids", to=TensorProto.FLOAT), g.const(np.array([-1], i64)))
    inv_freq = (1.0 / 10000 ** (np.arange(0, HIDDEN, 2) / HIDDEN)).astype(f32)
    angle = g.op("Mul", position, g.const(inv_freq))
    waves = g.op("Concat", g.op("Sin", angle), g.op("Cos", angle), axis=-1)
    x = g.op("Add", x, g.op("Mul", waves, g.const(np.array(0.5, f32))))

    # allowed[b, 0, s, t]: query s (absolute position past+s) may see key t.
    seq_len = g.op("Gather", g.op("Shape", "input_ids"), g.const(np.array(1, i64)), axis=0)
    if with_past:
        past_len = g.op("Gather", g.op("Shape", "past_key_values.0.key"), g.const(np.array(2, i64)), axis=0)
    else:
        past_len = g.const(np.array(0, i64))
    total = g.op("Add", past_len, seq_len)
    step = g.const(np.array(1, i64))
    key_pos = g.op("Unsqueeze", g.op("Range", g.const(np.array(0, i64)), total, step), g.const(np.array([0], i64)))
    query_pos = g.op("Unsqueeze", g.op("Range", past_len, total, step), g.const(np.array([1], i64)))
    causal = g.op("LessOrEqual", key_pos, query_pos)
    padding = g.op("Cast", g.op("Unsqueeze", "attention_mask", g.const(np.array([1, 2], i64))), to=TensorProto.BOOL)
    allowed = g.op("And", causal, padding)

    split_heads = g.const(np.array([0, 0, HEADS, HEAD_DIM], i64))
    merge_heads = g.const(np.array([0, 0, HIDDEN], i64))
    neg_inf, inv_sqrt = g.const(np.array(-1e9, f32)), g.const(np.array(HEAD_DIM**-0.5, f32))

    def heads(h: str, weight: str) -> str:
        return g.op("Transpose", g.op("Reshape", g.op("MatMul", h, weight), split_heads), perm=[0, 2, 1, 3])

    for layer in range(LAYERS):
        p = f"l{layer}."
        h = g.op("LayerNormalization", x, ones, zeros, axis=-1, epsilon=1e-5)
        q, k, v = (heads(h, g.const(w[p + name], p + name)) for name in "qkv")
        if with_past:
            k = g.op("Concat", f"past_key_values.{layer}.key", k, axis=2, out=f"present.{layer}.key")
            v = g.op("Concat", f"past_key_values.{layer}.value", v, axis=2, out=f"present.{layer}.value")
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), inv_sqrt)
        probs = g.op("Softmax", g.op("Where", allowed, scores, neg_inf), axis=-1)
        attended = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]), merge_heads)
        x = g.op("Add", x, g.op("MatMul", attended, g.const(w[p + "o"], p + "o")))
        h = g.op("LayerNormalization", x, ones, zeros, axis=-1, epsilon=1e-5)
        h = g.op("MatMul", h, g.const(w[p + "up"], p + "up"))
        h = g.op("Mul", h, g.op("Sigmoid", h))
        x = g.op("Add", x, g.op("MatMul", h, g.const(w[p + "down"], p + "down")))
    h = g.op("LayerNormalization", x, ones, zeros, axis=-1, epsilon=1e-5)
    g.op("MatMul", h, g.const(w["lm_head"], "lm_head"), out="logits")

    tensor = helper.make_tensor_value_info
    kv_shape: list[str | int] = ["batch_size", HEADS, "past_sequence_length", HEAD_DIM]
    present_shape: list[str | int] = ["batch_size", HEADS, "total_sequence_length", HEAD_DIM]
    inputs = [
        tensor("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        tensor("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        tensor("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [tensor("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", len(tokens)])]
    if with_past:
        for layer in range(LAYERS):
            for kind in ("key", "value"):
                inputs.append(tensor(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, kv_shape))
                outputs.append(tensor(f"present.{layer}.{kind}", TensorProto.FLOAT, present_shape))
    graph = helper.make_graph(g.nodes, "neurogrid_demo_decoder", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="neurogrid-demo-pack",
        producer_version=str(DEMO_PACK_VERSION),
        doc_string="NeuroGrid demo decoder: random weights, output text is NOT meaningful.",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _configs() -> tuple[dict[str, object], dict[str, object]]:
    tokens, _ = _vocab()
    bos, eos = tokens.index("<bos>"), tokens.index("<eos>")
    config = {
        "architectures": ["NeuroGridDemoForCausalLM"],
        "model_type": "neurogrid-demo",
        "neurogrid_demo_pack_version": DEMO_PACK_VERSION,
        "vocab_size": len(tokens),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 4096,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    generation: dict[str, object] = {"bos_token_id": bos, "eos_token_id": eos, "do_sample": True,
                                     "temperature": 0.7, "top_p": 0.9}
    return config, generation


_README = f"""NeuroGrid demo pack (version {DEMO_PACK_VERSION})

This is NOT a real language model. Its weights are random numbers from a fixed
seed, arranged so that the output is a loop over a hand-written list of English
words. The text it generates is NOT meaningful. It exists so that NeuroGrid
(API, coordinator, worker, ONNX Runtime, streaming) runs end to end with no
downloads, and so that tests are fast and deterministic.

Files follow the Hugging Face / Optimum decoder-only ONNX export layout:
  model.onnx               {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, with past key/values
  tokenizer.json           WordPiece over a small English vocabulary + characters
  config.json              Hugging Face style model config
  generation_config.json   Hugging Face style generation defaults

To serve a real model instead, point the worker at an exported model directory
with the same files (e.g. `optimum-cli export onnx --task text-generation-with-past`).
Rebuild this pack with: python -m engine.worker.runners.demo_pack OUT_DIR
"""


def _dump_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write_demo_pack(directory: Path) -> None:
    """Write every file of the demo pack into the existing `directory`."""
    config, generation = _configs()
    files = {
        "tokenizer.json": build_tokenizer(),
        "config.json": _dump_json(config),
        "generation_config.json": _dump_json(generation),
        "README.txt": _README,
    }
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    (directory / "model.onnx").write_bytes(build_model().SerializeToString())


def _is_current(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    names = ("model.onnx", "tokenizer.json", "generation_config.json", "README.txt")
    return config.get("neurogrid_demo_pack_version") == DEMO_PACK_VERSION and all(
        (directory / name).is_file() for name in names
    )


def _is_replaceable(directory: Path) -> bool:
    """Only an empty directory or an (older or partial) demo pack may be replaced."""
    readme = directory / "README.txt"
    return not any(directory.iterdir()) or (
        readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith("NeuroGrid demo pack")
    )


def ensure_demo_pack(directory: Path) -> Path:
    """Build the demo pack in `directory` unless a current one is already there."""
    directory = Path(directory)
    if _is_current(directory):
        return directory
    if directory.exists() and not _is_replaceable(directory):
        raise FileExistsError(f"{directory} exists and is not a NeuroGrid demo pack; refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.building-", dir=directory.parent))
    try:
        write_demo_pack(staging)
        staging.chmod(0o755)  # mkdtemp makes it owner-only
        if directory.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.stale-", dir=directory.parent))
            directory.rename(stale / directory.name)
            shutil.rmtree(stale)
        try:
            staging.rename(directory)
        except OSError:  # another process won the race; its pack is as good as ours
            if not _is_current(directory):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker.runners.demo_pack",
        description="Build the NeuroGrid demo text model (tiny, random weights, NOT meaningful output).",
    )
    parser.add_argument("out_dir", type=Path, help="directory to create (left as is if already current)")
    args = parser.parse_args(argv)
    print(ensure_demo_pack(args.out_dir))


if __name__ == "__main__":
    main()
