# The Stable Diffusion runner on the tiny random-weight pack (its images are not
# meaningful; these tests check the image path, not image content).
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto
from PIL import Image

from engine.worker.packs import PackBuilder, ensure_pack
from engine.worker.packs.build import read_marker
from engine.worker.packs.sd_tiny import (
    SD_TINY,
    default_sd_tiny_dir,
    ensure_sd_tiny,
    write_sd_tiny,
)
from engine.worker.runners import InvalidTaskInput, ModelLoadError, load_runner
from engine.worker.runners.diffusion import MAX_STEPS, DiffusionRunner
from engine.worker.runners.schedulers import make_scheduler

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 7}


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_sd_tiny(tmp_path_factory.mktemp("packs") / "sd-tiny-random")


@pytest.fixture(scope="module")
def runner(pack: Path) -> DiffusionRunner:
    loaded = load_runner("stable-diffusion", pack, providers_preference="cpu")
    assert isinstance(loaded, DiffusionRunner)
    return loaded


def generate(runner: DiffusionRunner, prompt: str = "a photo of a cat", **params: Any) -> tuple[dict[str, Any], Any]:
    progress: list[dict[str, Any]] = []
    result = runner.run({"prompt": prompt}, {**SMALL, **params}, progress.append, lambda: False)
    assert result.finish_reason == "stop"
    assert [p["step"] for p in progress] == list(range(1, len(progress) + 1))
    assert result.usage["steps"] == len(progress) == progress[-1]["steps"]
    return result.output, result


def png_bytes(output: dict[str, Any]) -> bytes:
    return base64.b64decode(output["image_png_base64"])


def decode(output: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(png_bytes(output)))
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64), (72, 136)])
def test_a_run_is_a_png_of_the_requested_size(runner: DiffusionRunner, width: int, height: int) -> None:
    output, result = generate(runner, width=width, height=height)
    image = decode(output)
    assert image.size == (width, height) and image.mode == "RGB"
    assert output["content_type"] == "image/png"
    assert (output["width"], output["height"], output["seed"]) == (width, height, 7)
    assert result.usage["seconds"] > 0 and result.usage["prompt_tokens"] == 5


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_image(runner: DiffusionRunner) -> None:
    first, _ = generate(runner, seed=11)
    again, _ = generate(runner, seed=11)
    other, _ = generate(runner, seed=12)
    assert png_bytes(first) == png_bytes(again)
    assert not np.array_equal(np.asarray(decode(first)), np.asarray(decode(other)))


def test_prompt_negative_prompt_and_guidance_change_the_image(runner: DiffusionRunner) -> None:
    def pixels(**kwargs: Any) -> np.ndarray:
        prompt = kwargs.pop("prompt", "a photo of a cat")
        return np.asarray(decode(generate(runner, prompt, **kwargs)[0]))

    base = pixels()
    assert not np.array_equal(base, pixels(prompt="a painting of a dog"))
    assert not np.array_equal(base, pixels(negative_prompt="blue"))
    assert not np.array_equal(base, pixels(guidance_scale=1.0))  # no classifier-free guidance
    # Without guidance the negative prompt is not used at all.
    assert np.array_equal(pixels(guidance_scale=1.0), pixels(guidance_scale=1.0, negative_prompt="blue"))


def test_guidance_with_the_prompt_as_negative_prompt_is_no_guidance(runner: DiffusionRunner) -> None:
    # uncond == cond makes uncond + scale * (cond - uncond) == cond: the image of an
    # unguided run (up to rounding: batch 2 vs batch 1 convolutions).
    guided = decode(generate(runner, "a red cat", negative_prompt="a red cat", guidance_scale=9.0)[0])
    plain = decode(generate(runner, "a red cat", guidance_scale=1.0)[0])
    difference = np.abs(np.asarray(guided, np.int16) - np.asarray(plain, np.int16))
    assert difference.max() <= 1


