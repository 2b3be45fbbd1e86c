# The catalog: which models the network serves and which GPU classes run them.
#
# Rules:
# - Pure data plus lookups. Every performance and price figure carries its public
#   source and the date it was taken; a figure we derived ourselves says "estimate"
#   and how it was derived.
# - Each model belongs to a task kind (kinds.py: the table of what a kind's requests
#   carry, how big its work is and what the same work costs at OpenAI). Work is in
#   the kind's unit; a GPU class runs a model at `rate` work units per second, so the
#   service time of a task is simply work / rate.
# - A model whose kind is not in the table is refused when the catalog is built.
from __future__ import annotations

import math
from typing import Mapping

import attrs

from .kinds import (
    IMAGE_GENERATION, PREFILL_SPEEDUP, SPEECH_TO_TEXT, TASK_KINDS, TEXT_GENERATION, CatalogError,
    TaskKind, task_kind,
)

__all__ = [
    "CatalogError", "DEFAULT_MODEL", "GPU_CLASSES", "GpuClass", "IMAGE_GENERATION", "MODELS",
    "ModelSpec", "OPENAI_REFERENCE", "PREFILL_SPEEDUP", "REFERENCE_GPU", "SPEECH_TO_TEXT",
    "TASK_KINDS", "TEXT_GENERATION", "TaskKind", "default_price", "estimate_prompt_tokens",
    "gpu_class", "gpu_rate", "openai_cost", "resolve_model", "task_kind", "work_units",
]


@attrs.frozen
class ModelSpec:
    name: str
    task_type: str  # a TASK_KINDS name
    vram_gb: float  # memory needed to hold the weights and a working set
    load_seconds: float  # cold load: weights from local NVMe into GPU memory
    aliases: tuple[str, ...] = ()
    # OpenAI reference price for the same work, in dollars (see OPENAI_REFERENCE).
    openai_reference: str = ""
    description: str = ""  # for people: what the model does
    kind: TaskKind = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "kind", task_kind(self.task_type))

    @property
    def work_unit(self) -> str:
        return self.kind.work_unit

    # The kind's size defaults, used when a client does not say how big its task is.
    @property
    def default_output_tokens(self) -> int:
        return int(self.kind.size_default("output_tokens"))

    @property
    def default_steps(self) -> int:
        return int(self.kind.size_default("steps"))

    @property
    def default_audio_seconds(self) -> float:
        return float(self.kind.size_default("audio_seconds"))


@attrs.frozen
class GpuClass:
    name: str
    vram_gb: float
    price_per_hour: float  # default on-demand price, dollars
    rates: Mapping[str, float]  # model name -> work units per second

    def rate(self, model: str) -> float:
        return self.rates[model]


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        # Llama-2-7B quantized Q4_0, as volunteer nodes run it (llama.cpp): 3.8 GB of
        # weights + KV cache. Load: 3.8 GB at ~2 GB/s NVMe read, ~2 s (estimate).
        ModelSpec(
            "llama2:7b", TEXT_GENERATION, vram_gb=4.5, load_seconds=2.0,
            aliases=("llama2",), openai_reference="gpt-3.5-turbo",
            description="Large Language Model for text generation",
        ),
        # Stable Diffusion 1.5 FP16: ~2 GB UNet+VAE+CLIP, ~4 GB in use at 512x512.
        ModelSpec(
            "stable-diffusion", IMAGE_GENERATION, vram_gb=4.0, load_seconds=4.0,
            openai_reference="dall-e-2-512",
            description="Image generation from text prompts",
        ),
        # Whisper large-v2: ~10 GB VRAM (openai/whisper README, model table, 2023).
        ModelSpec(
            "whisper", SPEECH_TO_TEXT, vram_gb=10.0, load_seconds=3.0,
            openai_reference="whisper-1",
            description="Speech-to-text transcription",
        ),
    )
}

DEFAULT_MODEL = "llama2:7b"
_ALIASES = {alias: m.name for m in MODELS.values() for alias in m.aliases}

