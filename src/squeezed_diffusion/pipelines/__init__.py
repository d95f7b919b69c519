"""diffusers integration: squeezed DDPM/DDIM schedulers and an unconditional pipeline.

They wrap :class:`~squeezed_diffusion.SqueezedDiffusion` and the core samplers;
see ``docs/diffusers.md`` for training with diffusers' example script and for
loading a ``sqdm train`` run.
"""

from .pipeline_squeezed_ddpm import SqueezedDDPMPipeline, scheduler_from_process
from .scheduling_squeezed_ddim import SqueezedDDIMScheduler
from .scheduling_squeezed_ddpm import SqueezedDDPMScheduler

__all__ = [
    "SqueezedDDIMScheduler",
    "SqueezedDDPMPipeline",
    "SqueezedDDPMScheduler",
    "scheduler_from_process",
]
