# Text-to-image with Stable Diffusion exported to ONNX (the layout diffusers'
# converter and Hugging Face Optimum write).
#
# Rules of this module:
# - A model directory holds text_encoder/model.onnx (input_ids int32 or int64
#   [batch, seq] -> last_hidden_state, or its first output), unet/model.onnx
#   (sample [batch, 4, H/8, W/8], timestep, encoder_hidden_states -> out_sample),
#   vae_decoder/model.onnx (latent_sample -> sample [batch, 3, H, W]), tokenizer/
#   (CLIP BPE: vocab.json + merges.txt, see clip_tokenizer), and
#   scheduler/scheduler_config.json; model_index.json and */config.json are read
#   when present. Input dtypes come from the sessions: ids int32/int64, sample and
#   states float32/float16, timestep float32/float16/float64/int64/int32 of rank 0
#   (scalar, Optimum's current export) or rank 1 (fed as [1], as diffusers' ONNX
#   pipeline does, or [n] for a static dim n). A UNet that needs more inputs
#   (SDXL's text_embeds/time_ids, LCM's timestep_cond) is a load error; one with
#   static latent dims only serves that one image size.
# - Params (None means the default; anything else out of range is
#   InvalidTaskInput naming the field): width, height (multiples of 8 in
#   [MIN_SIDE, MAX_SIDE], at most MAX_PIXELS together; default the UNet config's
#   sample_size * 8, else 512, or the only size of a static-shape export); steps (1..MAX_STEPS, default DEFAULT_STEPS);
#   guidance_scale (0..MAX_GUIDANCE, default 7.5; <= 1 turns classifier-free
#   guidance off, as in diffusers); seed (0..2**63-1; absent: fresh OS entropy,
#   and the seed used is returned); negative_prompt (a string, default ""); and
#   scheduler (a name of schedulers.SCHEDULERS; default the one the export's
#   scheduler config names, else "euler"). Input: `prompt`, a string.
# - Same seed, params and model => the same PNG bytes: the only randomness is the
#   initial latent noise, numpy's default_rng(seed).standard_normal (not the
#   torch/RandomState noise diffusers draws, so images differ from diffusers' for
#   the same seed).
# - Output (a JSON-able dict): image_png_base64 (the PNG file, base64), content_type
#   "image/png", width, height, seed, steps, scheduler, guidance_scale and
#   prompt_tokens_dropped (prompt tokens cut off beyond CLIP's 77). A cancelled run returns
#   the same dict with image_png_base64 None and finish_reason "cancelled".
#   usage: steps (denoising steps run), seconds (wall time), prompt_tokens, and
#   tokens 0 (the RunResult contract: no tokens are generated).
# - Verification (`verify`): the task is re-run here with the seed the claimed
#   output reports (when the params gave none) and the images compared by PSNR
#   (verify_media.judge_image); no proof is used.
# - Progress: on_progress({"step": i, "steps": n}) after each denoising step;
#   should_stop() is polled before each step.
#
# Theory of operation: `load` opens three sessions (providers.choose_providers)
# and reads the metadata into immutable values; `run` keeps all per-task state in
# locals. Prompt and negative prompt are encoded in one batch; the UNet runs on
# [uncond, cond] in one batch of 2 (two calls when the export's batch is fixed at
# 1) and noise_pred = uncond + scale * (cond - uncond); the scheduler loop follows
# schedulers.Scheduler; latents / scaling_factor (vae_decoder config, else
# 0.18215) are decoded, mapped from [-1, 1] to uint8 RGB and written as PNG.
from __future__ import annotations

import base64
import io
import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnxruntime as ort

