# The tiny Stable Diffusion stand-in pack: RANDOM WEIGHTS, built locally in about a
# second. ITS IMAGES ARE NOT MEANINGFUL: no text-to-image weights exist in any
# registry package, so this pack exercises the whole image path (CLIP tokenizer,
# three ONNX Runtime sessions, classifier-free guidance, the scheduler loop, VAE
# decoding, PNG output) with numbers that depict nothing.
#
# Rules of this module:
# - The pack has the directory layout and the ONNX input/output signatures of a
#   Hugging Face Stable Diffusion ONNX export (diffusers' converter / Optimum):
#     model_index.json
#     text_encoder/model.onnx  input_ids int32 [batch, 77] -> last_hidden_state
#                              [batch, 77, hidden], pooler_output [batch, hidden]
#     unet/model.onnx          sample float [batch, 4, h, w], timestep float [1],
#                              encoder_hidden_states float [batch, 77, hidden]
#                              -> out_sample float [batch, 4, h, w]
#     vae_decoder/model.onnx   latent_sample float [batch, 4, h, w]
#                              -> sample float [batch, 3, 8h, 8w]
#     tokenizer/               vocab.json, merges.txt (CLIP byte-level BPE with
#                              "</w>"), tokenizer_config.json, special_tokens_map.json
#     scheduler/scheduler_config.json   Stable Diffusion 1.5's (PNDM, scaled_linear)
#     */config.json, README.txt
#   so the diffusion runner loads it exactly as it loads a real export. The input
#   dtypes of input_ids and timestep and the timestep's rank can be varied
#   (`write_sd_tiny(..., input_ids_type=, timestep_type=, timestep_rank=)`) to
#   exercise the variants real exports have (int32/int64 ids; float/int64, [1] or
#   scalar timesteps).
# - Building is pure: same code and options => same bytes (a fixed numpy seed,
#   sorted JSON, no timestamps).
#
# Theory of operation (the graphs): the text encoder is token + position
# embeddings, LayerNorm and one tanh projection. The "UNet" is a one-level conv
# U-Net: conv in, a sinusoidal timestep embedding and the mean of the text states
# projected to channel biases, a stride-2 conv down, nearest-neighbour up to the
# input size, a skip connection and conv out. The "VAE decoder" is conv in, three
# (nearest x2 upsample, conv, SiLU) stages and conv out to 3 channels: 8x the
# latent resolution, as SD's VAE (with an instance norm after conv in and a tanh
# at the end, so that random weights give an image that is not saturated).
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.worker.packs.build import PackBuilder, cache_root, ensure_pack

__all__ = [
    "SD_TINY",
    "SD_TINY_DESCRIPTION",
    "SD_TINY_VERSION",
    "default_sd_tiny_dir",
    "ensure_sd_tiny",
    "main",
    "write_sd_tiny",
]

