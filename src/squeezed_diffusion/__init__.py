"""Squeezed Diffusion Models: diffusion with noise shaped along the data's principal directions."""

from importlib.metadata import PackageNotFoundError, version

from .basis import Basis, ChannelBasis, DCTBasis, PixelPCABasis, load_basis
from .process import PROFILES, TARGETS, VARIANTS, SqueezedDiffusion
from .samplers import SAMPLERS, ddim_step, ddpm_paper_step, ddpm_step, sample, timesteps

try:
    __version__ = version("squeezed-diffusion")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "PROFILES",
    "SAMPLERS",
    "TARGETS",
    "VARIANTS",
    "Basis",
    "ChannelBasis",
    "DCTBasis",
    "PixelPCABasis",
    "SqueezedDiffusion",
    "__version__",
    "ddim_step",
    "ddpm_paper_step",
    "ddpm_step",
    "load_basis",
    "sample",
    "timesteps",
]
