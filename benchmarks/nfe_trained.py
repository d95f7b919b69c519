"""Few-step samplers on trained models: fd_effnet against model evaluations (issue 15).

    python benchmarks/nfe_trained.py SWEEP_DIR [--sweep local-cifar10-samplers]
        [--cells isotropic_seed0 ...] [--evals dpmpp-2m-20 ...] [--train] [--metric fd_effnet]
        [--json PATH] [--plot PNG] [--quiet]

Takes the cells of the sweep (``--sweep``, a shipped sweep or a YAML file, with its folder
SWEEP_DIR) whose id contains any ``--cells`` substring (``--train``: training those not
trained yet), and evaluates each with the ``--evals`` (SAMPLER-STEPS labels, with
``-x0RULE`` for another rule for the predicted x_0, e.g. ``-x0clip-anchor``; by default
dpmpp-2m and dpmpp-2m-sde at 10, 20 and 50 steps and heun at 11 steps, 21 network
evaluations) and with the baselines exact DDPM and DDIM at 50 steps, exactly as the sweep
evaluates its samplers (its ``eval:`` settings: number of samples, sampling seed, reference
subset, metrics). Prints, per sampler and NFE, the mean ``--metric`` over the models with its
95 % interval and the seed-paired differences from ``ddpm-50`` and ``ddim-50``, then the
seed-paired changes from one step count to the next, between samplers at equal NFE and
between x_0 rules, and
writes every number to JSON (``--plot``: the first table as a figure). Evaluations already
made are read back from the cells' own ``evals/LABEL/result.json`` (the sweep's layout), so a
rerun only adds what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from squeezed_diffusion import SAMPLERS
from squeezed_diffusion.evaluation.report.stats import interval95, sig
from squeezed_diffusion.evaluation.sweep import (
    Evaluation,
    check_steps,
    evaluation_folder,
    load_sweep,
    run_cell,
)
from squeezed_diffusion.training.checkpoint import list_checkpoints

FEW_STEP = [
    Evaluation("dpmpp-2m", 10), Evaluation("dpmpp-2m", 20), Evaluation("dpmpp-2m", 50),
    Evaluation("heun", 11), Evaluation("dpmpp-2m-sde", 10), Evaluation("dpmpp-2m-sde", 20),
    Evaluation("dpmpp-2m-sde", 50),
]  # fmt: skip
BASELINES = [Evaluation("ddpm", 50), Evaluation("ddim", 50)]


def parse_evaluation(label: str) -> Evaluation:
    """``dpmpp-2m-20`` as Evaluation("dpmpp-2m", 20), ``ddim-50-x0none`` with that x0 rule."""
    try:
        return Evaluation.from_label(label)
    except ValueError as err:
        raise ValueError(f"--evals {err}") from None


def scores(cell: Path, label: str, metric: str) -> float:
    result = evaluation_folder(cell, label) / "result.json"
    return json.loads(result.read_text())["metrics"][metric]


def summary_rows(
    cells: list[Path], metric: str, evaluations: list[Evaluation] = FEW_STEP
) -> list[dict]:
    """Per evaluation (sampler, steps, x_0 rule): ``metric`` over the models (mean, 95 %
    interval) and its seed-paired differences from ddpm-50 and ddim-50, read from the cells'
    results."""
    evaluations = BASELINES + [e for e in evaluations if e not in BASELINES]
    per = {e.label: [scores(c, e.label, metric) for c in cells] for e in evaluations}
    rows = []
    for ev in evaluations:
        values = per[ev.label]
        row = {
            "sampler": ev.sampler, "steps": ev.steps, "nfe": SAMPLERS[ev.sampler].nfe(ev.steps),
            "models": len(cells), "values": values, "mean": statistics.fmean(values),
            "ci": interval95(values),
        }  # fmt: skip
        if ev.eta:  # rows of eta 0 and of the default rule read as before they were settings
            row["eta"] = ev.eta
        if ev.x0 != "clip":
            row["x0"] = ev.x0
        label = ev.label
        for base in ("ddpm-50", "ddim-50"):
            diffs = [a - b for a, b in zip(per[label], per[base], strict=True)]
            row[f"paired_vs_{base}"] = statistics.fmean(diffs)
            row[f"paired_ci_vs_{base}"] = interval95(diffs)
        rows.append(row)
    return rows


def evaluation_of(row: dict) -> Evaluation:
    return Evaluation(row["sampler"], row["steps"], row.get("eta", 0.0), row.get("x0", "clip"))


def _name(row: dict) -> str:
    """A row's sampler as the tables show it, with its eta and x_0 rule where not 0 and clip."""
    ev = evaluation_of(row)
    settings = ([f"eta {ev.eta:g}"] if ev.eta else []) + (
        [f"x0 {ev.x0}"] if ev.x0 != "clip" else []
    )
    return f"`{ev.sampler}`" + (f" ({', '.join(settings)})" if settings else "")


