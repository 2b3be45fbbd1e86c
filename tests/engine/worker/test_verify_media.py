"""Verification of image results by re-execution on the tiny random-weight Stable
Diffusion pack (its images are not meaningful; their bytes are): an honest image from
a runner with other floating-point detail passes; another seed's, prompt's or step
count's image, a resized one or a claim of the wrong shape fails. And the comparison
rules themselves (word error rate, PSNR of downsampled images)."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.worker.packs.sd_tiny import ensure_sd_tiny
from engine.worker.runners.diffusion import DiffusionRunner
from engine.worker.runners.providers import session_tuning
from engine.worker.runners.verify_media import (
    MIN_PSNR_DB, judge_image, judge_transcript, psnr, word_error_rate,
)

SMALL = {"width": 64, "height": 64, "steps": 3}


def tuned(directory: Path, threads: int, level: str) -> DiffusionRunner:
    with session_tuning(threads, level):
        runner = DiffusionRunner("stable-diffusion", directory, providers_preference="cpu")
        runner.load()
    return runner


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiffusionRunner, DiffusionRunner]:
    pack = ensure_sd_tiny(tmp_path_factory.mktemp("packs") / "sd-tiny-random")
    return tuned(pack, 1, "disable"), tuned(pack, 2, "all")


def image(runner: DiffusionRunner, prompt: str = "a red fox", **params: Any) -> dict[str, Any]:
    output: dict[str, Any] = runner.run({"prompt": prompt}, {**SMALL, **params}, lambda p: None,
                                        lambda: False).output
    return output


def png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_honest_images_pass_with_the_task_seed_or_the_reported_one(
        runners: tuple[DiffusionRunner, DiffusionRunner]) -> None:
    producer, validator = runners
    task = {"prompt": "a red fox"}
    for params in ({**SMALL, "seed": 11}, dict(SMALL)):  # no seed: the output reports the drawn one
        honest = image(producer, **params)
        verdict = validator.verify(task, params, honest, None, lambda: False)
        assert verdict.passed and verdict.score > 0.99, verdict
        # the bare base64 PNG is accepted too, when the task names the seed
        if "seed" in params:
            assert validator.verify(task, params, honest["image_png_base64"], None, lambda: False).passed


def test_a_different_image_fails(runners: tuple[DiffusionRunner, DiffusionRunner]) -> None:
    producer, validator = runners
    task, params = {"prompt": "a red fox"}, {**SMALL, "seed": 11}
    honest = image(producer, seed=11)
    # (the random-weight pack's images barely depend on the prompt: not tried here)
    others = [image(producer, seed=12), image(producer, seed=11, steps=1), image(producer, seed=11, steps=6),
              image(producer, seed=11, scheduler="ddim"), image(producer, seed=11, guidance_scale=1.0)]
    for other in others:
        verdict = validator.verify(task, params, other, None, lambda: False)
        assert not verdict.passed, verdict
    resized = {**honest, "image_png_base64": png(np.zeros((32, 32, 3)))}
    noise = {**honest, "image_png_base64": png(np.random.default_rng(0).integers(0, 256, (64, 64, 3)))}
    for claimed in (resized, noise, {**honest, "image_png_base64": "not base64!"},
                    {**honest, "image_png_base64": None}, "plain text", 42, None):
        verdict = validator.verify(task, params, claimed, None, lambda: False)
        assert not verdict.passed and verdict.detail, claimed
    unseeded = dict(SMALL)
    assert not validator.verify(task, unseeded, {**honest, "seed": "eleven"}, None, lambda: False).passed


def test_the_image_rule_tolerates_rounding_and_not_content() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(20, 236, (64, 64, 3))
    assert judge_image(png(base), png(base)).score == 1.0
    jitter = base + rng.integers(-2, 3, base.shape)  # last-bits differences
    assert judge_image(png(base), png(jitter)).passed
    shifted = np.roll(base, 8, axis=1)
    assert not judge_image(png(base), png(shifted)).passed
    assert psnr(base, jitter) >= MIN_PSNR_DB > psnr(base, shifted)


def test_the_transcript_rule() -> None:
    assert word_error_rate("The cat sat.", "the cat  sat") == 0.0
    assert word_error_rate("a b c d", "a x c") == 0.5
    assert word_error_rate("", "") == 0.0
    assert judge_transcript("one two three four five six seven", "One, two three four five six seven!").passed
    assert not judge_transcript("one two three four five six seven", "one two three").passed
    assert not judge_transcript("hello", ["hello"]).passed
