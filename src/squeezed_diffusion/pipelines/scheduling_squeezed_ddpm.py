"""``SqueezedDDPMScheduler``: diffusers' DDPM scheduler for the squeezed process."""

from __future__ import annotations

from itertools import pairwise

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core import SAMPLERS
from ..core.samplers import VARIANCES
from ._base import DEFAULT_NUM_CHANNELS, SqueezedSchedulerMixin, require, step_count

Tensor = torch.Tensor

# Why the stock variance types outside the core's VARIANCES are refused.
_REFUSED_VARIANCES = {
    "fixed_large_log": "stock DDPMScheduler takes the square root of log(beta_t) < 0 there, so "
    "every sample it draws is NaN (diffusers 0.42.1); nothing to reproduce",
    "learned": "the model would predict one variance per pixel, but the squeezed posterior "
    "has one per basis direction, and the core has no per-direction learned variance",
    "learned_range": "the model would interpolate between the isotropic bounds per pixel, but "
    "the squeezed bounds differ per basis direction, and the core has no such step",
}


def ddpm_samplers() -> list[str]:
    """The registered samplers this scheduler runs (those declaring ``scheduler='ddpm'``); the
    one a config runs is ``sampler_for_scheduler``'s choice, by its ``scheduler_keys``."""
    return [name for name, sampler in SAMPLERS.items() if sampler.scheduler == "ddpm"]


class SqueezedDDPMScheduler(SqueezedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Ancestral sampling for the squeezed process, behind diffusers' scheduler interface.

    ``sampler`` picks the step: 'ddpm' samples the exact per-direction posterior;
    'ddpm-paper' is the paper's heuristic (unsqueeze with ``S_t``, ordinary DDPM
    step, squeeze back with the same ``S_t``), exact only for a constant profile. Any
    sampler registered with ``scheduler='ddpm'`` (the default) runs here, selected by
    ``sampler=its name`` (its ``scheduler_keys``, unless it declares a ``scheduler_config``).
    Every key of the stock ``DDPMScheduler`` is honoured (``variance_type`` per direction:
    'fixed_small' and 'fixed_small_log' the posterior variance, 'fixed_large' the
    transition variance ``q_t,i``) or refused; the shared fields are described on
    :class:`SqueezedSchedulerMixin`. At ``strength=0`` both samplers are ``DDPMScheduler``.
    """

    _KIND = "ddpm"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        variance_type: str | None = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        variant: str = "sdm",
        strength: float | list[float] = 0.0,
        profile: str = "beta",
        target: str | None = None,
        basis: str = "channel",
        basis_config: dict | None = None,
        direction: list[float] | None = None,
        num_channels: int = DEFAULT_NUM_CHANNELS,
        image_shape: list[int] | None = None,
        cutoffs: list[float] | None = None,
        sampler: str = "ddpm",
    ) -> None:
        self._setup()
        self.custom_timesteps = False  # stock's public flag: set_timesteps(timesteps=...) used

    @property
    def variance_type(self) -> str | None:
        """The configured ``variance_type``, where stock keeps it as an attribute too."""
        return self.config.variance_type

    @variance_type.setter
    def variance_type(self, value: str | None) -> None:
        # stock stores the assignment and samples with its config's value regardless
        raise AttributeError(
            f"variance_type={value!r} set as an attribute would not change the sampling; "
            "use scheduler.register_to_config(variance_type=...)"
        )

    def _check(self) -> None:
        """The sampler is a registered DDPM one; ``variance_type`` one the core has."""
        cfg = self.config
        if cfg.sampler not in ddpm_samplers():
            raise ValueError(
                f"unknown DDPM sampler {cfg.sampler!r}; choose one of: "
                f"{', '.join(ddpm_samplers())} (for DDIM use SqueezedDDIMScheduler)"
            )
        # None is what a DPMSolverMultistepScheduler config holds; stock DDPM reads it as
        # fixed_small, and so does this.
        require(
            "variance_type",
            cfg.variance_type,
            (None, *VARIANCES),
            _REFUSED_VARIANCES.get(cfg.variance_type, ""),
        )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """``num_inference_steps`` with ``timestep_spacing``, or custom descending
        ``timesteps``; each step lands on the next timestep listed (the last on the data)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is None:
            steps = self._spaced_timesteps(step_count(num_inference_steps))
        else:
            steps = [int(t) for t in timesteps]
            if any(a <= b for a, b in pairwise(steps)):
                raise ValueError(f"custom timesteps must be strictly descending, got {steps}")
        self._use_timesteps(steps, device)
        self.num_inference_steps = len(steps)
        self.custom_timesteps = timesteps is not None

    def _use_timesteps(
        self, timesteps: list[int], device: str | torch.device | None = None
    ) -> None:
        super()._use_timesteps(timesteps, device)
        self._previous = dict(zip(timesteps, [*timesteps[1:], -1], strict=True))

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """The next timestep of the schedule (-1 after the last), as stock DDPM."""
        t = int(timestep)
        if t not in self._previous:
            raise ValueError(
                f"timestep {t} is not in the schedule of {self.num_inference_steps} steps; "
                "step with the values of scheduler.timesteps after set_timesteps()"
            )
        return self._previous[t]

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple[Tensor, Tensor]:
        """Move ``sample`` from ``timestep`` to the previous scheduled timestep."""
        return self._step(
            DDPMSchedulerOutput,
            model_output,
            timestep,
            sample,
            return_dict,
            generator=generator,
            variance=self.config.variance_type or "fixed_small",
        )
