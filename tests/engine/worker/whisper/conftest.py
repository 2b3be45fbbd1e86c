# Shared fixtures of the Whisper tests: packs built once per test run (session scope)
# from the registry packages the project depends on, and speech made with espeak-ng.
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.worker.packs.whisper_ct2 import ensure_whisper_pack

from .helpers import espeak_available, espeak_wav


@pytest.fixture(scope="session")
def pack_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packs")


@pytest.fixture(scope="session")
def tiny_pack(pack_cache: Path) -> Path:
    return ensure_whisper_pack("whisper-tiny.en", pack_cache / "whisper-tiny.en", show_progress=False)


@pytest.fixture(scope="session")
def base_pack(pack_cache: Path) -> Path:
    return ensure_whisper_pack("whisper-base", pack_cache / "whisper-base", show_progress=False)


@pytest.fixture(scope="session")
def speak() -> Callable[[str], bytes]:
    """WAV bytes of a text spoken by espeak-ng (the test skips when it is not installed)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no test speech")
    return functools.cache(espeak_wav)
