"""The training loop: a run folder, accelerate for devices and precision, exact resume.

:class:`Trainer` wires the parts together (``config.py``: what to train; ``bases.py``: the
basis; ``batches.py``: the seeded data stream; ``state.py``: model, optimiser and EMA;
``step.py``: one optimiser step; ``checkpoint.py``: atomic checkpoints; ``monitor.py``: logs
and samples) and :func:`train_loop` runs it: log, checkpoint, sample, and stop cleanly on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..core import SAMPLERS, Basis, SqueezedDiffusion, load_basis
from ..models import count_parameters
from .bases import cached_basis, check_basis
from .batches import Batches
from .checkpoint import find_checkpoint, list_checkpoints, remove_partial_checkpoints
from .config import TrainConfig, resume_config
from .monitor import (
    check_eval_weights,
    ema_sample,
    evaluate_ema,
    sample_grid,
    start_trackers,
    track,
    track_images,
    tracker_names,
    window_record,
)
from .run import Run
from .state import build_state, use_compile
from .step import train_step


def _refuse_later_checkpoints(run_dir: Path, ckpt: Path) -> None:
    """Resuming from a checkpoint older than finished ones of the same run would leave those
    as the run's latest (what sampling and ``--resume latest`` read), from another history."""
    later = [p.name for p in list_checkpoints(run_dir) if p.name > ckpt.name]
    if later:
        raise ValueError(
            f"{run_dir} holds checkpoints after {ckpt.name} ({', '.join(later)}); resuming from "
            "it would leave them as the run's latest: delete them first, or resume latest"
        )


def _check_device(cfg: TrainConfig, device: str) -> None:
    """Settings that only a GPU honours: an error elsewhere, not a silent fp32/NCHW/eager run
    (checked before the Accelerator, whose precision cannot change once set)."""
    if cfg.compile_mode != "default" and not use_compile(cfg, torch.device(device)):
        raise ValueError(
            f"compile_mode {cfg.compile_mode!r} applies only when compiling, which is off on "
            f"{device} by default; add --compile or drop --compile-mode"
        )
    if device == "cuda":
        return
    if cfg.mixed_precision == "fp16":
        raise ValueError(
            f"mixed_precision fp16 needs CUDA (on {device} it would train in fp32); "
            "pass --mixed-precision no (or bf16)"
        )
    if cfg.channels_last:
        raise ValueError(f"channels_last applies on CUDA only, not {device}; drop --channels-last")


def _check_intervals(cfg: TrainConfig, start: int, total: int, saved: TrainConfig | None) -> None:
    """An evaluation or sample-grid interval (> 0) with no multiple among the steps this
    invocation trains, ``start + 1`` to ``total``, would never fire: an error, not a run that
    ends without what it was asked for.

    A resumed run checks only an interval that differs from its ``saved`` config: the saved
    one was checked when it was set, and a run resumed as it is (finished, or made longer)
    keeps it whether or not it fires again."""
    for name, does in (("eval_every", "evaluate"), ("sample_every", "write a sample grid")):
        every, flag = getattr(cfg, name), f"--{name.replace('_', '-')}"
        if every == 0 or (saved is not None and getattr(saved, name) == every):
            continue
        if start == total:
            raise ValueError(
                f"{flag} {every} would never {does}: the run is already at its last step "
                f"({total}); drop {flag}, or give a longer --steps/--epochs"
            )
        if total // every * every <= start:
            raise ValueError(
                f"{flag} {every} would never {does}: no step this run trains ({start + 1} to "
                f"{total}) is a multiple of it; give {flag} {total - start} or less"
            )


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


