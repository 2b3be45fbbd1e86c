# Model packs: directories of model files that a runner loads, built locally (from
# weights shipped inside registry packages, or generated) into a cache directory.
# See build.py for the rules every pack builder follows.
from __future__ import annotations

from .build import PackBuilder, PackError, cache_root, ensure_pack

__all__ = ["PackBuilder", "PackError", "cache_root", "ensure_pack"]
