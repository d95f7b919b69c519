"""What a run shows while it trains: log records and EMA sample grids.

Everything here leaves the training state as it found it (weights, mode, RNG), so watching
a run never changes what it trains, and resume stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from ..core import SqueezedDiffusion
from .state import TrainState

Tensor = torch.Tensor


def ema_sample(
    state: TrainState,
    process: SqueezedDiffusion,
    shape: tuple[int, ...],
    steps: int,
    sampler: str,
    seed: int,
    callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Samples of ``shape`` from the EMA weights, with a generator seeded ``seed``; the
    training weights and mode are restored afterwards and torch's global RNG is not used."""
    unet, ema = state.unwrapped, state.ema
    params = list(unet.parameters())
    ema.store(params)
    ema.copy_to(params)
    unet.eval()
    try:
        return process.sample(
            lambda x, t: unet(x, t).sample, shape, steps, sampler,
            generator=torch.Generator().manual_seed(seed), progress=False,
            device=state.accelerator.device, callback=callback,
        )  # fmt: skip
    finally:
        unet.train()
        ema.restore(params)


def sample_grid(
    sample: Callable[..., Tensor], num: int, steps: int, path: Path, trajectory: Path | None = None
) -> Tensor:
    """``sample(num, callback)`` as a PNG grid, and optionally a denoising-trajectory strip
    (four samples' predicted x_0 at nine moments); returns the samples."""
    frames: list[Tensor] = []
    every = max(1, steps // 8)

    def keep(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        if trajectory is not None and (i % every == 0 or i == steps - 1):
            frames.append(x0[:4].clamp(-1, 1).cpu())

    x = sample(num, keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((x.float().cpu().clamp(-1, 1) + 1) / 2, path, nrow=int(math.sqrt(len(x))) or 1)
    if trajectory is not None and frames:
        strip = torch.stack(frames, 1).flatten(0, 1)  # rows: samples, columns: time
        save_image((strip + 1) / 2, trajectory, nrow=len(frames))
    return x


def window_record(step: int, loss: float, state: TrainState, images_per_s: float) -> dict[str, Any]:
    """One log line: what happened since the previous one."""
    return {
        "step": step,
        "loss": loss,
        "lr": state.lr_scheduler.get_last_lr()[0],
        "images_per_s": images_per_s,
        "skipped_batches": state.skipped_batches,
    }