class Trainer:
    """One run: built from a config (resumed from a checkpoint if asked); :meth:`run` trains
    it to the end.

    The parts live in their own modules and this class only connects them; it is longer than
    the package's other units because the order of construction is part of exact resume
    (seed, then data, basis and process, then the model's initialisation, then the restore).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | None = None,
        progress: bool = True,
        check_intervals: bool = True,
    ) -> None:
        self.cfg, self.progress, self.run_dir = cfg, progress, Run(cfg.out)
        self.out = self.run_dir.path
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _check_device(cfg, device)
        # cpu=True without CUDA, so that torchrun / `accelerate launch` start gloo on CPUs.
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=device == "cpu",
            log_with=tracker_names(cfg.log_with) or None, project_dir=str(self.run_dir.trackers_dir),
        )  # fmt: skip
        set_seed(cfg.seed)  # model initialisation and dropout; the data stream is seeded per step
        if resume is None:
            self.run_dir.check_free()
        if cfg.batch_size % (acc.num_processes * cfg.grad_accum):
            raise ValueError(
                f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum "
                f"({acc.num_processes} x {cfg.grad_accum}); change --batch-size"
            )
        self.dataset = cfg.load_data()
        height, width = self.dataset.shape[-2:]
        if height != width:  # the UNet, its samples and every grid are square
            raise ValueError(
                f"the {self.dataset.name} images are {height}x{width} pixels, not square; pass "
                "--resolution N to centre-crop and resize them to N x N"
            )
        self.basis = self._basis(resume)
        self.process = SqueezedDiffusion.from_fields(self.basis, cfg.to_dict()).to(acc.device)
        self.batches = Batches(
            self.dataset, self.process, batch_size=cfg.batch_size, seed=cfg.seed, hflip=cfg.hflip,
            device=acc.device, rank=acc.process_index, world=acc.num_processes,
        )  # fmt: skip
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.batches.steps_per_epoch)
        check_eval_weights(cfg)  # before training and before writing the run folder
        c, res = self.dataset.shape[0], self.dataset.shape[-1]
        self.state = build_state(cfg, acc, c, res, self.total_steps)
        self.step, self.stop_signal = 0, None
        if resume is not None:
            ckpt = find_checkpoint(self.out, resume)
            if resume != "latest":  # latest passes over later ones only when they are corrupt
                _refuse_later_checkpoints(self.out, ckpt)
            self.step = self.state.restore(ckpt, c, res)
            if self.step > self.total_steps:
                raise ValueError(
                    f"the run is at step {self.step}, past the {self.total_steps} steps asked "
                    "for; give a longer --steps/--epochs (or none to keep the saved length)"
                )
        if check_intervals:  # before the folder is written
            saved = self.run_dir.config() if resume is not None else None
            _check_intervals(cfg, self.step, self.total_steps, saved)
        # read before the folder is prepared; the main process' reading, so that every
        # process evaluates or none does (one that skipped would wait in the all-reduce)
        owed = acc.is_main_process and self._evaluation_owed()
        if acc.num_processes > 1:
            owed = bool(acc.gather(torch.tensor([int(owed)], device=acc.device)).max())
        self.evaluation_owed = owed
        if acc.is_main_process:
            self._prepare_folder(resume)
        start_trackers(acc, cfg)

    def _basis(self, resume: str | None) -> Basis:
        """A new run's basis is fitted (or cached); a resumed run's is its own, which also
        shows that the data is the data it trained on."""
        if resume is None:
            return cached_basis(self.dataset, self.cfg.basis, self.cfg.basis_options)
        own = self.run_dir.basis_path
        if not own.is_file():
            raise ValueError(
                f"{own} is missing: a run resumes with the basis it trained with, which also "
                "checks its data; restore it from a copy of the run, or train anew in another --out"
            )
        basis = load_basis(own)
        check_basis(basis, self.dataset, own)
        return basis

    def _prepare_folder(self, resume: str | None) -> None:
        """A new run writes its config and basis; a resumed one rewrites its config (a longer
        run or other bookkeeping stays in force when it is resumed again) and cuts its log. A
        new run in a folder whose earlier start was stopped before its first checkpoint (it
        cannot be resumed) first clears that start's log, grids and tracker files, which would
        otherwise read as this run's."""
        self.out.mkdir(parents=True, exist_ok=True)
        dead_start = resume is None and self.run_dir.exists()  # its config.yaml came first
        self.cfg.save(self.run_dir.config_path)
        if dead_start:
            self.run_dir.log_path.unlink(missing_ok=True)
            for folder in (self.run_dir.samples_dir, self.run_dir.trackers_dir):
                shutil.rmtree(folder, ignore_errors=True)
        if resume is None:
            self.basis.save(self.run_dir.basis_path)
        else:
            self.run_dir.truncate_log(self.step)
        remove_partial_checkpoints(self.out)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.state.unwrapped

    def train_step(self) -> torch.Tensor:
        """One optimiser step over the current step's global batch; the mean loss (on device)."""
        cfg = self.cfg
        return train_step(
            self.state, self.batches, self.step, grad_accum=cfg.grad_accum,
            grad_clip=cfg.grad_clip, skip_nonfinite=cfg.skip_nonfinite,
        )  # fmt: skip

    def save(self) -> Path | None:
        return self.state.save(self.out, self.step, self.cfg.keep_checkpoints)

    def sample_grid(self, path: Path, trajectory: Path | None = None) -> torch.Tensor:
        """EMA samples (the config's grid settings) as a PNG grid, and a trajectory strip."""
        cfg = self.cfg

        def sample(num: int, callback: Any) -> torch.Tensor:
            shape = (num, *self.dataset.shape)
            return ema_sample(
                self.state,
                self.process,
                shape,
                cfg.sample_steps,
                cfg.sample_sampler,
                cfg.seed,
                callback,
                x0=cfg.sample_x0,
            )

        calls = SAMPLERS.get(cfg.sample_sampler).nfe(cfg.sample_steps)  # heun: 2 n - 1
        return sample_grid(sample, cfg.sample_num, calls, path, trajectory)

    def run(self) -> Path:
        """Train to ``total_steps``; checkpoint, log and sample along the way."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = _progress_bar(self)
        try:
            if not (self.evaluation_owed and _made_up_evaluation(self, bar)):
                train_loop(self, bar)
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.step == self.total_steps and self.accelerator.is_main_process:
            self.write_final_samples()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return self.out

    def _evaluation_owed(self) -> bool:
        """An evaluation due at the step this run resumes from that its log lacks: a signal
        stopped the run before it, or a kill during it. The checkpoint holds that step's EMA
        weights and the evaluation forks the RNG, so making it up now gives the record an
        uninterrupted run has."""
        every, step = self.cfg.eval_every, self.step
        if step == 0 or every == 0 or step % every:
            return False
        return not any(r["step"] == step and "eval" in r for r in self.run_dir.log())

    def write_final_samples(self) -> None:
        """The finished run's EMA sample grid and trajectory strip, also to the trackers."""
        run = self.run_dir
        x = self.sample_grid(run.final_samples_path, trajectory=run.trajectory_path)
        track_images(self.accelerator, "samples/final", x, self.step)

    def evaluate(self) -> dict[str, Any]:
        """Score the EMA weights now (``--eval-every``); logged and tracked by the caller."""
        return evaluate_ema(self.state, self.process, self.dataset, self.cfg, self.step)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum


