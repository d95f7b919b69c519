"""Does squeezing cost anything next to the network? Everything of issue #4, side by side.

    python benchmarks/run.py [--quick] [--json PATH] [--compile]

Prints a table and, with ``--json``, writes every figure (keys: docs/benchmarks.md). No
assertions: this measures. Every timing is the median over interleaved repeats (each case
runs once per round, in a rotating order) with min and max; every comparison is the median
of the per-round ratios, so drift of a shared machine hits both sides alike.

Sections: ``train`` (Trainer.train_step, isotropic vs SDM vs HDM), ``loader`` (building a
batch vs a step), ``memory`` (peak of a step), ``squeeze`` (add_noise / squeeze / unsqueeze vs
diffusers and a dense per-sample loop), ``sampler`` (one step vs diffusers), ``fit`` (bases on
50,000 images, in memory and from the CIFAR-10 JPEG tar). With CUDA the train rows also give
model FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from squeezed_diffusion import ChannelBasis, PixelPCABasis, SqueezedDiffusion
from squeezed_diffusion.core.samplers import ddim_step, ddpm_paper_step, ddpm_step
from squeezed_diffusion.data import ImageDataset, load_dataset
from squeezed_diffusion.models import build_model, count_parameters
from squeezed_diffusion.training.config import TrainConfig
from squeezed_diffusion.training.trainer import Trainer

TAR = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg-train.tar.gz"
STRENGTH = -0.4  # the paper's reference run
VARIANTS = ("isotropic", "sdm", "hdm")
FIT_IMAGES = 50_000
OP_BATCH = 128  # the paper's batch, 3 x 32 x 32
# Dense bf16 tensor-core peaks (FLOP/s) for model FLOPs utilisation, by device-name fragment.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "V100": 125e12,
    "T4": 65e12,
}
Stats = dict[str, float | int]


# -- timing ---------------------------------------------------------------------------------
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(
    cases: dict[str, Callable[[], Any]], repeats: int, number: int = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each case, one figure per round; the order rotates every round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _sync()
            start = time.perf_counter()
            for _ in range(number):
                cases[name]()
            _sync()
            times[name].append((time.perf_counter() - start) / number)
    return times


def stats(seconds: list[float]) -> Stats:
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "repeats": len(ms),
    }


def ratio(times: dict[str, list[float]], case: str, base: str) -> Stats:
    """``case / base`` per round: median, min and max (below 1: ``case`` is faster).

    ``fastest`` divides the two fastest rounds: the least disturbed by other processes.
    """
    per_round = [a / b for a, b in zip(times[case], times[base], strict=True)]
    return {
        "median": statistics.median(per_round),
        "min": min(per_round),
        "max": max(per_round),
        "fastest": min(times[case]) / min(times[base]),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - start, out


# -- 1, 5, 6: training step, loader, memory ------------------------------------------------------
def make_trainer(preset: str, batch: int, root: Path, compile: bool, **settings: Any) -> Trainer:
    """A Trainer on random uint8 images (speed does not depend on content), SDM s = -0.4;
    ``settings`` are further TrainConfig fields (``compile_mode``, ``channels_last``)."""
    data = root / f"images-{preset}-{batch}.npy"
    rng = np.random.default_rng(0)
    np.save(data, rng.integers(0, 256, (max(2 * batch, 256), 32, 32, 3), dtype=np.uint8))
    cfg = TrainConfig(
        out=str(root / f"run-{preset}-{batch}"),
        dataset="array",
        data_dir=str(data),
        model=preset,
        variant="sdm",
        strength=STRENGTH,
        steps=10**6,
        batch_size=batch,
        mixed_precision=_gpu_precision() if torch.cuda.is_available() else "no",
        compile=compile,
        **settings,
    ).validate()
    return Trainer(cfg, progress=False)


def variant_process(trainer: Trainer, variant: str) -> SqueezedDiffusion:
    """The trainer's process under ``variant`` (isotropic at strength 0, the only strength
    it takes), on the trainer's device: what a step is compared against."""
    fields = {**trainer.cfg.to_dict(), "variant": variant}
    if variant == "isotropic":
        fields["strength"] = 0.0
    return SqueezedDiffusion.from_fields(trainer.basis, fields).to(trainer.accelerator.device)


def _gpu_precision() -> str:
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def train_flops_per_image(preset: str) -> float:
    """Forward + backward FLOPs of one 32 x 32 image, counted on CPU (the count is device-free)."""
    model = build_model(preset)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32), torch.tensor([500])).sample.square().mean().backward()
    return float(counter.get_total_flops())


