"""The training loop: accelerate for devices and precision, diffusers' EMA, exact resume.

Every random draw of a step (which images, flips, timesteps, noise) comes from a
generator seeded by ``(seed, step, micro-batch)`` and is drawn for the whole
global batch before each process takes its share. So a run resumed from a
checkpoint repeats the uninterrupted run, and N processes train exactly what
one process with the same global batch would.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)
from diffusers.training_utils import EMAModel
from torchvision.utils import save_image
from tqdm.auto import tqdm

from .basis import Basis, ChannelBasis, DCTBasis, PixelPCABasis, load_basis
from .checkpoint import (
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    remove_partial_checkpoints,
    restore_rng,
    save_checkpoint,
)
from .config import TrainConfig, build_process
from .data import ImageDataset, cache_dir, load_dataset
from .models import build_model, count_parameters
from .process import SqueezedDiffusion

BASIS_FIT_IMAGES = 50_000  # the paper fits on up to 50,000 training images


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


def _step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 1_009 + micro)


def fit_or_load_basis(cfg: TrainConfig, dataset: ImageDataset) -> Basis:
    """The run's basis, fitted once per dataset and option set and cached by fingerprint."""
    option = {
        "channel": "",
        "pca": f"-k{cfg.basis_k}",
        "dct": "-c" + "_".join(map(str, cfg.basis_cutoffs)),
    }
    path = (
        cache_dir()
        / "bases"
        / f"{cfg.basis}{option[cfg.basis]}-{dataset.fingerprint[:16]}.safetensors"
    )
    if path.is_file():
        return load_basis(path)
    batches = dataset.batches(1000)
    if cfg.basis == "channel":
        basis: Basis = ChannelBasis.fit(batches, max_images=BASIS_FIT_IMAGES)
    elif cfg.basis == "pca":
        basis = PixelPCABasis.fit(batches, k=cfg.basis_k, max_images=BASIS_FIT_IMAGES)
    else:
        basis = DCTBasis.fit(batches, cutoffs=cfg.basis_cutoffs, max_images=BASIS_FIT_IMAGES)
    basis.metadata.update(
        {
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint,
            "image_shape": list(dataset.shape),
        }
    )
    basis.save(path)
    return basis


def _check_basis(basis: Basis, dataset: ImageDataset, source: Path) -> None:
    meta = basis.metadata
    if meta.get("fingerprint") != dataset.fingerprint or list(meta.get("image_shape", [])) != list(
        dataset.shape
    ):
        raise ValueError(
            f"basis {source} was fitted on {meta.get('dataset')} {meta.get('image_shape')} "
            f"(fingerprint {str(meta.get('fingerprint'))[:8]}), not on this dataset "
            f"{list(dataset.shape)} ({dataset.fingerprint[:8]}); refit it or use another --out"
        )


