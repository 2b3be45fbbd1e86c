# The numpy schedulers against PUBLISHED reference figures.
#
# The full-loop figures are the ones asserted by Hugging Face diffusers' own
# scheduler tests (tests/schedulers/test_scheduler_euler.py, test_scheduler_ddim.py,
# test_scheduler_pndm.py at huggingface/diffusers@58eb52c0), which run each
# scheduler for 10 steps on a deterministic sample with a deterministic dummy
# model (tests/schedulers/test_schedulers.py: `dummy_sample_deter`,
# `dummy_noise_deter`, `dummy_model`), reproduced here in numpy. Only cases that
# draw no random numbers are used (diffusers' Euler takes a torch generator but
# draws from it only when s_churn > 0; DDIM only when eta > 0).
# The Stable Diffusion sigma range (14.614642 .. 0.0291675) is the one ComfyUI and
# k-diffusion publish for SD 1.x's scaled_linear(0.00085, 0.012) schedule.
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from engine.worker.runners.schedulers import (
    DdimScheduler,
    EulerScheduler,
    SchedulerError,
    make_scheduler,
    scheduler_name,
)

SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def dummy_sample_deter(reverse: bool = False) -> np.ndarray:
    """diffusers' dummy_sample_deter (reverse=False) / dummy_noise_deter (reverse=True)."""
    count = 4 * 3 * 8 * 8
    values = np.arange(count)[::-1] if reverse else np.arange(count)
    return (values.reshape(3, 8, 8, 4) / count).astype(np.float32).transpose(3, 0, 1, 2)


def dummy_model(sample: np.ndarray, t: float) -> np.ndarray:
    t = float(t)
    return (sample * t / (t + 1)).astype(np.float32)


def full_loop(name: str, config: Mapping[str, Any], steps: int = 10) -> np.ndarray:
    scheduler = make_scheduler(name, config, steps)
    sample = dummy_sample_deter() * scheduler.init_noise_sigma
    state = scheduler.initial_state()
    for index, t in enumerate(scheduler.timesteps):
        # As diffusers' full_loop does: the scaled input replaces the sample (a
        # pipeline keeps the unscaled one; the published figures come from this).
        sample = scheduler.scale_model_input(sample, index)
        sample, state = scheduler.step(dummy_model(sample, t), index, sample, state)
    return sample


def assert_published(sample: np.ndarray, result_sum: float, result_mean: float) -> None:
    # The tolerances are diffusers' own: 1e-2 on the sum, 1e-3 on the mean.
    assert abs(float(np.abs(sample).sum()) - result_sum) < 1e-2
    assert abs(float(np.abs(sample).mean()) - result_mean) < 1e-3


EULER = {"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
DDIM = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "clip_sample": True}
PNDM = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


@pytest.mark.parametrize(
    ("name", "config", "result_sum", "result_mean"),
    [
        ("euler", EULER, 10.0807, 0.0131),
        ("euler", {**EULER, "prediction_type": "v_prediction"}, 0.0002, 2.2676e-06),
        ("euler", {**EULER, "use_karras_sigmas": True}, 124.52299499511719, 0.16213932633399963),
        ("ddim", DDIM, 172.0067, 0.223967),
        ("ddim", {**DDIM, "prediction_type": "v_prediction"}, 52.5302, 0.0684),
        ("ddim", {**DDIM, "set_alpha_to_one": True, "beta_start": 0.01}, 149.8295, 0.1951),
        ("ddim", {**DDIM, "set_alpha_to_one": False, "beta_start": 0.01}, 149.0784, 0.1941),
        ("pndm", PNDM, 198.1318, 0.2580),
        ("pndm", {**PNDM, "prediction_type": "v_prediction"}, 67.3986, 0.0878),
        ("pndm", {**PNDM, "set_alpha_to_one": True, "beta_start": 0.01}, 230.0399, 0.2995),
        ("pndm", {**PNDM, "set_alpha_to_one": False, "beta_start": 0.01}, 186.9482, 0.2434),
    ],
)
def test_full_loop_matches_diffusers_published_figures(
    name: str, config: dict[str, Any], result_sum: float, result_mean: float
) -> None:
    assert_published(full_loop(name, config), result_sum, result_mean)


def test_euler_full_loop_with_noise_matches_published_figures() -> None:
    # diffusers' test_full_loop_with_noise: start 2 steps from the end of the
    # schedule from sample + noise * sigma at that step.
    scheduler = EulerScheduler.create(EULER, 10)
    start = 10 - 2
    sample = dummy_sample_deter() * scheduler.init_noise_sigma
    sample = sample + dummy_sample_deter(reverse=True) * float(scheduler.sigmas[start])
    for index in range(start, len(scheduler.timesteps)):  # Euler keeps no state between steps
        sample = scheduler.scale_model_input(sample, index)
        sample, _ = scheduler.step(dummy_model(sample, scheduler.timesteps[index]), index, sample, None)
    assert abs(float(np.abs(sample).sum()) - 57062.9297) < 1e-2
    assert abs(float(np.abs(sample).mean()) - 74.3007) < 1e-3


