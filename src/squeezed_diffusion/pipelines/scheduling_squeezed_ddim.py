"""``SqueezedDDIMScheduler``: diffusers' DDIM scheduler for the squeezed process."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ._base import DEFAULT_NUM_CHANNELS, FIXED_VARIANCES, SqueezedSchedulerMixin, step_count

Tensor = torch.Tensor


class SqueezedDDIMScheduler(SqueezedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Exact DDIM per basis direction, behind diffusers' scheduler interface.

    ``step``'s ``eta`` goes from deterministic (0) to the exact posterior (1);
    ``use_clipped_model_output``, ``variance_noise`` and ``generator`` are stock DDIM's.
    Like stock DDIM, a step from any timestep t lands on ``t - T // num_inference_steps``,
    whatever the spacing; a step past 0 lands on the data, or on timestep 0's noise level
    (per direction) with ``set_alpha_to_one=False``. The shared fields are described on
    :class:`SqueezedSchedulerMixin`; at ``strength=0`` this is diffusers' ``DDIMScheduler``.
    """

    _BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
    _KIND = "ddim"
    # A DDPM config's fixed variance type chooses DDPM's noise, which DDIM's eta replaces, so
    # it drops as in stock (DDPM -> DDIM with google/ddpm-cifar10-32's "fixed_large"); a
    # learned type (a model output with a variance half) still raises.
    _ASK_NOTHING: ClassVar[dict[str, tuple[Any, ...]]] = {
        **SqueezedSchedulerMixin._ASK_NOTHING,
        "variance_type": FIXED_VARIANCES,
    }

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
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
    ) -> None:
        self._setup()

    @property
    def final_alpha_cumprod(self) -> Tensor:
        """Stock's ``abar`` past timestep 0: 1 (the data) or, without ``set_alpha_to_one``,
        timestep 0's (isotropic; the squeezed step uses each direction's level there)."""
        return torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        """Use ``num_inference_steps`` steps with ``timestep_spacing``."""
        num_inference_steps = step_count(num_inference_steps)
        self._use_timesteps(self._spaced_timesteps(num_inference_steps), device)
        self.num_inference_steps = num_inference_steps

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """``t - T // num_inference_steps``; past 0, the data (-1) or, without
        ``set_alpha_to_one``, timestep 0."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step(), as with stock DDIM")
        cfg, t = self.config, int(timestep)
        if not 0 <= t < cfg.num_train_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {cfg.num_train_timesteps - 1}]")
        prev = t - cfg.num_train_timesteps // self.num_inference_steps
        return prev if prev >= 0 else (-1 if cfg.set_alpha_to_one else 0)

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[Tensor, Tensor]:
        """Move ``sample`` from ``timestep`` to :meth:`previous_timestep`.

        ``variance_noise`` (pre-drawn noise, used when ``eta > 0``) replaces ``generator``;
        given with ``eta = 0`` it would go unused, so it is refused. ``eta`` may be a one-element
        tensor and ``use_clipped_model_output`` None (False), as stock takes them (stock's
        ``DDIMPipeline`` passes None).
        """
        if isinstance(eta, Tensor) and eta.numel() == 1:
            eta = eta.item()
        if not isinstance(use_clipped_model_output, bool | None):  # "no" would read as True
            raise ValueError(
                "use_clipped_model_output must be True, False or None, "
                f"got {use_clipped_model_output!r}"
            )
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass generator or variance_noise, not both (as stock DDIM)")
        return self._step(
            DDIMSchedulerOutput,
            model_output,
            timestep,
            sample,
            return_dict,
            reuse=bool(use_clipped_model_output),
            generator=generator,
            eta=eta,
            noise=variance_noise,
        )
