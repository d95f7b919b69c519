"""``sqdm demo``: squeezed diffusion explained in a few minutes on a CPU, as one HTML page.

1. What squeezing does: one photograph noised at several t by isotropic, SDM and HDM noise
   (the same draw of eps for all), the noise itself, and the per-direction log-SNR.
2. Why the exact samplers matter: on Gaussian data the optimal predictor is known, so a
   sampler's error is measurable; the paper's heuristic drifts from the data as |s| grows,
   the exact samplers do not.
3. A short training run, isotropic against SDM at the paper's strength, with samples.

The training data are procedural coloured shapes (``shapes``), not photographs: a 0.27M
UNet learns them to recognisable samples in under two minutes on two cores, where as long on
photo crops gives coloured blobs. ``--full`` trains longer (a bigger UNet, HDM too) and
measures the samplers on more pixels and strengths; neither setting is the paper's
experiment (``sqdm sweep local-cifar10-samplers`` and the paper sweeps are).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from tqdm.auto import tqdm

from .core import ChannelBasis, SqueezedDiffusion
from .core.fileio import atomic_write
from .core.oracle import (
    CIFAR_LIKE_COV,
    CIFAR_LIKE_MEAN,
    GaussianOracle,
    oracle_errors,
    top_direction,
)
from .data import load_dataset, to_float
from .evaluation.generate import generate
from .evaluation.report.render import Block, Figure, Heading, Table, Text, png, write_document
from .metrics import fd_pixels
from .training.config import TrainConfig, resolve_config
from .training.run import Run
from .training.trainer import Stopped, planned_start, train_to_completion

NOISED = (("isotropic", 0.0), ("sdm", -1.5), ("sdm", 1.5), ("hdm", -1.5), ("hdm", 1.5))
TIMES = (50, 150, 250, 400)  # beyond about 500 the photograph is gone under any noise
NOISE_T = 700  # the noise alone is shown where the squeeze is strong
SAMPLERS = ("ddpm", "ddim", "ddpm-paper")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much the demo does; ``FULL`` is ``--full``."""

    steps: int = 800
    model: str = "micro"
    trained: tuple[tuple[str, float], ...] = (("isotropic", 0.0), ("sdm", -0.4))
    oracle_variants: tuple[str, ...] = ("sdm",)
    oracle_strengths: tuple[float, ...] = (-2.0, -1.0, -0.4, 0.0, 0.4, 1.0)
    oracle_pixels: int = 4096
    num_samples: int = 256
    side_by_side: bool = True  # train the configurations at once (train_and_sample)


FULL = Settings(
    steps=5000, model="tiny", trained=(("isotropic", 0.0), ("sdm", -0.4), ("hdm", -0.4)),
    oracle_variants=("sdm", "hdm"),
    oracle_strengths=(-2.0, -1.5, -1.0, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.8, 1.2),
    oracle_pixels=16384, num_samples=2000,
)  # fmt: skip


