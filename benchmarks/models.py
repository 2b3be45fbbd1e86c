# The three model families' runners on this machine: text (SmolLM2-135M-Instruct:
# the worker's runner against a direct onnxruntime loop on the same model, and
# llama.cpp on the same GGUF where it installs), speech (Whisper: real-time factor,
# word error rate, faster-whisper on the same weights where it installs) and image
# (the tiny random-weight pack: seconds per denoising step, runner against a bare
# UNet call), and the quote's estimated time against the measured time on the
# local worker (models_quote.py). Each family's rows come from its own module; this one lists them
# under one name for `python -m benchmarks --only models`.
from __future__ import annotations

from .harness import Benchmark, Row
from .models_image import image_rows
from .models_quote import quote_rows
from .models_speech import speech_rows
from .models_text import text_rows


def run(quick: bool) -> list[Row]:
    return [*text_rows(quick), *quote_rows(quick), *speech_rows(quick), *image_rows(quick)]


BENCHMARK = Benchmark(
    name="models",
    description="text, speech and image runners: speed against direct onnxruntime and the "
                "engines people use on a CPU",
    run=run,
)
