"""Sampling a trained run (batched, seeded per batch, split across processes, saved as PNG or
.npz) and scoring those samples.

Batch ``b`` always uses the generator seeded ``(seed, b)``, so the images do not
depend on the batch order, on resuming, or on how many processes share the work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core.fileio import atomic_folder, atomic_path
from ..core.samplers import SAMPLE_BATCH, checked_sampler
from ..core.values import check_count
from ..data import ARRAY_SUFFIXES, ImageDataset, to_uint8
from ..metrics import (
    OFFLINE_METRICS,
    check_reference,
    check_scoring,
    evaluate,
    extractors_for,
    fetch_weights,
)
from ..training.run import Run


def check_sampling(
    run_dir: str | Path, num: int, steps: int, sampler: str, batch_size: int, eta: float, x0: str
) -> None:
    """What :func:`generate` would refuse, checked without loading any weights: the counts,
    the sampler with its eta and x_0 rule, the run folder and the step count for its T."""
    check_count(num, "--num")  # True would be one image
    check_count(batch_size, "--batch-size")
    entry = checked_sampler(sampler, eta, x0)
    timesteps = Run(run_dir).config().num_train_timesteps
    try:
        entry.schedule(timesteps, steps)
    except ValueError as err:  # the core names its argument, num_steps
        raise ValueError(f"--steps {steps} with --sampler {sampler}: {err}") from None


def generate(
    run_dir: str | Path,
    num: int,
    steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    batch_size: int = SAMPLE_BATCH,
    ema: bool = True,
    eta: float = 0.0,
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    compile: bool | None = None,
    x0: str = "clip",
) -> tuple[list[int], torch.Tensor]:
    """This process's share of ``num`` samples: (global indices, uint8 images).

    ``compile`` (default: on with CUDA) compiles the UNet for the sampling loop, which on a
    GPU is launch-bound like training; the progress bar counts images per second. ``x0``
    names the rule for the predicted x_0 (one of ``X0_RULES``).
    """
    check_sampling(run_dir, num, steps, sampler, batch_size, eta, x0)
    if not 0 <= rank < world_size:  # else this process would draw nothing, or another's share
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    check_count(seed, "seed", 0)
    if not isinstance(ema, bool) or compile not in (None, True, False):  # "no" would read true
        raise ValueError(
            f"ema must be True/False and compile True/False/None, got {ema!r}, {compile!r}"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unet, proc = Run(run_dir).load(ema=ema)
    unet.to(device)
    proc.to(device)
    if device.type == "cuda" if compile is None else compile:
        unet.compile()
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    batches = list(range(0, num, batch_size))[rank::world_size]
    indices: list[int] = []
    images: list[torch.Tensor] = []
    total = sum(min(batch_size, num - start) for start in batches)
    bar = tqdm(total=total, desc=f"sampling ({sampler})", unit="img", disable=not progress)
    for start in batches:
        n = min(batch_size, num - start)
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start // batch_size)
        x = proc.sample(
            lambda x, t: unet(x, t).sample, (n, *shape), steps, sampler,
            generator=gen, eta=eta, progress=False, device=device, clip=x0,
        )  # fmt: skip
        images.append(to_uint8(x))
        indices.extend(range(start, start + n))
        bar.update(n)
    bar.close()
    empty = torch.zeros((0, *shape), dtype=torch.uint8)
    return indices, torch.cat(images) if images else empty


def generate_all(run_dir: str | Path, num: int, **kwargs) -> torch.Tensor | None:
    """All ``num`` samples, split over the processes accelerate launched, gathered on the
    main process in index order (``None`` on the others): each index exactly once."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=not torch.cuda.is_available())
    kwargs.setdefault("device", state.device)
    indices, images = generate(
        run_dir, num, rank=state.process_index, world_size=state.num_processes, **kwargs
    )
    if state.num_processes == 1:
        return images
    parts = gather_object([(indices, images)])
    if not state.is_main_process:
        return None
    order = torch.tensor([i for idx, _ in parts for i in idx]).argsort()
    return torch.cat([imgs for _, imgs in parts])[order]


