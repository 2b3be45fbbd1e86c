# The runner registry: a model name and its directory in, a loaded runner out.
#
# Theory of operation: the worker maps each model name it serves to a model
# directory, and `load_runner(name, dir)` turns that pair into a loaded runner by
# looking the name up in two tables (data, not ifs): model name -> task kind ->
# runner kind (the catalog: a task kind names the runner kind that serves it,
# engine/core/kinds.py), and runner kind -> factory here. Factories import their
# heavy dependencies (onnxruntime, tokenizers) lazily, so a worker that only serves
# `noop` (the network-path benchmark) never pays for them.
#
# A new task kind adds one factory line to RUNNER_KINDS; its models find it through
# the catalog.
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.core.catalog import MODELS, CatalogError, resolve_model

from .base import ModelLoadError, ModelRunner, NoopRunner

__all__ = ["RUNNER_KINDS", "RunnerFactory", "load_runner", "runnable_models", "runner_kind"]

RunnerFactory = Callable[[str, Path | None, str | None], ModelRunner]


def make_noop(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    return NoopRunner(model_name)


def make_textgen(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    from .textgen import TextGenRunner  # lazy: onnxruntime is heavy

    if model_dir is None:
        raise ModelLoadError(f"model {model_name!r}: a text-generation model needs a model directory")
    return TextGenRunner(model_name, Path(model_dir), providers_preference=providers_preference)


def make_diffusion(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    from .diffusion import DiffusionRunner  # lazy: onnxruntime is heavy

    if model_dir is None:
        raise ModelLoadError(f"model {model_name!r}: a Stable Diffusion model needs a model directory")
    return DiffusionRunner(model_name, Path(model_dir), providers_preference=providers_preference)


def make_whisper(model_name: str, model_dir: Path | None, providers_preference: str | None) -> ModelRunner:
    from .whisper import WhisperRunner  # lazy: onnxruntime is heavy

    if model_dir is None:
        raise ModelLoadError(f"model {model_name!r}: a Whisper model needs a model directory")
    return WhisperRunner(model_name, Path(model_dir), providers_preference=providers_preference)


# Runner kind -> factory. A factory builds an unloaded runner.
RUNNER_KINDS: dict[str, RunnerFactory] = {
    "noop": make_noop,
    "textgen": make_textgen,
    "diffusion": make_diffusion,
    "whisper": make_whisper,
}

def runner_kind(model_name: str) -> str | None:
    """The runner kind of a model name (aliases included): its task kind's runner,
    from the catalog; "noop" for the network-path benchmark's model."""
    if model_name == "noop":
        return "noop"
    try:
        return resolve_model(model_name).kind.runner
    except CatalogError:
        return None


def runnable_models() -> list[str]:
    """The catalog's model names that a runner of this worker can serve."""
    return sorted(name for model in MODELS.values() for name in (model.name, *model.aliases)
                  if model.kind.runner in RUNNER_KINDS)


def load_runner(
    model_name: str,
    model_dir: Path | None,
    *,
    kind: str | None = None,
    providers_preference: str | None = None,
) -> ModelRunner:
    """Build and load the runner for `model_name`, whose files are in `model_dir`.

    `kind` overrides the catalog's runner kind (for models the catalog does not know);
    `providers_preference` is "auto", "cpu" or "cuda" (None: the
    NEUROGRID_ORT_PROVIDER environment variable, else "auto").
    Raises ModelLoadError when no runner fits or the model cannot be loaded.
    """
    kind = kind or runner_kind(model_name)
    factory = RUNNER_KINDS.get(kind) if kind is not None else None
    if factory is None:
        known = ", ".join(["noop", *runnable_models()])
        raise ModelLoadError(f"no runner for model {model_name!r} (kind {kind!r}); "
                             f"models with a runner here: {known}")
    runner = factory(model_name, model_dir, providers_preference)
    runner.load()
    return runner