from engine.worker.runners.base import (
    InvalidTaskInput,
    ModelLoadError,
    ProgressCallback,
    RunResult,
    StopCheck,
    Verdict,
)
from engine.worker.runners.clip_tokenizer import (
    ClipTokenizer,
    load_clip_tokenizer,
    read_json_object,
)
from engine.worker.runners.providers import choose_providers, open_session
from engine.worker.runners.verify_media import judge_image
from engine.worker.runners.schedulers import (
    SCHEDULERS,
    SchedulerError,
    make_scheduler,
    scheduler_name,
)

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "MAX_GUIDANCE",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "DiffusionParams",
    "DiffusionRunner",
    "encode_png",
    "to_uint8_image",
]

DEFAULT_STEPS = 25
MAX_STEPS = 150
DEFAULT_GUIDANCE = 7.5
MAX_GUIDANCE = 30.0
MIN_SIDE, MAX_SIDE = 64, 1536
MAX_PIXELS = 1024 * 1024
MAX_SEED = 2**63 - 1
DEFAULT_SCALING_FACTOR = 0.18215
DEFAULT_SIDE = 512
PARTS = ("text_encoder", "unet", "vae_decoder")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
_NP_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}

log = logging.getLogger(__name__)


def _integer(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidTaskInput(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InvalidTaskInput(f"{name} must be in [{low}, {high}], got {int(value)}")
    return int(value)


def _side(params: Mapping[str, Any], name: str, default: int) -> int:
    side = _integer(params, name, default, MIN_SIDE, MAX_SIDE)
    if side % 8:
        raise InvalidTaskInput(f"{name} must be a multiple of 8 (the latent is 1/8 of the image), got {side}")
    return side


@attrs.frozen
class DiffusionParams:
    """Validated image params (see the module rules for limits and defaults)."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str
    scheduler: str

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], default_size: tuple[int, int], default_scheduler: str
    ) -> DiffusionParams:
        width, height = _side(params, "width", default_size[0]), _side(params, "height", default_size[1])
        if width * height > MAX_PIXELS:
            raise InvalidTaskInput(f"width x height must be at most {MAX_PIXELS} pixels, got {width}x{height}")
        guidance = params.get("guidance_scale")
        guidance = DEFAULT_GUIDANCE if guidance is None else guidance
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise InvalidTaskInput(f"guidance_scale must be a finite number, got {guidance!r}")
        if not 0 <= guidance <= MAX_GUIDANCE:
            raise InvalidTaskInput(f"guidance_scale must be in [0, {MAX_GUIDANCE}], got {guidance}")
        negative = params.get("negative_prompt")
        negative = "" if negative is None else negative
        if not isinstance(negative, str):
            raise InvalidTaskInput(f"negative_prompt must be a string, got {type(negative).__name__}")
        scheduler = params.get("scheduler")
        scheduler = default_scheduler if scheduler is None else scheduler
        if scheduler not in SCHEDULERS:
            raise InvalidTaskInput(f"scheduler must be one of {', '.join(sorted(SCHEDULERS))}, got {scheduler!r}")
        seed = _integer(params, "seed", -1, 0, MAX_SEED)
        return cls(
            width=width,
            height=height,
            steps=_integer(params, "steps", DEFAULT_STEPS, 1, MAX_STEPS),
            guidance_scale=float(guidance),
            seed=secrets.randbits(63) if seed < 0 else seed,
            negative_prompt=negative,
            scheduler=str(scheduler),
        )


def to_uint8_image(decoded: np.ndarray) -> np.ndarray:
    """VAE output [3, H, W] in [-1, 1] -> uint8 RGB [H, W, 3] (diffusers' postprocessing)."""
    unit = np.clip(decoded.astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    result: np.ndarray = (unit.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    return result


def encode_png(image: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> PNG file bytes (deterministic: no timestamps)."""
    from PIL import Image  # lazy: only image runs need Pillow

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _np_type(spec: Any, where: str) -> type[np.generic]:
    dtype = _NP_TYPES.get(spec.type)
    if dtype is None:
        raise ModelLoadError(f"{where}: input {spec.name} has unsupported type {spec.type}")
    return dtype


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


@attrs.frozen
class _Export:
    """What `load` learnt about the three sessions."""

    text_encoder: ort.InferenceSession
    unet: ort.InferenceSession
    vae_decoder: ort.InferenceSession
    tokenizer: ClipTokenizer
    scheduler_config: Mapping[str, Any]
    default_scheduler: str
    default_size: tuple[int, int]  # (width, height)
    ids_type: type[np.generic]
    latent_type: type[np.generic]
    states_type: type[np.generic]
    vae_type: type[np.generic]
    timestep_type: type[np.generic]
    timestep_shape: tuple[int, ...]
    latent_channels: int
    fixed_size: tuple[int, int] | None  # (width, height) of an export with static latent dims
    text_batch_fixed: bool
    unet_batch_fixed: bool
    scaling_factor: float
    text_output: str  # last_hidden_state, else the text encoder's first output
    unet_output: str  # out_sample, else the UNet's first output


@attrs.define
class DiffusionRunner:
    """Runs one Stable Diffusion ONNX export; see the module comment for the contract."""

    model_name: str
    model_dir: Path
    providers_preference: str | None = None
    _export: _Export | None = attrs.field(default=None, init=False)

    def load(self) -> None:
        where = f"model {self.model_name!r} ({self.model_dir})"
        if not self.model_dir.is_dir():
            raise ModelLoadError(f"{where}: model directory does not exist")
        paths = {part: self.model_dir / part / "model.onnx" for part in PARTS}
        missing = [str(path) for path in paths.values() if not path.is_file()]
        scheduler_path = self.model_dir / "scheduler" / "scheduler_config.json"
        if not scheduler_path.is_file():
            missing.append(str(scheduler_path))
        if missing:
            raise ModelLoadError(f"{where}: not a Stable Diffusion ONNX export; missing {', '.join(missing)}")
        scheduler_config = read_json_object(scheduler_path)
        default_scheduler = scheduler_name(scheduler_config)
        try:
            make_scheduler(default_scheduler, scheduler_config, 1)
        except SchedulerError as exc:
            raise ModelLoadError(f"{where}: {scheduler_path}: {exc}") from exc
        unet_config = read_json_object(self.model_dir / "unet" / "config.json")
        vae_config = read_json_object(self.model_dir / "vae_decoder" / "config.json")
        providers = choose_providers(self.providers_preference)
        sessions = {part: open_session(path, providers) for part, path in paths.items()}
        text_inputs = {spec.name: spec for spec in sessions["text_encoder"].get_inputs()}
        unet_inputs = {spec.name: spec for spec in sessions["unet"].get_inputs()}
        vae_inputs = {spec.name: spec for spec in sessions["vae_decoder"].get_inputs()}
        if "input_ids" not in text_inputs:
            raise ModelLoadError(f"{where}: text_encoder inputs {list(text_inputs)} lack input_ids")
        extra = [name for name in unet_inputs if name not in UNET_INPUTS]
        if extra or not set(UNET_INPUTS) <= set(unet_inputs):
            raise ModelLoadError(
                f"{where}: unet inputs {list(unet_inputs)} are not Stable Diffusion 1.x/2.x's "
                f"{list(UNET_INPUTS)} (SDXL-style extra inputs are not supported)"
            )
        if "latent_sample" not in vae_inputs:
            raise ModelLoadError(f"{where}: vae_decoder inputs {list(vae_inputs)} lack latent_sample")
        ids_spec, sample_spec = text_inputs["input_ids"], unet_inputs["sample"]
        timestep_spec = unet_inputs["timestep"]
        ids_dims = list(ids_spec.shape)
        max_length = _static(ids_dims[1]) if len(ids_dims) == 2 else None
        tokenizer = load_clip_tokenizer(self.model_dir / "tokenizer", max_length)
        timestep_dims = list(timestep_spec.shape)
        timestep_shape = () if not timestep_dims else (_static(timestep_dims[0]) or 1,)
        sample_dims = list(sample_spec.shape)
        channels = _static(sample_dims[1]) if len(sample_dims) == 4 else None
        channels = channels or int(unet_config.get("in_channels", 4))
        sample_size = unet_config.get("sample_size")
        default_side = sample_size * 8 if isinstance(sample_size, int) else DEFAULT_SIDE
        default_side = min(max(default_side, MIN_SIDE), MAX_SIDE)
        latent_h, latent_w = (_static(d) for d in sample_dims[2:4]) if len(sample_dims) == 4 else (None, None)
        fixed_size = (latent_w * 8, latent_h * 8) if latent_h and latent_w else None
        scaling = vae_config.get("scaling_factor")
        text_outputs = [spec.name for spec in sessions["text_encoder"].get_outputs()]
        unet_outputs = [spec.name for spec in sessions["unet"].get_outputs()]
        self._export = _Export(
            text_encoder=sessions["text_encoder"],
            unet=sessions["unet"],
            vae_decoder=sessions["vae_decoder"],
            tokenizer=tokenizer,
            scheduler_config=scheduler_config,
            default_scheduler=default_scheduler,
            default_size=fixed_size or (default_side, default_side),
            ids_type=_np_type(ids_spec, where),
            latent_type=_np_type(sample_spec, where),
            states_type=_np_type(unet_inputs["encoder_hidden_states"], where),
            vae_type=_np_type(vae_inputs["latent_sample"], where),
            timestep_type=_np_type(timestep_spec, where),
            timestep_shape=timestep_shape,
            latent_channels=channels,
            fixed_size=fixed_size,
            text_batch_fixed=bool(ids_dims) and _static(ids_dims[0]) == 1,
            unet_batch_fixed=_static(sample_dims[0]) == 1 if sample_dims else False,
            scaling_factor=float(scaling) if isinstance(scaling, (int, float)) else DEFAULT_SCALING_FACTOR,
            text_output="last_hidden_state" if "last_hidden_state" in text_outputs else text_outputs[0],
            unet_output="out_sample" if "out_sample" in unet_outputs else unet_outputs[0],
        )
        log.info("loaded %s from %s (default scheduler %s, %dx%d)", self.model_name, self.model_dir,
                 default_scheduler, *self._export.default_size)

    def unload(self) -> None:
        self._export = None

    def _encode_text(self, export: _Export, texts: Sequence[str]) -> tuple[np.ndarray, int, int]:
        """(text states [len(texts), seq, hidden], prompt tokens of texts[-1], tokens cut off)."""
        encoded = [export.tokenizer.encode(text) for text in texts]
        ids = np.stack([row for row, _ in encoded]).astype(export.ids_type)
        output = export.text_output
        if export.text_batch_fixed:
            states = np.concatenate([export.text_encoder.run([output], {"input_ids": ids[i : i + 1]})[0]
                                     for i in range(len(texts))])
        else:
            states = export.text_encoder.run([output], {"input_ids": ids})[0]
        prompt_tokens = export.tokenizer.token_count(texts[-1])
        return states.astype(export.states_type), prompt_tokens, encoded[-1][1]

    def _unet(self, export: _Export, latents: np.ndarray, timestep: float, states: np.ndarray) -> np.ndarray:
        value = round(timestep) if np.issubdtype(export.timestep_type, np.integer) else timestep
        feed_t = np.full(export.timestep_shape, value, dtype=export.timestep_type)
        if export.unet_batch_fixed and len(latents) > 1:
            return np.concatenate([self._unet(export, latents[i : i + 1], timestep, states[i : i + 1])
                                   for i in range(len(latents))])
        out: np.ndarray = export.unet.run(
            [export.unet_output],
            {"sample": latents.astype(export.latent_type), "timestep": feed_t, "encoder_hidden_states": states},
        )[0]
        return out.astype(np.float32)

    def run(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> RunResult:
        start = time.perf_counter()
        export = self._export
        if export is None:
            raise ModelLoadError(f"model {self.model_name!r} is not loaded")
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidTaskInput(f"input.prompt must be a string, got {type(prompt).__name__}")
        chosen = DiffusionParams.from_params(params, export.default_size, export.default_scheduler)
        if export.fixed_size and (chosen.width, chosen.height) != export.fixed_size:
            raise InvalidTaskInput(
                "width/height: this export has a fixed size of {}x{}, got {}x{}".format(
                    *export.fixed_size, chosen.width, chosen.height))
        try:
            scheduler = make_scheduler(chosen.scheduler, export.scheduler_config, chosen.steps)
        except SchedulerError as exc:
            raise InvalidTaskInput(f"steps/scheduler: {exc}") from exc
        guided = chosen.guidance_scale > 1.0
        texts = [chosen.negative_prompt, prompt] if guided else [prompt]
        states, prompt_tokens, truncated = self._encode_text(export, texts)

        rng = np.random.default_rng(chosen.seed)
        shape = (1, export.latent_channels, chosen.height // 8, chosen.width // 8)
        latents = rng.standard_normal(shape, dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
        state = scheduler.initial_state()
        total = len(scheduler.timesteps)
        done, cancelled = 0, False
        for index, timestep in enumerate(scheduler.timesteps):
            if should_stop():
                cancelled = True
                break
            model_input = scheduler.scale_model_input(latents, index)
            batch = np.concatenate([model_input] * 2) if guided else model_input
            noise = self._unet(export, batch, float(timestep), states)
            if guided:
                uncond, cond = noise[:1], noise[1:]
                noise = uncond + np.float32(chosen.guidance_scale) * (cond - uncond)
            latents, state = scheduler.step(noise, index, latents, state)
            latents = latents.astype(np.float32)
            done = index + 1
            on_progress({"step": done, "steps": total})

        output: dict[str, Any] = {
            "image_png_base64": None,
            "content_type": "image/png",
            "width": chosen.width,
            "height": chosen.height,
            "seed": chosen.seed,
            "steps": chosen.steps,
            "scheduler": chosen.scheduler,
            "guidance_scale": chosen.guidance_scale,
            "prompt_tokens_dropped": truncated,
        }
        if not cancelled:
            decoded = export.vae_decoder.run(
                None, {"latent_sample": (latents / np.float32(export.scaling_factor)).astype(export.vae_type)})[0]
            if decoded.shape[1:] != (3, chosen.height, chosen.width):
                raise ModelLoadError(f"model {self.model_name!r}: vae_decoder gave shape {list(decoded.shape)} "
                                     f"for a {chosen.width}x{chosen.height} image; expected [1, 3, H, W]")
            png = encode_png(to_uint8_image(decoded[0]))
            output["image_png_base64"] = base64.b64encode(png).decode("ascii")
        usage = {"steps": done, "seconds": time.perf_counter() - start, "prompt_tokens": prompt_tokens, "tokens": 0}
        return RunResult(output=output, usage=usage, finish_reason="cancelled" if cancelled else "stop")

    def verify(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        claimed: Any,
        proof: Mapping[str, Any] | None,
        should_stop: StopCheck,
    ) -> Verdict:
        """Re-run the task with the claimed seed and compare images (verify_media.py)."""
        if not isinstance(claimed, (Mapping, str)):
            return Verdict(False, 0.0, f"the claimed output is a {type(claimed).__name__}, not an image")
        seed = params.get("seed")
        if seed is None:  # the producer drew it and reports it in its output
            seed = claimed.get("seed") if isinstance(claimed, Mapping) else None
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                return Verdict(False, 0.0, f"the claimed output's seed {seed!r} is not an integer in "
                                           f"[0, {MAX_SEED}] (the task gave none)")
        mine = self.run(inputs, {**params, "seed": seed}, lambda partial: None, should_stop)
        if mine.finish_reason == "cancelled":
            return Verdict(False, 0.0, "cancelled")
        return judge_image(str(mine.output["image_png_base64"]), claimed)