GRID_SUFFIXES = (".png", ".jpg", ".jpeg")  # ``--out`` as one image: a grid to look at


def samples_format(out: str | Path) -> str:
    """What :func:`save_samples` writes at ``out``: ``"grid"``, ``"array"`` or ``"folder"``
    (of PNGs). A folder must be new or empty, since images already there would be scored with
    the new ones; another file suffix is refused rather than made a folder's name."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in GRID_SUFFIXES:
        return "grid"
    if suffix in ARRAY_SUFFIXES:
        return "array"
    if suffix and not out.is_dir():
        formats = ", ".join((*ARRAY_SUFFIXES, *GRID_SUFFIXES))
        raise ValueError(
            f"{out}: samples are written as {formats} or a folder of PNGs, not {suffix}; name "
            "a folder without a suffix (or create it first)"
        )
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already holds files, which would be scored with the new samples: choose a "
            "new or empty folder"
        )
    return "folder"


def save_samples(images: torch.Tensor, out: str | Path) -> Path:
    """uint8 ``[N, C, H, W]`` to a new folder of PNGs, or one ``.npz`` (key ``images``) or
    ``.npy`` file (NHWC): what ``sqdm evaluate`` and the ``array`` dataset read; or, for a
    :data:`GRID_SUFFIXES` path, one grid image to look at (torchvision's ``save_image``,
    about square, as training's sample grids). Suffixes in any case; written atomically (a
    folder is filled under a temporary name, then renamed)."""
    out = Path(out)
    kind = samples_format(out)
    if kind == "grid":
        from torchvision.utils import save_image

        with atomic_path(out) as tmp:  # the temporary name keeps the suffix: PIL's format
            save_image(images.float() / 255, tmp, nrow=int(math.sqrt(len(images))) or 1)
        return out
    nhwc = images.permute(0, 2, 3, 1).numpy()
    if kind == "array":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:  # a file: numpy adds no suffix
            if out.suffix.lower() == ".npz":
                np.savez_compressed(f, images=nhwc)
            else:
                np.save(f, nhwc)
        return out
    with atomic_folder(out) as tmp:
        for i, img in enumerate(nhwc):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp / f"{i:06d}.png")
    return out


def evaluate_run(
    run_dir: str | Path,
    num: int = 10_000,
    steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    *,
    reference: torch.Tensor | ImageDataset | None = None,
    metrics: Sequence[str] = OFFLINE_METRICS,
    num_reference: int | None = None,
    feature_weights: Mapping[str, str | Path] | None = None,
    prc_extractor: str | None = None,
    batch_size: int | None = None,
    sample_batch_size: int = SAMPLE_BATCH,
    eta: float = 0.0,
    x0: str = "clip",
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``num`` images from a run (EMA weights) and :func:`evaluate` them against
    ``reference`` (default: the run's own training images). Every option is checked, and the
    feature weights fetched, before the first sample is drawn."""
    metrics = check_scoring(metrics, prc_extractor, feature_weights, batch_size)
    check_sampling(run_dir, num, steps, sampler, sample_batch_size, eta, x0)
    weights = fetch_weights(extractors_for(metrics, prc_extractor), feature_weights)
    reference = reference if reference is not None else Run(run_dir).reference()
    check_reference(reference, num_reference, Run(run_dir).image_shape())
    _, images = generate(
        run_dir, num, steps, sampler, seed=seed, batch_size=sample_batch_size, eta=eta,
        progress=progress, x0=x0,
    )  # fmt: skip
    result = evaluate(
        images, reference, metrics, num_reference=num_reference, feature_weights=weights,
        prc_extractor=prc_extractor, batch_size=batch_size, verbose=progress,
    )  # fmt: skip
    return {
        **result, "run": str(run_dir), "steps": steps, "sampler": sampler, "eta": eta,
        "x0": x0, "seed": seed,
    }  # fmt: skip
