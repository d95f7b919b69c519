"""``sqdm``: the command line. Thin: parse, validate, call the library, report.

User errors (bad values, missing or corrupt files) end as one line on stderr,
``sqdm: error: ...``, with exit code 2. Set ``SQDM_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__


def _dataset_from_arg(source: str, args: argparse.Namespace):
    """A path (folder, .tar[.gz], .npy/.npz) or a registered dataset name."""
    from .data import DATASETS, load_dataset

    path = Path(source)
    if path.suffix in (".npy", ".npz"):
        name, data_dir = "array", path
    elif path.exists():
        name, data_dir = "imagefolder", path
    elif source in DATASETS:
        name, data_dir = source, args.data_dir
    else:
        raise FileNotFoundError(
            f"{source!r} is neither an existing folder/archive/array nor a dataset name "
            f"({', '.join(DATASETS)}); check the path"
        )
    return load_dataset(
        name,
        data_dir,
        resolution=args.resolution,
        subset=args.max_images,
        skip_bad_images=args.skip_bad_images,
    )


def cmd_fit_basis(args: argparse.Namespace) -> int:
    """Fit a basis on a dataset, save it, print its spectrum."""
    from .basis import ChannelBasis, DCTBasis, PixelPCABasis

    ds = _dataset_from_arg(args.source, args)
    batches = ds.batches(args.batch_size)
    if args.basis == "channel":
        basis = ChannelBasis.fit(batches)
    elif args.basis == "pca":
        basis = PixelPCABasis.fit(batches, k=args.k)
    else:
        basis = DCTBasis.fit(batches, cutoffs=args.cutoffs)
    basis.metadata.update(
        {
            "dataset": ds.name,
            "fingerprint": ds.fingerprint,
            "image_shape": list(ds.shape),
            "num_images": len(ds),
        }
    )
    out = Path(args.out or f"basis-{args.basis}-{ds.fingerprint[:8]}.safetensors")
    basis.save(out)
    evals = ", ".join(f"{v:.6g}" for v in basis.eigenvalues.tolist())
    print(f"fitted {args.basis} basis on {len(ds)} images of shape {tuple(ds.shape)} ({ds.name})")
    print(f"eigenvalues: [{evals}]")
    if isinstance(basis, ChannelBasis):
        print(f"direction: [{', '.join(f'{v:.6f}' for v in basis.direction.tolist())}]")
    print(f"wrote {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Resolve preset + flags into a config and train (or resume) a run."""
    from .config import TrainConfig, resolve_config
    from .train import Trainer, TrainingDiverged

    flags = (*_TRAIN_FLAGS, "hflip", "download", "skip_bad_images", "skip_nonfinite", "compile")
    overrides = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    overrides["out"] = args.out
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} does not exist; check --out")
        cfg = TrainConfig.load(saved)
        for key in ("steps", "epochs"):
            if key in overrides:
                setattr(cfg, key, overrides[key])
                setattr(cfg, "epochs" if key == "steps" else "steps", None)
        cfg.validate()
    else:
        cfg = resolve_config(args.preset, **overrides)
    _check_writable(Path(cfg.out))
    trainer = Trainer(cfg, resume=args.resume, progress=not args.quiet)
    try:
        out = trainer.run()
    except TrainingDiverged as err:
        print(f"sqdm: error: {err}", file=sys.stderr)
        return 1
    if trainer.stop_signal is not None:  # saved and stopped early: not a finished run
        return 128 + trainer.stop_signal
    print(f"run folder: {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample a trained run to PNG files or an .npz."""
    from .generate import generate_all, save_samples

    out = Path(args.out)
    _check_writable(out)
    images = generate_all(
        args.run, args.num, steps=args.steps, sampler=args.sampler, seed=args.seed,
        batch_size=args.batch_size, ema=not args.no_ema, eta=args.eta, progress=not args.quiet,
    )  # fmt: skip
    if images is not None:  # the main process writes
        print(f"wrote {len(images)} samples to {save_samples(images, out)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Isotropic vs SDM vs HDM on the built-in photos, with a report."""
    from .demo import run_demo

    _check_writable(Path(args.out))
    report = run_demo(args.out, num_samples=args.num_samples, progress=not args.quiet)
    print(f"report: {report}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a run (sampled on the fly) or a folder/.npz of samples against a dataset."""
    import json

    from .metrics import (
        evaluate,
        evaluate_run,
        extractors_for,
        load_samples,
        parse_feature_weights,
    )

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    weights = parse_feature_weights(
        args.feature_weights, extractors_for(metrics, args.prc_extractor)
    )
    if args.out:
        _check_writable(Path(args.out))
    is_run = (Path(args.source) / "config.yaml").is_file()
    if not is_run and args.reference is None:
        raise ValueError(f"{args.source} is not a run folder: pass --reference DATASET_OR_PATH")
    reference = _dataset_from_arg(args.reference, args) if args.reference else None
    options = {
        "metrics": metrics, "num_reference": args.num_reference, "feature_weights": weights,
        "prc_extractor": args.prc_extractor, "batch_size": args.batch_size,
    }  # fmt: skip
    if is_run:
        result = evaluate_run(
            args.source, args.num, args.steps, args.sampler, args.seed, reference=reference,
            sample_batch_size=args.sample_batch_size, progress=not args.quiet, **options,
        )  # fmt: skip
    else:
        result = evaluate(load_samples(args.source), reference, verbose=not args.quiet, **options)
    for key, name in result["feature_extractor"].items():
        print(f"{key:>16} = {result[key]:.6g}   [{name}]")
    print(f"{result['num_samples']} samples vs {result['num_reference']} reference images")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train, sample and evaluate this shard's cells of a sweep; rebuild the results table."""
    from .sweep import is_finished, load_sweep, parse_shard, run_sweep, shard

    index, count = parse_shard(args.shard)
    out = Path(args.out or Path("runs") / "sweeps" / Path(args.sweep).stem)
    sweep = load_sweep(args.sweep, out)
    mine = shard(sweep.cells, index, count)
    if args.list:
        for cell in mine:
            print(f"{'done' if is_finished(cell) else 'todo'}  {cell.id}")
        print(f"{len(mine)} of {len(sweep.cells)} cells in shard {index}/{count}")
        return 0
    _check_writable(out)
    rows = run_sweep(sweep, out, index, count, progress=not args.quiet)
    done = sum(is_finished(c) for c in sweep.cells)
    print(f"{done} of {len(sweep.cells)} cells finished; {len(rows)} rows in {out / 'results.csv'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Markdown and self-contained HTML report of a sweep's results."""
    from .report import write_report

    if args.out:
        _check_writable(Path(args.out))
    md, page = write_report(args.results, args.out)
    print(f"wrote {md} and {page}")
    return 0


def _check_writable(path: Path) -> None:
    """Fail before any work unless the nearest existing ancestor is a writable folder."""
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if parent == path and path.is_file():
        parent = path.parent  # overwriting an existing output file
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(
            f"cannot write to {path}: {parent} is not a writable folder; choose another output path"
        )


_TRAIN_FLAGS = {
    "dataset": (str, "cifar10, cifar100, celeba64, imagefolder, fashion-mnist, photos or array"),
    "data_dir": (str, "where the dataset lives (file or folder)"),
    "resolution": (int, "resize images to R x R"),
    "subset": (int, "use the first N images"),
    "model": (str, "UNet preset: paper, ddpm, small, tiny"),
    "variant": (str, "isotropic, sdm or hdm"),
    "strength": (float, "squeeze strength s (< 0 antisqueezes)"),
    "profile": (str, "beta (paper), constant or linear"),
    "basis": (str, "channel (paper), pca or dct"),
    "target": (str, "squeezed (paper: S_t eps) or unit (eps)"),
    "steps": (int, "training length in optimiser steps"),
    "epochs": (float, "training length in epochs"),
    "batch_size": (int, "global batch per optimiser step"),
    "grad_accum": (int, "gradient accumulation micro-batches"),
    "lr": (float, "AdamW learning rate"),
    "warmup_steps": (int, "LR warm-up steps"),
    "mixed_precision": (str, "no, fp16 or bf16"),
    "ema_decay": (float, "EMA decay"),
    "seed": (int, "random seed"),
    "checkpoint_every": (int, "steps between checkpoints"),
    "keep_checkpoints": (int, "keep the newest N checkpoints"),
    "log_every": (int, "steps between log lines"),
    "sample_every": (int, "steps between sample grids (0: only at the end)"),
    "sample_steps": (int, "sampling steps for the grids"),
    "sample_sampler": (str, "ddpm, ddim or ddpm-paper for the grids"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqdm",
        description="Squeezed Diffusion Models: fit bases, train, sample and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"sqdm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fit = sub.add_parser("fit-basis", help="fit a channel / pixel-PCA / DCT basis on a dataset")
    fit.add_argument(
        "source", help="image folder, .tar/.tar.gz of images, .npy/.npz array, or dataset name"
    )
    fit.add_argument("--basis", choices=("channel", "pca", "dct"), default="channel")
    fit.add_argument("--k", type=int, default=16, help="components for --basis pca (default 16)")
    fit.add_argument("--cutoffs", type=float, nargs="+", default=[0.25], help="DCT band edges")
    fit.add_argument("--data-dir", help="where a named dataset lives")
    fit.add_argument("--resolution", type=int, help="resize images to R x R first")
    fit.add_argument("--max-images", type=int, help="use at most N images (paper: 50,000)")
    fit.add_argument("--batch-size", type=int, default=1000)
    fit.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable files (counted)"
    )
    fit.add_argument(
        "--out", help="basis file to write (default: basis-KIND-FINGERPRINT.safetensors)"
    )
    fit.set_defaults(func=cmd_fit_basis)

    tr = sub.add_parser("train", help="train a (squeezed) diffusion model; resumable")
    tr.add_argument(
        "--preset", help="paper-cifar10, paper-cifar100, paper-celeba64 or demo; flags override"
    )
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument(
        "--resume", metavar="latest|PATH", help="continue from the newest or a given checkpoint"
    )
    for name, (kind, text) in _TRAIN_FLAGS.items():
        tr.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    tr.add_argument(
        "--no-hflip", dest="hflip", action="store_const", const=False, help="no random flips"
    )
    tr.add_argument(
        "--download", action="store_const", const=True, help="download torchvision datasets"
    )
    tr.add_argument(
        "--skip-bad-images", action="store_const", const=True, help="skip unreadable images"
    )
    tr.add_argument(
        "--skip-nonfinite", action="store_const", const=True, help="skip NaN/inf batches"
    )
    tr.add_argument(
        "--compile", action="store_const", const=True, help="torch.compile the UNet (GPUs)"
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    sm = sub.add_parser("sample", help="draw samples from a trained run (EMA weights)")
    sm.add_argument("run", help="run folder written by sqdm train")
    sm.add_argument("--num", type=int, default=64)
    sm.add_argument("--steps", type=int, default=50)
    sm.add_argument("--sampler", default="ddpm", help="ddpm (exact), ddim (exact) or ddpm-paper")
    sm.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--batch-size", type=int, default=256)
    sm.add_argument("--no-ema", action="store_true", help="use the raw weights")
    sm.add_argument("--out", required=True, help="folder for PNGs, or a .npz file")
    sm.add_argument("--quiet", action="store_true")
    sm.set_defaults(func=cmd_sample)

    dm = sub.add_parser(
        "demo", help="offline demo: isotropic vs SDM vs HDM on built-in photos, with a report"
    )
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--num-samples", type=int, default=500)
    dm.add_argument("--quiet", action="store_true")
    dm.set_defaults(func=cmd_demo)

    ev = sub.add_parser(
        "evaluate", help="FID/IS/KID/precision-recall, or offline fd_effnet, of a run or samples"
    )
    ev.add_argument("source", help="run folder (sampled on the fly) or a folder/.npz of samples")
    ev.add_argument(
        "--reference",
        help="dataset name or path (default for a run: the images it trained on)",
    )
    ev.add_argument("--data-dir", help="where a named reference dataset lives")
    ev.add_argument("--resolution", type=int, help="resize the reference to R x R")
    ev.add_argument(
        "--metrics",
        default="fd_effnet,prc_effnet",
        help="comma list of fid, isc, kid, prc, fd_effnet, prc_effnet, fd_pixels8 "
        "(default: the offline fd_effnet,prc_effnet; the paper: fid,isc,prc)",
    )
    ev.add_argument("--num", type=int, default=10_000, help="samples to draw from a run")
    ev.add_argument(
        "--num-reference", type=int, help="seeded random subset of the reference (default: all)"
    )
    ev.add_argument("--steps", type=int, default=50)
    ev.add_argument("--sampler", default="ddpm", help="ddpm (exact), ddim (exact) or ddpm-paper")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--feature-weights",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="weights file for inception, vgg16 or effnet (NAME= needed when several are used)",
    )
    ev.add_argument(
        "--prc-extractor",
        choices=("vgg16", "inception"),
        default="vgg16",
        help="features for prc (torch-fidelity's default: vgg16)",
    )
    ev.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch")
    ev.add_argument("--sample-batch-size", type=int, default=256)
    ev.add_argument("--out", help="write the results as JSON")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_evaluate, max_images=None, skip_bad_images=False)

    sw = sub.add_parser(
        "sweep", help="run a grid of trainings + evaluations (resumable, shardable)"
    )
    sw.add_argument("sweep", help="sweep YAML file, or a shipped sweep (e.g. local-cifar10)")
    sw.add_argument("--shard", default="0/1", metavar="i/n", help="run every n-th cell from i")
    sw.add_argument("--out", help="sweep folder (default: runs/sweeps/NAME)")
    sw.add_argument("--list", action="store_true", help="list this shard's cells and stop")
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="markdown + HTML report of a sweep's results")
    rp.add_argument("results", help="sweep folder or its results.json")
    rp.add_argument("--out", help="report folder (default: beside results.json)")
    rp.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, OSError) as err:  # user errors: one line, no traceback
        if os.environ.get("SQDM_DEBUG"):
            raise
        print(f"sqdm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sqdm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
