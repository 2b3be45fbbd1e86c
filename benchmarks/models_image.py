# The image runner's speed on the tiny random-weight Stable Diffusion pack (its
# images are not meaningful, and a real SD 1.5 UNet is ~3,000x the compute of the
# tiny one, so these figures measure the runner's own path, not SD's speed).
#
# - seconds per denoising step at 256x256 and 512x512: the median interval
#   between the runner's per-step progress callbacks, in a full `run` (CFG batch
#   of 2, Euler), so text encoding and VAE decoding are excluded from it and
#   reported beside it (`encode_decode_s`: the run's wall time minus its steps).
# - baseline, measured in the same run: the bare UNet session call on the same
#   shapes (batch 2); `overhead_ms` = step - bare UNet call is the runner's own
#   cost per step (scheduler arithmetic, guidance, casts, the progress callback).
#   Target: under 1 ms, nothing beside a real SD UNet step (seconds on a CPU).
#   Both are medians of noisy sub-millisecond timings, so overhead_ms can come
#   out slightly negative.
# `image_rows(quick)` is the function the `models` benchmark composes.
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.worker.packs.sd_tiny import ensure_sd_tiny
from engine.worker.runners import load_runner
from engine.worker.runners.providers import choose_providers, open_session

from .harness import Benchmark, Row, median_of

MODEL = "stable-diffusion"
SIDES = (256, 512)
OVERHEAD_TARGET_S = 1e-3


def _direct_unet_seconds(pack: Path, side: int, calls: int, providers: tuple[str, ...]) -> float:
    """Median seconds of one bare UNet call on a CFG batch (2) at `side` x `side`."""
    session = open_session(pack / "unet" / "model.onnx", providers)
    feeds: dict[str, Any] = {
        "sample": np.random.default_rng(0).standard_normal((2, 4, side // 8, side // 8), dtype=np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": np.zeros((2, 77, 32), np.float32),
    }
    session.run(None, feeds)  # warm-up
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
    return median_of(samples)


def _runner_step_seconds(pack: Path, side: int, steps: int, runs: int) -> tuple[float, float]:
    """(median seconds per denoising step, median seconds outside the steps) of full runs."""
    runner = load_runner(MODEL, pack)
    params = {"width": side, "height": side, "steps": steps, "seed": 0, "scheduler": "euler"}
    runner.run({"prompt": "warm-up"}, {**params, "steps": 1}, lambda p: None, lambda: False)
    step_samples, outside = [], []
    for _ in range(runs):
        marks: list[float] = []

        def mark(progress: dict[str, Any], marks: list[float] = marks) -> None:
            marks.append(time.perf_counter())

        start = time.perf_counter()
        runner.run({"prompt": "a photo of a cat"}, params, mark, lambda: False)
        total = time.perf_counter() - start
        intervals = list(np.diff([start, *marks])[1:])  # the first interval includes text encoding
        step_samples += intervals
        outside.append(total - float(np.sum(intervals)) - median_of(intervals))
    runner.unload()
    return median_of(step_samples), median_of(outside)


def image_rows(quick: bool) -> list[Row]:
    steps, runs, calls = (6, 2, 10) if quick else (20, 3, 40)
    providers = choose_providers(None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pack = ensure_sd_tiny(Path(tmp) / "sd-tiny-random")
        for side in SIDES:
            unet = _direct_unet_seconds(pack, side, calls, providers)
            step, outside = _runner_step_seconds(pack, side, steps, runs)
            overhead = step - unet
            rows.append(Row(
                f"image: tiny SD pack {side}x{side}, s/step",
                {"s_per_step": step, "direct_unet_s": unet, "step/unet": step / unet,
                 "overhead_ms": overhead * 1e3, "encode_decode_s": outside, "steps": steps,
                 "provider": providers[0]},
                target="runner overhead < 1 ms/step", met=overhead < OVERHEAD_TARGET_S,
            ))
    return rows


BENCHMARK = Benchmark(
    name="models_image",
    description="image runner seconds per denoising step on the tiny random-weight SD pack",
    run=image_rows,
)
