"""The GPU check of issue 11: is the training step bound by the chip, not by Python?

    python benchmarks/gpu_check.py --json PATH [--presets tiny,paper,ddpm] [--batch 128]

(``benchmarks/gpu_check.sh`` installs what a bare GPU machine lacks and runs this.) For each
UNet preset, the training step (SDM s = -0.4, bf16 autocast) eager and compiled side by side:
median step time, images/s, model FLOPs utilisation, the compile time (the first compiled
steps, apart), kernel launches per step and the share of GPU time spent in copy kernels
(torch.profiler over a few steps), and the SDM / isotropic step ratio; then 50-step sampling
in images/s, eager and compiled. Then, while ``--budget-s`` lasts, the compiled settings that
issue 11 asks to choose by measurement (``VARIANTS``: channels-last activations, CUDA graphs
through ``reduce-overhead``) for the tiny and paper UNets; a variant that would not finish in
time is recorded as skipped. Prints a table and writes JSON; asserts nothing.

Without CUDA it runs the same code on the CPU at toy sizes (eager only unless --compile), to
test the script; its numbers say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    _sync,
    gpu_peak_flops,
    interleaved,
    machine,
    make_trainer,
    ratio,
    stats,
    train_flops_per_image,
    variant_process,
)

PROFILED_STEPS = 3
# Compiled settings compared with the default one (compile_mode "default", contiguous NCHW),
# to choose the defaults by measurement. max-autotune is left out: its compilation alone
# takes minutes per UNet.
VARIANTS = {
    "compiled+channels_last": {"compile": True, "channels_last": True},
    "reduce-overhead": {"compile": True, "compile_mode": "reduce-overhead"},
}
VARIANT_PRESETS = ("tiny", "paper")


def profile_step(step: Any) -> dict[str, Any]:
    """Kernel launches per step and the copy kernels' share of GPU time (CUDA only)."""
    if not torch.cuda.is_available():
        return {"kernels_per_step": None, "copy_share": None}
    from torch.profiler import ProfilerActivity, profile

    step()  # outside the trace: allocator and autotuning settle first
    _sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        _sync()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in kernels) or 1.0
    copies = sum(
        e.device_time for e in kernels if "copy" in e.name.lower() or "memcpy" in e.name.lower()
    )
    return {"kernels_per_step": len(kernels) / PROFILED_STEPS, "copy_share": copies / total}


def bench_train(
    preset: str, batch: int, mode: str, settings: dict[str, Any], repeats: int, root: Path
) -> dict[str, Any]:
    """One preset's step in one mode (``settings``: TrainConfig's compile fields); SDM vs
    isotropic interleaved on the same trainer."""
    folder = root / f"{preset}-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trainer = make_trainer(preset, batch, folder, **settings)
    started = time.perf_counter()
    for _ in range(3):  # compilation (forward and backward) happens in the first steps
        trainer.train_step()
    _sync()
    first_s = time.perf_counter() - started
    sdm = trainer.batches.process
    iso = variant_process(trainer, "isotropic")

    def step(process: Any) -> Any:
        def run() -> Any:
            trainer.batches.process = process
            return trainer.train_step()

        return run

    times = interleaved({"sdm": step(sdm), "isotropic": step(iso)}, repeats, warmup=2)
    median = statistics.median(times["sdm"])
    flops, peak = train_flops_per_image(preset), gpu_peak_flops()
    return {
        **stats(times["sdm"]),
        "first_3_steps_s": first_s,
        "images_per_s": batch / median,
        "mfu": None if peak is None else flops * batch / median / peak,
        "ratio_sdm_isotropic": ratio(times, "sdm", "isotropic"),
        **profile_step(step(sdm)),
        "settings": settings,
        "wall_s": time.perf_counter() - start,
    }


def bench_sampling(preset: str, batch: int, compiled: bool, steps: int) -> dict[str, Any]:
    """``steps``-step exact DDPM sampling of one batch with a fresh UNet (speed does not
    depend on the weights), after one warm-up run."""
    from squeezed_diffusion import ChannelBasis, SqueezedDiffusion
    from squeezed_diffusion.models import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet = build_model(preset).to(device).eval()
    if compiled:
        unet.compile()
    proc = SqueezedDiffusion(ChannelBasis.luminance(), "sdm", -0.4).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def run() -> None:
        with autocast:
            proc.sample(lambda x, t: unet(x, t).sample, (batch, 3, 32, 32), steps, "ddpm",
                        progress=False, device=device)  # fmt: skip

    start = time.perf_counter()
    run()
    _sync()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    _sync()
    seconds = time.perf_counter() - start
    return {"batch": batch, "steps": steps, "first_run_s": first, "images_per_s": batch / seconds}


