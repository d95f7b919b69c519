"""The maths of squeezed diffusion: bases, the process, the samplers. Imports nothing else
from the package (training, data, evaluation and the CLI build on it, never the reverse).

Importing this package registers every basis and sampler.
"""

from .basis import BASES, Basis, ChannelBasis, DCTBasis, PixelPCABasis, fit_basis, load_basis
from .process import PROFILES, TARGETS, VARIANTS, SqueezedDiffusion
from .registry import SAMPLERS, Registry
from .samplers import (
    X0_RULES,
    Sampler,
    X0Rule,
    ddim_step,
    ddpm_paper_step,
    ddpm_step,
    sample,
    timesteps,
)

__all__ = [
    "BASES",
    "PROFILES",
    "SAMPLERS",
    "TARGETS",
    "VARIANTS",
    "X0_RULES",
    "Basis",
    "ChannelBasis",
    "DCTBasis",
    "PixelPCABasis",
    "Registry",
    "Sampler",
    "SqueezedDiffusion",
    "X0Rule",
    "ddim_step",
    "ddpm_paper_step",
    "ddpm_step",
    "fit_basis",
    "load_basis",
    "sample",
    "timesteps",
]
