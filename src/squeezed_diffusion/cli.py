"""``sqdm``: the command line. Thin: parse, validate through the registries, call the library.

User errors (bad values, missing or corrupt files) end as one line on stderr,
``sqdm: error: ...``, with exit code 2. Set ``SQDM_DEBUG=1`` for the traceback. Every choice
and its help text comes from the registry that declares it (datasets, models, bases and their
options, samplers, metrics), so the help lists what the library has.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .core import BASES, PROFILES, SAMPLERS, VARIANTS
from .core.fileio import atomic_write
from .core.process import PREDICTION_TYPES, merge_target
from .core.samplers import SAMPLE_BATCH, X0_HELP, X0_RULES


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (a one-line usage error, exit 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _seed(text: str) -> int:
    """An argparse type: a seed in [0, 2**32), what numpy and every generator here accept."""
    value = _at_least(0)(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def _path(text: str) -> str:
    """An argparse type: a non-empty path (an empty one, as from an unset shell variable,
    would silently mean the current folder, or the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a file or folder")
    return text


def _dataset_from_arg(source: str, args: argparse.Namespace):
    """A path (folder, .tar[.gz], .npy/.npz) or a registered dataset name (``--data-dir``
    says where a named one lives, and applies to nothing else: a name given with it is the
    dataset, even where a folder of that name lies here)."""
    from .data import ARRAY_SUFFIXES, DATASETS, load_dataset

    path = Path(source)
    if source not in DATASETS and args.data_dir is not None:
        raise ValueError(
            f"--data-dir applies to a dataset name, not to the path {source}; drop --data-dir"
        )
    if source in DATASETS and args.data_dir is not None:  # named, even if ./NAME exists
        name, data_dir = source, args.data_dir
    elif path.suffix.lower() in ARRAY_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{source} does not exist; check the path")
        name, data_dir = "array", path
    elif path.exists():
        name, data_dir = "imagefolder", path
    elif source in DATASETS:
        name, data_dir = source, None
    else:
        raise FileNotFoundError(
            f"{source!r} is neither an existing folder/archive/array nor a dataset name "
            f"({', '.join(DATASETS)}); check the path"
        )
    return load_dataset(
        name, data_dir, resolution=args.resolution, subset=args.max_images,
        skip_bad_images=args.skip_bad_images,
    )  # fmt: skip


def _basis_options(args: argparse.Namespace) -> dict:
    """The basis-option flags the user gave (``None`` means not given)."""
    return {
        name: getattr(args, f"basis_opt_{name}")
        for name in _all_basis_options()
        if getattr(args, f"basis_opt_{name}", None) is not None
    }


def cmd_fit_basis(args: argparse.Namespace) -> int:
    """Fit a basis on a dataset, save it, print its spectrum."""
    from .training.bases import fit_dataset_basis

    args.basis = BASES.canonical(args.basis)  # aliases as sqdm train takes them; before loading
    if args.out and args.out.endswith(("/", os.sep)):  # Path() would drop the slash
        raise IsADirectoryError(
            f"--out {args.out} names a folder, but a basis is one file: e.g. "
            f"{Path(args.out) / 'basis.safetensors'}"
        )
    _check_writable(Path(args.out or "."), "file" if args.out else "folder")
    ds = _dataset_from_arg(args.source, args)
    # by default capped as training caps it, so that both fit the same basis of the same data
    cap = {"max_images": args.max_images} if args.max_images else {}
    basis = fit_dataset_basis(
        ds, args.basis, _basis_options(args), **cap, batch_size=args.batch_size
    )
    out = Path(args.out or f"basis-{basis.name}-{ds.fingerprint[:8]}.safetensors")
    basis.save(out)
    evals = ", ".join(f"{v:.6g}" for v in basis.eigenvalues.tolist())
    print(
        f"fitted {basis.name} basis on {basis.metadata['num_images']} images of shape "
        f"{tuple(ds.shape)} ({ds.name})"
    )
    print(f"eigenvalues: [{evals}]")
    for line in basis.fit_report():
        print(line)
    print(f"wrote {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Resolve preset + flags into a config and train (or resume) a run."""
    from .training.config import refuse_inert_settings, resolve_config, resume_config
    from .training.run import Run
    from .training.trainer import Trainer, TrainingDiverged

    flags = (
        *_TRAIN_FLAGS,
        "adam_betas",
        "eval_metrics",
        "hflip",
        "download",
        "skip_bad_images",
        "skip_nonfinite",
        "compile",
        "compile_mode",
        "channels_last",
    )
    args.prediction_type = merge_target(args.prediction_type, args.target)
    overrides = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    if _basis_options(args):
        overrides["basis_options"] = _basis_options(args)
    overrides["out"] = args.out
    if args.resume:
        if args.preset:
            raise ValueError(
                "--preset does not apply to --resume: a resumed run keeps its saved config"
            )
        run = Run(args.out)
        if not run.exists():
            raise FileNotFoundError(f"cannot resume: {run.config_path} does not exist; check --out")
        cfg = resume_config(run.config(), overrides)
    else:
        cfg = resolve_config(args.preset, **overrides)
    refuse_inert_settings(cfg, overrides)
    _check_writable(Path(cfg.out), "folder")
    trainer = Trainer(cfg, resume=args.resume, progress=not args.quiet)
    if args.resume and trainer.step >= trainer.total_steps and not trainer.evaluation_owed:
        print(
            f"the run already reached its {trainer.total_steps} steps: nothing to train (a "
            "larger --steps or --epochs trains on)"
        )
    try:
        out = trainer.run()
    except TrainingDiverged as err:
        print(f"sqdm: error: {err}", file=sys.stderr)
        return 1
    if trainer.stop_signal is not None:
        if trainer.step < trainer.total_steps:  # saved and stopped early: not a finished run
            return 128 + trainer.stop_signal
        print(f"signal {trainer.stop_signal} came at the last step: the run is finished")
    print(f"run folder: {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample a trained run to PNG files or an .npz."""
    from .evaluation.generate import generate_all, samples_format, save_samples

    out = Path(args.out)
    _check_writable(out, "folder" if samples_format(out) == "folder" else "file")
    _fill_sampling_defaults(args)
    start = time.perf_counter()
    images = generate_all(
        args.run, args.num, steps=args.steps, sampler=args.sampler, seed=args.seed,
        batch_size=args.sample_batch_size, ema=not args.no_ema, eta=args.eta, x0=args.x0,
        progress=not args.quiet,
    )  # fmt: skip
    if images is not None:  # the main process writes
        rate = len(images) / (time.perf_counter() - start)
        print(f"wrote {len(images)} samples to {save_samples(images, out)} ({rate:.1f} images/s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """What squeezing does, why the exact samplers matter, and a short isotropic-vs-SDM
    training run, as one HTML page."""
    from .demo import run_demo

    out = Path(args.out or ("runs/demo-full" if args.full else "runs/demo"))
    _check_writable(out, "folder")
    report = run_demo(out, full=args.full, progress=not args.quiet)
    print(f"report: {report.resolve()}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a run (sampled on the fly) or a folder/.npz of samples against a dataset."""
    from .evaluation.generate import evaluate_run
    from .metrics import (
        check_scoring,
        evaluate,
        extractors_for,
        load_samples,
        parse_feature_weights,
    )
    from .training.run import Run

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    weights = parse_feature_weights(
        args.feature_weights, extractors_for(metrics, args.prc_extractor)
    )
    options = {
        "metrics": metrics, "num_reference": args.num_reference, "feature_weights": weights,
        "prc_extractor": args.prc_extractor, "batch_size": args.batch_size,
    }  # fmt: skip
    check_scoring(
        metrics, args.prc_extractor, weights, args.batch_size,
        spell=lambda option: f"--{option.replace('_', '-')}",
    )  # fmt: skip
    if args.out:
        _check_writable(Path(args.out), "file")
        _refuse_out_over_inputs(Path(args.out), args.source, args.reference, args.data_dir)
    if not Path(args.source).exists():
        raise FileNotFoundError(
            f"{args.source} does not exist; pass a run folder or a folder/.npz of samples"
        )
    is_run = Run(args.source).exists()
    if not is_run and args.reference is None:
        fix = Run(args.source).runs_inside_hint() or "pass --reference DATASET_OR_PATH"
        raise ValueError(f"{args.source} is not a run folder: {fix}")
    if args.reference is None and (args.data_dir or args.resolution):
        raise ValueError(
            "--data-dir and --resolution describe --reference (a run's default reference is "
            "the images it trained on); add --reference or drop them"
        )
    given = [f"--{k.replace('_', '-')}" for k in SAMPLING_DEFAULTS if getattr(args, k) is not None]
    if not is_run and given:
        raise ValueError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to sampling a run; "
            f"{args.source} holds samples: drop {'it' if len(given) == 1 else 'them'}"
        )
    _fill_sampling_defaults(args)
    reference = _dataset_from_arg(args.reference, args) if args.reference else None
    if is_run:
        result = evaluate_run(
            args.source, args.num, args.steps, args.sampler, args.seed, reference=reference,
            sample_batch_size=args.sample_batch_size, eta=args.eta, x0=args.x0,
            progress=not args.quiet, **options,
        )  # fmt: skip
    else:
        result = evaluate(load_samples(args.source), reference, verbose=not args.quiet, **options)
    for key, name in result["feature_extractor"].items():
        print(f"{key:>16} = {result[key]:.6g}   [{name}]")
    print(f"{result['num_samples']} samples vs {result['num_reference']} reference images")
    if args.out:
        atomic_write(args.out, json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train, sample and evaluate this shard's cells of a sweep; rebuild the results table."""
    from .evaluation.sweep import (
        cell_status,
        check_trained,
        collected_rows,
        is_finished,
        load_sweep,
        parse_shard,
        run_sweep,
        shard,
        shard_from_environment,
        write_tables,
    )  # fmt: skip

    if args.collect and (args.list or args.shard):
        raise ValueError(
            "--collect rebuilds the table of the whole sweep's finished evaluations: it takes "
            "neither --list nor --shard"
        )
    if args.shard:
        index, count = parse_shard(args.shard)
    else:  # --collect reads every cell, whatever array task runs it
        index, count = (0, 1) if args.collect else shard_from_environment(os.environ)
    data = {"data_dir": args.data_dir, "download": args.download or None}
    data = {k: v for k, v in data.items() if v is not None}
    if data and (args.list or args.collect):
        raise ValueError(
            "--data-dir and --download apply where cells train and evaluate, not to --list "
            "or --collect; drop them"
        )
    out = Path(args.out or Path("runs") / "sweeps" / Path(args.sweep).stem)
    sweep = load_sweep(args.sweep, out, data)
    check_trained(sweep.cells)  # the folder's runs are this file's, before any listing or work
    mine = shard(sweep.cells, index, count)
    if args.list:
        for cell in mine:
            status = cell_status(cell, sweep.eval)
            print("done  " + cell.id if status == "done" else f"todo  {cell.id}  ({status})")
        print(f"{len(mine)} of {len(sweep.cells)} cells in shard {index}/{count}")
        return 0
    _check_writable(out, "folder")
    if args.collect:
        rows = collected_rows(sweep)
        if not rows:  # a wrong --out or edited eval settings: keep the tables as they are
            raise ValueError(
                f"no finished evaluation of {sweep.name} under {out} with the sweep file's eval "
                "settings: check --out and the file's eval section; nothing written"
            )
        write_tables(rows, out)
    else:
        rows = run_sweep(sweep, out, index, count, progress=not args.quiet)
    done = sum(is_finished(c, sweep.eval) for c in sweep.cells)
    print(f"{done} of {len(sweep.cells)} cells finished; {len(rows)} rows in {out / 'results.csv'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Markdown and self-contained HTML report of a sweep's results."""
    from .evaluation.report import write_report

    if args.out:
        _check_writable(Path(args.out), "folder")
    md, page = write_report(args.results, args.out)
    print(f"wrote {md} and {page}")
    return 0


def _refuse_out_over_inputs(out: Path, *inputs: str | None) -> None:
    """``--out`` may not be what is read (a samples file, the reference) or a file of it (a
    run's log, a sample): writing would replace it. A JSON file inside (an earlier result)
    may be, and a new file inside is fine."""
    target = out.resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        owned = source in target.parents and target.is_file() and target.suffix != ".json"
        if target == source or owned:
            where = "is" if target == source else "is a file of"
            raise ValueError(
                f"--out {out} {where} the input {given}, which writing it would replace; "
                "choose another path"
            )


def _check_writable(path: Path, kind: str) -> None:
    """Fail before any work unless ``--out`` can be written as ``kind`` (``"file"`` or
    ``"folder"``): not an existing entry of the other kind, and the nearest existing ancestor
    a writable folder, tried with a temporary file, since permission bits do not stop root and
    some folders (``/proc``, read-only mounts) refuse files whatever they say."""
    if kind == "file" and path.is_dir():
        raise IsADirectoryError(
            f"--out {path} is a folder, but this output is one file: choose a file name"
        )
    if kind == "folder" and path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"--out {path} is a file, but this output is a folder: choose another name"
        )
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if parent == path and path.is_file():
        parent = path.parent  # overwriting an existing output file
    try:
        if not parent.is_dir():
            raise NotADirectoryError(parent)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError:
        raise PermissionError(
            f"cannot write to {path}: {parent} is not a writable folder; choose another output path"
        ) from None


def _choices(names: Sequence[str]) -> str:
    return ", ".join(names)


def _all_basis_options() -> dict:
    """Every registered basis' fitting options by name (one flag each)."""
    return {name: opt for _, cls in BASES.items() for name, opt in cls.options.items()}


def _add_basis_options(parser: argparse.ArgumentParser, prefixes: Sequence[str]) -> None:
    """One flag per basis option, under each prefix (``fit-basis`` takes ``--k`` and, as
    ``train`` spells it, ``--basis-k``)."""
    for name, opt in _all_basis_options().items():
        parser.add_argument(
            *(f"--{prefix}{name.replace('_', '-')}" for prefix in prefixes),
            dest=f"basis_opt_{name}", type=opt.type,
            nargs="+" if opt.multiple else None, help=f"{opt.help}; default {opt.default}",
        )  # fmt: skip


def _train_flags() -> dict[str, tuple[type, str]]:
    from .core.process import BETA_SCHEDULES
    from .data import DATASETS
    from .models import PRESETS
    from .training.config import LR_SCHEDULES, PRECISIONS, TRACKERS

    return {
        "dataset": (str, _choices(DATASETS)),
        "data_dir": (str, "where the dataset lives (file or folder)"),
        "resolution": (int, "resize images to R x R"),
        "subset": (int, "use the first N images"),
        "model": (str, "UNet preset: " + _choices(PRESETS)),
        "variant": (str, _choices(VARIANTS)),
        "strength": (float, "squeeze strength s (< 0 antisqueezes)"),
        "profile": (str, _choices(PROFILES) + " (beta: the paper's)"),
        "basis": (str, BASES.help()),
        "prediction_type": (
            str,
            "what the UNet predicts: "
            + "; ".join(f"{k}: {v}" for k, v in PREDICTION_TYPES.items()),
        ),
        "steps": (int, "training length in optimiser steps"),
        "epochs": (float, "training length in epochs"),
        "batch_size": (int, "global batch per optimiser step"),
        "grad_accum": (int, "gradient accumulation micro-batches"),
        "num_train_timesteps": (int, "diffusion steps T (1000)"),
        "beta_schedule": (str, "diffusers' beta schedule: " + _choices(BETA_SCHEDULES)),
        "lr": (float, "AdamW learning rate"),
        "weight_decay": (float, "AdamW weight decay"),
        "adam_eps": (float, "AdamW epsilon"),
        "lr_schedule": (str, _choices(LR_SCHEDULES) + " (after the warm-up)"),
        "warmup_steps": (int, "LR warm-up steps"),
        "grad_clip": (float, "gradient-norm clipping (0: none)"),
        "mixed_precision": (str, _choices(PRECISIONS)),
        "ema_decay": (float, "EMA decay, in [0, 1)"),
        "ema_inv_gamma": (float, "EMA warm-up inv_gamma (> 0)"),
        "ema_power": (float, "EMA warm-up power (> 0)"),
        "seed": (int, "random seed"),
        "checkpoint_every": (int, "steps between checkpoints"),
        "keep_checkpoints": (int, "keep the newest N checkpoints"),
        "log_every": (int, "steps between log lines"),
        "sample_every": (int, "steps between sample grids (0: only at the end)"),
        "sample_num": (int, "images in each sample grid"),
        "sample_steps": (int, "sampling steps for the grids"),
        "sample_sampler": (str, "sampler for the grids: " + _choices(SAMPLERS)),
        "sample_x0": (str, "the grids' rule for the predicted x_0: " + _choices(X0_RULES)),
        "log_with": (
            str,
            "trackers through accelerate: "
            + _choices([t for t in TRACKERS if t])
            + " (WANDB_MODE=offline works)",
        ),
        "eval_every": (int, "steps between evaluations of the EMA weights, logged (0: none)"),
        "eval_num": (int, "samples per evaluation (default 500)"),
        "eval_steps": (int, "sampling steps per evaluation (default 50)"),
        "eval_sampler": (str, "sampler of the evaluations (default ddpm)"),
        "eval_x0": (str, "the evaluations' rule for the predicted x_0: " + _choices(X0_RULES)),
        "eval_num_reference": (
            int,
            "training images the evaluations compare with (default 5000; all of them when "
            "the data has fewer, as log.jsonl records)",
        ),
    }


_TRAIN_FLAGS = tuple(_train_flags())


def _add_fit_basis(sub: argparse._SubParsersAction) -> None:
    from .training.bases import BASIS_FIT_IMAGES

    fit = sub.add_parser("fit-basis", help="fit a registered basis on a dataset and save it")
    fit.add_argument(
        "source", help="image folder, .tar/.tar.gz of images, .npy/.npz array, or dataset name"
    )
    fit.add_argument("--basis", default="channel", help=BASES.help() + " (default channel)")
    _add_basis_options(fit, prefixes=("", "basis-"))
    fit.add_argument("--data-dir", help="where a named dataset lives")
    fit.add_argument("--resolution", type=_at_least(1), help="resize images to R x R first")
    fit.add_argument(
        "--max-images", "--subset", type=_at_least(2),
        help=f"use the first N images (default: the first {BASIS_FIT_IMAGES:,}, as training "
        "fits its basis; the paper's CIFAR sets have 50,000)",
    )  # fmt: skip
    fit.add_argument(
        "--batch-size", type=_at_least(1), default=1000,
        help="images per batch of the fit's running sums (default 1000)",
    )  # fmt: skip
    fit.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable files (counted)"
    )
    fit.add_argument(
        "--out",
        type=_path,
        help="basis file to write (default: basis-KIND-FINGERPRINT.safetensors)",
    )
    fit.set_defaults(func=cmd_fit_basis)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training.config import COMPILE_MODES, preset_names

    tr = sub.add_parser("train", help="train a (squeezed) diffusion model; resumable")
    tr.add_argument("--preset", help=_choices(preset_names()) + "; flags override")
    tr.add_argument("--out", type=_path, required=True, help="run folder")
    tr.add_argument(
        "--resume",
        metavar="latest|PATH",
        type=_path,
        help="continue from the newest or a given checkpoint",
    )
    for name, (kind, text) in _train_flags().items():
        tr.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    tr.add_argument(
        "--eval-metrics", type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        help="comma list of metrics for --eval-every (default fd_effnet; any of sqdm evaluate's)",
    )  # fmt: skip
    tr.add_argument(
        "--adam-betas", dest="adam_betas", type=float, nargs=2, help="AdamW betas, each in [0, 1)"
    )
    tr.add_argument(
        "--target",
        help="0.1.0's name of --prediction-type (squeezed = epsilon, unit = unit_epsilon)",
    )
    _add_basis_options(tr, prefixes=("basis-",))
    switches = {
        "--no-hflip": ("hflip", False, "no random flips"),
        "--download": ("download", True, "download torchvision datasets"),
        "--skip-bad-images": ("skip_bad_images", True, "skip unreadable images"),
        "--skip-nonfinite": ("skip_nonfinite", True, "skip NaN/inf batches"),
    }
    for flag, (dest, const, text) in switches.items():
        tr.add_argument(flag, dest=dest, action="store_const", const=const, help=text)
    tr.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the UNet (default: on with CUDA, off on CPUs)",
    )  # fmt: skip
    tr.add_argument("--compile-mode", help="torch.compile mode: " + _choices(COMPILE_MODES))
    tr.add_argument("--channels-last", action="store_const", const=True, help="NHWC layout on CUDA")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)


# The options shared by every command that samples a run, and their defaults: the flags
# default to None so that `evaluate` can refuse them for samples it does not draw.
SAMPLING_DEFAULTS = {
    "num": None, "steps": 50, "sampler": "ddpm", "eta": 0.0, "x0": "clip", "seed": 0,
    "sample_batch_size": SAMPLE_BATCH,
}  # fmt: skip


def _add_sampling_options(
    parser: argparse.ArgumentParser, num: int, least: int, batch_flags: tuple[str, ...]
) -> None:
    """``num``: the default sample count, ``least`` the fewest allowed (the metrics need 2);
    ``batch_flags``: the sampling batch's option strings."""
    parser.add_argument("--num", type=_at_least(least), help=f"samples to draw (default {num:,})")
    parser.add_argument("--steps", type=_at_least(1), help="sampling steps (default 50)")
    parser.add_argument("--sampler", help=SAMPLERS.help() + " (default ddpm)")
    takes_eta = _choices([name for name, s in SAMPLERS.items() if s.uses_eta])
    parser.add_argument("--eta", type=float, help=f"eta in [0, 1] ({takes_eta} only; default 0)")
    parser.add_argument("--x0", choices=X0_RULES, help=f"the predicted x_0's rule: {X0_HELP}")
    parser.add_argument("--seed", type=_seed, help="sampling seed (default 0)")
    parser.add_argument(
        *batch_flags, dest="sample_batch_size", type=_at_least(1),
        help="images per sampling batch (default 256)",
    )  # fmt: skip
    parser.set_defaults(default_num=num)


def _fill_sampling_defaults(args: argparse.Namespace) -> None:
    """The defaults of the sampling options that were not given; ``--eta`` given to a
    sampler that takes none is refused, even at 0, as an ignored flag would be."""
    sampler = SAMPLERS.get(args.sampler or SAMPLING_DEFAULTS["sampler"], None)
    if args.eta is not None and sampler is not None and not sampler.uses_eta:
        takes = [name for name, s in SAMPLERS.items() if s.uses_eta]
        given = (
            f"--sampler {sampler.name}" if args.sampler else f"the default sampler {sampler.name}"
        )
        raise ValueError(
            f"--eta given with {given}, which takes none (eta applies to {', '.join(takes)}): "
            f"drop it{'' if args.sampler else f', or pass --sampler {takes[0]}'}"
        )
    for name, default in {**SAMPLING_DEFAULTS, "num": args.default_num}.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    sm = sub.add_parser("sample", help="draw samples from a trained run (EMA weights)")
    sm.add_argument("run", help="run folder written by sqdm train")
    _add_sampling_options(sm, num=64, least=1, batch_flags=("--batch-size", "--sample-batch-size"))
    sm.add_argument("--no-ema", action="store_true", help="use the raw weights")
    sm.add_argument(
        "--out", type=_path, required=True,
        help="a new (or empty) folder for PNGs, a .npz or .npy file (what sqdm evaluate "
        "scores), or a .png/.jpg/.jpeg file: one grid of all samples, to look at (an existing "
        "file is replaced once the samples are drawn)",
    )  # fmt: skip
    sm.add_argument("--quiet", action="store_true", help="no progress bar")
    sm.set_defaults(func=cmd_sample)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from .metrics import (
        DEFAULT_FEATURE_BATCH,
        DEFAULT_PRC_EXTRACTOR,
        EXTRACTORS,
        METRICS,
        OFFLINE_METRICS,
        PRC_EXTRACTORS,
    )

    ev = sub.add_parser(
        "evaluate", help="FID/IS/KID/precision-recall, or offline fd_effnet, of a run or samples"
    )
    ev.add_argument("source", help="run folder (sampled on the fly) or a folder/.npz of samples")
    ev.add_argument(
        "--reference", help="dataset name or path (default for a run: the images it trained on)"
    )
    ev.add_argument("--data-dir", help="where a named reference dataset lives")
    ev.add_argument("--resolution", type=_at_least(1), help="resize the reference to R x R")
    ev.add_argument(
        "--metrics", default=",".join(OFFLINE_METRICS),
        help="comma list of " + METRICS.help() + f" (default: {','.join(OFFLINE_METRICS)}; the paper: fid,isc,prc)",
    )  # fmt: skip
    ev.add_argument(
        "--num-reference",
        type=_at_least(2),
        help="seeded random subset of the reference (default: all)",
    )
    _add_sampling_options(ev, num=10_000, least=2, batch_flags=("--sample-batch-size",))
    ev.add_argument(
        "--feature-weights", action="append", default=[], metavar="[NAME=]PATH",
        help=f"weights file for {_choices(EXTRACTORS)} (NAME= needed when several are used)",
    )  # fmt: skip
    ev.add_argument(
        "--prc-extractor", choices=PRC_EXTRACTORS,
        help=f"features for prc (default: {DEFAULT_PRC_EXTRACTOR}, torch-fidelity's)",
    )  # fmt: skip
    ev.add_argument(
        "--batch-size", type=_at_least(1),
        help=f"images per feature-extraction batch (default {DEFAULT_FEATURE_BATCH}; sampling: "
        "--sample-batch-size)",
    )  # fmt: skip
    ev.add_argument("--out", type=_path, help="write the results as JSON")
    ev.add_argument(
        "--quiet", action="store_true", help="no progress bars or torch-fidelity output"
    )
    ev.set_defaults(func=cmd_evaluate, max_images=None, skip_bad_images=False)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    dm = sub.add_parser(
        "demo",
        help="offline demo in a few minutes: what squeezing does, why exact samplers matter, a short training run",
    )
    dm.add_argument(
        "--out", type=_path, help="output folder (default runs/demo, runs/demo-full with --full)"
    )
    dm.add_argument(
        "--full",
        action="store_true",
        help="longer training (3 x 5,000 steps of the tiny UNet), more strengths (about 40 min "
        "on 2 cores)",
    )
    dm.add_argument("--quiet", action="store_true", help="no progress bars")
    dm.set_defaults(func=cmd_demo)


def _add_sweep_and_report(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser(
        "sweep", help="run a grid of trainings + evaluations (resumable, shardable)"
    )
    sw.add_argument("sweep", help="sweep YAML file, or a shipped sweep (e.g. local-cifar10)")
    sw.add_argument(
        "--shard", metavar="i/n",
        help="run every n-th cell from i (default: the job-array task of SLURM_ARRAY_TASK_ID and "
        "SLURM_ARRAY_TASK_COUNT when set, else all cells)",
    )  # fmt: skip
    sw.add_argument(
        "--collect",
        action="store_true",
        help="only rebuild results.csv/json from the sweep's finished evaluations",
    )
    sw.add_argument("--out", type=_path, help="sweep folder (default: runs/sweeps/NAME)")
    sw.add_argument(
        "--data-dir",
        help="where the datasets live, for every cell (replaces the file's base.data_dir; a "
        "named dataset's torchvision root, e.g. the folder holding cifar-10-batches-py)",
    )
    sw.add_argument(
        "--download",
        action="store_true",
        help="download torchvision datasets missing under --data-dir (base.download)",
    )
    sw.add_argument("--list", action="store_true", help="list this shard's cells and stop")
    sw.add_argument("--quiet", action="store_true", help="no progress bars or per-cell lines")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="markdown + HTML report of a sweep's results")
    rp.add_argument("results", help="sweep folder or its results.json")
    rp.add_argument("--out", type=_path, help="report folder (default: beside results.json)")
    rp.set_defaults(func=cmd_report)


# Negative numbers in every spelling, and a negative shard (-1/2, refused by its own check).
_NEGATIVE_NUMBER = re.compile(
    r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$|^-\d+/\d+$", re.I
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as one-line ``ValueError``s like every other
    user error (``main`` prints them, exit 2), and negative numbers in every spelling read
    as values: argparse knows only ``-4`` and ``-.4``, so ``--strength -4e-1`` or ``-inf``
    failed with "expected one argument" instead of being read (and range-checked)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sqdm", description="Squeezed Diffusion Models: fit bases, train, sample and evaluate."
    )
    parser.add_argument("--version", action="version", version=f"sqdm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_fit_basis,
        _add_train,
        _add_sample,
        _add_demo,
        _add_evaluate,
        _add_sweep_and_report,
    ):
        add(sub)
    for listed in sub._choices_actions:  # `sqdm COMMAND --help` opens with the listing's line
        command = sub.choices[listed.dest]
        command.description = command.description or listed.help
    return parser


def _refuse_options_before_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``sqdm --lr 1 train ...``: argparse would read ``1`` as the command and call it an
    invalid choice; say instead where a command's options go."""
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    first = next((i for i, arg in enumerate(argv) if arg in commands), None)
    early = [
        a for a in argv[:first] if a.startswith("-") and a not in ("-h", "--help", "--version")
    ]
    if first is not None and early:
        raise ValueError(
            f"{' '.join(argv[:first])} given before the command: a command's options go after "
            f"it (sqdm {argv[first]} {' '.join(argv[:first])} ...)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    def one_line(message: Warning | str, *_: Any, **__: Any) -> None:
        """Python's format (source path, then the code line) reads like a traceback."""
        print(f"sqdm: warning: {' '.join(str(message).splitlines())}", file=sys.stderr)

    shown, warnings.showwarning = warnings.showwarning, one_line
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser()
        _refuse_options_before_command(parser, argv)
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named with the command they were given to, whose help lists its options
            raise ValueError(
                f"unrecognized arguments: {' '.join(unknown)} (see sqdm {args.command} --help)"
            )
        return args.func(args)
    except (ValueError, OSError) as err:  # user errors: one line, no traceback
        if os.environ.get("SQDM_DEBUG"):
            raise
        # a library's message (tarfile's, say) quoted inside one of ours may span lines
        print(f"sqdm: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # sizes asked for beyond the machine
        oom = isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"  # torch's
        if not oom or os.environ.get("SQDM_DEBUG"):
            raise
        what = " ".join(str(err).splitlines()[:1]) or type(err).__name__
        print(
            f"sqdm: error: out of memory ({what}); ask for less: a smaller --batch-size, "
            "--sample-batch-size, --num, --resolution or --subset",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C, or training.trainer.Stopped by a signal
        signum = getattr(err, "signum", None)
        if signum is None:
            print("sqdm: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        print(f"sqdm: stopped by signal {signum}; run the same command again to resume",
              file=sys.stderr)  # fmt: skip
        return 128 + signum
    finally:  # main() may run inside another program (tests, a notebook): leave its hook
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