def step_pairs(
    rows: list[dict], evaluation: Callable[[dict], Evaluation] = evaluation_of
) -> list[tuple[dict, dict]]:
    """``(later, earlier)`` rows at consecutive step counts of one sampler, eta and x_0 rule:
    whether more steps still change the result."""
    series: dict[Evaluation, list[dict]] = {}
    for r in rows:
        series.setdefault(dataclasses.replace(evaluation(r), steps=1), []).append(r)
    pairs = []
    for runs in series.values():
        runs = sorted(runs, key=lambda r: evaluation(r).steps)
        pairs += [(later, earlier) for earlier, later in itertools.pairwise(runs)]
    return pairs


def level(mean: float, ci: float) -> str:
    """A mean and its 95 % interval as the tables (and the docs' sentences) print them."""
    return f"{sig(mean, 4)} ± {sig(ci, 2)}"


def difference(mean: float, ci: float) -> str:
    """A signed (paired) difference and its 95 % interval as the tables print them."""
    return f"{mean:+.3g} ± {sig(ci, 2)}"


def format_table(rows: list[dict], metric: str) -> str:
    """The markdown table the README shows."""
    lines = [
        f"| sampler | NFE | {metric} (mean ± 95 %, {rows[0]['models']} models) "
        "| paired vs ddpm-50 | paired vs ddim-50 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        paired = [
            "" if evaluation_of(r).label == base
            else difference(r[f"paired_vs_{base}"], r[f"paired_ci_vs_{base}"])
            for base in ("ddpm-50", "ddim-50")
        ]  # fmt: skip
        mean = level(r["mean"], r["ci"])
        lines.append(f"| {_name(r)} | {r['nfe']} | {mean} | {' | '.join(paired)} |")
    return "\n".join(lines)


def consistent_rule(row: dict) -> str:
    """The row's x_0 rule named for what its steps do: "clip" is "clip-reuse" for samplers
    that have no separate noise estimate (they step with the clipped x_0 alone, as DDIM under
    clip-reuse) and "clip-anchor" for DDIM (it keeps the network's noise estimate, as
    DPM-Solver++ under clip-anchor). Two rows with one name and eta 0 differ in the solver
    alone (DDIM with eta 0 is DPM-Solver++(1) under either, so against ``dpmpp-2m`` it is one
    ODE at first and second order)."""
    rule = row.get("x0", "clip")
    if rule != "clip":
        return rule
    return "clip-anchor" if SAMPLERS[row["sampler"]].reuses_x0 else "clip-reuse"


def changes(rows: list[dict]) -> list[dict]:
    """Seed-paired differences that say whether a sampler has converged: each sampler (with
    its x_0 rule) against itself at its previous step count, two samplers against each other
    at equal NFE (with one x_0 rule, or both using the clipped x_0 throughout), and one
    sampler and step count under two x_0 rules."""
    pairs = step_pairs(rows)
    # "a − b" in name order, whatever the rows' order
    by_name = sorted(rows, key=lambda r: (r["sampler"], r.get("x0", "clip")))
    pairs += [
        (a, b) for a, b in itertools.combinations(by_name, 2)
        if a["nfe"] == b["nfe"] and a["sampler"] != b["sampler"]
        and (a.get("x0", "clip") == b.get("x0", "clip") or consistent_rule(a) == consistent_rule(b))
    ]  # fmt: skip
    pairs += [
        (a, b) for a, b in itertools.combinations(by_name, 2)
        if (a["sampler"], a["steps"]) == (b["sampler"], b["steps"])
    ]  # fmt: skip
    out = []
    for a, b in pairs:
        diffs = [x - y for x, y in zip(a["values"], b["values"], strict=True)]
        out.append({
            "change": f"{evaluation_of(a).label} − {evaluation_of(b).label}",
            "mean": statistics.fmean(diffs), "ci": interval95(diffs),
        })  # fmt: skip
    return out


def format_changes(changed: list[dict], metric: str) -> str:
    """The markdown table of :func:`changes`."""
    lines = [f"| change | paired difference in {metric} (mean ± 95 %) |", "|---|---|"]
    lines += [f"| {c['change']} | {difference(c['mean'], c['ci'])} |" for c in changed]
    return "\n".join(lines)