def test_one_euler_step_matches_a_direct_reference_pipeline(runner: DiffusionRunner, pack: Path) -> None:
    # The pipeline written out by hand with the pack's ONNX sessions (diffusers'
    # StableDiffusion loop for one Euler step): the negative prompt is the
    # unconditional half of the batch, noise = u + s * (c - u), and the final
    # latents are divided by the VAE scaling factor before decoding.
    import onnxruntime as ort

    from engine.worker.runners.clip_tokenizer import load_clip_tokenizer
    from engine.worker.runners.diffusion import encode_png, to_uint8_image

    session = {part: ort.InferenceSession(str(pack / part / "model.onnx"), providers=["CPUExecutionProvider"])
               for part in ("text_encoder", "unet", "vae_decoder")}
    tokenizer = load_clip_tokenizer(pack / "tokenizer")
    ids = np.stack([tokenizer.encode(text)[0] for text in ("blurry", "a red cat")]).astype(np.int32)
    states = session["text_encoder"].run(["last_hidden_state"], {"input_ids": ids})[0]
    scheduler = make_scheduler("euler", json.loads((pack / "scheduler" / "scheduler_config.json").read_text()), 1)
    # One linspace step is timestep 0 (np.linspace(0, 999, 1) == [0], as in
    # diffusers), from its sigma straight to sigma 0.
    sigma, timestep = float(scheduler.init_noise_sigma), float(scheduler.timesteps[0])
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(sigma)
    model_input = latents / np.float32((sigma**2 + 1) ** 0.5)
    noise = session["unet"].run(None, {"sample": np.concatenate([model_input] * 2),
                                       "timestep": np.array([timestep], np.float32),
                                       "encoder_hidden_states": states})[0]
    guided = noise[:1] + np.float32(6.0) * (noise[1:] - noise[:1])
    final = latents - np.float32(sigma) * guided  # Euler to sigma 0: the predicted x0
    image = session["vae_decoder"].run(None, {"latent_sample": final / np.float32(0.18215)})[0][0]
    expected = np.asarray(decode({"image_png_base64": base64.b64encode(encode_png(to_uint8_image(image)))}))

    output, _ = generate(runner, "a red cat", negative_prompt="blurry", guidance_scale=6.0, steps=1, seed=5,
                         scheduler="euler")
    difference = np.abs(np.asarray(decode(output), np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "pndm"])
def test_every_scheduler_runs(runner: DiffusionRunner, scheduler: str) -> None:
    output, result = generate(runner, scheduler=scheduler, steps=4)
    assert decode(output).size == (64, 64) and output["scheduler"] == scheduler
    # PNDM as SD ships it (skip_prk_steps) calls the model once more than steps.
    assert result.usage["steps"] == (5 if scheduler == "pndm" else 4)


def test_the_default_scheduler_is_the_one_the_export_names(runner: DiffusionRunner) -> None:
    output, _ = generate(runner, scheduler=None)
    assert output["scheduler"] == "pndm"  # the pack ships SD 1.5's PNDMScheduler config


def test_cancellation_stops_between_steps(runner: DiffusionRunner) -> None:
    progress: list[dict[str, Any]] = []
    result = runner.run({"prompt": "x"}, {**SMALL, "steps": 20}, progress.append, lambda: len(progress) >= 2)
    assert result.finish_reason == "cancelled"
    assert result.usage["steps"] == 2 and len(progress) == 2
    assert result.output["image_png_base64"] is None


def test_a_long_prompt_is_truncated_to_clip_length_and_says_so(runner: DiffusionRunner) -> None:
    output, result = generate(runner, "cat " * 100)
    assert output["prompt_tokens_dropped"] == 100 - 75
    assert result.usage["prompt_tokens"] == 100


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"width": 100}, "width must be a multiple of 8"),
        ({"height": 32}, "height must be in"),
        ({"width": 4096}, "width must be in"),
        ({"width": 1536, "height": 1536}, "width x height"),
        ({"width": "wide"}, "width must be an integer"),
        ({"steps": 0}, "steps must be in"),
        ({"steps": MAX_STEPS + 1}, "steps must be in"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"steps": True}, "steps must be an integer"),
        ({"guidance_scale": -1}, "guidance_scale must be in"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"guidance_scale": "high"}, "guidance_scale must be a finite number"),
        ({"seed": -1}, "seed must be in"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"negative_prompt": 3}, "negative_prompt must be a string"),
        ({"scheduler": "lms"}, "scheduler must be one of ddim, euler, pndm"),
    ],
)
def test_bad_params_are_invalid_task_input_naming_the_field(
    runner: DiffusionRunner, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidTaskInput, match=field):
        runner.run({"prompt": "x"}, {**SMALL, **params}, lambda p: None, lambda: False)