def _progress_bar(trainer: Trainer) -> tqdm:
    cfg, main = trainer.cfg, trainer.accelerator.is_main_process
    bar = tqdm(
        total=trainer.total_steps, initial=trainer.step, disable=not (trainer.progress and main),
        desc=f"train {cfg.variant} s={cfg.strength:g}", unit="step",
    )  # fmt: skip
    if main and trainer.step == 0 and trainer.progress:
        n_params = count_parameters(trainer.unwrapped)
        bar.write(
            f"{cfg.model} UNet, {n_params / 1e6:.2f}M parameters; {len(trainer.dataset)} images"
        )
    return bar


def train_loop(trainer: Trainer, bar: tqdm) -> None:
    """Steps until the end or a signal; the loss is read (a host sync) only at log steps.

    A signal saves the step it is seen at (:func:`_agreed_signal`) and stops without starting
    that step's evaluation, which could outlast a scheduler's grace period; the resumed run
    makes it up before its first step. At the last step a signal changes nothing: the run
    completes.

    images/s counts training steps only: the time of checkpoints, sample grids and
    evaluations is taken out of the window they fall in."""
    cfg, acc = trainer.cfg, trainer.accelerator
    loss_sum = torch.zeros((), device=acc.device)
    window_start, window_steps = time.perf_counter(), 0
    while trainer.step < trainer.total_steps:
        loss_sum += trainer.train_step()
        trainer.step += 1
        window_steps += 1
        bar.update(1)
        step, last = trainer.step, trainer.step == trainer.total_steps
        stop = None if last else _agreed_signal(trainer, step % cfg.log_every == 0)
        boundary = step % cfg.checkpoint_every == 0 or last
        if step % cfg.log_every == 0 or boundary or stop:
            mean_loss = float(loss_sum) / window_steps
            if not math.isfinite(mean_loss) and not cfg.skip_nonfinite:
                raise TrainingDiverged(_diverged_message(trainer))
            rate = window_steps * cfg.batch_size / (time.perf_counter() - window_start)
            record = window_record(step, mean_loss, trainer.state, rate)
            if acc.is_main_process:
                trainer.run_dir.append_log(record)
            track(acc, record)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0
        grid = cfg.sample_every > 0 and step % cfg.sample_every == 0 and acc.is_main_process
        due = cfg.eval_every > 0 and step % cfg.eval_every == 0
        evaluate = due and not stop
        if boundary or stop or grid or evaluate:  # not training: kept out of images/s
            paused = _clock(acc)
            if boundary or stop:
                trainer.save()
            if grid:
                x = trainer.sample_grid(trainer.run_dir.step_samples_path(step))
                track_images(acc, "samples", x, step)
            if evaluate:
                _evaluate(trainer, bar)
            window_start += time.perf_counter() - paused
        if stop:
            skipped = " (its evaluation runs when resumed)" if due else ""
            if acc.is_main_process:
                bar.write(
                    f"signal {stop}: saved step {step}{skipped}; to resume, run the command again "
                    "(sqdm train: with --resume latest)"
                )
            break


