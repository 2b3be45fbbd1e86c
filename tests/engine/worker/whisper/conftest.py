# Shared fixtures of the Whisper tests: packs built once per test run (session scope)
# from the registry packages the project depends on, and speech made with espeak-ng.
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.worker.packs.whisper_ct2 import ensure_whisper_pack

SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer reads a newspaper in the garden."
SECOND_SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


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
def speak(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytes]:
    """WAV bytes of `text` spoken by espeak-ng (the test skips when it is not installed)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no test speech")
    directory = tmp_path_factory.mktemp("speech")

    def make(text: str) -> bytes:
        path = directory / f"{abs(hash(text))}.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
        return path.read_bytes()

    return make
