"""What a run shows while it trains: log records, EMA sample grids, evaluations, trackers.

Everything here leaves the training state as it found it (weights, mode, RNG), so watching
a run never changes what it trains, and resume stays exact. Trackers are accelerate's
(TensorBoard, Weights & Biases; ``--log-with``); ``log.jsonl`` is written whatever the tracker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torchvision.utils import save_image

from ..core import SqueezedDiffusion
from ..core.samplers import SAMPLE_BATCH
from ..data import ImageDataset, to_uint8
from .config import TrainConfig
from .run import Run
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
    x0: str = "clip",
) -> Tensor:
    """Samples of ``shape`` from the EMA weights, with a generator seeded ``seed`` and the
    predicted x_0's rule ``x0``, :data:`SAMPLE_BATCH` at a time (``callback`` sees the first
    batch); the training weights and mode are restored afterwards and torch's global RNG is
    not used."""
    unet, ema = state.unwrapped, state.ema
    params = list(unet.parameters())
    ema.store(params)
    ema.copy_to(params)
    unet.eval()
    generator = torch.Generator().manual_seed(seed)
    try:
        return torch.cat([
            process.sample(
                lambda x, t: unet(x, t).sample, (min(SAMPLE_BATCH, shape[0] - start), *shape[1:]),
                steps, sampler, generator=generator, progress=False,
                device=state.accelerator.device, callback=callback if start == 0 else None, clip=x0,
            )
            for start in range(0, shape[0], SAMPLE_BATCH)
        ])  # fmt: skip
    finally:
        unet.train()
        ema.restore(params)


def sample_grid(
    sample: Callable[..., Tensor], num: int, calls: int, path: Path, trajectory: Path | None = None
) -> Tensor:
    """``sample(num, callback)`` as a PNG grid, and optionally a denoising-trajectory strip
    (four samples' predicted x_0 at nine of the ``calls`` callbacks); returns the samples."""
    frames: list[Tensor] = []
    every = max(1, calls // 8)

    def keep(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        if trajectory is not None and (i % every == 0 or i == calls - 1):
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


# -- trackers ---------------------------------------------------------------------------------
def tracker_names(log_with: str | None) -> list[str]:
    return {None: [], "all": ["tensorboard", "wandb"]}.get(log_with, [log_with])


def start_trackers(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Open the run's trackers (files under ``OUT/trackers``; wandb honours ``WANDB_MODE``,
    e.g. ``offline``) with the config as hyperparameters."""
    if not cfg.log_with:
        return
    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.to_dict().items()
    }
    wandb_dir = {"wandb": {"dir": str(Run(cfg.out).trackers_dir), "name": Path(cfg.out).name}}
    try:
        accelerator.init_trackers(Path(cfg.out).name, config=hparams, init_kwargs=wandb_dir)
    except Exception as err:  # wandb without a login or a network, mostly
        if "wandb" not in tracker_names(cfg.log_with):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"wandb did not start ({type(err).__name__}: {first}); run `wandb login`, or log "
            "offline with WANDB_MODE=offline"
        ) from None


def track(accelerator: Accelerator, record: dict[str, Any]) -> None:
    """The record's numbers (nested ``eval`` metrics flattened as ``eval/NAME``) to the trackers."""
    if not accelerator.trackers:
        return
    flat = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
    flat.update({f"eval/{k}": v for k, v in record.get("eval", {}).items()})
    accelerator.log(flat, step=record["step"])


def track_images(accelerator: Accelerator, name: str, images: torch.Tensor, step: int) -> None:
    """Images in [-1, 1], ``[N, C, H, W]``, to every tracker in the layout it takes."""
    nhwc = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: nhwc}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({name: list(nhwc)}, step=step)


# -- evaluation during training ---------------------------------------------------------------
def check_eval_weights(cfg: TrainConfig) -> None:
    """Resolve (download if missing) the weights of every feature network ``cfg.eval_metrics``
    use, so that missing weights stop the run before it trains, not at its first evaluation."""
    if not cfg.eval_every:
        return
    from ..metrics import FeatureWeightsError, extractors_for, resolve_weights

    for extractor in extractors_for(cfg.eval_metrics):
        try:
            resolve_weights(extractor)
        except FeatureWeightsError as err:
            users = ", ".join(m for m in cfg.eval_metrics if extractor in extractors_for([m]))
            # sqdm train reads the weights from the cache only: it has no --feature-weights.
            fix = err.instead(f"drop {users} from --eval-metrics")
            raise FeatureWeightsError(f"--eval-metrics {users}: {fix}") from None


def evaluate_ema(
    state: TrainState,
    process: SqueezedDiffusion,
    dataset: ImageDataset,
    cfg: TrainConfig,
    step: int,
) -> dict[str, Any]:
    """Score ``cfg.eval_num`` EMA samples (``cfg.eval_sampler``, the run's seed, so every
    evaluation sees the same noise) against a seeded subset of the training images.

    torch's global RNG is forked, so evaluating changes nothing the run draws afterwards.
    """
    from ..metrics import evaluate

    start = time.perf_counter()
    devices = [state.accelerator.device] if state.accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        samples = ema_sample(
            state,
            process,
            (cfg.eval_num, *dataset.shape),
            cfg.eval_steps,
            cfg.eval_sampler,
            cfg.seed,
            x0=cfg.eval_x0,
        )
        num_reference = min(cfg.eval_num_reference or len(dataset), len(dataset))
        scores = evaluate(to_uint8(samples), dataset, cfg.eval_metrics, num_reference=num_reference)
    metrics = {k: scores[k] for k in scores["feature_extractor"]}
    return {
        "step": step, "eval": metrics, "eval_sampler": cfg.eval_sampler, "eval_x0": cfg.eval_x0,
        "eval_steps": cfg.eval_steps,
        "eval_num": cfg.eval_num, "eval_num_reference": num_reference, "eval_s": time.perf_counter() - start,
    }  # fmt: skip