def gpu_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in GPU_PEAK_FLOPS.items() if key in name), None)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's start/stop lines, which its C++ side writes to fd 2."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_memory(step: Callable[[], Any]) -> float:
    """Peak bytes allocated during one step beyond what was held before it.

    CUDA: the allocator's peak counter. CPU: torch's memory profiler records every
    allocation and free; their running sum in time order peaks where the step does.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return float(peak)


def bench_preset(
    preset: str, batch: int, repeats: int, warmup: int, root: Path, compile: bool
) -> dict:
    """Training step per variant, then the loader and the peak memory on the same Trainer.

    ``warmup`` steps per variant come first: a run's first steps are slower (optimizer
    state, allocator).
    """
    trainer = make_trainer(preset, batch, root, compile)
    procs = {v: variant_process(trainer, v) for v in VARIANTS}

    def using(variant: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            trainer.batches.process = procs[variant]
            return fn()

        return run

    def step(variant: str) -> Callable[[], Any]:
        return using(variant, trainer.train_step)

    times = interleaved({v: step(v) for v in VARIANTS}, repeats, warmup=warmup)
    flops = train_flops_per_image(preset)
    peak = gpu_peak_flops()
    train: dict[str, Any] = {
        "batch": batch,
        "params_m": count_parameters(trainer.unwrapped) / 1e6,
        "gflop_per_image": flops / 1e9,
        "mixed_precision": trainer.cfg.mixed_precision,
    }
    for v in VARIANTS:
        images_per_s = batch / statistics.median(times[v])
        train[v] = {
            **stats(times[v]),
            "images_per_s": images_per_s,
            "tflops": flops * images_per_s / 1e12,
            "mfu": None if peak is None else flops * images_per_s / peak,
        }
    for v in VARIANTS[1:]:
        train[f"ratio_{v}"] = ratio(times, v, "isotropic")

    # 5: building the batch alone, and the whole micro-batch (draws, batch, add_noise); the
    # SDM - isotropic difference of the latter is all that squeezing adds to a step.
    idx = trainer.batches.indices(0)
    flip = torch.rand(len(idx), device=trainer.accelerator.device) < 0.5
    parts = interleaved(
        {
            "load_images": lambda: trainer.batches.load_images(idx, flip),
            "micro_batch": using("sdm", lambda: trainer.batches.micro_batch(0, 0, idx)),
            "micro_batch_isotropic": using(
                "isotropic", lambda: trainer.batches.micro_batch(0, 0, idx)
            ),
        },
        repeats=max(7, repeats),
        number=10,
    )
    step_s = statistics.median(times["sdm"])
    loader: dict[str, Any] = {"batch": batch}
    for name, seconds in parts.items():
        loader[name] = {
            **stats(seconds),
            "images_per_s": batch / statistics.median(seconds),
            "share_of_step": statistics.median(seconds) / step_s,
        }
    loader["step_images_per_s"] = batch / step_s
    loader["squeeze_share_of_step"] = (
        statistics.median(parts["micro_batch"]) - statistics.median(parts["micro_batch_isotropic"])
    ) / statistics.median(times["isotropic"])

    # 6: peak memory of one step, isotropic vs SDM.
    memory: dict[str, Any] = {
        "batch": batch,
        "method": "torch.cuda.max_memory_allocated"
        if torch.cuda.is_available()
        else "torch.profiler (profile_memory)",
    }
    for v in ("isotropic", "sdm"):
        memory[f"{v}_mb"] = peak_step_memory(step(v)) / 2**20
    memory["ratio_sdm"] = memory["sdm_mb"] / memory["isotropic_mb"]
    return {"train": train, "loader": loader, "memory": memory}


# -- 2: the squeeze alone --------------------------------------------------------------------------
def dense_operators(
    proc: SqueezedDiffusion, t: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """The straightforward S_t: a C x C matrix per sample in a Python loop (inverted if asked)."""
    v = proc.basis.direction.cpu()
    p = torch.outer(v, v)
    rest = torch.eye(len(v)) - p
    mats = []
    for ti in t.tolist():
        s = float(proc.c[ti, 0]) * p + float(proc.c_rest[ti]) * rest
        mats.append(torch.linalg.inv(s) if inverse else s)
    return torch.stack(mats).to(t.device)


def dense_scale(
    proc: SqueezedDiffusion, x: torch.Tensor, t: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    return torch.bmm(dense_operators(proc, t, inverse), x.flatten(2)).view_as(x)


def dense_add_noise(
    proc: SqueezedDiffusion, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    abar = proc.alphas_cumprod.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    shaped = dense_scale(proc, noise, t)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * shaped, shaped


def bench_squeeze(repeats: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = (OP_BATCH, 3, 32, 32)
    x0 = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    noise = torch.randn(shape, generator=gen).to(device)
    t = torch.randint(0, 1000, (OP_BATCH,), generator=gen).to(device)
    basis = ChannelBasis.luminance()
    sdm = SqueezedDiffusion(basis, "sdm", STRENGTH).to(device)
    hdm = SqueezedDiffusion(basis, "hdm", STRENGTH).to(device)
    ref = DDPMScheduler()
    times = interleaved(
        {
            "diffusers_add_noise": lambda: ref.add_noise(x0, noise, t),
            "add_noise_sdm": lambda: sdm.add_noise(x0, noise, t),
            "add_noise_hdm": lambda: hdm.add_noise(x0, noise, t),
            "add_noise_dense": lambda: dense_add_noise(sdm, x0, noise, t),
            "squeeze_sdm": lambda: sdm.squeeze(noise, t),
            "squeeze_dense": lambda: dense_scale(sdm, noise, t),
            "unsqueeze_sdm": lambda: sdm.unsqueeze(noise, t),
            "unsqueeze_dense": lambda: dense_scale(sdm, noise, t, inverse=True),
        },
        repeats,
        number=20,
        warmup=20,
    )
    x_t, target = sdm.add_noise(x0, noise, t)
    dense_x_t, dense_target = dense_add_noise(sdm, x0, noise, t)
    return {
        "batch": OP_BATCH,
        "shape": list(shape[1:]),
        "strength": STRENGTH,
        **{name: stats(seconds) for name, seconds in times.items()},
        "ratio_add_noise_sdm_vs_diffusers": ratio(times, "add_noise_sdm", "diffusers_add_noise"),
        "ratio_add_noise_hdm_vs_diffusers": ratio(times, "add_noise_hdm", "diffusers_add_noise"),
        "speedup_add_noise_vs_dense": ratio(times, "add_noise_dense", "add_noise_sdm"),
        "speedup_squeeze_vs_dense": ratio(times, "squeeze_dense", "squeeze_sdm"),
        "speedup_unsqueeze_vs_dense": ratio(times, "unsqueeze_dense", "unsqueeze_sdm"),
        "max_abs_diff_vs_dense": max(
            float((x_t - dense_x_t).abs().max()), float((target - dense_target).abs().max())
        ),
    }


# -- 3: one sampler step ---------------------------------------------------------------------------
def bench_sampler(repeats: int, device: torch.device) -> dict:
    """Ours vs diffusers on the same tensors at t = 500 of a 50-step schedule (t_prev = 480)."""
    gen = torch.Generator().manual_seed(1)
    shape = (OP_BATCH, 3, 32, 32)
    x = torch.randn(shape, generator=gen).to(device)
    out = torch.randn(shape, generator=gen).to(device)
    t, t_prev = 500, 480

    def g() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(0)

    g_ours, g_ref = g(), g()
    refs = {
        "ddpm": DDPMScheduler(clip_sample=False),
        "ddim": DDIMScheduler(clip_sample=False),
        "ddpm-paper": DDPMScheduler(),  # clip_sample=True: what the reference ran
    }
    for ref in refs.values():
        ref.set_timesteps(50)
    ours = {"ddpm": ddpm_step, "ddim": ddim_step, "ddpm-paper": ddpm_paper_step}
    cases: dict[str, Callable[[], Any]] = {}
    procs = {}
    for s in (0.0, STRENGTH):
        proc = procs[s] = SqueezedDiffusion(ChannelBasis.luminance(), "sdm", s).to(device)
        for name, fn in ours.items():
            clip = refs[name].config.clip_sample  # clip as the diffusers step it is compared with
            cases[f"{s:g}/{name}/ours"] = lambda fn=fn, proc=proc, clip=clip: fn(
                proc, out, x, t, t_prev, generator=g_ours, clip=clip
            )
    for name, ref in refs.items():
        cases[f"diffusers/{name}"] = lambda ref=ref: ref.step(out, t, x, generator=g_ref)
    times = interleaved(cases, repeats, number=10, warmup=5)
    result: dict[str, Any] = {"batch": OP_BATCH, "t": t, "t_prev": t_prev}
    for name in ours:
        result[f"diffusers/{name}"] = stats(times[f"diffusers/{name}"])
    for s, proc in procs.items():
        for name, fn in ours.items():
            key = f"{s:g}/{name}/ours"
            # First call at a (t, t_prev) not seen before: includes computing its coefficients.
            clip = refs[name].config.clip_sample
            first = [
                timed(
                    lambda fn=fn, proc=proc, tt=tt, clip=clip: fn(
                        proc, out, x, tt, tt - 20, generator=g_ours, clip=clip
                    )
                )[0]
                for tt in range(999, 899, -10)
            ]
            result[f"s={s:g}/{name}"] = {
                **stats(times[key]),
                "ratio_vs_diffusers": ratio(times, key, f"diffusers/{name}"),
                "first_call_ms": statistics.median(first) * 1e3,
            }
    return result


# -- 4: basis fitting ------------------------------------------------------------------------------
def fit_seconds(dataset: ImageDataset, kind: str, repeats: int, n: int) -> dict:
    def fit() -> Any:
        batches = dataset.batches(1000)  # as the trainer fits: float batches of 1000
        if kind == "channel":
            return ChannelBasis.fit(batches, max_images=n)
        return PixelPCABasis.fit(batches, k=16, max_images=n)

    seconds = [timed(fit)[0] for _ in range(repeats)]
    return {**stats(seconds), "n_images": n, "images_per_s": n / statistics.median(seconds)}


def bench_fit(quick: bool, root: Path) -> dict:
    """In-memory fits on 50,000 CIFAR-10 images (random ones without the tar), then the tar."""
    result: dict[str, Any] = {}
    previous = os.environ.get("SQDM_CACHE")
    try:
        if TAR.is_file():
            os.environ["SQDM_CACHE"] = str(root / "fit-cache")  # fresh: a cold decode
            cold, dataset = timed(lambda: load_dataset("imagefolder", TAR))
            cached, dataset = timed(lambda: load_dataset("imagefolder", TAR))
            source = f"{TAR.name} (decoded)"
        else:
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, (FIT_IMAGES, 3, 32, 32), dtype=np.uint8)
            dataset = ImageDataset(torch.from_numpy(images), "random")
            source = "random uint8 images (no JPEG tar)"
    finally:
        if previous is None:
            os.environ.pop("SQDM_CACHE", None)
        else:
            os.environ["SQDM_CACHE"] = previous
    n = min(FIT_IMAGES, len(dataset))
    result["source"] = source
    result["channel"] = fit_seconds(dataset, "channel", 3 if quick else 5, n)
    # --quick: PCA on 10,000 images (the covariance costs N x D^2; the eigh is fixed).
    result["pca16"] = fit_seconds(dataset, "pca", 1 if quick else 2, min(n, 10_000) if quick else n)
    if TAR.is_file():
        result["tar"] = {
            "path": str(TAR),
            "decode_cold_s": cold,
            "load_cached_s": cached,
            **{
                f"{kind}_{state}_total_s": load + result[kind]["median_ms"] / 1e3
                for kind in ("channel", "pca16")
                for state, load in (("cold", cold), ("cached", cached))
                if result[kind]["n_images"] == len(dataset)  # a full-dataset fit only
            },
        }
    else:
        result["tar"] = {"skipped": f"{TAR} not found"}
    return result


# -- the run ---------------------------------------------------------------------------------------
def machine() -> dict:
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def table(results: dict) -> str:
    """The figures as aligned text rows: median [min .. max]."""
    rows: list[tuple[str, str]] = []

    def ms(s: Stats) -> str:
        return f"{s['median_ms']:10.3f} ms  [{s['min_ms']:.3f} .. {s['max_ms']:.3f}]"

    def rt(r: Stats) -> str:
        return f"{r['median']:10.3f} x   [{r['min']:.3f} .. {r['max']:.3f}]  fastest {r['fastest']:.3f}"

    for preset, block in results["presets"].items():
        train = block["train"]
        head = f"train {preset} (batch {train['batch']}, {train['params_m']:.1f}M params)"
        for v in VARIANTS:
            extra = f"  {train[v]['images_per_s']:.1f} img/s"
            if train[v]["mfu"] is not None:
                extra += f", MFU {100 * train[v]['mfu']:.1f}%"
            rows.append((f"{head} {v}", ms(train[v]) + extra))
        for v in VARIANTS[1:]:
            rows.append((f"{head} {v} / isotropic", rt(train[f"ratio_{v}"])))
        loader = block["loader"]
        for name in ("load_images", "micro_batch", "micro_batch_isotropic"):
            share = f"  {loader[name]['images_per_s']:.0f} img/s, {100 * loader[name]['share_of_step']:.2f}% of a step"
            rows.append((f"loader {preset} {name}", ms(loader[name]) + share))
        rows.append(
            (
                f"loader {preset} squeeze share of a step",
                f"{100 * loader['squeeze_share_of_step']:10.3f} %",
            )
        )
        memory = block["memory"]
        for v in ("isotropic", "sdm"):
            rows.append((f"memory {preset} peak {v}", f"{memory[f'{v}_mb']:10.1f} MiB"))
        rows.append((f"memory {preset} sdm / isotropic", f"{memory['ratio_sdm']:10.3f} x"))
    sq = results["squeeze"]
    for name in ("diffusers_add_noise", "add_noise_sdm", "add_noise_hdm", "add_noise_dense"):
        rows.append((f"squeeze {name} (B={sq['batch']})", ms(sq[name])))
    for name in ("squeeze_sdm", "squeeze_dense", "unsqueeze_sdm", "unsqueeze_dense"):
        rows.append((f"squeeze {name}", ms(sq[name])))
    for key in (
        "ratio_add_noise_sdm_vs_diffusers",
        "ratio_add_noise_hdm_vs_diffusers",
        "speedup_add_noise_vs_dense",
        "speedup_squeeze_vs_dense",
        "speedup_unsqueeze_vs_dense",
    ):
        rows.append((f"squeeze {key}", rt(sq[key])))
    smp = results["sampler"]
    for name in ("ddpm", "ddim", "ddpm-paper"):
        rows.append((f"sampler diffusers {name} (B={smp['batch']})", ms(smp[f"diffusers/{name}"])))
        for s in (0.0, STRENGTH):
            row = smp[f"s={s:g}/{name}"]
            rows.append(
                (f"sampler {name} s={s:g}", ms(row) + f"  first call {row['first_call_ms']:.2f} ms")
            )
            rows.append((f"sampler {name} s={s:g} / diffusers", rt(row["ratio_vs_diffusers"])))
    fit = results["fit"]
    for kind in ("channel", "pca16"):
        f = fit[kind]
        rows.append(
            (
                f"fit {kind} in memory ({f['n_images']} images)",
                f"{f['median_ms'] / 1e3:10.3f} s   [{f['min_ms'] / 1e3:.3f} .. {f['max_ms'] / 1e3:.3f}]  {f['images_per_s']:.0f} img/s",
            )
        )
    for key, value in fit["tar"].items():
        if key != "path":
            rows.append(
                (f"fit tar {key}", f"{value:10.3f} s" if isinstance(value, float) else str(value))
            )
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"note: {note}" for note in results["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: under a minute on 2 cores"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPUs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:  # the paper's batch on a GPU
        presets = {"tiny": 128, "paper": 128, "ddpm": 128}
    elif args.quick:
        presets = {"tiny": 32, "paper": 2}
    else:
        presets = {"tiny": 64, "paper": 8}
    # Rounds: a step's ratio resolves ~1% only over many rounds on a shared machine.
    repeats = {"tiny": 5 if args.quick else 30, "paper": 2 if args.quick else 20, "ddpm": 5}
    results: dict[str, Any] = {
        "meta": {**machine(), "argv": sys.argv[1:], "quick": args.quick, "batches": presets},
        "presets": {},
        "notes": [],
    }
    if not cuda:
        results["notes"].append(
            "no CUDA: GPU rows (paper/ddpm images/s, MFU) skipped; train rows are fp32 on CPU"
        )
    sections: dict[str, float] = {}
    loads: dict[str, float] = {}

    def section(name: str, fn: Callable[[], Any]) -> Any:
        print(f"{name} ...", file=sys.stderr, flush=True)
        seconds, out = timed(fn)
        sections[name], loads[name] = seconds, os.getloadavg()[0]
        return out

    with tempfile.TemporaryDirectory(prefix="sqdm-bench-") as tmp:
        root = Path(tmp)
        os.environ["SQDM_CACHE"] = str(root / "cache")  # the trainers' bases: not the user's cache
        for preset, batch in presets.items():
            results["presets"][preset] = section(
                f"train {preset} batch {batch}",
                lambda p=preset, b=batch: bench_preset(
                    p, b, repeats[p], 1 if args.quick else 2, root, args.compile
                ),
            )
        results["squeeze"] = section(
            "squeeze", lambda: bench_squeeze(7 if args.quick else 21, device)
        )
        results["sampler"] = section(
            "sampler", lambda: bench_sampler(5 if args.quick else 15, device)
        )
        results["fit"] = section("fit", lambda: bench_fit(args.quick, root))
    results["meta"]["section_s"] = sections
    results["meta"]["section_load1"] = loads  # this run alone adds about 2 on 2 cores
    if "skipped" in results["fit"]["tar"]:
        results["notes"].append(results["fit"]["tar"]["skipped"])
    results["meta"]["loadavg_end"] = list(os.getloadavg())
    results["meta"]["wall_s"] = time.perf_counter() - start
    print(table(results))
    print(f"wall time {results['meta']['wall_s']:.1f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
