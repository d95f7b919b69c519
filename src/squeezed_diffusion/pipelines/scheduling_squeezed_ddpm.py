"""``SqueezedDDPMScheduler``: diffusers' DDPM scheduler for the squeezed process."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core import SAMPLERS
from ._base import SqueezedSchedulerMixin

Tensor = torch.Tensor


def ddpm_samplers() -> list[str]:
    """The registered samplers this scheduler runs (those declaring ``scheduler='ddpm'``)."""
    return [name for name, sampler in SAMPLERS.items() if sampler.scheduler == "ddpm"]


class SqueezedDDPMScheduler(SqueezedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Ancestral sampling for the squeezed process, behind diffusers' scheduler interface.

    ``sampler`` picks the step: 'ddpm' samples the exact per-direction posterior;
    'ddpm-paper' is the paper's heuristic (unsqueeze with ``S_t``, ordinary DDPM
    step, squeeze back with the same ``S_t``), exact only for a constant profile.
    The other fields are described on :class:`SqueezedSchedulerMixin`; at
    ``strength=0`` both samplers equal diffusers' ``DDPMScheduler``.
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
        sampler: str = "ddpm",
    ) -> None:
        if sampler not in ddpm_samplers():
            raise ValueError(
                f"unknown DDPM sampler {sampler!r}; choose one of: {', '.join(ddpm_samplers())} "
                "(for DDIM use SqueezedDDIMScheduler)"
            )
        self._setup()

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
            SAMPLERS.get(self.config.sampler).step,
            DDPMSchedulerOutput,
            model_output,
            timestep,
            sample,
            generator=generator,
            eta=0.0,
            return_dict=return_dict,
        )
