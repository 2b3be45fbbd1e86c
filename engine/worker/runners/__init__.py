# Model runners for the worker: one synchronous interface (base.ModelRunner), a
# registry that maps model names to runners (base.load_runner), the ONNX Runtime
# provider choice (providers), the text-generation runner (textgen, imported
# lazily by the registry because onnxruntime is heavy), the speech-to-text runner
# (whisper, likewise lazy; with audio decoding in audio, log-mel features in mel and
# Whisper's special tokens in whisper_tokens) and the locally built demo model pack
# (demo_pack). Only base's names are imported eagerly here.
from __future__ import annotations

from engine.worker.runners import base
from engine.worker.runners.base import (
    MODEL_KINDS,
    RUNNER_KINDS,
    FinishReason,
    InvalidTaskInput,
    ModelLoadError,
    ModelRunner,
    NoopRunner,
    ProgressCallback,
    RunnerFactory,
    RunResult,
    StopCheck,
    load_runner,
)

__all__ = list(base.__all__)