def test_a_missing_prompt_is_invalid(runner: DiffusionRunner) -> None:
    with pytest.raises(InvalidTaskInput, match="input.prompt must be a string"):
        runner.run({}, SMALL, lambda p: None, lambda: False)


def test_no_seed_draws_one_and_reports_it(runner: DiffusionRunner) -> None:
    output, _ = generate(runner, seed=None)
    again, _ = generate(runner, seed=output["seed"])
    assert png_bytes(output) == png_bytes(again)


@pytest.mark.parametrize(
    "variant",
    [
        {"input_ids_type": TensorProto.INT64},
        {"timestep_type": TensorProto.INT64},
        {"timestep_rank": 0},
    ],
)
def test_export_dtype_variants_give_the_same_image(
    tmp_path: Path, runner: DiffusionRunner, variant: dict[str, Any]
) -> None:
    # PNDM's timesteps are integers, so an int64-timestep export must agree exactly.
    builder = PackBuilder("sd-tiny-variant", 1, lambda d: write_sd_tiny(d, **variant))
    directory = ensure_pack(tmp_path / "variant", builder)
    other = load_runner("stable-diffusion", directory, providers_preference="cpu")
    params = {**SMALL, "scheduler": "pndm"}
    expected = runner.run({"prompt": "a cat"}, params, lambda p: None, lambda: False).output
    got = other.run({"prompt": "a cat"}, params, lambda p: None, lambda: False).output
    assert got["image_png_base64"] == expected["image_png_base64"]


def test_the_default_size_comes_from_the_unet_config(runner: DiffusionRunner) -> None:
    output, _ = generate(runner, width=None, height=None, steps=1)
    assert decode(output).size == (256, 256)  # the pack's unet sample_size 32 * 8


def test_a_static_shape_export_serves_only_its_size(tmp_path: Path, pack: Path) -> None:
    import shutil

    import onnx

    shutil.copytree(pack, tmp_path / "static")
    unet_path = tmp_path / "static" / "unet" / "model.onnx"
    model = onnx.load(str(unet_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim  # sample [batch, 4, h, w]
    dims[2].dim_value, dims[3].dim_value = 8, 12
    onnx.save(model, str(unet_path))
    static = load_runner("stable-diffusion", tmp_path / "static", providers_preference="cpu")
    output = static.run({"prompt": "x"}, {"steps": 1, "seed": 1}, lambda p: None, lambda: False).output
    assert decode(output).size == (96, 64)
    with pytest.raises(InvalidTaskInput, match="fixed size of 96x64, got 64x64"):
        static.run({"prompt": "x"}, SMALL, lambda p: None, lambda: False)


def test_an_incomplete_export_is_a_load_error(tmp_path: Path, pack: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runner("stable-diffusion", tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=r"missing .*text_encoder/model.onnx"):
        load_runner("stable-diffusion", broken)
    with pytest.raises(ModelLoadError, match="needs a model directory"):
        load_runner("stable-diffusion", None)


def test_the_pack_is_reproducible_and_labelled_a_stand_in(tmp_path: Path, pack: Path) -> None:
    write_sd_tiny(tmp_path)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files and all((pack / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)
    assert {"model_index.json", "README.txt", "tokenizer/vocab.json", "tokenizer/merges.txt",
            "scheduler/scheduler_config.json", "unet/model.onnx"} <= {str(f) for f in files}
    assert "NOT MEANINGFUL" in (pack / "README.txt").read_text()
    marker = read_marker(pack)
    assert marker is not None and marker["name"] == SD_TINY.name and "RANDOM-WEIGHT" in str(marker["description"])


def test_the_default_pack_path_is_in_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEUROGRID_CACHE", str(tmp_path))
    assert default_sd_tiny_dir() == tmp_path / "packs" / "sd-tiny-random"
    assert ensure_sd_tiny() == tmp_path / "packs" / "sd-tiny-random"
