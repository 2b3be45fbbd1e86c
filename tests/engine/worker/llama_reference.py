# Test helpers for the GGUF -> ONNX converter: a plain numpy Llama forward pass and a
# tiny synthetic Llama GGUF file.
#
# The reference is written independently of the converter: it reads the GGUF with
# gguf.GGUFReader, dequantises with gguf.dequantize, and computes attention the way
# llama.cpp does on the file's own (permuted) Q/K rows, i.e. rotary embeddings on
# interleaved pairs (2i, 2i+1), with explicit per-head loops for grouped-query
# attention. The converter instead un-permutes the rows and uses HF's half-split
# rotary form, so agreement checks that un-permutation too.
from __future__ import annotations

from pathlib import Path

import numpy as np


def numpy_logits(gguf_path: Path, token_ids: list[int]) -> np.ndarray:
    """Logits [len(token_ids), vocab] of a Llama GGUF file, for positions 0..n-1."""
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(str(gguf_path))
    meta = {key: field.contents() for key, field in reader.fields.items() if key.startswith("llama.")}
    tensors = {t.name: t for t in reader.tensors}

    def weight(name: str) -> np.ndarray:
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64)

    layers = meta["llama.block_count"]
    hidden = meta["llama.embedding_length"]
    heads = meta["llama.attention.head_count"]
    kv_heads = meta.get("llama.attention.head_count_kv", heads)
    head_dim = hidden // heads
    theta = meta.get("llama.rope.freq_base", 10000.0)
    eps = meta["llama.attention.layer_norm_rms_epsilon"]
    n = len(token_ids)

    def rms(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    # Rotation of the pair (2i, 2i+1) at position p by p * theta^(-2i/head_dim).
    angle = np.arange(n)[:, None] * theta ** (-2.0 * np.arange(head_dim // 2) / head_dim)[None, :]
    cos, sin = np.cos(angle), np.sin(angle)

    def rope_interleaved(v: np.ndarray) -> np.ndarray:  # v: [n, head_dim]
        even, odd = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2] = even * cos - odd * sin
        out[:, 1::2] = even * sin + odd * cos
        return out

    embed = weight("token_embd.weight")
    x = embed[token_ids]
    for layer in range(layers):
        b = f"blk.{layer}."
        h = rms(x, weight(b + "attn_norm.weight"))
        q, k, v = (h @ weight(b + "attn_q.weight").T, h @ weight(b + "attn_k.weight").T,
                   h @ weight(b + "attn_v.weight").T)
        out = np.zeros((n, heads * head_dim))
        for head in range(heads):
            kv = head // (heads // kv_heads)
            qh = rope_interleaved(q[:, head * head_dim:(head + 1) * head_dim])
            kh = rope_interleaved(k[:, kv * head_dim:(kv + 1) * head_dim])
            vh = v[:, kv * head_dim:(kv + 1) * head_dim]
            scores = qh @ kh.T / np.sqrt(head_dim)
            scores[np.triu_indices(n, 1)] = -np.inf
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[:, head * head_dim:(head + 1) * head_dim] = probs @ vh
        x = x + out @ weight(b + "attn_output.weight").T
        h = rms(x, weight(b + "ffn_norm.weight"))
        gate, up = h @ weight(b + "ffn_gate.weight").T, h @ weight(b + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ weight(b + "ffn_down.weight").T
    x = rms(x, weight("output_norm.weight"))
    lm_head = weight("output.weight") if "output.weight" in tensors else embed
    return x @ lm_head.T


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i s", "Ġ is"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_tiny_llama_gguf(path: Path, *, seed: int = 0, tied: bool = True, layers: int = 2,
                          architecture: str = "llama", tokenizer_model: str = "gpt2") -> Path:
    """A random-weight Llama GGUF: hidden 64, 4 heads / 2 KV heads, byte-level BPE vocab.

    Matrices are stored Q4_1 (as in the SmolLM2 file), the embedding Q8_0, an
    untied output F16, norms F32, so dequantisation of each kind is exercised.
    """
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    hidden, heads, kv_heads, ffn = 64, 4, 2, 128
    head_dim = hidden // heads
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = SPECIALS + _byte_symbols() + merged
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-test-llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def add(name: str, shape: tuple[int, ...], qtype: Q, std: float, mean: float = 0.0) -> None:
        data = (mean + std * rng.standard_normal(shape)).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(name, data)
        elif qtype == Q.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, hidden), Q.Q8_0, 1.0)
    for layer in range(layers):
        b = f"blk.{layer}."
        add(b + "attn_norm.weight", (hidden,), Q.F32, 0.2, 1.0)
        add(b + "attn_q.weight", (heads * head_dim, hidden), Q.Q4_1, 0.3)
        add(b + "attn_k.weight", (kv_heads * head_dim, hidden), Q.Q4_1, 0.3)
        add(b + "attn_v.weight", (kv_heads * head_dim, hidden), Q.Q4_1, 0.3)
        add(b + "attn_output.weight", (hidden, heads * head_dim), Q.Q4_1, 0.2)
        add(b + "ffn_norm.weight", (hidden,), Q.F32, 0.2, 1.0)
        add(b + "ffn_gate.weight", (ffn, hidden), Q.Q4_1, 0.2)
        add(b + "ffn_up.weight", (ffn, hidden), Q.Q4_1, 0.2)
        add(b + "ffn_down.weight", (hidden, ffn), Q.Q4_1, 0.2)
    add("output_norm.weight", (hidden,), Q.F32, 0.2, 1.0)
    if not tied:
        add("output.weight", (vocab, hidden), Q.F16, 0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