# -- 1. what squeezing does ---------------------------------------------------------------
def photograph(size: int = 96) -> torch.Tensor:
    """scikit-image's cat (``chelsea``), centre-cropped and resized: ``[1, 3, size, size]``."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea())
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return to_float(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None])


def noise_spread(basis: ChannelBasis, noise: torch.Tensor) -> tuple[float, float]:
    """Std of ``noise`` along the principal colour direction, and per direction across it."""
    v = basis.direction.view(1, -1, 1, 1)
    along = (noise * v).sum(1, keepdim=True)
    across = (noise - along * v).pow(2).sum(1).mean() / (noise.shape[1] - 1)
    return float(along.std()), float(across.sqrt())


def noising_figure(basis: ChannelBasis, x0: torch.Tensor) -> tuple[bytes, list[dict[str, Any]]]:
    """The photograph at several t under each noise, and the noise alone at ``NOISE_T``; with
    each noise's measured spread along and across the principal direction (results.json)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    spread = []
    fig = MplFigure(figsize=(2.0 * (len(TIMES) + 1), 2.0 * len(NOISED)))
    axes = fig.subplots(len(NOISED), len(TIMES) + 1, squeeze=False)
    for row, (variant, strength) in enumerate(NOISED):
        proc = SqueezedDiffusion(basis, variant, strength)
        for col, t in enumerate(TIMES):
            x_t, _ = proc.add_noise(x0, eps, torch.tensor([t]))
            axes[row][col].imshow(((x_t[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
        noise = proc.squeeze(eps, NOISE_T)
        axes[row][-1].imshow((noise[0].permute(1, 2, 0) / 6 + 0.5).clamp(0, 1).numpy())
        along, across = noise_spread(basis, noise)
        spread.append({"variant": variant, "strength": strength, "t": NOISE_T,
                       "std_principal": along, "std_orthogonal": across})  # fmt: skip
        label = "isotropic" if variant == "isotropic" else f"{variant.upper()} s = {strength:+g}"
        axes[row][0].set_ylabel(label, fontsize=10)
    for col, t in enumerate(TIMES):
        axes[0][col].set_title(f"x_t, t = {t}", fontsize=10)
    axes[0][-1].set_title(f"the noise S_t eps, t = {NOISE_T}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return png(fig), spread


def log_snr_figure(basis: ChannelBasis) -> bytes:
    """log SNR over t of the principal colour direction and of its orthogonal complement.
    Colour is the strength, line style the variant: along the principal direction SDM and HDM
    scale the noise alike, so their lines coincide there (the title says so)."""
    fig = MplFigure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for ax, j, title in (
        (axes[0], 0, "principal colour direction (SDM = HDM)"),
        (axes[1], 1, "orthogonal directions (SDM = isotropic)"),
    ):
        for variant, strength in NOISED:
            table = SqueezedDiffusion(basis, variant, strength).log_snr_table()[:, j].numpy()
            style = "--" if variant == "hdm" else "-"
            colour = "black" if strength == 0 else ("tab:blue" if strength < 0 else "tab:red")
            label = "isotropic" if variant == "isotropic" else f"{variant.upper()} {strength:+g}"
            width = 2.5 if variant == "isotropic" else 1.2
            ax.plot(table, style, color=colour, label=label, lw=width)
        ax.set(xlabel="t", ylabel="log SNR", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


# -- 2. why the exact samplers matter -------------------------------------------------------
def oracle_rows(settings: Settings) -> list[dict[str, Any]]:
    """Covariance error of each sampler with the optimal predictor, per variant and strength."""
    basis = ChannelBasis(top_direction(CIFAR_LIKE_COV))
    rows = []
    for variant in settings.oracle_variants:
        for strength in settings.oracle_strengths:
            proc = SqueezedDiffusion(basis, variant, strength)
            oracle = GaussianOracle(proc, CIFAR_LIKE_MEAN, CIFAR_LIKE_COV)  # shared by the samplers
            errors = {
                name: oracle_errors(proc, name, 1000, pixels=settings.oracle_pixels, oracle=oracle)[
                    0
                ]
                for name in SAMPLERS
            }
            rows.append({"variant": variant, "strength": strength, "cov_rel_error": errors})
    return rows


def oracle_figure(rows: list[dict[str, Any]]) -> bytes:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig = MplFigure(figsize=(4.5 * len(variants), 3.4))
    for ax, variant in zip(fig.subplots(1, len(variants), squeeze=False)[0], variants, strict=True):
        mine = [r for r in rows if r["variant"] == variant]
        for sampler in SAMPLERS:
            ax.plot(
                [r["strength"] for r in mine],
                [r["cov_rel_error"][sampler] for r in mine],
                "o-",
                label=sampler,
            )
        ax.set(
            xlabel="strength s",
            ylabel="covariance error",
            title=f"{variant.upper()}, 1000 steps",
            yscale="log",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


# -- 3. a short training run -----------------------------------------------------------------
# samples, training seconds, sampling seconds, steps trained now (0: a finished run reused)
Drawn = tuple[torch.Tensor, float, float, int]


def run_configs(out: Path, settings: Settings) -> tuple[TrainConfig, list[TrainConfig]]:
    """The demo's base config and its runs' configs, one folder each under ``out``."""
    base = resolve_config("demo", out=str(out), steps=settings.steps, model=settings.model)
    configs = [
        dataclasses.replace(base, variant=variant, strength=strength, out=str(out / name))
        for variant, strength in settings.trained
        for name in [variant if variant == "isotropic" else f"{variant}{strength:+g}"]
    ]
    return base, configs


def check_run_folders(configs: list[TrainConfig]) -> None:
    """Before any work: each run folder is new, or a start of this demo's run (finished or
    not) that a rerun reuses; another run there would fail only after the first sections."""
    for cfg in configs:
        try:
            planned_start(cfg)
        except ValueError:
            name = Path(cfg.out).name
            raise ValueError(
                f"{cfg.out} holds something other than this demo's {name} run: delete it, or "
                "pass sqdm demo another --out"
            ) from None


def train_and_sample(out: Path, settings: Settings, progress: bool) -> list[dict[str, Any]]:
    """Train each configuration (reruns reuse finished runs), sample it, score the samples.

    With ``settings.side_by_side`` and two or more threads, the configurations train at the
    same time, one process each with an equal share of torch's threads (at least one): small
    UNets scale poorly across threads, so on 2 cores two one-thread processes train about
    1.1x (``tiny``) to 1.4x (``micro``) the images per second of one two-thread process
    (``benchmarks/side_by_side.py``, docs/benchmarks.md).
    """
    base, configs = run_configs(out, settings)
    threads = torch.get_num_threads()  # one per core unless OMP_NUM_THREADS says otherwise
    parallel = settings.side_by_side and threads > 1 and len(configs) > 1
    per_run = max(1, threads // len(configs)) if parallel else threads
    if parallel:
        drawn = _side_by_side(configs, settings.num_samples, per_run, progress)
    else:
        drawn = [_train_and_draw(cfg, settings.num_samples, progress) for cfg in configs]
    reference = base.load_data().images
    rows = []
    for cfg, (images, train_s, sample_s, steps_now) in zip(configs, drawn, strict=True):
        run = Run(cfg.out)
        proc, log = run.process(), [r for r in run.log() if "loss" in r]
        rows.append({
            "name": "isotropic" if cfg.variant == "isotropic" else f"{cfg.variant.upper()} s = {cfg.strength:g}",
            "run": Path(cfg.out).name, "variant": proc.variant, "strength": float(proc.strength[0]),
            "fd_pixels8": fd_pixels(images, reference), "final_loss": float(np.mean([r["loss"] for r in log[-5:]])),
            "train_s": train_s, "trained_steps": steps_now, "sample_s": sample_s,
            "side_by_side": parallel, "threads": per_run,
        })  # fmt: skip
    return rows


def training_time(trained: list[dict[str, Any]], steps: int) -> str:
    """What the page says about the training time: measured for the runs trained in full by
    this call; a rerun that reuses or resumes runs says so rather than time the rest."""
    fresh = [r for r in trained if r["trained_steps"] == steps]
    if len(fresh) < len(trained):
        return (
            "reused from an earlier sqdm demo in this folder, so not timed now"
            if not any(r["trained_steps"] for r in trained)
            else "partly reused from an earlier sqdm demo in this folder: see the table"
        )
    side = ", trained at the same time" if trained[0]["side_by_side"] else ""
    return f"here {np.mean([r['train_s'] for r in fresh]):.0f} s per model{side}"


def _train_cell(row: dict[str, Any], steps: int) -> str:
    """The table's training seconds: "reused", or the steps they cover when resumed."""
    if row["trained_steps"] == 0:
        return "reused"
    resumed = f" ({row['trained_steps']} of {steps} steps)" if row["trained_steps"] < steps else ""
    return f"{row['train_s']:.0f}{resumed}"


def _train_and_draw(cfg: TrainConfig, num_samples: int, progress: bool) -> Drawn:
    """One configuration trained (or resumed, or reused when finished) and sampled."""
    start = time.perf_counter()
    steps_now = cfg.steps - train_to_completion(cfg, progress)
    train_s = time.perf_counter() - start
    _, images = generate(cfg.out, num_samples, 50, "ddpm", seed=1, progress=progress)
    return images, train_s, time.perf_counter() - start - train_s, steps_now


def _side_by_side(
    configs: list[TrainConfig], num_samples: int, threads: int, progress: bool
) -> list[Drawn]:
    """:func:`_train_and_draw` of every config at once, each in its own process.

    A SIGINT or SIGTERM to this process (Ctrl-C, ``kill``, a scheduler's notice) reaches the
    workers as SIGTERM: a training worker saves a checkpoint and stops, a sampling one stops,
    and this raises ``KeyboardInterrupt`` once all have ended, so a rerun resumes. A worker's
    error stops the others the same way and is raised here as it was raised there.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(i, cfg, num_samples, threads, queue), daemon=True)
        for i, cfg in enumerate(configs)
    ]
    received: list[int] = []

    def stop() -> None:
        for worker in workers:
            if worker.is_alive():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(worker.pid, signal.SIGTERM)

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for worker in workers:
            worker.start()
        if received:  # arrived while the workers were starting
            stop()
        outcomes = _collect(queue, workers, configs, progress, stop)
    except BaseException:
        stop()
        raise
    finally:
        for worker in workers:
            if worker.pid is not None:  # started
                worker.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Stopped(received[0])
    for outcome in outcomes.values():  # an error first: it stopped the others
        if isinstance(outcome, BaseException):
            raise outcome
    for i, (cfg, worker) in enumerate(zip(configs, workers, strict=True)):
        if i not in outcomes:
            code = worker.exitcode
            how = f"signal {-code} (9: most likely out of memory)" if code < 0 else f"code {code}"
            raise RuntimeError(
                f"training {cfg.out} ended with {how} and no result; rerun sqdm demo to resume it"
            )
    return [(torch.from_numpy(outcomes[i][0]), *outcomes[i][1:]) for i in range(len(configs))]


def _worker(index: int, cfg: TrainConfig, num_samples: int, threads: int, queue: Any) -> None:
    """One side-by-side job; puts ``(index, result or error)`` on ``queue``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # signals arrive as SIGTERM, from the parent
    torch.set_num_threads(threads)
    try:
        images, *times = _train_and_draw(cfg, num_samples, False)
        # as numpy: torch would share the tensor's memory, which ends with this process
        outcome: Any = (images.numpy(), *times)
    except KeyboardInterrupt:  # the Trainer saved a checkpoint on the signal
        sys.exit(130)
    except Exception as err:  # raised again in the parent, or its text if it cannot travel
        try:
            outcome = pickle.loads(pickle.dumps(err))
        except Exception:
            outcome = RuntimeError(f"{cfg.out}: {type(err).__name__}: {err}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a message cut in half would block the parent
    queue.put((index, outcome))
    queue.close()
    queue.join_thread()  # sent before this process ends
    sys.exit(1 if isinstance(outcome, BaseException) else 0)


def _collect(
    queue: Any,
    workers: list[Any],
    configs: list[TrainConfig],
    progress: bool,
    stop: Callable[[], None],
) -> dict[int, Any]:
    """The workers' outcomes as they arrive (until all have one or none is alive), with one
    progress bar over the training steps their runs have logged; ``stop`` on an error."""
    outcomes: dict[int, Any] = {}
    total = sum(cfg.steps for cfg in configs)
    desc = f"training {len(configs)} runs side by side (total steps)"
    with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:

        def advance() -> None:  # also when an outcome arrives: a reused run has trained already
            logged = [max((r["step"] for r in Run(c.out).log()), default=0) for c in configs]
            bar.update(sum(logged) - bar.n)
            if bar.n == total:
                bar.set_postfix_str("sampling")

        while len(outcomes) < len(workers):
            try:
                index, outcome = queue.get(timeout=1.0)
                outcomes[index] = outcome
                if isinstance(outcome, BaseException):
                    stop()
            except Empty:
                ended = [w for i, w in enumerate(workers) if i not in outcomes and not w.is_alive()]
                if any(w.exitcode for w in ended):  # killed, or out of memory: nothing will come
                    stop()
                if len(ended) == len(workers) - len(outcomes) and queue.empty():
                    break
            advance()
        advance()
    return outcomes


def training_figure(out: Path, rows: list[dict[str, Any]]) -> bytes:
    """Sample grids side by side, and the training losses."""
    from PIL import Image

    fig = MplFigure(figsize=(3.3 * (len(rows) + 1), 3.4))
    axes = fig.subplots(1, len(rows) + 1)
    runs = [Run(out / row["run"]) for row in rows]
    for ax, row, run in zip(axes, rows, runs, strict=False):
        ax.imshow(np.asarray(Image.open(run.final_samples_path)))
        ax.set(title=f"{row['name']}: samples", xticks=[], yticks=[])
    for row, run in zip(rows, runs, strict=True):
        log = [r for r in run.log() if "loss" in r]
        axes[-1].plot([r["step"] for r in log], [r["loss"] for r in log], label=row["name"])
    axes[-1].set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


# -- the page --------------------------------------------------------------------------------
INTRO = (
    "A diffusion model learns to undo noise. Ordinary (isotropic) diffusion adds the same amount "
    "of noise in every direction of colour space. Squeezed diffusion (Squeezed Diffusion Models, "
    "arXiv 2508.14871) scales the noise along the data's principal colour direction, which for "
    "natural images is close to brightness: by exp(-s_t) with s_t = s beta_t / max beta. s < 0 "
    "'antisqueezes' (more brightness noise), s > 0 squeezes (less). SDM changes only that "
    "direction; HDM also scales the two orthogonal colour directions the other way, so the "
    "total volume of noise stays the same. The paper reports that mild antisqueezing (SDM "
    "s = -0.4) improves FID on CIFAR-10 by up to 15 %, with no change to the network."
)


def blocks(
    out: Path, settings: Settings, noised: tuple[bytes, bytes], oracle: list, trained: list
) -> list[Block]:
    """The page: three sections, each a figure with the sentences that read it (longer than
    the package's other functions because it is mostly those sentences)."""
    err = {
        (r["variant"], r["strength"], s): e for r in oracle for s, e in r["cov_rel_error"].items()
    }
    worst = max(settings.oracle_strengths, key=abs)
    return [
        Heading(1, "Squeezed diffusion, in brief"),
        Text(INTRO),
        Heading(2, "1. What squeezing does"),
        Text(
            "Each row noises the same photograph with the same random draw; only the shape of "
            "the noise differs. Antisqueezed rows (s < 0) drown the brightness first: the noise "
            "column is grey. Squeezed rows (s > 0) leave brightness for later: the noise is "
            "coloured. The curves show each direction's signal-to-noise ratio over time: the "
            "network must learn a different denoising problem per direction."
        ),
        Figure(
            "noising.png", noised[0], "the same photograph noised by isotropic, SDM and HDM noise"
        ),
        Figure("log-snr.png", noised[1], "log signal-to-noise ratio per direction"),
        Heading(2, "2. Why the exact samplers matter"),
        Text(
            "For Gaussian data the best possible network is known in closed form, so a sampler "
            "can be graded: it should return the data's covariance, here estimated from "
            f"{settings.oracle_pixels:,} sampled pixel vectors. The exact samplers (ddpm, ddim: "
            "exact per direction) stay near that estimate's Monte-Carlo floor at every strength "
            "(ddpm's floor is the higher: it draws fresh noise at every step). The paper's "
            "sampler (ddpm-paper) maps the step through S_t^-1 and back with the same t, which "
            "is exact only when the squeeze does not change with t; with the paper's profile its "
            f"error grows with |s|: {err[('sdm', worst, 'ddpm-paper')]:.2f} at SDM s = {worst:g} "
            f"against {err[('sdm', worst, 'ddpm')]:.3f} for ddpm. At mild strengths such as the "
            "paper's s = -0.4 it is below what this many samples resolve, but at every s != 0 "
            "a squeezed model sampled with it samples a slightly different distribution than it "
            "was trained for."
        ),
        Figure(
            "oracle.png", oracle_figure(oracle), "covariance error of each sampler against strength"
        ),
        Table(
            ["variant", "s", *SAMPLERS],
            [
                [
                    r["variant"],
                    f"{r['strength']:g}",
                    *(f"{r['cov_rel_error'][s]:.3g}" for s in SAMPLERS),
                ]
                for r in oracle
            ],
        ),
        Heading(2, "3. Training: isotropic against SDM"),
        Text(
            f"The same {settings.model} UNet, seed and data order, {settings.steps} steps of "
            "batches of 64 procedural coloured shapes at 16 px "
            f"({training_time(trained, settings.steps)}; photographs would "
            "need hours to give recognisable samples), then 50 exact DDPM steps from the EMA "
            "weights. The squeeze changes the training target, not the network. At this scale "
            "both learn the shapes; differences in the numbers below are not evidence about "
            f"squeezing (fd_pixels8, of {settings.num_samples} samples, is a Frechet distance "
            "of 8x8-pooled pixels, not FID)."
        ),
        Figure("training.png", training_figure(out, trained), "samples and training losses"),
        Table(
            ["configuration", "fd_pixels8", "final loss", "train s", "sample s"],
            [
                [
                    r["name"],
                    f"{r['fd_pixels8']:.3f}",
                    f"{r['final_loss']:.4f}",
                    _train_cell(r, settings.steps),
                    f"{r['sample_s']:.0f}",
                ]
                for r in trained
            ],
        ),
        Heading(2, "Going further"),
        Text(
            "sqdm sweep local-cifar10-samplers: the CPU study of the README (does antisqueezing "
            "help, and with which sampler). sqdm train --preset paper-cifar10 on a GPU: the "
            "paper's run. sqdm demo --full: this page with longer training and more strengths."
        ),
    ]


def run_demo(
    out: str | Path = "runs/demo", full: bool = False, progress: bool = True, **overrides: Any
) -> Path:
    """Build the three sections and write ``report.html`` (and ``report.md``); its path.

    ``overrides`` replace :class:`Settings` fields (the tests use a few steps). The runs
    train in spawned processes, which import the caller's main module: from a script, call
    this under ``if __name__ == "__main__":`` (or pass ``side_by_side=False``).
    """
    out = Path(out)
    settings = dataclasses.replace(FULL if full else Settings(), **overrides)
    configs = run_configs(out, settings)[1]
    check_run_folders(configs)
    say = print if progress else lambda *_: None
    start = time.perf_counter()
    say("1/3 what squeezing does: noising a photograph with isotropic, SDM and HDM noise")
    photos = load_dataset("photos", resolution=16, subset=2048).batches(512)
    basis = ChannelBasis.fit(photos)
    noising, spread = noising_figure(basis, photograph())
    noised = noising, log_snr_figure(basis)
    strengths = len(settings.oracle_strengths) * len(settings.oracle_variants)
    say(f"2/3 why the exact samplers matter: grading {len(SAMPLERS)} samplers at {strengths} "
        "strengths on Gaussian data")  # fmt: skip
    oracle = oracle_rows(settings)
    runs = [Path(c.out).name for c in configs]
    reused = [Path(c.out).name for c in configs if Run(c.out).exists()]
    say(f"3/3 a short training run: {', '.join(runs)}"
        + (f" (reusing or resuming {', '.join(reused)})" if reused else ""))  # fmt: skip
    trained = train_and_sample(out, settings, progress)
    _, page = write_document(blocks(out, settings, noised, oracle, trained), out)
    results = {"settings": dataclasses.asdict(settings), "noising": spread, "oracle": oracle,
               "trained": trained,
               "wall_s": time.perf_counter() - start}  # fmt: skip
    atomic_write(out / "results.json", json.dumps(results, indent=1))
    return page
