"""``SqueezedDDIMScheduler``: diffusers' DDIM scheduler for the squeezed process."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core.samplers import ddim_step
from ._base import SqueezedSchedulerMixin

Tensor = torch.Tensor


class SqueezedDDIMScheduler(SqueezedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Exact DDIM per basis direction, behind diffusers' scheduler interface.

    ``eta`` (a ``step`` argument, as in diffusers) goes from deterministic (0) to
    the exact posterior (1). The last step lands on abar = 1, diffusers'
    ``set_alpha_to_one=True``. The fields are described on
    :class:`SqueezedSchedulerMixin`; at ``strength=0`` this is diffusers'
    ``DDIMScheduler`` (without ``use_clipped_model_output``).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        variant: str = "sdm",
        strength: float | list[float] = 0.0,
        profile: str = "beta",
        target: str = "epsilon",
        basis: str = "channel",
        basis_config: dict | None = None,
        direction: list[float] | None = None,
        num_channels: int = 3,
        image_shape: list[int] | None = None,
        cutoffs: list[float] | None = None,
        clip_sample: bool = True,
    ) -> None:
        self._setup()

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[Tensor, Tensor]:
        """Move ``sample`` from ``timestep`` to the previous scheduled timestep."""
        return self._step(
            ddim_step,
            DDIMSchedulerOutput,
            model_output,
            timestep,
            sample,
            generator=generator,
            eta=eta,
            return_dict=return_dict,
        )
