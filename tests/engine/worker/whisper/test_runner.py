from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from engine.worker.packs.whisper_ct2 import SOURCES, main
from engine.worker.runners import InvalidTaskInput, ModelLoadError, load_runner
from engine.worker.runners.audio import decode_audio
from engine.worker.runners.whisper import WhisperRunner

from .helpers import SECOND_SENTENCE, SENTENCE, word_error_rate


@pytest.fixture(scope="module")
def base(base_pack: Path) -> WhisperRunner:
    runner = load_runner("whisper", base_pack)
    assert isinstance(runner, WhisperRunner)
    return runner


@pytest.fixture(scope="module")
def tiny(tiny_pack: Path) -> WhisperRunner:
    runner = WhisperRunner("whisper-tiny.en", tiny_pack)
    runner.load()
    return runner


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _transcribe(runner: WhisperRunner, audio: bytes, params: dict[str, Any] | None = None,
                **inputs: Any) -> tuple[Any, list[dict[str, Any]]]:
    progress: list[dict[str, Any]] = []
    result = runner.run({"audio": _b64(audio), **inputs}, params or {}, progress.append, lambda: False)
    return result, progress


@pytest.mark.parametrize("model", ["base", "tiny"])
def test_greedy_transcript_of_spoken_sentence_is_within_30_percent_wer(
        model: str, request: pytest.FixtureRequest, speak: Callable[[str], bytes]) -> None:
    runner: WhisperRunner = request.getfixturevalue(model)
    wav = speak(SENTENCE)
    result, progress = _transcribe(runner, wav)
    assert word_error_rate(SENTENCE, result.output) <= 0.3, result.output
    assert result.finish_reason == "stop"
    assert result.usage["audio_seconds"] == pytest.approx(len(decode_audio(wav)) / 16000, abs=0.01)
    assert result.usage["tokens"] >= 10 and result.usage["seconds"] > 0
    assert "".join(piece for update in progress for piece in update["tokens"]) == result.output


def test_audio_longer_than_30_seconds_is_transcribed_window_by_window(
        base: WhisperRunner, speak: Callable[[str], bytes]) -> None:
    first, second = decode_audio(speak(SENTENCE)), decode_audio(speak(SECOND_SENTENCE))
    audio = np.concatenate([first, np.zeros(30 * 16000 - len(first), np.float32), second])
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="FLAC")
    result, _ = _transcribe(base, buffer.getvalue(), {"language": "en"})
    assert result.usage["audio_seconds"] > 30
    assert word_error_rate(SENTENCE + " " + SECOND_SENTENCE, result.output) <= 0.3, result.output


def test_params_and_prompt_are_validated_with_clear_messages(base: WhisperRunner, tiny: WhisperRunner) -> None:
    silence = io.BytesIO()
    soundfile.write(silence, np.zeros(1600, np.float32), 16000, format="WAV")
    audio = {"audio": _b64(silence.getvalue())}
    cases: list[tuple[WhisperRunner, dict[str, Any], dict[str, Any], str]] = [
        (base, audio, {"language": "klingon"}, "language must be a language code"),
        (base, audio, {"task": "summarise"}, "task must be one of"),
        (base, audio, {"max_tokens": 0}, "max_tokens must be an integer >= 1"),
        (base, {**audio, "prompt": 42}, {}, "prompt must be a string"),
        (tiny, audio, {"task": "translate"}, "needs a multilingual model"),
        (tiny, audio, {"language": "de"}, "English-only"),
        (base, {"audio": _b64(b"RIFF....WAVEfmt garbage")}, {}, "audio is not a readable audio file"),
        (base, {}, {}, "audio must be a non-empty base64 string"),
    ]
    for runner, inputs, params, message in cases:
        with pytest.raises(InvalidTaskInput, match=message):
            runner.run(inputs, params, lambda update: None, lambda: False)


def test_max_tokens_cancellation_and_prompt(base: WhisperRunner, speak: Callable[[str], bytes]) -> None:
    wav = speak(SENTENCE)
    capped, _ = _transcribe(base, wav, {"max_tokens": 3})
    assert capped.finish_reason == "length" and capped.usage["tokens"] == 3
    assert SENTENCE.startswith(capped.output.split()[0])
    stopped = base.run({"audio": _b64(wav)}, {}, lambda update: None, lambda: True)
    assert stopped.finish_reason == "cancelled" and stopped.output == "" and stopped.usage["tokens"] == 0
    prompted, _ = _transcribe(base, wav, {"language": "en"}, prompt="A sentence about a fox and a farmer.")
    assert prompted.usage["prompt_tokens"] > 5
    assert word_error_rate(SENTENCE, prompted.output) <= 0.3, prompted.output


def test_english_only_and_multilingual_are_told_by_the_start_token(base: WhisperRunner, tiny: WhisperRunner) -> None:
    assert (tiny.tokens.sot, tiny.tokens.multilingual) == (50257, False)
    assert (base.tokens.sot, base.tokens.multilingual) == (50258, True)
    assert "en" in base.tokens.languages and "de" in base.tokens.languages


def test_a_directory_that_is_not_a_whisper_export_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no encoder_model.onnx"):
        load_runner("whisper", tmp_path)
    with pytest.raises(ModelLoadError, match="needs a model directory"):
        load_runner("whisper", None)


def test_the_split_and_the_cacheless_layouts_give_the_merged_transcript(
        tiny: WhisperRunner, tmp_path: Path, speak: Callable[[str], bytes]) -> None:
    wav = speak(SENTENCE)
    merged, _ = _transcribe(tiny, wav, {"max_tokens": 6})
    split = tmp_path / "split"  # the command line, on the CTranslate2 directory itself
    assert main(["--split", str(SOURCES["whisper-tiny.en"].files().config.parent), str(split)]) == 0
    assert not (split / "decoder_model_merged.onnx").exists()
    runner = WhisperRunner("split", split)
    runner.load()
    assert _transcribe(runner, wav, {"max_tokens": 6})[0].output == merged.output
    (split / "decoder_with_past_model.onnx").unlink()  # no cache: every step feeds the whole sequence
    runner.load()
    assert _transcribe(runner, wav, {"max_tokens": 6})[0].output == merged.output


def _wav(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="WAV")
    return buffer.getvalue()


def test_a_window_of_faint_noise_is_dropped_as_silence(base: WhisperRunner) -> None:
    noise = (0.003 * np.random.default_rng(0).standard_normal(5 * 16000)).astype(np.float32)
    result, progress = _transcribe(base, _wav(noise), {"language": "en"})
    assert (result.output, result.usage["tokens"], progress) == ("", 0, [])
    assert result.usage["audio_seconds"] == 5.0
    # digital silence: Whisper's no-speech rule holds the text back, then streams what it keeps
    result, progress = _transcribe(base, _wav(np.zeros(5 * 16000, np.float32)), {"language": "en"})
    assert "".join(piece for update in progress for piece in update["tokens"]) == result.output
