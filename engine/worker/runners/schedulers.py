# Diffusion noise schedulers in numpy: Euler (discrete), DDIM and PNDM, following
# the formulas of Hugging Face diffusers' EulerDiscreteScheduler, DDIMScheduler and
# PNDMScheduler, configured from the same `scheduler_config.json`.
#
# Rules of this module:
# - Pure and sans-IO: a scheduler is an immutable plan for one run, built by
#   `make_scheduler(name, config, steps)` from the config mapping (the JSON object
#   of scheduler/scheduler_config.json) and the number of inference steps. Its
#   `timesteps` are what the denoising model is called with, in order; the run
#   calls `scale_model_input(sample, i)` before and `step(model_output, i, sample,
#   state)` after the model at index i, threading the returned state into the next
#   step. No hidden counters: index i, not a lookup of the timestep, says where the
#   run is, so one plan can serve concurrent runs.
# - Config keys and defaults are diffusers': num_train_timesteps (1000),
#   beta_start (0.0001), beta_end (0.02), beta_schedule ("linear", "scaled_linear"
#   or "squaredcos_cap_v2"), trained_betas, prediction_type ("epsilon",
#   "v_prediction", "sample" where the scheduler has it), timestep_spacing
#   ("linspace", "leading", "trailing"; the default is per scheduler, as in
#   diffusers: Euler linspace, DDIM and PNDM leading), steps_offset (0); Euler:
#   use_karras_sigmas, sigma_min/sigma_max, final_sigmas_type ("zero",
#   "sigma_min"); DDIM: clip_sample (True), clip_sample_range (1.0),
#   set_alpha_to_one (True); PNDM: skip_prk_steps (False), set_alpha_to_one
#   (False). Keys this module does not implement are ignored when they hold their
#   diffusers default and are a SchedulerError otherwise (never a silent change of
#   the maths).
# - Which scheduler: `scheduler_name(config)` maps the config's `_class_name` to a
#   name of SCHEDULERS (a table, as the runner registry); any scheduler can run on
#   any config, as diffusers' `from_config` allows.
# - Deterministic: DDIM runs with eta = 0 and Euler with s_churn = 0, so no
#   scheduler draws random numbers; the only randomness of a run is its initial
#   noise, drawn by the caller.
#
# Theory of operation: betas -> alphas_cumprod, in float32 as diffusers computes
# them (its published figures depend on that rounding), kept as float64 values. Euler works in sigma space, sigma_t =
# sqrt((1 - abar_t) / abar_t), interpolated linearly at the (float) timesteps, with
# the model input scaled by 1 / sqrt(sigma^2 + 1) and one Euler step of the
# probability-flow ODE per model call. DDIM takes the deterministic step of its
# formula (12) between consecutive timesteps. PNDM runs F-PNDM: four Runge-Kutta
# (PRK) half-steps from the top of the schedule, then linear multistep (PLMS)
# steps with up to four past model outputs; with skip_prk_steps it starts PLMS at
# once (the PLMS sampler Stable Diffusion ships with).
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import numpy as np

__all__ = [
    "CLASS_NAMES",
    "SCHEDULERS",
    "DdimScheduler",
    "EulerScheduler",
    "NoiseSchedule",
    "PndmScheduler",
    "PndmState",
    "Scheduler",
    "SchedulerError",
    "make_scheduler",
    "scheduler_name",
]

Array = np.ndarray


class SchedulerError(ValueError):
    """A scheduler config or step count that cannot be run."""


class Scheduler(Protocol):
    """One run's denoising plan; see the module comment for the calling sequence."""

    @property
    def timesteps(self) -> Array:
        """The model's timestep argument for each model call, in order."""

    @property
    def init_noise_sigma(self) -> float:
        """The initial noise is standard normal times this."""

    def initial_state(self) -> Any:
        """The state to pass to the first `step`."""

    def scale_model_input(self, sample: Array, index: int) -> Array:
        """The model's input at call `index`, from the current sample."""

    def step(self, model_output: Array, index: int, sample: Array, state: Any) -> tuple[Array, Any]:
        """The sample after call `index`, and the state for the next step."""


def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = config.get(key)
    return default if value is None else value


def _cosine_betas(count: int, max_beta: float = 0.999) -> Array:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / count) / alpha_bar(i / count), max_beta) for i in range(count)], np.float32
    )


_BETA_SCHEDULES: dict[str, Callable[[float, float, int], Array]] = {
    "linear": lambda start, end, n: np.linspace(start, end, n, dtype=np.float32),
    "scaled_linear": lambda start, end, n: np.linspace(start**0.5, end**0.5, n, dtype=np.float32) ** 2,
    "squaredcos_cap_v2": lambda start, end, n: _cosine_betas(n),
}
_SPACINGS = ("linspace", "leading", "trailing")
# Keys with the only value this module implements (diffusers' default).
_FIXED_KEYS: dict[str, Any] = {
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "timestep_type": "discrete",
    "interpolation_type": "linear",
}