def plot(rows: list[dict], metric: str) -> bytes:
    """``metric`` against NFE, one line per sampler with 95 % error bars; DDPM-50's mean and
    interval as a grey band, the target a few-step sampler has to reach."""
    from matplotlib.figure import Figure

    from squeezed_diffusion.evaluation.report.render import png

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    (ddpm,) = [r for r in rows if evaluation_of(r) == BASELINES[0]]
    ax.axhspan(ddpm["mean"] - ddpm["ci"], ddpm["mean"] + ddpm["ci"], color="0.85", zorder=0)
    ax.axhline(ddpm["mean"], color="0.4", lw=1, label="ddpm, 50 NFE (± 95 %)")
    for name in dict.fromkeys(_name(r) for r in rows if evaluation_of(r) != BASELINES[0]):
        pts = sorted((r for r in rows if _name(r) == name), key=lambda r: r["nfe"])
        ax.errorbar(
            [r["nfe"] for r in pts], [r["mean"] for r in pts], yerr=[r["ci"] for r in pts],
            marker="o", capsize=3, label=name.replace("`", ""),
        )  # fmt: skip
    ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=f"{metric} (lower is better)")
    ticks = sorted({r["nfe"] for r in rows if r["sampler"] != "heun"})  # heun's odd NFEs crowd
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_title(f"{metric} against NFE, {rows[0]['models']} trained models", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return png(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, metavar="SWEEP_DIR", help="the sweep's folder (its cells/ are used)"
    )
    parser.add_argument(
        "--sweep", default="local-cifar10-samplers", help="sweep YAML file or shipped sweep"
    )
    parser.add_argument(
        "--cells", nargs="+", default=["isotropic"], help="cells whose id contains any of these"
    )
    parser.add_argument(
        "--evals", nargs="+", default=[e.label for e in FEW_STEP],
        help="SAMPLER-STEPS[-x0RULE] labels to evaluate beside ddpm-50 and ddim-50",
    )  # fmt: skip
    parser.add_argument(
        "--train", action="store_true", help="train the cells not trained in SWEEP_DIR yet"
    )
    parser.add_argument("--metric", default="fd_effnet")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--plot", type=Path, help="write the metric against NFE as a PNG here")
    args = parser.parse_args()
    try:
        evaluations = list(dict.fromkeys(parse_evaluation(label) for label in args.evals))
        sweep = load_sweep(args.sweep, args.folder)
        wanted = [e.record() for e in BASELINES + evaluations]
        spec = dataclasses.replace(sweep.eval, sampler=tuple(wanted)).validate()
        cells = [c for c in sweep.cells if any(s in c.id for s in args.cells)]
        check_steps(evaluations, cells)  # a step count the process refuses, before training
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if not cells:
        raise SystemExit(f"error: no cell of {sweep.name} has {' or '.join(args.cells)} in its id")
    untrained = [c.id for c in cells if not list_checkpoints(c.config.out)]
    if untrained and not args.train:
        raise SystemExit(
            f"error: {', '.join(untrained)} not trained under {args.folder}: give the sweep's "
            "folder, or pass --train to train them (about 7 min each on one CPU core)"
        )
    start, references = time.perf_counter(), {}
    for cell in cells:  # trains what is not trained (--train), evaluates only what is missing
        for result in run_cell(cell, spec, progress=not args.quiet, references=references):
            label = Evaluation(**result["evaluation"]).label
            score = result["metrics"][args.metric]
            print(
                f"{cell.id} [{label}]: {args.metric} {score:.4g} ({result['wall_s']:.0f} s)",
                flush=True,
            )
    if len(cells) < 2:  # one model evaluated (e.g. one per core); the intervals need two
        print(f"evaluated {cells[0].id}; the table needs at least 2 models", file=sys.stderr)
        return 0
    folders = [Path(c.config.out).parent for c in cells]
    rows = summary_rows(folders, args.metric, evaluations)
    print(format_table(rows, args.metric))
    changed = changes(rows)
    print(format_changes(changed, args.metric))
    wall = time.perf_counter() - start
    print(f"({wall:.0f} s; cells: {', '.join(c.id for c in cells)})", file=sys.stderr)
    if args.plot:
        args.plot.write_bytes(plot(rows, args.metric))
    if args.json:
        args.json.write_text(json.dumps({"metric": args.metric, "cells": [c.id for c in cells],
                                         "rows": rows, "changes": changed, "wall_s": wall}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
