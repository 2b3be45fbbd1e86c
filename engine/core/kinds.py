# Task kinds as data: everything the network knows about a kind of AI task, in one
# table, so that a new kind is one row here plus a runner (and a registry line).
#
# Rules:
# - A task's size is four measurable quantities, the same for every kind:
#   prompt_tokens, output_tokens, steps, audio_seconds (`TaskSpec` and `Usage`
#   carry them). A kind says which of them its requests set and how its work and
#   its reference cost follow from them; a quantity a kind does not use stays 0.
# - Work is measured in one unit per kind (`work_unit`): decode-equivalent tokens
#   for text generation, denoising steps for image generation, audio seconds for
#   speech-to-text. A GPU class runs a model at `rate` work units per second, so the
#   service time of a task is work / rate: every placement score stays linear in the
#   task's work, which the placement index relies on.
# - Request fields are data (`RequestField`): type, default, limits, and the size
#   quantity they set. Validation (api/validation.py), the OpenAPI document and the
#   worker's defaults read them; a default is defined here and nowhere else.
# - Verification (verification.py) costs a fraction of the task's work, per kind
#   (`verify_fraction`, data): text generation is checked teacher-forced, one
#   parallel prefill pass over prompt + claimed output, (p + o) / PREFILL_SPEEDUP
#   work units against o + p / PREFILL_SPEEDUP for the generation: at most 2/41 of it
#   while the prompt is no longer than the output; speech-to-text and image
#   generation are re-run with the same seed (the whole work again). The `verify`
#   request field (VERIFY_FIELD) is common to every kind.
# - An unknown kind is an error (`task_kind` raises UnknownTaskKind, a CatalogError),
#   never a default.
#
# Every lookup is a dict access: O(1).
from __future__ import annotations

import math
from typing import Callable, Mapping

import attrs

__all__ = [
    "CatalogError", "IMAGE_GENERATION", "PREFILL_SPEEDUP", "RequestField", "SIZE_QUANTITIES",
    "SPEECH_TO_TEXT", "TASK_KINDS", "VERIFY_FIELD", "TEXT_GENERATION", "TaskKind", "UnknownTaskKind", "task_kind",
]

TEXT_GENERATION = "text-generation"
IMAGE_GENERATION = "image-generation"
SPEECH_TO_TEXT = "speech-to-text"

# The size quantities of a task, as TaskSpec spells them (Usage counts output
# tokens as `tokens`).
SIZE_QUANTITIES = ("prompt_tokens", "output_tokens", "steps", "audio_seconds")

# Prompt tokens are processed in parallel (prefill), far faster than generated tokens
# are decoded one by one. Estimate: llama.cpp pp512 vs tg128 on the same GPU differ by
# 40-100x for 7B models (llama.cpp discussion #4167, figures of 2023-12); we count a
# prompt token as 1/40 of a generated token, the conservative end.
PREFILL_SPEEDUP = 40.0

# (prompt_tokens, output_tokens, steps, audio_seconds) -> work units
WorkFormula = Callable[[int, int, int, float], float]
# (reference price row, prompt_tokens, output_tokens, steps, audio_seconds) -> dollars
CostFormula = Callable[[Mapping[str, float], int, int, int, float], float]


class CatalogError(ValueError):
    """An unknown model, GPU class or task kind; the message names it and lists the
    known ones."""


class UnknownTaskKind(CatalogError):
    """A task kind that is not in TASK_KINDS."""


@attrs.frozen
class RequestField:
    """A field that requests of a kind may carry, beside prompt, model and priority."""

    name: str
    type: str  # "integer" | "number" | "string"
    default: int | float | str | None  # None: absent unless the client sets it
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # the low limit itself is refused
    # Numbers: values strictly between 0 and this are refused (too small to mean
    # anything, and they overflow the arithmetic: logits / 1e-310 is infinite). 0: none.
    least_positive: float = 0.0
    size: str = ""  # the size quantity (SIZE_QUANTITIES) this field sets, if any
    description: str = ""
    multiple_of: int = 0  # integers: the value must be a multiple of this (0: any)
    choices: tuple[str, ...] = ()  # strings: the values allowed (empty: any)
    max_length: int = 0  # strings: the most characters (0: no limit beyond the body's)
    required: bool = False  # a request of the kind must carry it
    input: bool = False  # goes to the worker in the assign frame's input, not its params

    def __attrs_post_init__(self) -> None:
        if self.type not in ("integer", "number", "string"):
            raise ValueError(f"field {self.name!r}: unknown type {self.type!r}")
        if self.size and self.size not in SIZE_QUANTITIES:
            raise ValueError(f"field {self.name!r}: unknown size quantity {self.size!r}")


@attrs.frozen
class TaskKind:
    name: str
    work_unit: str  # what a GPU class's `rate` counts: "token", "step", "audio_second"
    runner: str  # the worker's runner kind that serves it (engine.worker.runners registry)
    fields: tuple[RequestField, ...]
    usage_fields: tuple[str, ...]  # what a worker's `result` usage reports, beside seconds
    work: WorkFormula
    reference_cost: CostFormula
    quantities: tuple[str, ...] = ()  # the size quantities its work depends on
    description: str = ""
    prompt_required: bool = True  # False: the prompt is optional (speech: a decoder hint)
    # Size quantities the API measures from the task's input (never a client's
    # figure), stored in the params under their own name: speech's audio_seconds.
    measured: tuple[str, ...] = ()
    # Sizes of a typical task for quantities no request field sets (the measured
    # ones): what a simulated workload draws when it does not say.
    typical: tuple[tuple[str, float], ...] = ()
    # the work of verifying a result, as a fraction of the task's own (module top)
    verify_fraction: float = 1.0

    def field(self, name: str) -> RequestField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def default(self, name: str) -> int | float | str | None:
        return self.field(name).default

    def sizes(self, params: Mapping[str, object]) -> dict[str, float]:
        """The size quantities that a task's params set (defaults where absent), by
        TaskSpec field name; quantities this kind does not use are left out (0)."""
        out: dict[str, float] = {}
        for f in self.fields:
            if f.size:
                value = params.get(f.name, f.default)
                if isinstance(value, (int, float)):
                    out[f.size] = value
        for quantity in self.measured:
            value = params.get(quantity)
            if isinstance(value, (int, float)):
                out[quantity] = value
        return out

    def size_default(self, quantity: str) -> float:
        """The default of the request field that sets `quantity`, else the kind's
        typical size of it (0 when it has neither)."""
        for f in self.fields:
            if f.size == quantity and isinstance(f.default, (int, float)):
                return f.default
        return dict(self.typical).get(quantity, 0)