SD_TINY_VERSION = 1
SD_TINY_DESCRIPTION = (
    "sd-tiny-random: a RANDOM-WEIGHT stand-in with Stable Diffusion's ONNX layout and signatures; "
    "its images are NOT meaningful (no text-to-image weights are installed)"
)
SEED = 20261201
OPSET, IR_VERSION = 17, 9
MAX_LENGTH, HIDDEN = 77, 32
LATENT_CHANNELS, UNET_CHANNELS, TIME_FEATURES = 4, 32, 32
VAE_CHANNELS = (32, 16, 8, 8)  # conv in, then after each x2 upsample
SCALING_FACTOR = 0.18215
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
_WORDS = [
    "a", "an", "the", "of", "and", "in", "on", "with", "at", "by", "to", "from", "photo", "picture", "painting",
    "drawing", "portrait", "landscape", "cat", "dog", "bird", "horse", "fish", "tree", "flower", "house", "city",
    "street", "mountain", "river", "sea", "sky", "sun", "moon", "star", "night", "day", "red", "green", "blue",
    "yellow", "white", "black", "orange", "purple", "small", "big", "old", "new", "happy", "beautiful", "dark",
    "light", "astronaut", "riding", "sitting", "standing", "cyberpunk", "watercolor", "oil", "digital", "art",
    "style", "detailed", "highly", "realistic", "cinematic", "lighting",
]
README = f"""sd-tiny-random (pack version {SD_TINY_VERSION})

THIS IS A RANDOM-WEIGHT STAND-IN. ITS IMAGES ARE NOT MEANINGFUL.

No text-to-image weights exist in any installed package, so NeuroGrid builds this
pack locally (engine/worker/packs/sd_tiny.py, numpy seed {SEED}) to run the image
path end to end: it has the directory layout and ONNX input/output signatures of a
Hugging Face Stable Diffusion ONNX export (text_encoder/, unet/, vae_decoder/,
tokenizer/ with a small CLIP-style BPE vocabulary, scheduler/ with Stable
Diffusion 1.5's scheduler config), but its networks are a few small random
convolutions. To serve real images, export a Stable Diffusion model to ONNX
(`optimum-cli export onnx --model <model> <dir>`) and run
`neurogrid worker --model stable-diffusion=<dir>`.
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's byte -> printable character table of byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE: merge the adjacent pair of lowest rank until none is left."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2:]]
    return pieces


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout: 256 byte chars, the same + "</w>", merges, then bos and eos.

    Each word of _WORDS becomes one token: after BPE with the merges so far, its
    pieces are merged left to right. New merges rank after all earlier ones, so
    they never change how an earlier word encodes.
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in _WORDS:
        pieces = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks.setdefault(pair, len(ranks))
            tokens.append(pair[0] + pair[1])
            pieces = [pair[0] + pair[1], *pieces[2:]]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, list(ranks)


def _dump(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


class _Graph:
    """A small helper for building one ONNX graph with seeded random weights."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits = rng, [], []  # type: ignore[var-annotated]
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> str:
        scale = gain / np.sqrt(fan_in)
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, stride: int = 1, gain: float = 1.0) -> str:
        w = self.weight((c_out, c_in, 3, 3), c_in * 9, gain)
        b = self.const(np.zeros(c_out, np.float32))
        return self.op("Conv", [x, w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def upsample(self, x: str) -> str:
        scales = self.const(np.array([1, 1, 2, 2], np.float32), "scales")
        return self.op("Resize", [x, "", scales], mode="nearest")

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              results: list[str]) -> onnx.ModelProto:
        for result, output in zip(results, outputs):
            self.nodes.append(helper.make_node("Identity", [result], [output.name]))
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                                  producer_name="neurogrid-sd-tiny")
        onnx.checker.check_model(model)
        return model


