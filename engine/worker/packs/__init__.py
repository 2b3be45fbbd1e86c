# Model packs: directories of model files that a runner loads, built locally (from
# weights shipped inside registry packages, or generated) into a cache directory.
# See build.py for the rules every pack builder follows.
# Whisper packs (whisper_ct2) are converted from CTranslate2 files (ct2) into ONNX
# graphs (whisper_onnx).
from __future__ import annotations

from .build import PackBuilder, PackError, cache_root, ensure_pack
from .whisper_ct2 import ensure_whisper_pack, whisper_pack

__all__ = ["PackBuilder", "PackError", "cache_root", "ensure_pack", "ensure_whisper_pack", "whisper_pack"]
