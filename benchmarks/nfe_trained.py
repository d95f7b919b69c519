"""Few-step samplers on trained models: fd_effnet against model evaluations (issue 15).

    python benchmarks/nfe_trained.py SWEEP_DIR [--cells isotropic_seed0 ...] [--json PATH]
        [--plot PNG]

Takes the trained cells of a finished sweep (``sqdm sweep local-cifar10-samplers``) whose id
contains any ``--cells`` substring, and evaluates each with dpmpp-2m and dpmpp-2m-sde at 10,
20 and 50 steps and heun at 11 steps (21 network evaluations), exactly as the sweep evaluated
its samplers (the same number of samples, sampling seed, reference subset and metrics, read
from the sweep's own results). Prints, per sampler and NFE, the mean fd_effnet over the
models with its 95 % interval and the seed-paired differences from exact DDPM and from DDIM
with 50 steps (the sweep's ``ddpm-50`` and ``ddim-50``), and writes every number to JSON
(``--plot``: the same as a figure). Evaluations already made are read back from the cells'
own ``evals/LABEL/result.json`` (the sweep's layout), so a rerun only adds what is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from squeezed_diffusion import SAMPLERS
from squeezed_diffusion.evaluation.report.stats import interval95, sig
from squeezed_diffusion.evaluation.sweep import (
    Cell,
    EvalSpec,
    Evaluation,
    evaluation_folder,
    run_cell,
)
from squeezed_diffusion.training.run import Run

FEW_STEP = [
    ("dpmpp-2m", 10), ("dpmpp-2m", 20), ("dpmpp-2m", 50), ("heun", 11),
    ("dpmpp-2m-sde", 10), ("dpmpp-2m-sde", 20), ("dpmpp-2m-sde", 50),
]  # fmt: skip
BASELINES = [("ddpm", 50), ("ddim", 50)]


def sweep_spec(cells: list[Path]) -> EvalSpec:
    """The evaluation settings the sweep used (from a finished evaluation's result.json)."""
    baseline = evaluation_folder(cells[0], Evaluation(*BASELINES[0]).label) / "result.json"
    first = json.loads(baseline.read_text())["settings"]
    return EvalSpec(
        num=first["num"], seed=first["seed"], metrics=tuple(first["metrics"]),
        num_reference=first["num_reference"], prc_extractor=first["prc_extractor"],
        sampler=tuple({"sampler": s, "steps": n} for s, n in FEW_STEP),
    ).validate()  # fmt: skip


def sweep_axes(cell: Path) -> dict:
    """The cell's table axes as the sweep recorded them, so these results read as the sweep's."""
    baseline = evaluation_folder(cell, Evaluation(*BASELINES[0]).label) / "result.json"
    return json.loads(baseline.read_text())["axes"]


def scores(cell: Path, label: str, metric: str) -> float:
    result = evaluation_folder(cell, label) / "result.json"
    return json.loads(result.read_text())["metrics"][metric]


def summary_rows(cells: list[Path], metric: str) -> list[dict]:
    """Per sampler and NFE: ``metric`` over the models (mean, 95 % interval) and its
    seed-paired differences from ddpm-50 and ddim-50, read from the cells' results."""
    labels = [Evaluation(s, n).label for s, n in BASELINES + FEW_STEP]
    per = {label: [scores(c, label, metric) for c in cells] for label in labels}
    rows = []
    for (sampler, steps), label in zip(BASELINES + FEW_STEP, labels, strict=True):
        values = per[label]
        row = {
            "sampler": sampler, "steps": steps, "nfe": SAMPLERS[sampler].nfe(steps),
            "models": len(cells), "values": values, "mean": statistics.fmean(values),
            "ci": interval95(values),
        }  # fmt: skip
        for base in ("ddpm-50", "ddim-50"):
            diffs = [a - b for a, b in zip(per[label], per[base], strict=True)]
            row[f"paired_vs_{base}"] = statistics.fmean(diffs)
            row[f"paired_ci_vs_{base}"] = interval95(diffs)
        rows.append(row)
    return rows


def format_table(rows: list[dict], metric: str) -> str:
    """The markdown table the README shows."""
    lines = [
        f"| sampler | NFE | {metric} (mean ± 95 %, {rows[0]['models']} models) "
        "| paired vs ddpm-50 | paired vs ddim-50 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mean = f"{sig(r['mean'], 4)} ± {sig(r['ci'], 2)}"
        paired = [
            "" if f"{r['sampler']}-{r['steps']}" == base
            else f"{r[f'paired_vs_{base}']:+.3g} ± {sig(r[f'paired_ci_vs_{base}'], 2)}"
            for base in ("ddpm-50", "ddim-50")
        ]  # fmt: skip
        lines.append(f"| `{r['sampler']}` | {r['nfe']} | {mean} | {' | '.join(paired)} |")
    return "\n".join(lines)


def plot(rows: list[dict], metric: str) -> bytes:
    """``metric`` against NFE, one line per sampler with 95 % error bars; DDPM-50's mean and
    interval as a grey band, the target a few-step sampler has to reach."""
    from matplotlib.figure import Figure

    from squeezed_diffusion.evaluation.report.render import png

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    (ddpm,) = [r for r in rows if (r["sampler"], r["steps"]) == BASELINES[0]]
    ax.axhspan(ddpm["mean"] - ddpm["ci"], ddpm["mean"] + ddpm["ci"], color="0.85", zorder=0)
    ax.axhline(ddpm["mean"], color="0.4", lw=1, label="ddpm, 50 NFE (± 95 %)")
    for sampler in dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "ddpm"):
        pts = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
        ax.errorbar(
            [r["nfe"] for r in pts], [r["mean"] for r in pts], yerr=[r["ci"] for r in pts],
            marker="o", capsize=3, label=sampler,
        )  # fmt: skip
    ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=f"{metric} (lower is better)")
    ax.set_xticks([10, 20, 50], labels=["10", "20", "50"])
    ax.set_xticks([], minor=True)
    ax.set_title(f"{metric} against NFE, {rows[0]['models']} trained models", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return png(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument(
        "--cells", nargs="+", default=["isotropic"], help="cells whose id contains any of these"
    )
    parser.add_argument("--metric", default="fd_effnet")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--plot", type=Path, help="write the metric against NFE as a PNG here")
    args = parser.parse_args()
    cells = sorted(
        p for p in (args.sweep / "cells").iterdir() if any(s in p.name for s in args.cells)
    )
    if not cells:
        raise SystemExit(f"no trained cell of {args.sweep} has {' or '.join(args.cells)} in its id")
    spec, start = sweep_spec(cells), time.perf_counter()
    for folder in cells:  # train_to_completion finds each run finished and only evaluates
        config = Run(folder / "run").config()
        cell = Cell(folder.name, config, sweep_axes(folder))
        for result in run_cell(cell, spec, progress=not args.quiet):  # only what is missing
            label = Evaluation(**result["evaluation"]).label
            score = result["metrics"][args.metric]
            print(f"{folder.name} [{label}]: {args.metric} {score:.4g} ({result['wall_s']:.0f} s)")
    if len(cells) < 2:  # one model evaluated (e.g. one per core); the intervals need two
        print(f"evaluated {cells[0].name}; the table needs at least 2 models", file=sys.stderr)
        return 0
    rows = summary_rows(cells, args.metric)
    print(format_table(rows, args.metric))
    wall = time.perf_counter() - start
    print(f"({wall:.0f} s; cells: {', '.join(c.name for c in cells)})", file=sys.stderr)
    if args.plot:
        args.plot.write_bytes(plot(rows, args.metric))
    if args.json:
        args.json.write_text(json.dumps({"metric": args.metric, "cells": [c.name for c in cells],
                                         "rows": rows, "wall_s": wall}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