class Trainer:
    """One run: builds everything from a config, then :meth:`run` trains to the end."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> None:
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        # cpu=True without CUDA, so that torchrun / `accelerate launch` start gloo on CPUs.
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available()
        )
        set_seed(cfg.seed)  # model initialisation and dropout; the data stream is seeded per step
        if resume is None and list_checkpoints(self.out):
            raise ValueError(
                f"{self.out} already holds a run; pass --resume latest or choose another --out"
            )
        # The data do not depend on the training seed: seeds differ only in training randomness.
        self.dataset = load_dataset(
            cfg.dataset, cfg.data_dir, resolution=cfg.resolution, subset=cfg.subset,
            download=cfg.download, skip_bad_images=cfg.skip_bad_images,
        )  # fmt: skip
        self.basis = self._basis(resume)
        self.process: SqueezedDiffusion = build_process(cfg, self.basis).to(self.accelerator.device)
        world = self.accelerator.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ValueError(
                f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum "
                f"({world} x {cfg.grad_accum}); change --batch-size"
            )
        self.micro_batch = cfg.batch_size // cfg.grad_accum
        self.steps_per_epoch = len(self.dataset) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset has {len(self.dataset)} images, fewer than one batch of {cfg.batch_size}"
            )
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.steps_per_epoch)

        channels, resolution = self.dataset.shape[0], self.dataset.shape[-1]
        model = build_model(cfg.model, channels, resolution)
        if self.accelerator.device.type == "cuda":
            # TF32 and autotuned algorithms for the convolutions (fixed shapes) and NHWC
            # layout for tensor cores. Matmuls stay fp32: the PCA/DCT bases project with them.
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:
            model.compile()  # in place: parameter names and state_dict keys stay the same
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
            weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
        )  # fmt: skip
        make_schedule = get_cosine_schedule_with_warmup if cfg.lr_schedule == "cosine" else None
        self.lr_scheduler = (
            make_schedule(optimizer, cfg.warmup_steps, self.total_steps)
            if make_schedule
            else get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = EMAModel(
            self.unwrapped.parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
            inv_gamma=cfg.ema_inv_gamma, power=cfg.ema_power,
        )  # fmt: skip
        self.ema.to(self.accelerator.device)
        self.step = 0
        self._perm: tuple[int, torch.Tensor] | None = None
        self.stop_signal: int | None = None
        self.skipped_batches = 0
        if resume is not None:
            self._resume(resume)
        elif self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")
            self.basis.save(self.out / "basis.safetensors")
        if self.accelerator.is_main_process:
            remove_partial_checkpoints(self.out)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # -- set-up -----------------------------------------------------------------------
    def _basis(self, resume: str | None) -> Basis:
        own = self.out / "basis.safetensors"
        if resume is not None and own.is_file():
            basis = load_basis(own)
            _check_basis(basis, self.dataset, own)
            return basis
        return fit_or_load_basis(self.cfg, self.dataset)

    def _resume(self, which: str) -> None:
        ckpt = find_checkpoint(self.out, which)
        data = load_checkpoint(ckpt)
        load_weights(self.unwrapped, data["model"], ckpt)
        ema_model = build_model(self.cfg.model, self.dataset.shape[0], self.dataset.shape[-1])
        load_weights(ema_model, data["ema"], ckpt)
        self.ema.shadow_params = [
            p.detach().clone().to(self.accelerator.device) for p in ema_model.parameters()
        ]
        self.optimizer.load_state_dict(data["optimizer"]["optimizer"])
        self.lr_scheduler.load_state_dict(data["optimizer"]["lr_scheduler"])
        self.ema.optimization_step = data["state"]["ema_optimization_step"]
        restore_rng(data["rng"])
        self.step = data["state"]["step"]
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines past the resumed step, so the log reads as one uninterrupted run."""
        log = self.out / "log.jsonl"
        if log.is_file() and self.accelerator.is_main_process:
            lines = [
                ln
                for ln in log.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= self.step
            ]
            log.write_text("".join(f"{ln}\n" for ln in lines))

    # -- one step ----------------------------------------------------------------------
    def _indices(self, step: int) -> torch.Tensor:
        """The global batch of step ``step``: a seeded permutation per epoch, no replacement."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed * 7_919 + epoch)
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=gen))
        return self._perm[1][pos * self.cfg.batch_size : (pos + 1) * self.cfg.batch_size]

    def _micro_batch(self, step: int, micro: int, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's share of micro-batch ``micro``: (x_t, t, target)."""
        device = self.accelerator.device
        gen = _step_generator(self.cfg.seed, step, micro, device)
        n = idx.numel()
        shape = (n, *self.dataset.shape)
        t = torch.randint(0, self.process.num_train_timesteps, (n,), generator=gen, device=device)
        noise = torch.randn(shape, generator=gen, device=device)
        flip = torch.rand(n, generator=gen, device=device) < 0.5
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        share = slice(rank * n // world, (rank + 1) * n // world)
        x0 = self._load_images(idx[share], flip[share] if self.cfg.hflip else None)
        x_t, target = self.process.add_noise(x0, noise[share], t[share])
        return x_t, t[share], target

    def _load_images(self, idx: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """Images ``idx`` as floats in [-1, 1] on the device, mirrored where ``flip``.

        Gathered and flipped as uint8 (a quarter of the bytes of floats), then converted
        once. On CUDA the gather writes pinned memory, so the copy to the GPU is
        asynchronous (the pinned block is recycled only after the copy has finished).
        """
        device = self.accelerator.device
        images = self.dataset.images
        if device.type == "cuda":
            batch = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            batch = torch.index_select(images, 0, idx, out=batch).to(device, non_blocking=True)
        else:
            batch = images[idx]
        if flip is not None:
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch.float().div_(127.5).sub_(1.0)

    def train_step(self) -> torch.Tensor:
        """One optimiser step over the global batch; returns the mean loss (on device)."""
        cfg, acc = self.cfg, self.accelerator
        idx = self._indices(self.step)
        total = torch.zeros((), device=acc.device)
        for micro, part in enumerate(idx.chunk(cfg.grad_accum)):
            last = micro == cfg.grad_accum - 1
            with nullcontext() if last else acc.no_sync(self.model):
                x_t, t, target = self._micro_batch(self.step, micro, part)
                with acc.autocast():
                    pred = self.model(x_t, t).sample
                loss = F.mse_loss(pred.float(), target.float())
                acc.backward(loss / cfg.grad_accum)
            total += loss.detach() / cfg.grad_accum
        if cfg.skip_nonfinite and not torch.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_batches += 1
            return torch.zeros_like(total)  # keep the logged mean loss finite
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unwrapped.parameters())
        return total

    # -- bookkeeping ---------------------------------------------------------------------
    def ema_state(self) -> dict[str, torch.Tensor]:
        """A full state dict with the EMA weights in place of the parameters."""
        state = dict(self.unwrapped.state_dict())
        names = [n for n, _ in self.unwrapped.named_parameters()]
        state.update(dict(zip(names, self.ema.shadow_params, strict=True)))
        return state

    def save(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        return save_checkpoint(
            self.out, self.step, model=self.unwrapped, ema_params=self.ema_state(),
            optimizer_state={
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
            },
            state={
                "ema_optimization_step": self.ema.optimization_step, "model_preset": self.cfg.model,
                "skipped_batches": self.skipped_batches, "time": time.time(),
            },
            keep=self.cfg.keep_checkpoints,
        )  # fmt: skip

    def sample_grid(self, path: Path, trajectory: Path | None = None) -> None:
        """EMA samples as a PNG grid (and optionally a denoising-trajectory strip)."""
        cfg = self.cfg
        params = list(self.unwrapped.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        frames: list[torch.Tensor] = []
        every = max(1, cfg.sample_steps // 8)

        def keep(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            if trajectory is not None and (i % every == 0 or i == cfg.sample_steps - 1):
                frames.append(x0[:4].clamp(-1, 1).cpu())

        self.unwrapped.eval()
        try:
            x = self.process.sample(
                lambda x, t: self.unwrapped(x, t).sample, (cfg.sample_num, *self.dataset.shape),
                cfg.sample_steps, cfg.sample_sampler, generator=torch.Generator().manual_seed(cfg.seed),
                progress=False, device=self.accelerator.device, callback=keep,
            )  # fmt: skip
        finally:
            self.unwrapped.train()
            self.ema.restore(params)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(
            (x.float().cpu().clamp(-1, 1) + 1) / 2, path, nrow=int(math.sqrt(cfg.sample_num)) or 1
        )
        if trajectory is not None and frames:
            strip = torch.stack(frames, 1).flatten(0, 1)  # rows: samples, columns: time
            save_image((strip + 1) / 2, trajectory, nrow=len(frames))

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> Path:
        """Train to ``total_steps``; checkpoint, log and sample along the way."""
        cfg, acc = self.cfg, self.accelerator
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (self.progress and acc.is_main_process),
            desc=f"train {cfg.variant} s={cfg.strength:g}", unit="step",
        )  # fmt: skip
        if acc.is_main_process and self.step == 0 and self.progress:
            n_params = count_parameters(self.unwrapped)
            bar.write(
                f"{cfg.model} UNet, {n_params / 1e6:.2f}M parameters; {len(self.dataset)} images"
            )
        loss_sum, window_start, window_steps = (
            torch.zeros((), device=acc.device),
            time.perf_counter(),
            0,
        )
        try:
            while self.step < self.total_steps:
                loss_sum += self.train_step()
                self.step += 1
                window_steps += 1
                bar.update(1)
                boundary = self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps
                if self.step % cfg.log_every == 0 or boundary or self.stop_signal:
                    mean_loss = float(loss_sum) / window_steps  # the only host sync
                    if not math.isfinite(mean_loss) and not cfg.skip_nonfinite:
                        raise TrainingDiverged(self._diverged_message())
                    rate = window_steps * cfg.batch_size / (time.perf_counter() - window_start)
                    record = {
                        "step": self.step,
                        "loss": mean_loss,
                        "lr": self.lr_scheduler.get_last_lr()[0],
                    }
                    self._log(
                        {**record, "images_per_s": rate, "skipped_batches": self.skipped_batches}
                    )
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                    loss_sum.zero_()
                    window_start, window_steps = time.perf_counter(), 0
                if boundary or self.stop_signal:
                    self.save()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and acc.is_main_process:
                    self.sample_grid(self.out / "samples" / f"step-{self.step:08d}.png")
                if self.stop_signal:
                    bar.write(
                        f"signal {self.stop_signal}: saved step {self.step}; resume with --resume latest"
                    )
                    break
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.step == self.total_steps and acc.is_main_process:
            self.sample_grid(
                self.out / "samples" / "final.png",
                trajectory=self.out / "samples" / "trajectory.png",
            )
        acc.wait_for_everyone()
        return self.out

    def _diverged_message(self) -> str:
        ckpts = list_checkpoints(self.out)
        last = ckpts[-1] if ckpts else "none"
        return (
            f"loss became non-finite by step {self.step}; last good checkpoint: {last}. "
            "Lower --lr, or pass --skip-nonfinite to skip such batches"
        )


def train_to_completion(cfg: TrainConfig, progress: bool = True) -> int:
    """Train ``cfg`` to its last step, resuming from the run's latest checkpoint when it has
    one (a finished run is left as it is); returns the step training started from.

    SIGINT/SIGTERM save a checkpoint and raise ``KeyboardInterrupt``, so a demo or a sweep
    stops as a whole and its rerun resumes.
    """
    resume = "latest" if list_checkpoints(cfg.out) else None
    trainer = Trainer(cfg, resume=resume, progress=progress)
    start = trainer.step
    if trainer.step < trainer.total_steps:
        trainer.run()
    if trainer.stop_signal is not None:
        raise KeyboardInterrupt(f"signal {trainer.stop_signal}; rerun to resume")
    return start
