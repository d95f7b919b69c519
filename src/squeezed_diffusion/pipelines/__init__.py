"""diffusers integration: squeezed DDPM, DDIM and DPM-Solver++ schedulers and an unconditional
pipeline.

They wrap :class:`~squeezed_diffusion.SqueezedDiffusion` and the core samplers;
see ``docs/diffusers.md`` for the options each scheduler honours or refuses, training with
diffusers' example script and loading a ``sqdm train`` run.
"""

from .pipeline_squeezed_ddpm import SqueezedDDPMPipeline, scheduler_from_process
from .scheduling_squeezed_ddim import SqueezedDDIMScheduler
from .scheduling_squeezed_ddpm import SqueezedDDPMScheduler
from .scheduling_squeezed_dpmsolver_multistep import SqueezedDPMSolverMultistepScheduler

__all__ = [
    "SqueezedDDIMScheduler",
    "SqueezedDDPMPipeline",
    "SqueezedDDPMScheduler",
    "SqueezedDPMSolverMultistepScheduler",
    "scheduler_from_process",
]
