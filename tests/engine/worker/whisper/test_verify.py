"""Verification of speech-to-text results by re-execution: an honest transcript from a
runner with other floating-point detail (threads, optimisation level) passes; a wrong
transcript, another sentence's transcript or a claim of the wrong shape fails."""
from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path


from engine.worker.runners.providers import session_tuning
from engine.worker.runners.verify_media import MAX_WER
from engine.worker.runners.whisper import WhisperRunner

from .helpers import SECOND_SENTENCE, SENTENCE, word_error_rate


def tuned(directory: Path, threads: int, level: str) -> WhisperRunner:
    with session_tuning(threads, level):
        runner = WhisperRunner("whisper", directory, providers_preference="cpu")
        runner.load()
    return runner


def test_honest_transcripts_pass_and_wrong_ones_fail(tiny_pack: Path, speak: Callable[[str], bytes]) -> None:
    producer, validator = tuned(tiny_pack, 1, "disable"), tuned(tiny_pack, 2, "all")
    task = {"audio": base64.b64encode(speak(SENTENCE)).decode("ascii")}
    honest = producer.run(task, {}, lambda partial: None, lambda: False)
    verdict = validator.verify(task, {}, honest.output, honest.proof, lambda: False)
    assert verdict.passed and verdict.score >= 1 - MAX_WER, verdict
    other = validator.run({"audio": base64.b64encode(speak(SECOND_SENTENCE)).decode("ascii")}, {},
                          lambda partial: None, lambda: False).output
    assert word_error_rate(str(honest.output), other) > 0.5
    words = str(honest.output).split()
    changed = " ".join(words[: len(words) // 2] + ["banana"] * (len(words) - len(words) // 2))
    for claimed in (other, "", changed, "The quick brown fox.", {"text": honest.output}, None):
        verdict = validator.verify(task, {}, claimed, None, lambda: False)
        assert not verdict.passed and verdict.detail, claimed