def test_ddim_full_loop_with_noise_matches_published_figures() -> None:
    scheduler = DdimScheduler.create(DDIM, 10)
    start = 8
    alpha = scheduler.noise.alphas_cumprod[int(scheduler.timesteps[start])]
    sample = alpha**0.5 * dummy_sample_deter() + (1 - alpha) ** 0.5 * dummy_sample_deter(reverse=True)
    for index in range(start, len(scheduler.timesteps)):  # DDIM keeps no state between steps
        model_output = dummy_model(sample, scheduler.timesteps[index])
        sample, _ = scheduler.step(model_output, index, sample, None)
    assert_published(sample, 354.5418, 0.4616)


def test_published_timesteps_with_steps_offset() -> None:
    # diffusers' test_steps_offset for DDIM (5 steps) and PNDM (10 steps, PRK warm-up).
    ddim = make_scheduler("ddim", {**DDIM, "steps_offset": 1}, 5)
    assert ddim.timesteps.tolist() == [801, 601, 401, 201, 1]
    pndm = make_scheduler("pndm", {**PNDM, "steps_offset": 1}, 10)
    assert pndm.timesteps.tolist() == [
        901, 851, 851, 801, 801, 751, 751, 701, 701, 651, 651, 601, 601, 501, 401, 301, 201, 101, 1,
    ]


def test_ddim_variance_terms_match_published_values() -> None:
    # diffusers' DDIM test_variance: (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev).
    acp = DdimScheduler.create(DDIM, 10).noise.alphas_cumprod

    def variance(t: int, prev: int) -> float:
        return float((1 - acp[prev]) / (1 - acp[t]) * (1 - acp[t] / acp[prev]))

    for (t, prev), expected in {(420, 400): 0.14771, (980, 960): 0.32460, (487, 486): 0.00979,
                                (999, 998): 0.02}.items():
        assert abs(variance(t, prev) - expected) < 1e-5


def test_stable_diffusion_15_schedule() -> None:
    euler = EulerScheduler.create(SD15_CONFIG, 50)
    # The SD 1.x sigma range published by ComfyUI / k-diffusion.
    train_sigmas = np.sqrt((1 - euler.noise.alphas_cumprod) / euler.noise.alphas_cumprod)
    assert abs(train_sigmas[-1] - 14.614642) < 1e-4 and abs(train_sigmas[0] - 0.0291675) < 1e-6
    assert euler.timesteps[0] == 999.0 and euler.timesteps[-1] == 0.0  # linspace: Euler's default spacing
    assert abs(euler.init_noise_sigma - 14.614642) < 1e-4
    assert euler.sigmas[-1] == 0.0 and len(euler.sigmas) == 51
    # PNDM as SD 1.5 ships it: leading spacing + steps_offset 1, PLMS only, the
    # second timestep repeated (diffusers' skip_prk_steps layout).
    pndm = make_scheduler(scheduler_name(SD15_CONFIG), SD15_CONFIG, 50)
    assert pndm.timesteps[:4].tolist() == [981, 961, 961, 941] and pndm.timesteps[-1] == 1
    assert len(pndm.timesteps) == 51
    ddim = make_scheduler("ddim", SD15_CONFIG, 50)
    assert ddim.timesteps[:3].tolist() == [981, 961, 941] and ddim.timesteps[-1] == 1


def test_timestep_spacings() -> None:
    config = {"num_train_timesteps": 1000, "steps_offset": 1}
    assert make_scheduler("ddim", {**config, "timestep_spacing": "leading"}, 4).timesteps.tolist() == [
        751, 501, 251, 1]
    assert make_scheduler("ddim", {**config, "timestep_spacing": "trailing"}, 4).timesteps.tolist() == [
        999, 749, 499, 249]
    assert make_scheduler("ddim", {**config, "timestep_spacing": "linspace"}, 4).timesteps.tolist() == [
        999, 666, 333, 0]


def test_scheduler_name_follows_the_config_class() -> None:
    assert scheduler_name({"_class_name": "EulerDiscreteScheduler"}) == "euler"
    assert scheduler_name({"_class_name": "DDIMScheduler"}) == "ddim"
    assert scheduler_name({"_class_name": "LMSDiscreteScheduler"}) == "euler"  # not implemented: the default


@pytest.mark.parametrize(
    ("name", "config", "steps", "match"),
    [
        ("euler", {}, 0, "steps must be in"),
        ("ddim", {"num_train_timesteps": 100}, 101, "steps must be in"),
        ("pndm", {}, 3, "steps >= 4"),
        ("lms", {}, 10, "unknown scheduler 'lms'"),
        ("euler", {"beta_schedule": "quadratic"}, 10, "beta_schedule 'quadratic'"),
        ("ddim", {"thresholding": True}, 10, "thresholding=True is not supported"),
        ("pndm", {"prediction_type": "sample"}, 10, "prediction_type"),
    ],
)
def test_bad_configs_are_errors(name: str, config: dict[str, Any], steps: int, match: str) -> None:
    with pytest.raises(SchedulerError, match=match):
        make_scheduler(name, config, steps)
