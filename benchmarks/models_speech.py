# Speech to text: the Whisper runner on real weights, beside faster-whisper.
#
# - pack build: seconds to convert each CTranslate2 Whisper source (registry
#   packages) into its ONNX pack, into a fresh temporary directory.
# - runner: real-time factor (wall seconds / audio seconds, lower is better) of
#   WhisperRunner.run on the test speech (two sentences made with espeak-ng, the
#   same as the tests'), median of 5 runs (1 quick) after one warm-up, and its word
#   error rate. The engines' runs are taken in turn, so drifting load on a shared
#   machine hits them alike.
# - faster-whisper, in the same run, on the same CTranslate2 weights (the registry
#   package's model directory), greedy (beam_size 1, temperature 0, no timestamps,
#   no VAD), as float32 (our precision) and int8 (what people run on a CPU), with
#   the ratio ours / theirs of the real-time factors (> 1: we are slower). It is
#   optional: `pip install --no-deps faster-whisper ctranslate2 av` (its declared
#   dependency on plain onnxruntime would clash with onnxruntime-gpu). When it is
#   absent, or espeak-ng is, the rows say so instead of failing.
#
# `speech_rows(quick)` returns the rows, for `python -m benchmarks --only models`;
# BENCHMARK runs it alone.
from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.worker.packs.whisper_ct2 import DEFAULT_PACK, SOURCES, ensure_whisper_pack
from engine.worker.runners.audio import decode_audio
from engine.worker.runners.whisper import WhisperRunner
from tests.engine.worker.whisper.helpers import (
    SECOND_SENTENCE,
    SENTENCE,
    espeak_available,
    espeak_wav,
    word_error_rate,
)

from .harness import Benchmark, Row, median_of

__all__ = ["BENCHMARK", "speech_rows"]

TEXT = SENTENCE + " " + SECOND_SENTENCE


def _ct2_directory(name: str, into: Path) -> Path:
    """A CTranslate2 model directory faster-whisper can open (split parts joined)."""
    files = SOURCES[name].files()
    if len(files.model_parts) == 1:
        return files.model_parts[0].parent
    into.mkdir(parents=True, exist_ok=True)
    with open(into / "model.bin", "wb") as out:
        for part in files.model_parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, out)
    shutil.copyfile(files.config, into / "config.json")
    shutil.copyfile(files.tokenizer, into / "tokenizer.json")
    for vocabulary in files.config.parent.glob("vocabulary.*"):  # CTranslate2 reads its own vocabulary
        shutil.copyfile(vocabulary, into / vocabulary.name)
    return into


def _ours(pack: Path, wav: bytes) -> Callable[[], str]:
    runner = WhisperRunner("whisper", pack, providers_preference="cpu")
    runner.load()
    inputs = {"audio": base64.b64encode(wav).decode()}
    params = {"language": "en"} if runner.tokens.multilingual else {}
    return lambda: runner.run(inputs, params, lambda update: None, lambda: False).output


def _faster_whisper(directory: Path, audio: np.ndarray, compute_type: str) -> Callable[[], str]:
    from faster_whisper import WhisperModel  # optional, see the module comment

    model = WhisperModel(str(directory), device="cpu", compute_type=compute_type, cpu_threads=os.cpu_count() or 0)

    def once() -> str:
        segments, _ = model.transcribe(audio, language="en", beam_size=1, temperature=0.0,
                                       without_timestamps=True, vad_filter=False)
        return "".join(segment.text for segment in segments).strip()

    return once


def _interleaved(engines: dict[str, Callable[[], str]], runs: int) -> dict[str, tuple[float, str]]:
    """Median seconds and last text of each engine, runs taken in turn (one warm-up each)."""
    texts = {name: engine() for name, engine in engines.items()}
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, engine in engines.items():
            start = time.perf_counter()
            texts[name] = engine()
            samples[name].append(time.perf_counter() - start)
    return {name: (median_of(samples[name]), texts[name]) for name in engines}


def speech_rows(quick: bool) -> list[Row]:
    runs = 1 if quick else 5
    names = [DEFAULT_PACK] if quick else list(SOURCES)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        packs: dict[str, Path] = {}
        for name in names:
            start = time.perf_counter()
            packs[name] = ensure_whisper_pack(name, Path(tmp) / name, show_progress=False)
            rows.append(Row(f"whisper pack build: {name}", {"seconds": time.perf_counter() - start,
                                                            "MB": _size_mb(packs[name])}))
        if not espeak_available():
            rows.append(Row("whisper RTF", {"skipped": "espeak-ng is not installed (no test speech)"}))
            return rows
        wav = espeak_wav(TEXT)
        audio = decode_audio(wav)
        seconds = len(audio) / 16000
        have_fw = importlib.util.find_spec("faster_whisper") is not None
        for name, pack in packs.items():
            engines = {"ours": _ours(pack, wav)}
            if have_fw:
                directory = _ct2_directory(name, Path(tmp) / f"{name}-ct2")
                for compute_type in ("float32", "int8"):
                    engines[f"faster-whisper {compute_type}"] = _faster_whisper(directory, audio, compute_type)
            measured = _interleaved(engines, runs)
            ours = measured["ours"][0] / seconds
            rows.append(Row(f"whisper runner: {name}", {
                "audio_s": seconds, "rtf": ours, "wer": word_error_rate(TEXT, measured["ours"][1])}))
            if not have_fw:
                rows.append(Row(f"faster-whisper: {name}", {"skipped": "faster-whisper is not installed"}))
            for engine, (median, text) in measured.items():
                if engine != "ours":
                    theirs = median / seconds
                    rows.append(Row(f"{engine}: {name}", {
                        "rtf": theirs, "wer": word_error_rate(TEXT, text), "ours/theirs": ours / theirs}))
    return rows


def _size_mb(directory: Path) -> float:
    return sum(path.stat().st_size for path in directory.iterdir()) / 1e6


BENCHMARK = Benchmark(
    "models_speech",
    "Whisper: pack build time, runner real-time factor and WER on espeak-ng speech, beside faster-whisper",
    speech_rows,
)


if __name__ == "__main__":
    from .harness import run_all

    raise SystemExit(run_all([BENCHMARK], False, None, False))
