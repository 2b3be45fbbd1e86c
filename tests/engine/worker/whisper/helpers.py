# Helpers of the Whisper tests, also used by benchmarks/models_speech.py so that the
# benchmark measures on the same test speech and scores it the same way.
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

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


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference length, ignoring case and punctuation."""
    def words(text: str) -> list[str]:
        return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()

    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[len(hyp)] / max(1, len(ref))