def _made_up_evaluation(trainer: Trainer, bar: tqdm) -> bool:
    """The evaluation owed at the resumed step; whether a signal during it stops the run
    there, as every process agrees (its checkpoint is on disk: another step first could
    outlast a scheduler's grace period again, and an evaluation longer than the time between
    pre-emptions would otherwise never let the run move on). At the last step it does not."""
    _evaluate(trainer, bar)
    trainer.evaluation_owed = False
    stop = _agreed_signal(trainer, log_step=True)
    if stop is None or trainer.step == trainer.total_steps:
        return False
    trainer.stop_signal = stop
    if trainer.accelerator.is_main_process:
        bar.write(
            f"signal {stop}: stopped at step {trainer.step} after its evaluation; to resume, "
            "run the command again (sqdm train: with --resume latest)"
        )
    return True


def _agreed_signal(trainer: Trainer, log_step: bool) -> int | None:
    """The signal to stop at. One process reads its own flag at every step; several compare
    theirs at log steps, where reading the loss waits for the device anyway, so that all stop
    at the same step (one that stopped alone would leave the others waiting in the next
    step's all-reduce)."""
    acc = trainer.accelerator
    if acc.num_processes == 1:
        return trainer.stop_signal
    if not log_step:
        return None
    flags = acc.gather(torch.tensor([trainer.stop_signal or 0], device=acc.device))
    return int(flags.max()) or None


def _clock(acc: Accelerator) -> float:
    """``time.perf_counter()`` once the queued GPU work is done, so that the steps' kernels
    count as training time, not as the checkpoint, grid or evaluation that follows them."""
    if acc.device.type == "cuda":
        torch.cuda.synchronize(acc.device)
    return time.perf_counter()


def _evaluate(trainer: Trainer, bar: tqdm) -> None:
    """An evaluation on the main process, into log.jsonl and the trackers; the others wait."""
    acc = trainer.accelerator
    if acc.is_main_process:
        record = trainer.evaluate()
        trainer.run_dir.append_log(record)
        track(acc, record)
        scores = ", ".join(f"{k} {v:.4g}" for k, v in record["eval"].items())
        bar.write(f"step {record['step']}: {scores} ({record['eval_s']:.0f} s)")
    acc.wait_for_everyone()


def _diverged_message(trainer: Trainer) -> str:
    ckpts = list_checkpoints(trainer.out)
    last = ckpts[-1] if ckpts else "none"
    largest = float(trainer.process.sigma_table().max())
    scale = (  # the data are in [-1, 1]: noise far beyond that makes losses far beyond 1
        f"; or use a strength closer to 0 (its noise std reaches {largest:.3g})"
        if largest > 100
        else ""
    )
    return (
        f"loss became non-finite by step {trainer.step}; last good checkpoint: {last}. "
        f"Lower --lr (or --weight-decay), or pass --skip-nonfinite to skip such batches{scale}"
    )


class Stopped(KeyboardInterrupt):
    """Training stopped by a signal after saving a checkpoint: what ``sqdm`` exits with
    128 + ``signum`` for (143 for SIGTERM), so a scheduler sees an unfinished task."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}; rerun to resume")
        self.signum = signum


def planned_start(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """How :func:`train_to_completion` starts ``cfg``, checked before any work: from the
    folder's latest checkpoint, whose run must be this config (its length may grow), or
    anew in a free folder (:meth:`Run.check_free`)."""
    if not list_checkpoints(cfg.out):
        Run(cfg.out).check_free()
        return cfg, None
    return resume_config(Run(cfg.out).config(), cfg.to_dict()), "latest"


def train_to_completion(cfg: TrainConfig, progress: bool = True) -> int:
    """Train ``cfg`` to its last step, resuming from the run's latest checkpoint when it has
    one (a finished run is left as it is); returns the step training started from.

    SIGINT/SIGTERM save a checkpoint and raise :class:`Stopped` (a ``KeyboardInterrupt``), so
    a demo or a sweep stops as a whole and its rerun resumes.
    """
    cfg, resume = planned_start(cfg)
    # a sweep's intervals are its file's, checked on a fresh cell: a resumed one that trains no
    # step where a changed interval fires (finished, or nearly) is not an error
    trainer = Trainer(cfg, resume=resume, progress=progress, check_intervals=resume is None)
    start = trainer.step
    if trainer.step < trainer.total_steps or trainer.evaluation_owed:  # killed in the last one
        trainer.run()
    elif not trainer.run_dir.final_samples_path.is_file():  # a signal after the last checkpoint
        trainer.write_final_samples()
    if trainer.stop_signal is not None and trainer.step < trainer.total_steps:
        raise Stopped(trainer.stop_signal)  # at the last step a signal changes nothing
    return start