def _text_work(prompt_tokens: int, output_tokens: int, steps: int, audio_seconds: float) -> float:
    return output_tokens + prompt_tokens / PREFILL_SPEEDUP


def _image_work(prompt_tokens: int, output_tokens: int, steps: int, audio_seconds: float) -> float:
    return float(steps)


def _speech_work(prompt_tokens: int, output_tokens: int, steps: int, audio_seconds: float) -> float:
    return float(audio_seconds)


def _text_cost(ref: Mapping[str, float], prompt_tokens: int, output_tokens: int, steps: int,
               audio_seconds: float) -> float:
    return prompt_tokens * ref["input_per_token"] + output_tokens * ref["output_per_token"]


def _image_cost(ref: Mapping[str, float], prompt_tokens: int, output_tokens: int, steps: int,
                audio_seconds: float) -> float:
    return ref["per_image"] if steps > 0 else 0.0


def _speech_cost(ref: Mapping[str, float], prompt_tokens: int, output_tokens: int, steps: int,
                 audio_seconds: float) -> float:
    return audio_seconds * ref["per_audio_second"]


# Common to every kind (not in a kind's `fields`: it never reaches the worker).
VERIFY_FIELD = RequestField(
    "verify", "string", "sampled", choices=("none", "sampled", "always"),
    description="whether a validator node checks the result before it is delivered: "
                "none, sampled (a share set by the producing node's reputation) or always")

MAX_SEED = 2**63 - 1
_SEED = RequestField("seed", "integer", None, 0, MAX_SEED,
                     description="random seed: the same seed gives the same output on one node")

TASK_KINDS: dict[str, TaskKind] = {
    k.name: k
    for k in (
        TaskKind(
            TEXT_GENERATION, work_unit="token", runner="textgen",
            fields=(
                RequestField("max_tokens", "integer", 256, 1, 4096, size="output_tokens",
                             description="tokens to generate at most"),
                RequestField("temperature", "number", 0.0, 0.0, 2.0, least_positive=1e-3,
                             description="sampling temperature; 0 is greedy, else at "
                                         "least 0.001"),
                RequestField("top_p", "number", 1.0, 0.0, 1.0, low_open=True,
                             description="nucleus sampling: the smallest set of tokens "
                                         "whose probability reaches top_p"),
                _SEED,
            ),
            usage_fields=("tokens", "prompt_tokens"),
            work=_text_work, reference_cost=_text_cost,
            quantities=("prompt_tokens", "output_tokens"),
            description="text generation from a prompt (LLM)",
            verify_fraction=2.0 / (PREFILL_SPEEDUP + 1.0),
        ),
        TaskKind(
            IMAGE_GENERATION, work_unit="step", runner="diffusion",
            fields=(
                RequestField("steps", "integer", 50, 1, 150, size="steps",
                             description="denoising steps"),
                RequestField("width", "integer", 512, 64, 1024, multiple_of=8,
                             description="image width in pixels"),
                RequestField("height", "integer", 512, 64, 1024, multiple_of=8,
                             description="image height in pixels"),
                RequestField("guidance_scale", "number", 7.5, 0.0, 30.0,
                             description="classifier-free guidance; 1 or less turns it off"),
                RequestField("negative_prompt", "string", None, max_length=2000,
                             description="what the image should not show"),
                RequestField("scheduler", "string", None, choices=("euler", "ddim", "pndm"),
                             description="the sampler (default: the model's own)"),
                _SEED,
            ),
            usage_fields=("steps",),
            work=_image_work, reference_cost=_image_cost, quantities=("steps",),
            description="image generation from a prompt",
        ),
        TaskKind(
            SPEECH_TO_TEXT, work_unit="audio_second", runner="whisper",
            fields=(
                RequestField("audio", "string", None, required=True, input=True,
                             description="the audio file (WAV, FLAC, MP3 or OGG), base64; or "
                                         "a multipart/form-data upload's `file` part"),
                RequestField("language", "string", None, max_length=16,
                             description="the spoken language's code, e.g. en (default: "
                                         "detected, on a multilingual model)"),
                RequestField("max_tokens", "integer", 448, 1, 448,
                             description="transcript tokens per 30 s window at most"),
            ),
            usage_fields=("audio_seconds",),
            work=_speech_work, reference_cost=_speech_cost, quantities=("audio_seconds",),
            description="speech-to-text transcription",
            prompt_required=False, measured=("audio_seconds",),
            typical=(("audio_seconds", 60.0),),
        ),
    )
}


def task_kind(name: str) -> TaskKind:
    kind = TASK_KINDS.get(name)
    if kind is None:
        raise UnknownTaskKind(f"unknown task kind {name!r} (known: {', '.join(TASK_KINDS)})")
    return kind
