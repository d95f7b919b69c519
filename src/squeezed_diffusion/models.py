"""diffusers ``UNet2DModel`` presets: the paper's, Ho et al.'s, and CPU-sized ones."""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DModel

_D, _AD, _U, _AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"

PRESETS: dict[str, dict[str, Any]] = {
    # The reference configuration (DESIGN.md part 1): attention only in the lowest-resolution
    # down block and the first up block.
    "paper": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": (_D, _D, _D, _AD),
        "up_block_types": (_AU, _U, _U, _U),
    },
    # Ho et al. 2020 CIFAR-10 (35.7M parameters; google/ddpm-cifar10-32's layout).
    "ddpm": {
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "down_block_types": (_D, _AD, _D, _D),
        "up_block_types": (_U, _U, _AU, _U),
        "dropout": 0.1,
    },
    "small": {
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": (_D, _AD, _D),
        "up_block_types": (_U, _AU, _U),
    },
    # About 0.27M parameters: the demo's, which must train to recognisable samples in a minute
    # on two CPU cores (65 ms per step of 64 16-px images on one core, against tiny's 175).
    "micro": {
        "block_out_channels": (16, 32, 32),
        "layers_per_block": 1,
        "down_block_types": (_D, _D, _D),
        "up_block_types": (_U, _U, _U),
        "norm_num_groups": 8,
    },
    # About 1M parameters: CPU experiments and tests.
    "tiny": {
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": (_D, _D, _D),
        "up_block_types": (_U, _U, _U),
    },
}


def build_model(preset: str, channels: int = 3, resolution: int = 32) -> UNet2DModel:
    """A fresh ``UNet2DModel`` from a preset, for ``channels`` x ``resolution`` images."""
    check_resolution(preset, resolution)
    cfg = PRESETS[preset]
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels, **cfg)


def check_resolution(preset: str, resolution: int) -> None:
    """Whether a preset's UNet takes ``resolution`` x ``resolution`` images (each downsampling
    halves them); checked when a config is validated too, not hours into a sweep."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    levels = len(PRESETS[preset]["block_out_channels"])
    if resolution < 1:
        raise ValueError(f"the resolution must be positive, got {resolution}; pass --resolution N")
    if resolution % 2 ** (levels - 1):
        raise ValueError(
            f"model preset {preset!r} downsamples {levels - 1} times, so the resolution must be a "
            f"multiple of {2 ** (levels - 1)}, got {resolution}; pass another --resolution"
        )


def count_parameters(model: UNet2DModel) -> int:
    return sum(p.numel() for p in model.parameters())