def table(results: dict[str, Any]) -> str:
    rows = []
    for preset, modes in results["train"].items():
        for mode, r in modes.items():
            if "skipped" in r:
                rows.append(f"train {preset:<6} {mode:<22} skipped: {r['skipped']}")
                continue
            mfu = "" if r["mfu"] is None else f"  MFU {100 * r['mfu']:.1f}%"
            prof = (
                ""
                if r["kernels_per_step"] is None
                else f"  {r['kernels_per_step']:.0f} kernels/step, copies {100 * r['copy_share']:.1f}%"
            )
            rows.append(
                f"train {preset:<6} {mode:<22} {r['median_ms']:9.2f} ms  {r['images_per_s']:9.0f} img/s{mfu}"
                f"{prof}  sdm/iso {r['ratio_sdm_isotropic']['median']:.3f}  first 3 steps {r['first_3_steps_s']:.1f} s"
            )
    for preset, modes in results["sampling"].items():
        for mode, r in modes.items():
            rows.append(
                f"sample {preset:<5} {mode:<22} {r['steps']} steps, batch {r['batch']}: "
                f"{r['images_per_s']:9.1f} img/s  (first run {r['first_run_s']:.1f} s)"
            )
    return "\n".join(rows)


def bench_variants(
    results: dict[str, Any], presets: list[str], batch: int, repeats: int, root: Path,
    deadline: float,
) -> None:  # fmt: skip
    """``VARIANTS`` for the presets in ``VARIANT_PRESETS``, each only if it should end before
    ``deadline`` (``time.perf_counter()``), judged by the slowest row of its preset so far.
    A variant that fails is recorded with its error: the main rows must not be lost to it."""
    for preset in (p for p in presets if p in VARIANT_PRESETS):
        rows = results["train"][preset]
        for mode, settings in VARIANTS.items():
            needed = max(r["wall_s"] for r in rows.values() if "wall_s" in r)
            left = deadline - time.perf_counter()
            if needed > left:
                rows[mode] = {"skipped": f"needs about {needed:.0f} s, {max(left, 0):.0f} s left"}
                continue
            try:
                rows[mode] = bench_train(preset, batch, mode, settings, repeats, root)
            except Exception as error:  # reported in the table and the JSON
                rows[mode] = {"skipped": f"failed: {type(error).__name__}: {error}"[:300]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument("--presets", default="tiny,paper,ddpm")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sample-batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also the compiled step (default: with CUDA)",
    )
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="then the compiled VARIANTS (default: with CUDA)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330,
        help="start no variant that would end later than this (seconds from the start)",
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    presets = args.presets.split(",") if cuda else ["tiny"]
    batch, sample_batch, repeats = (
        (args.batch, args.sample_batch, args.repeats) if cuda else (8, 4, 3)
    )
    modes = {"eager": {"compile": False}} | (
        {"compiled": {"compile": True}} if (cuda if args.compile is None else args.compile) else {}
    )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # as training: the bases project in fp32
    start = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {**machine(), "argv": sys.argv[1:], "batch": batch},
        "train": {},
        "sampling": {},
    }
    with tempfile.TemporaryDirectory(prefix="sqdm-gpu-") as tmp:
        for preset in presets:
            results["train"][preset] = {
                mode: bench_train(preset, batch, mode, settings, repeats, Path(tmp))
                for mode, settings in modes.items()
            }
            print(
                f"{preset} trained ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        for preset in (p for p in presets if p in ("tiny", "paper")):
            results["sampling"][preset] = {
                mode: bench_sampling(preset, sample_batch, settings["compile"], 50 if cuda else 2)
                for mode, settings in modes.items()
            }
        if cuda if args.variants is None else args.variants:
            deadline = start + args.budget_s
            bench_variants(results, presets, batch, repeats, Path(tmp), deadline)
    results["meta"]["wall_s"] = time.perf_counter() - start
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json} ({results['meta']['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
