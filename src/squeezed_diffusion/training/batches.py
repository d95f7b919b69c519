"""The data stream of training: which images each step sees, and each micro-batch's tensors.

Every random draw of a step (which images, flips, timesteps, noise) comes from a generator
seeded by ``(seed, step, micro-batch)`` and is drawn for the whole global batch before each
process takes its share. So a run resumed from a checkpoint repeats the uninterrupted run,
and N processes train exactly what one process with the same global batch would.
"""

from __future__ import annotations

import torch

from ..core import SqueezedDiffusion
from ..data import ImageDataset, to_float

Tensor = torch.Tensor


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 1_009 + micro)


class Batches:
    """Seeded, resumable batches of one run; ``process`` makes the noisy inputs and targets."""

    def __init__(
        self,
        dataset: ImageDataset,
        process: SqueezedDiffusion,
        *,
        batch_size: int,
        seed: int,
        hflip: bool,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.dataset, self.process = dataset, process
        self.batch_size, self.seed, self.hflip = batch_size, seed, hflip
        self.device, self.rank, self.world = device, rank, world
        self.steps_per_epoch = len(dataset) // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset has {len(dataset)} images, fewer than one batch of {batch_size}"
            )
        self._perm: tuple[int, Tensor] | None = None

    def indices(self, step: int) -> Tensor:
        """The global batch of step ``step``: a seeded permutation per epoch, no replacement."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=gen))
        return self._perm[1][pos * self.batch_size : (pos + 1) * self.batch_size]

    def micro_batch(self, step: int, micro: int, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """This process's share of micro-batch ``micro`` of step ``step``: (x_t, t, target)."""
        gen = step_generator(self.seed, step, micro, self.device)
        n = idx.numel()
        t = torch.randint(
            0, self.process.num_train_timesteps, (n,), generator=gen, device=self.device
        )
        noise = torch.randn((n, *self.dataset.shape), generator=gen, device=self.device)
        flip = torch.rand(n, generator=gen, device=self.device) < 0.5
        share = slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)
        x0 = self.load_images(idx[share], flip[share] if self.hflip else None)
        x_t, target = self.process.add_noise(x0, noise[share], t[share])
        return x_t, t[share], target

    def load_images(self, idx: Tensor, flip: Tensor | None) -> Tensor:
        """Images ``idx`` as floats in [-1, 1] on the device, mirrored where ``flip``.

        Gathered and flipped as uint8 (a quarter of the bytes of floats), then converted
        once. On CUDA the gather writes pinned memory, so the copy to the GPU is
        asynchronous (the pinned block is recycled only after the copy has finished).
        """
        images = self.dataset.images
        if self.device.type == "cuda":
            batch = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            batch = torch.index_select(images, 0, idx, out=batch).to(self.device, non_blocking=True)
        else:
            batch = images[idx]
        if flip is not None:
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return to_float(batch)