def _text_encoder(rng: np.random.Generator, vocab_size: int, ids_type: int) -> onnx.ModelProto:
    g = _Graph(rng)
    ids = g.op("Cast", ["input_ids"], to=TensorProto.INT64)
    h = g.op("Add", [g.op("Gather", [g.weight((vocab_size, HIDDEN), 1, 0.5), ids]),
                     g.weight((MAX_LENGTH, HIDDEN), 1, 0.1)])
    h = g.op("LayerNormalization", [h, g.const(np.ones(HIDDEN, np.float32)), g.const(np.zeros(HIDDEN, np.float32))],
             axis=-1)
    last = g.op("Tanh", [g.op("MatMul", [h, g.weight((HIDDEN, HIDDEN), HIDDEN)])])
    pooled = g.op("ReduceMean", [last], axes=[1], keepdims=0)
    value = helper.make_tensor_value_info
    return g.model(
        "text_encoder",
        [value("input_ids", ids_type, ["batch", "sequence"])],
        [value("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
         value("pooler_output", TensorProto.FLOAT, ["batch", HIDDEN])],
        [last, pooled],
    )


def _unet(rng: np.random.Generator, timestep_type: int, timestep_rank: int) -> onnx.ModelProto:
    g, c = _Graph(rng), UNET_CHANNELS
    # Sinusoidal timestep features -> a per-channel bias [1 or B, C, 1, 1].
    t = g.op("Reshape", [g.op("Cast", ["timestep"], to=TensorProto.FLOAT), g.const(np.array([-1, 1], np.int64))])
    freqs = np.exp(-np.log(10000.0) * np.arange(TIME_FEATURES // 2) / (TIME_FEATURES // 2)).astype(np.float32)
    angles = g.op("Mul", [t, g.const(freqs[None, :])])
    features = g.op("Concat", [g.op("Sin", [angles]), g.op("Cos", [angles])], axis=1)
    t_bias = g.op("MatMul", [features, g.weight((TIME_FEATURES, c), TIME_FEATURES)])
    # Text conditioning: the mean text state -> a per-channel bias [B, C, 1, 1].
    context = g.op("ReduceMean", ["encoder_hidden_states"], axes=[1], keepdims=0)
    c_bias = g.op("MatMul", [context, g.weight((HIDDEN, c), HIDDEN, 2.0)])
    bias = g.op("Unsqueeze", [g.op("Add", [t_bias, c_bias]), g.const(np.array([2, 3], np.int64))])
    h = g.silu(g.op("Add", [g.conv("sample", LATENT_CHANNELS, c), bias]))
    down = g.silu(g.conv(h, c, c, stride=2))
    sizes = g.op("Shape", [h])
    up = g.op("Resize", [down, "", "", sizes], mode="nearest")
    h = g.silu(g.op("Add", [h, g.conv(up, c, c)]))
    out = g.conv(h, c, LATENT_CHANNELS)
    value = helper.make_tensor_value_info
    timestep_shape = [1] if timestep_rank == 1 else []
    return g.model(
        "unet",
        [value("sample", TensorProto.FLOAT, ["batch", LATENT_CHANNELS, "height", "width"]),
         value("timestep", timestep_type, timestep_shape),
         value("encoder_hidden_states", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [value("out_sample", TensorProto.FLOAT, ["batch", LATENT_CHANNELS, "height", "width"])],
        [out],
    )


def _vae_decoder(rng: np.random.Generator) -> onnx.ModelProto:
    g = _Graph(rng)
    h = g.conv("latent_sample", LATENT_CHANNELS, VAE_CHANNELS[0])
    c0 = VAE_CHANNELS[0]
    norm_scale, norm_bias = g.const(np.ones(c0, np.float32)), g.const(np.zeros(c0, np.float32))
    h = g.silu(g.op("InstanceNormalization", [h, norm_scale, norm_bias]))
    for c_in, c_out in itertools.pairwise(VAE_CHANNELS):
        h = g.silu(g.conv(g.upsample(h), c_in, c_out))
    out = g.op("Tanh", [g.conv(h, VAE_CHANNELS[-1], 3, gain=2.0)])
    value = helper.make_tensor_value_info
    return g.model(
        "vae_decoder",
        [value("latent_sample", TensorProto.FLOAT, ["batch", LATENT_CHANNELS, "latent_height", "latent_width"])],
        [value("sample", TensorProto.FLOAT, ["batch", 3, "latent_height * 8", "latent_width * 8"])],
        [out],
    )


def write_sd_tiny(
    directory: Path,
    *,
    input_ids_type: int = TensorProto.INT32,
    timestep_type: int = TensorProto.FLOAT,
    timestep_rank: int = 1,
) -> None:
    """Write the pack's files into `directory` (which must exist)."""
    directory = Path(directory)
    rng = np.random.default_rng(SEED)
    vocab, merges = _vocab_and_merges()
    tokenizer_dir = directory / "tokenizer"
    _dump(tokenizer_dir / "vocab.json", vocab)
    (tokenizer_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    _dump(tokenizer_dir / "special_tokens_map.json", special)
    _dump(tokenizer_dir / "tokenizer_config.json",
          {**special, "model_max_length": MAX_LENGTH, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"})
    parts: dict[str, tuple[onnx.ModelProto, dict[str, Any]]] = {
        "text_encoder": (_text_encoder(rng, len(vocab), input_ids_type),
                         {"hidden_size": HIDDEN, "max_position_embeddings": MAX_LENGTH, "vocab_size": len(vocab),
                          "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}),
        "unet": (_unet(rng, timestep_type, timestep_rank),
                 {"in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "sample_size": 32,
                  "cross_attention_dim": HIDDEN}),
        "vae_decoder": (_vae_decoder(rng),
                        {"latent_channels": LATENT_CHANNELS, "out_channels": 3, "scaling_factor": SCALING_FACTOR,
                         "block_out_channels": list(VAE_CHANNELS)}),
    }
    for part, (model, config) in parts.items():
        (directory / part).mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(directory / part / "model.onnx"))
        _dump(directory / part / "config.json", {**config, "neurogrid_stand_in": SD_TINY_DESCRIPTION})
    _dump(directory / "scheduler" / "scheduler_config.json", SD15_SCHEDULER)
    _dump(directory / "model_index.json", {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "neurogrid_stand_in": SD_TINY_DESCRIPTION,
    })
    (directory / "README.txt").write_text(README, encoding="utf-8")


SD_TINY = PackBuilder("sd-tiny-random", SD_TINY_VERSION, write_sd_tiny, SD_TINY_DESCRIPTION)


def default_sd_tiny_dir() -> Path:
    return cache_root() / "packs" / "sd-tiny-random"


def ensure_sd_tiny(directory: Path | None = None) -> Path:
    """Build the pack into `directory` (default: the cache) unless it is already there."""
    return ensure_pack(default_sd_tiny_dir() if directory is None else Path(directory), SD_TINY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker.packs.sd_tiny", description=SD_TINY_DESCRIPTION)
    parser.add_argument("directory", nargs="?", type=Path, help=f"default: {default_sd_tiny_dir()}")
    args = parser.parse_args(argv)
    print(ensure_sd_tiny(args.directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