# Text generation rates: Llama-2-7B Q4_0 single-stream decode tokens/s, llama.cpp
# (tg128), as collected in the public llama.cpp GPU benchmark tables (2023-12,
# read 2026-11): 3090 120.6, 4090 149.4, A100-80G 136.2, H100-PCIe 133.8
# (FP16 for comparison: 51.9, 60.8, 73.8, 83.3).
# Image rates: SD 1.5, 512x512, batch 1, it/s (public diffusers/A1111 benchmark
# tables, 2023, read 2026-11): 3090 22.6, 4090 40.5, A100 21.7. H100: estimate,
# A100 x 1.5 (H100/A100 FP16 dense ratio is ~3x on paper; batch-1 diffusion is
# launch-bound, so we take half of that) = 32.6.
# Speech rates are 1 / real-time factor (audio seconds per wall second). openai/whisper
# large-v2 RTF on V100S 0.35 (openai/whisper discussions, 2022); large-v3 on 4090
# 0.093 (public benchmark, 2024). 3090, A100, H100: estimates scaled from the 4090 by
# the FP16 text-generation decode ratio above (memory-bandwidth bound like decode):
# 3090 0.093*60.8/51.9 = 0.109, A100 0.093*60.8/73.8 = 0.077, H100 0.068.
# Prices: on-demand $/h, public GPU cloud price lists (2026): 3090 0.39, 4090 0.60,
# A100 2.45, H100 4.76.
GPU_CLASSES: dict[str, GpuClass] = {
    g.name: g
    for g in (
        GpuClass("RTX 3090", 24.0, 0.39,
                 {"llama2:7b": 120.6, "stable-diffusion": 22.6, "whisper": 1 / 0.109}),
        GpuClass("RTX 4090", 24.0, 0.60,
                 {"llama2:7b": 149.4, "stable-diffusion": 40.5, "whisper": 1 / 0.093}),
        GpuClass("A100", 80.0, 2.45,
                 {"llama2:7b": 136.2, "stable-diffusion": 21.7, "whisper": 1 / 0.077}),
        GpuClass("H100", 80.0, 4.76,
                 {"llama2:7b": 133.8, "stable-diffusion": 32.6, "whisper": 1 / 0.068}),
    )
}

# The GPU a quote assumes when no node serving the model is online.
REFERENCE_GPU = "RTX 4090"

# OpenAI list prices (openai.com/api/pricing, read 2026-11), dollars.
# gpt-3.5-turbo: $0.50 / $1.50 per 1M input / output tokens.
# dall-e-2 512x512: $0.018 per image. whisper-1: $0.006 per audio minute.
OPENAI_REFERENCE = {
    "gpt-3.5-turbo": {"input_per_token": 0.50e-6, "output_per_token": 1.50e-6},
    "dall-e-2-512": {"per_image": 0.018},
    "whisper-1": {"per_audio_second": 0.006 / 60},
}


def resolve_model(name: str) -> ModelSpec:
    """The model for a name or alias (`llama2` -> `llama2:7b`)."""
    spec = MODELS.get(_ALIASES.get(name, name))
    if spec is None:
        known = ", ".join(sorted([*MODELS, *_ALIASES]))
        raise CatalogError(f"unknown model {name!r} (known: {known})")
    return spec


def gpu_class(name: str) -> GpuClass:
    gpu = GPU_CLASSES.get(name)
    if gpu is None:
        raise CatalogError(f"unknown GPU class {name!r} (known: {', '.join(GPU_CLASSES)})")
    return gpu


def gpu_class_name(reported: str) -> str:
    """The catalog's GPU class for a reported device name ('NVIDIA GeForce RTX 4090'
    -> 'RTX 4090'); an unlisted device keeps its own name (the core treats it as the
    slowest listed class)."""
    text = reported.upper()
    for name in sorted(GPU_CLASSES, key=len, reverse=True):
        if name.upper() in text:
            return name
    return reported.strip() or "cpu"


def gpu_rate(gpu_name: str, model: str) -> float:
    """Work units per second of `model` on a GPU. An unlisted GPU name (a worker that
    reports e.g. 'NVIDIA L4' or 'cpu') is treated as the slowest listed class."""
    gpu = GPU_CLASSES.get(gpu_name)
    if gpu is not None:
        return gpu.rates[model]
    rate = _SLOWEST_RATES.get(model)
    if rate is None:  # the first ask for this model (a model added at run time counts too)
        rate = _SLOWEST_RATES[model] = min(g.rates[model] for g in GPU_CLASSES.values())
    return rate


# model -> the slowest listed class's rate: what an unlisted GPU runs at (a worker
# on "cpu" asks for it several times a task). GPU_CLASSES' rates are constants.
_SLOWEST_RATES: dict[str, float] = {}


def default_price(gpu_name: str) -> float:
    gpu = GPU_CLASSES.get(gpu_name)
    return gpu.price_per_hour if gpu is not None else min(
        g.price_per_hour for g in GPU_CLASSES.values())


def work_units(model: str, prompt_tokens: int, output_tokens: int, steps: int,
               audio_seconds: float) -> float:
    """The work of a task in its model's work unit (its kind's formula)."""
    return MODELS[model].kind.work(prompt_tokens, output_tokens, steps, audio_seconds)


def openai_cost(model: str, prompt_tokens: int, output_tokens: int, steps: int,
                audio_seconds: float) -> float:
    """What the same work would cost at OpenAI's list price, dollars (its kind's formula)."""
    spec = MODELS[model]
    return spec.kind.reference_cost(OPENAI_REFERENCE[spec.openai_reference], prompt_tokens,
                                    output_tokens, steps, audio_seconds)


def estimate_prompt_tokens(text: str) -> int:
    """Rough token count of a prompt: ~4 characters a token for English (OpenAI's
    rule of thumb), at least one token for non-empty text."""
    return max(1, math.ceil(len(text) / 4)) if text else 0