@attrs.frozen
class NoiseSchedule:
    """The training noise schedule that every scheduler shares."""

    num_train_timesteps: int
    alphas_cumprod: Array  # float64 [num_train_timesteps]
    prediction_type: str
    timestep_spacing: str
    steps_offset: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], default_spacing: str) -> NoiseSchedule:
        for key, only in _FIXED_KEYS.items():
            if config.get(key) not in (None, only):
                raise SchedulerError(f"scheduler config {key}={config[key]!r} is not supported (only {only!r})")
        count = _get(config, "num_train_timesteps", 1000)
        if not isinstance(count, int) or count < 1:
            raise SchedulerError(f"num_train_timesteps must be a positive integer, got {count!r}")
        trained = config.get("trained_betas")
        if trained is not None:
            betas = np.asarray(trained, np.float32)
            if betas.shape != (count,):
                raise SchedulerError(f"trained_betas has {betas.size} values; num_train_timesteps is {count}")
        else:
            schedule = _get(config, "beta_schedule", "linear")
            make = _BETA_SCHEDULES.get(schedule)
            if make is None:
                raise SchedulerError(f"beta_schedule {schedule!r} is not one of {sorted(_BETA_SCHEDULES)}")
            betas = make(float(_get(config, "beta_start", 0.0001)), float(_get(config, "beta_end", 0.02)), count)
        spacing = _get(config, "timestep_spacing", default_spacing)
        if spacing not in _SPACINGS:
            raise SchedulerError(f"timestep_spacing {spacing!r} is not one of {_SPACINGS}")
        # torch's CPU cumprod accumulates float32 in double and rounds each output.
        alphas = (1.0 - betas).astype(np.float32)
        alphas_cumprod = np.cumprod(alphas, dtype=np.float64).astype(np.float32).astype(np.float64)
        return cls(count, alphas_cumprod, _get(config, "prediction_type", "epsilon"), spacing,
                   int(_get(config, "steps_offset", 0)))

    def check_steps(self, steps: int) -> None:
        if not 1 <= steps <= self.num_train_timesteps:
            raise SchedulerError(f"steps must be in [1, {self.num_train_timesteps}], got {steps}")

    def spaced_timesteps(self, steps: int, *, integer: bool) -> Array:
        """The descending timesteps of `steps` inference steps (diffusers' set_timesteps)."""
        total = self.num_train_timesteps
        values: Array
        if self.timestep_spacing == "linspace":
            values = np.linspace(0, total - 1, steps)[::-1]
            values = values.round() if integer else values
        elif self.timestep_spacing == "leading":
            values = (np.arange(0, steps) * (total // steps)).round()[::-1] + self.steps_offset
        else:  # trailing
            values = np.round(np.arange(total, 0, -total / steps)) - 1
        return values.astype(np.int64 if integer else np.float32)

    def alpha_prod(self, timestep: int, final: float) -> float:
        """abar at `timestep`, or `final` for a timestep before the first."""
        return float(self.alphas_cumprod[timestep]) if timestep >= 0 else final


def _check_prediction(noise: NoiseSchedule, allowed: tuple[str, ...], name: str) -> None:
    if noise.prediction_type not in allowed:
        raise SchedulerError(f"{name} supports prediction_type {allowed}, not {noise.prediction_type!r}")


@attrs.frozen
class EulerScheduler:
    """diffusers' EulerDiscreteScheduler (s_churn = 0: no noise is added per step)."""

    noise: NoiseSchedule
    timesteps: Array  # float32
    sigmas: Array  # float32, one more than timesteps (the last is the final sigma)
    init_noise_sigma: float

    @classmethod
    def create(cls, config: Mapping[str, Any], steps: int) -> EulerScheduler:
        noise = NoiseSchedule.from_config(config, "linspace")
        noise.check_steps(steps)
        _check_prediction(noise, ("epsilon", "v_prediction", "sample"), "euler")
        timesteps = noise.spaced_timesteps(steps, integer=False)
        acp = noise.alphas_cumprod.astype(np.float32)
        train_sigmas = np.sqrt((1 - acp) / acp).astype(np.float64)
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if _get(config, "use_karras_sigmas", False):
            sigmas = _karras(sigmas, steps, config.get("sigma_min"), config.get("sigma_max"))
            timesteps = _sigma_to_t(sigmas, np.log(train_sigmas)).astype(np.float32)
        final = _get(config, "final_sigmas_type", "zero")
        if final not in ("zero", "sigma_min"):
            raise SchedulerError(f"final_sigmas_type {final!r} is not 'zero' or 'sigma_min'")
        last = float(train_sigmas[0]) if final == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        top = float(sigmas.max())
        init = top if noise.timestep_spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5
        return cls(noise, timesteps, sigmas, init)

    def initial_state(self) -> None:
        return None

    def scale_model_input(self, sample: Array, index: int) -> Array:
        sigma = self.sigmas[index]  # float32 scalar arithmetic, as diffusers'
        scaled: Array = sample / (sigma**2 + 1) ** 0.5
        return scaled

    def step(self, model_output: Array, index: int, sample: Array, state: None) -> tuple[Array, None]:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        if self.noise.prediction_type == "epsilon":
            denoised = sample - sigma * model_output
        elif self.noise.prediction_type == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            denoised = model_output
        derivative = (sample - denoised) / sigma
        return sample + derivative * (sigma_next - sigma), None


def _karras(sigmas: Array, steps: int, sigma_min: float | None, sigma_max: float | None, rho: float = 7.0) -> Array:
    low = float(sigmas[-1]) if sigma_min is None else float(sigma_min)
    high = float(sigmas[0]) if sigma_max is None else float(sigma_max)
    ramp = np.linspace(0, 1, steps)
    result: Array = (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    return result


def _sigma_to_t(sigmas: Array, log_sigmas: Array) -> Array:
    """The fractional training timestep of each sigma (log-linear interpolation)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    weight = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    result: Array = (1 - weight) * low + weight * (low + 1)
    return result


@attrs.frozen
class DdimScheduler:
    """diffusers' DDIMScheduler with eta = 0 (deterministic)."""

    noise: NoiseSchedule
    timesteps: Array  # int64
    stride: int  # num_train_timesteps // steps: the distance to the previous timestep
    final_alpha_cumprod: float
    clip_range: float | None
    init_noise_sigma: float = 1.0

    @classmethod
    def create(cls, config: Mapping[str, Any], steps: int) -> DdimScheduler:
        noise = NoiseSchedule.from_config(config, "leading")
        noise.check_steps(steps)
        _check_prediction(noise, ("epsilon", "v_prediction", "sample"), "ddim")
        final = 1.0 if _get(config, "set_alpha_to_one", True) else float(noise.alphas_cumprod[0])
        clip = float(_get(config, "clip_sample_range", 1.0)) if _get(config, "clip_sample", True) else None
        return cls(noise, noise.spaced_timesteps(steps, integer=True), noise.num_train_timesteps // steps, final, clip)

    def initial_state(self) -> None:
        return None

    def scale_model_input(self, sample: Array, index: int) -> Array:
        return sample

    def step(self, model_output: Array, index: int, sample: Array, state: None) -> tuple[Array, None]:
        timestep = int(self.timesteps[index])
        alpha = self.noise.alpha_prod(timestep, self.final_alpha_cumprod)
        alpha_prev = self.noise.alpha_prod(timestep - self.stride, self.final_alpha_cumprod)
        beta = 1 - alpha
        if self.noise.prediction_type == "epsilon":
            original = (sample - beta**0.5 * model_output) / alpha**0.5
            epsilon = model_output
        elif self.noise.prediction_type == "sample":
            original = model_output
            epsilon = (sample - alpha**0.5 * original) / beta**0.5
        else:  # v_prediction
            original = alpha**0.5 * sample - beta**0.5 * model_output
            epsilon = alpha**0.5 * model_output + beta**0.5 * sample
        if self.clip_range is not None:
            original = np.clip(original, -self.clip_range, self.clip_range)
        return alpha_prev**0.5 * original + (1 - alpha_prev) ** 0.5 * epsilon, None


@attrs.frozen
class PndmState:
    """PNDM's memory between steps: past model outputs and the Runge-Kutta partial sums."""

    ets: tuple[Array, ...] = ()
    cur_model_output: Array | float = 0.0
    cur_sample: Array | None = None


@attrs.frozen
class PndmScheduler:
    """diffusers' PNDMScheduler: PRK warm-up then PLMS, or PLMS only (skip_prk_steps)."""

    noise: NoiseSchedule
    timesteps: Array  # int64: the PRK timesteps, then the PLMS ones
    prk_count: int
    stride: int  # num_train_timesteps // steps
    final_alpha_cumprod: float
    init_noise_sigma: float = 1.0

    @classmethod
    def create(cls, config: Mapping[str, Any], steps: int) -> PndmScheduler:
        noise = NoiseSchedule.from_config(config, "leading")
        noise.check_steps(steps)
        _check_prediction(noise, ("epsilon", "v_prediction"), "pndm")
        # diffusers keeps PNDM's timesteps ascending here, then reverses them below.
        ascending = noise.spaced_timesteps(steps, integer=True)[::-1]
        stride = noise.num_train_timesteps // steps
        if _get(config, "skip_prk_steps", False):
            prk = np.array([], np.int64)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            if steps < 4:
                raise SchedulerError(f"pndm with Runge-Kutta warm-up needs steps >= 4, got {steps}")
            order = 4
            prk = np.repeat(ascending[-order:], 2) + np.tile(np.array([0, stride // 2]), order)
            prk = np.repeat(prk[:-1], 2)[1:-1][::-1]
            plms = ascending[:-3][::-1]
        final = 1.0 if _get(config, "set_alpha_to_one", False) else float(noise.alphas_cumprod[0])
        timesteps = np.concatenate([prk, plms]).astype(np.int64)
        return cls(noise, timesteps, len(prk), stride, final)

    def initial_state(self) -> PndmState:
        return PndmState()

    def scale_model_input(self, sample: Array, index: int) -> Array:
        return sample

    def step(self, model_output: Array, index: int, sample: Array, state: PndmState) -> tuple[Array, PndmState]:
        if index < self.prk_count:
            return self._step_prk(model_output, index, sample, state)
        return self._step_plms(model_output, index, sample, state)

    def _step_prk(self, output: Array, index: int, sample: Array, state: PndmState) -> tuple[Array, PndmState]:
        prev_timestep = int(self.timesteps[index]) - (0 if index % 2 else self.stride // 2)
        timestep = int(self.timesteps[index // 4 * 4])
        phase = index % 4
        if phase == 0:
            state = PndmState((*state.ets, output), state.cur_model_output + output / 6, sample)
        elif phase in (1, 2):
            state = attrs.evolve(state, cur_model_output=state.cur_model_output + output / 3)
        else:
            output = state.cur_model_output + output / 6
            state = attrs.evolve(state, cur_model_output=0.0)
        base = state.cur_sample if state.cur_sample is not None else sample
        return self._prev_sample(base, timestep, prev_timestep, output), state

    def _step_plms(self, output: Array, index: int, sample: Array, state: PndmState) -> tuple[Array, PndmState]:
        timestep = int(self.timesteps[index])
        prev_timestep = timestep - self.stride
        ets, cur_sample = state.ets, state.cur_sample
        if index != 1:
            ets = (*ets[-3:], output)
        else:
            prev_timestep, timestep = timestep, timestep + self.stride
        if len(ets) == 1 and index == 0:
            cur_sample = sample
        elif len(ets) == 1 and index == 1:
            output = (output + ets[-1]) / 2
            sample, cur_sample = cur_sample if cur_sample is not None else sample, None
        elif len(ets) == 2:
            output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            output = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        new_state = PndmState(ets, state.cur_model_output, cur_sample)
        return self._prev_sample(sample, timestep, prev_timestep, output), new_state

    def _prev_sample(self, sample: Array, timestep: int, prev_timestep: int, output: Array) -> Array:
        """PNDM's formula (9): x_{t-delta} from x_t and the (combined) noise estimate."""
        alpha = self.noise.alpha_prod(timestep, self.final_alpha_cumprod)
        alpha_prev = self.noise.alpha_prod(prev_timestep, self.final_alpha_cumprod)
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        if self.noise.prediction_type == "v_prediction":
            output = alpha**0.5 * output + beta**0.5 * sample
        sample_coeff = (alpha_prev / alpha) ** 0.5
        denominator = alpha * beta_prev**0.5 + (alpha * beta * alpha_prev) ** 0.5
        result: Array = sample_coeff * sample - (alpha_prev - alpha) * output / denominator
        return result


SchedulerFactory = Callable[[Mapping[str, Any], int], Scheduler]

# Scheduler name (the task's `scheduler` param) -> factory(config, steps).
SCHEDULERS: dict[str, SchedulerFactory] = {
    "euler": EulerScheduler.create,
    "ddim": DdimScheduler.create,
    "pndm": PndmScheduler.create,
}

# diffusers class name (scheduler_config.json's `_class_name`) -> scheduler name.
CLASS_NAMES: dict[str, str] = {
    "EulerDiscreteScheduler": "euler",
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
}


def scheduler_name(config: Mapping[str, Any], default: str = "euler") -> str:
    """The scheduler the config was written for, or `default` when this module lacks it."""
    return CLASS_NAMES.get(str(config.get("_class_name")), default)


def make_scheduler(name: str, config: Mapping[str, Any], steps: int) -> Scheduler:
    """A plan of `steps` inference steps of scheduler `name` on `config`. Raises SchedulerError."""
    factory = SCHEDULERS.get(name)
    if factory is None:
        raise SchedulerError(f"unknown scheduler {name!r}; known: {', '.join(sorted(SCHEDULERS))}")
    return factory(config, steps)
