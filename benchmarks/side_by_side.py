"""Training several small models on a CPU: one after the other with every thread each, or
side by side with one thread each? (What ``sqdm demo`` does with its configurations.)

    python benchmarks/side_by_side.py [--preset demo] [--model M] [--steps 200] [--json PATH]

Trains the preset once with all of torch's threads, then ``threads`` copies at once with one
thread each, and prints the training images/s each run logged (training steps only, the
Trainer's own figure) and their sum. No assertions: this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from squeezed_diffusion.training.run import Run


def train(out: Path, args: argparse.Namespace, threads: int) -> subprocess.Popen:
    """``sqdm train`` in a fresh process limited to ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    argv = ["train", "--preset", args.preset, "--steps", str(args.steps), "--out", str(out)]
    argv += ["--quiet", *(["--model", args.model] if args.model else [])]
    return subprocess.Popen(
        [sys.executable, "-m", "squeezed_diffusion.cli", *argv],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def images_per_s(proc: subprocess.Popen, out: Path) -> float:
    """The last logged training rate of the run in ``out``, once its process has ended."""
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"sqdm train failed:\n{err}")
    return float([r for r in Run(out).log() if "images_per_s" in r][-1]["images_per_s"])


def markdown(result: dict) -> str:
    """The table docs/benchmarks.md shows (a test keeps it equal to the committed JSON)."""
    lines = ["| layout | images/s per run | total images/s |", "|---|---|---|"]
    for row in result["rows"]:
        per_run = " + ".join(f"{r:.0f}" for r in row["runs"])
        lines.append(f"| {row['layout']} | {per_run} | {sum(row['runs']):.0f} |")
    return "\n".join(lines) + f"\n\nSide by side trains {result['gain']:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--model", help="another UNet preset (default: the preset's)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        one = Path(tmp) / "one"
        rate = images_per_s(train(one, args, threads), one)
        rows.append({"layout": f"1 process x {threads} threads", "runs": [rate],
                     "wall_s": time.perf_counter() - start})  # fmt: skip
        start = time.perf_counter()
        outs = [Path(tmp) / f"side{i}" for i in range(threads)]
        procs = [train(out, args, 1) for out in outs]
        rates = [images_per_s(p, out) for p, out in zip(procs, outs, strict=True)]
        rows.append({"layout": f"{threads} processes x 1 thread", "runs": rates,
                     "wall_s": time.perf_counter() - start})  # fmt: skip
    model = args.model or "the preset's"
    print(f"preset {args.preset}, model {model}, {args.steps} steps per run, {threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")  # fmt: skip
    gain = sum(rows[1]["runs"]) / sum(rows[0]["runs"])
    result = {"preset": args.preset, "model": args.model, "steps": args.steps, "threads": threads,
              "torch": torch.__version__, "rows": rows, "gain": gain}  # fmt: skip
    print(markdown(result) + " the training images per second")
    print("wall clock: " + ", ".join(f"{r['layout']} {r['wall_s']:.1f} s" for r in rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
