# Helpers of the Whisper tests, also used by benchmarks/models_speech.py so that the
# benchmark measures on the same test speech and scores it the same way.
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from engine.worker.runners.verify_media import word_error_rate

__all__ = ["SECOND_SENTENCE", "SENTENCE", "espeak_available", "espeak_wav", "word_error_rate"]

SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer reads a newspaper in the garden."
SECOND_SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_wav(text: str, words_per_minute: int = 150) -> bytes:
    """WAV bytes of `text` spoken by espeak-ng (which must be installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", str(path), text], check=True,
                       capture_output=True)
        return path.read_bytes()
