# Model packs: directories of model files that a runner loads, built locally (from
# weights shipped inside registry packages, or generated) into a cache directory.
# See build.py for the rules every pack builder follows.
# Whisper packs (whisper_ct2) are converted from CTranslate2 files (ct2) into ONNX
# graphs (whisper_onnx). Their names are loaded on first use (PEP 562), so that
# importing the package does not import onnx, and `python -m
# engine.worker.packs.whisper_ct2` runs a module not already imported.
from __future__ import annotations

import importlib
from typing import Any

from .build import PackBuilder, PackError, cache_root, ensure_pack

__all__ = ["PackBuilder", "PackError", "cache_root", "ensure_pack", "ensure_whisper_pack", "whisper_pack"]

_LAZY = {"ensure_whisper_pack": ".whisper_ct2", "whisper_pack": ".whisper_ct2"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
