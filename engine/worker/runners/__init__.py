# Model runners for the worker: one synchronous interface (base.ModelRunner), a
# registry that maps model names to runners (registry.load_runner), the ONNX Runtime
# provider choice (providers), the text-generation runner (textgen, imported
# lazily by the registry because onnxruntime is heavy), the speech-to-text runner
# (whisper, likewise lazy; with audio decoding in audio, log-mel features in mel and
# Whisper's special tokens in whisper_tokens) and the locally built demo model pack
# (demo_pack). Only base's and registry's names are imported eagerly here.
from __future__ import annotations

from engine.worker.runners.base import (
    FinishReason,
    InvalidTaskInput,
    ModelLoadError,
    ModelRunner,
    NoopRunner,
    ProgressCallback,
    RunResult,
    StopCheck,
)
from engine.worker.runners.registry import (
    RUNNER_KINDS,
    RunnerFactory,
    load_runner,
    runnable_models,
    runner_kind,
)

__all__ = [
    "RUNNER_KINDS", "FinishReason", "InvalidTaskInput", "ModelLoadError", "ModelRunner",
    "NoopRunner", "ProgressCallback", "RunResult", "RunnerFactory", "StopCheck", "load_runner",
    "runnable_models", "runner_kind",
]
