"""What training updates and a checkpoint holds: the UNet, AdamW, the LR schedule, the EMA.

:func:`build_state` makes it from a config; :meth:`TrainState.save` and
:meth:`TrainState.restore` move it to and from a checkpoint folder, exactly (resuming from
step N continues the uninterrupted run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)
from diffusers.training_utils import EMAModel

from ..models import build_model
from .checkpoint import load_checkpoint, load_weights, restore_rng, save_checkpoint
from .config import TrainConfig

Tensor = torch.Tensor
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that use CUDA graphs


@dataclass
class TrainState:
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (possibly wrapped for DDP)
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMAModel
    preset: str
    skipped_batches: int = 0
    cuda_graphs: bool = False  # the compiled UNet replays CUDA graphs (see train_step)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def ema_state_dict(self) -> dict[str, Tensor]:
        """A full state dict with the EMA weights in place of the parameters."""
        state = dict(self.unwrapped.state_dict())
        names = [n for n, _ in self.unwrapped.named_parameters()]
        state.update(dict(zip(names, self.ema.shadow_params, strict=True)))
        return state

    def save(self, run_dir: Path, step: int, keep: int) -> Path | None:
        """Checkpoint ``step`` (main process; the others wait for it)."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        return save_checkpoint(
            run_dir, step, model=self.unwrapped, ema_params=self.ema_state_dict(),
            optimizer_state={
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
            },
            state={
                "ema_optimization_step": self.ema.optimization_step, "model_preset": self.preset,
                "skipped_batches": self.skipped_batches, "time": time.time(),
            },
            keep=keep,
        )  # fmt: skip

    def restore(self, ckpt: Path, channels: int, resolution: int) -> int:
        """Load a verified checkpoint (weights, EMA, optimiser, schedule, RNG); its step."""
        data = load_checkpoint(ckpt)
        load_weights(self.unwrapped, data["model"], ckpt)
        ema_model = build_model(self.preset, channels, resolution)
        load_weights(ema_model, data["ema"], ckpt)
        device = self.accelerator.device
        self.ema.shadow_params = [p.detach().clone().to(device) for p in ema_model.parameters()]
        self.optimizer.load_state_dict(data["optimizer"]["optimizer"])
        self.lr_scheduler.load_state_dict(data["optimizer"]["lr_scheduler"])
        # The next step's learning rate from this schedule: a run extended with a new length
        # follows the new cosine from here (the optimizer state holds the old horizon's).
        sched = self.lr_scheduler
        for group, base, fn in zip(
            self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
        ):
            group["lr"] = base * fn(sched.last_epoch)
        self.ema.optimization_step = data["state"]["ema_optimization_step"]
        self.skipped_batches = data["state"].get("skipped_batches", 0)
        restore_rng(data["rng"])
        return data["state"]["step"]


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """``cfg.compile``, or by default: on for CUDA, off elsewhere.

    On a GPU the eager step is launch-bound (``../shared/perf``: 3,285 kernel launches and
    98 ms of CPU time for 62 ms of GPU work per paper step) and compiling fuses most of them.
    On this project's 2-core CPU compiling the tiny UNet's step took 52 s and made it 5 %
    faster (113.5 -> 107.6 ms at batch 64, 16 px): it would not pay back within a 1,500-step
    run, so CPUs stay eager.
    """
    return device.type == "cuda" if cfg.compile is None else cfg.compile


def build_state(
    cfg: TrainConfig, accelerator: Accelerator, channels: int, resolution: int, total_steps: int
) -> TrainState:
    """A fresh UNet (initialised from torch's global RNG), AdamW, LR schedule and EMA.

    On CUDA the update is fused: AdamW's ``fused`` kernels (one launch per step instead of
    several per parameter, and GradScaler's inf check without a host sync) and the EMA as
    ``foreach`` ops. On a CPU both keep their per-parameter forms, which are bit-for-bit what
    0.1.0 trained, so runs and the committed CPU results reproduce exactly.
    """
    cuda = accelerator.device.type == "cuda"
    model = build_model(cfg.model, channels, resolution)
    if cuda:
        # TF32 and autotuned algorithms for the convolutions (fixed shapes). Matmuls stay fp32:
        # the PCA/DCT bases project with them.
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if cfg.channels_last:  # off by default: GroupNorm converts NHWC back (copy kernels)
            model = model.to(memory_format=torch.channels_last)
    compiled = use_compile(cfg, accelerator.device)
    if compiled:
        model.compile(mode=cfg.compile_mode)  # in place: state_dict keys stay the same
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
        weight_decay=cfg.weight_decay, eps=cfg.adam_eps, fused=True if cuda else None,
    )  # fmt: skip
    if cfg.lr_schedule == "cosine":
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    else:
        lr_scheduler = get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMAModel(
        accelerator.unwrap_model(model).parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
        inv_gamma=cfg.ema_inv_gamma, power=cfg.ema_power, foreach=cuda,
    )  # fmt: skip
    ema.to(accelerator.device)
    graphs = cuda and compiled and cfg.compile_mode in CUDA_GRAPH_MODES
    return TrainState(
        accelerator, model, optimizer, lr_scheduler, ema, cfg.model, cuda_graphs=graphs
    )
