"""What clipping adds at each step of the anchored DPM-Solver++, against the step count.

    python benchmarks/anchor_drift.py SWEEP_DIR [--sweep local-cifar10-samplers]
        [--cells isotropic_seed0 ...] [--evals dpmpp-2m-20-x0clip-anchor ...] [--num 500]
        [--seed 0] [--json PATH] [--plot PNG] [--quiet]

Under ``--x0 clip-anchor`` (and DDIM under ``clip``) every step starts from x_t moved by
a_t (clip(x0hat) - x0hat): a correction that is not multiplied by the step size, so it does
not vanish as steps are added, as an ODE solver's error does. For each trained cell of the
sweep whose id contains a ``--cells`` substring, and each ``--evals`` label (SAMPLER-STEPS
[-x0RULE], as in ``nfe_trained.py``), this draws ``--num`` samples from the EMA weights and
records at every network evaluation the share of x0hat's pixels beyond [-1, 1] and the size
of that shift of the step's start, a_t * RMS(x0hat - clip(x0hat)) (the last step returns
the clipped x0hat, so its shift is counted but not passed on); then two statistics of the samples (as
uint8 images, as they are scored): their high-frequency energy (RMS difference of
neighbouring pixels, in [-1, 1] units) and their colour spread (the standard deviation over
samples of each image's mean colour, averaged over channels), beside the same two of the
training data. Prints per label the mean over the models with its 95 % interval, the
seed-paired changes from one step count to the next and between samplers at equal NFE
whose rules agree (``nfe_trained.consistent_rule``), and writes every number to JSON
(``--plot``: the correction against t, and the high-frequency energy against NFE). Only the
anchored rules (and DDIM under ``clip``) add the correction to x_t; for the others it is
what they clip away.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from nfe_trained import consistent_rule, difference, level, parse_evaluation, step_pairs
from tqdm import tqdm

from squeezed_diffusion import SAMPLERS, SqueezedDiffusion
from squeezed_diffusion.core.samplers import (
    X0_RULES,
    checked_sampler,
    dpmpp_2m_sde_step,
    dpmpp_2m_step,
    predict,
    x0_rule,
)
from squeezed_diffusion.data import to_uint8
from squeezed_diffusion.evaluation.report.stats import interval95, sig
from squeezed_diffusion.evaluation.sweep import Evaluation, check_steps, load_sweep
from squeezed_diffusion.training.checkpoint import list_checkpoints
from squeezed_diffusion.training.run import Run

EVALS = [
    "ddpm-50", "ddim-50", "dpmpp-2m-20", "dpmpp-2m-50", "dpmpp-2m-10-x0clip-anchor",
    "dpmpp-2m-20-x0clip-anchor", "dpmpp-2m-50-x0clip-anchor", "dpmpp-2m-100-x0clip-anchor",
]  # fmt: skip
CLIPPING = 0.01  # an evaluation "clips" when over 1 % of x0hat's pixels lie beyond [-1, 1]
# The anchored steps' x_0 share is 1 - exp(-k h): k per step function (the SDE's terms are in
# exp(-2h)), so that a sampler registered under another name is still recognised.
SHARE_EXPONENTS = {dpmpp_2m_step: 1.0, dpmpp_2m_sde_step: 2.0}
MEASURES = {  # key: column heading; the last two are the images' (the data row has them)
    "clipping_nfe": "evaluations clipping > 1 % of pixels",
    "correction": "sum of a_t RMS(x0hat - clip(x0hat))",  # times w under clip-anchor-scaled
    "hf": "high-frequency energy",
    "colour_spread": "colour spread",
}


def image_stats(images: torch.Tensor) -> dict[str, float]:
    """High-frequency energy and colour spread of uint8 ``[N, C, H, W]`` images (module doc)."""
    x = images.double() / 127.5 - 1
    dx, dy = x.diff(dim=3), x.diff(dim=2)
    hf = ((dx.pow(2).mean() + dy.pow(2).mean()) / 2).sqrt()
    spread = x.mean(dim=(2, 3)).std(dim=0).mean()
    return {"hf": float(hf), "colour_spread": float(spread)}


def share_exponent(sampler: str) -> float:
    """k of the anchored steps' x_0 share ``1 - exp(-k h)`` for ``sampler``, by its step
    function (:data:`SHARE_EXPONENTS`); a one-line error for a step it does not know."""
    step = SAMPLERS[sampler].step
    if step not in SHARE_EXPONENTS:
        known = ", ".join(f.__name__ for f in SHARE_EXPONENTS)
        raise ValueError(
            f"the {sampler} sampler steps with {step.__name__}, whose x_0 share this "
            f"diagnostic does not know (it knows {known}): leave out its clip-anchor-scaled label"
        )
    return SHARE_EXPONENTS[step]


def anchor_shares(proc: SqueezedDiffusion, ev: Evaluation) -> dict[int, tuple[torch.Tensor, float]]:
    """Per time point of ``ev``'s run, what ``clip-anchor-scaled`` multiplies the anchor's
    shift by in each direction (groups ``[1, K]``, then the rest): the share of x_0 a
    first-order step mixes in, ``1 - exp(-h_i)`` (SDE: ``1 - exp(-2 h_i)``) with h_i the
    step's rise in half-log-SNR; 1 at the step to the data. Computed from the process' own
    log-SNR table, apart from the sampler's coefficients, so the two can disagree."""
    log_snr, k = proc.log_snr_table(), share_exponent(ev.sampler)
    shares = {}
    for t, t_prev in SAMPLERS[ev.sampler].schedule(proc.num_train_timesteps, ev.steps):
        w = torch.ones(log_snr.shape[1], dtype=torch.float64)
        if t_prev >= 0:
            w = 1.0 - torch.exp(-k * (log_snr[t_prev] - log_snr[t]) / 2)
        shares[t] = (w[None, :-1].float(), float(w[-1]))
    return shares


def trace(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    proc: SqueezedDiffusion,
    shape: tuple[int, ...],
    ev: Evaluation,
    seed: int,
) -> dict:
    """Sample ``shape`` with ``ev`` through ``network`` (the model output); per network
    evaluation (t, share of x0hat clipped, a_t RMS of the clipped part, under
    ``clip-anchor-scaled`` scaled per direction as the rule scales it), their counts and
    sums, and the samples' statistics."""
    steps: list[tuple[int, float, float]] = []
    shares = anchor_shares(proc, ev) if x0_rule(ev.x0).anchor_scaled else None

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = network(x, t)
        step = int(t[0])
        x0 = predict(proc, out, x, step).x0
        beyond = x0 - x0.clamp(-1, 1)
        share = float((beyond != 0).double().mean())
        if shares is not None:
            beyond = proc.basis.scale(beyond, *shares[step])
        size = proc.alphas_cumprod[step].sqrt() * beyond.double().pow(2).mean().sqrt()
        steps.append((step, share, float(size)))
        return out

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = proc.sample(
            model, shape, ev.steps, ev.sampler, generator=generator, eta=ev.eta, progress=False,
            clip=ev.x0,
        )  # fmt: skip
    return {
        "steps": steps,
        "clipping_nfe": sum(share > CLIPPING for _, share, _ in steps),
        "correction": sum(c for *_, c in steps),
        **image_stats(to_uint8(x)),
    }


def trace_run(run: Path, ev: Evaluation, num: int, seed: int) -> dict:
    """:func:`trace` of a run's EMA weights, ``num`` samples."""
    unet, proc = Run(run).load()
    shape = (num, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return trace(lambda x, t: unet(x, t).sample, proc, shape, ev, seed)


def summary_rows(per: dict[str, list[dict]]) -> list[dict]:
    """Per label, each measure's values over the models, mean and 95 % interval."""
    rows = []
    for label, traces in per.items():
        ev = Evaluation.from_label(label)
        row = {"label": label, "nfe": SAMPLERS[ev.sampler].nfe(ev.steps), "models": len(traces)}
        for key in MEASURES:
            values = [t[key] for t in traces]
            row[key] = {
                "values": values,
                "mean": statistics.fmean(values),
                "ci": interval95(values),
            }
        rows.append(row)
    return rows


def changes(rows: list[dict]) -> list[dict]:
    """Seed-paired changes of each measure from one step count to the next (per sampler, eta
    and x_0 rule), then between two samplers at equal NFE whose x_0 rules do the same
    (``consistent_rule``: DDIM under clip against DPM-Solver++ under clip-anchor)."""
    evs = {r["label"]: Evaluation.from_label(r["label"]) for r in rows}
    pairs = step_pairs(rows, lambda r: evs[r["label"]])

    def rule(r: dict) -> str:
        return consistent_rule({"sampler": evs[r["label"]].sampler, "x0": evs[r["label"]].x0})

    pairs += [
        (b, a) for a, b in itertools.combinations(rows, 2)
        if a["nfe"] == b["nfe"] and evs[a["label"]].sampler != evs[b["label"]].sampler
        and rule(a) == rule(b)
    ]  # fmt: skip
    out = []
    for later, earlier in pairs:
        change = {"change": f"{later['label']} − {earlier['label']}"}
        for key in MEASURES:
            diffs = [
                a - b for a, b in zip(later[key]["values"], earlier[key]["values"], strict=True)
            ]
            change[key] = {"mean": statistics.fmean(diffs), "ci": interval95(diffs)}
        out.append(change)
    return out


def format_tables(rows: list[dict], changed: list[dict], data: dict[str, float]) -> str:
    """The two markdown tables the docs show: the measures per label (with the training data's
    statistics as the last row) and their seed-paired changes."""
    heads = " | ".join(MEASURES.values())
    lines = [
        f"| sampler | NFE | {heads} |",
        "|---|---|" + "---|" * len(MEASURES),
    ]
    for r in rows:
        cells = " | ".join(level(r[k]["mean"], r[k]["ci"]) for k in MEASURES)
        lines.append(f"| {r['label']} | {r['nfe']} | {cells} |")
    lines.append(
        f"| training data |  |  |  | {sig(data['hf'], 4)} | {sig(data['colour_spread'], 4)} |"
    )
    lines += ["", f"| change | {heads} |", "|---|" + "---|" * len(MEASURES)]
    for c in changed:
        cells = " | ".join(difference(c[k]["mean"], c[k]["ci"]) for k in MEASURES)
        lines.append(f"| {c['change']} | {cells} |")
    return "\n".join(lines)


def plot(
    rows: list[dict], per: dict[str, list[dict]], data: dict[str, float], trained: int
) -> bytes:
    """Left: the correction per network evaluation against t, mean over the models, for each
    anchored step count (shades of one colour per anchored rule, darker with more steps).
    Right: the samples' high-frequency energy against NFE per sampler and rule, the data's as
    a line. Titled with the models' ``trained`` steps."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from squeezed_diffusion.evaluation.report.render import png

    fig = Figure(figsize=(11.5, 3.8))
    left, right = fig.subplots(1, 2)
    anchoring = [name for name, rule in X0_RULES.items() if rule.anchor]
    families = dict(zip(anchoring, ("Reds", "Blues", "Greens", "Purples"), strict=False))
    for rule, colours in families.items():
        anchored = [label for label in per if Evaluation.from_label(label).x0 == rule]
        for n, label in enumerate(anchored):
            traces = per[label]
            ts = [t for t, *_ in traces[0]["steps"]]
            mean = [statistics.fmean(tr["steps"][i][2] for tr in traces) for i in range(len(ts))]
            shade = colormaps[colours](0.35 + 0.65 * n / max(1, len(anchored) - 1))
            left.plot(ts, mean, marker=".", color=shade, label=label)
    left.set(
        xlabel="timestep t", ylabel="a_t RMS(x0hat - clip(x0hat)) (x w if scaled)",
        xlim=(1000, 0), yscale="log",
    )  # fmt: skip
    left.set_title(f"anchored correction per evaluation\n{trained} training steps", fontsize=10)
    left.legend(fontsize=7)
    series: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        ev = Evaluation.from_label(r["label"])
        series.setdefault((ev.sampler, ev.x0), []).append(r)
    for (sampler, rule), pts in series.items():
        pts = sorted(pts, key=lambda r: r["nfe"])
        right.errorbar(
            [r["nfe"] for r in pts], [r["hf"]["mean"] for r in pts],
            yerr=[r["hf"]["ci"] for r in pts], marker="o", capsize=3,
            label=sampler + (f" ({rule})" if rule != "clip" else ""),
            color=colormaps[families[rule]](0.8) if rule in families else None,
        )  # fmt: skip
    right.axhline(data["hf"], color="0.4", lw=1, ls="--", label="training data")
    right.set(xscale="log", xlabel="network evaluations (NFE)", ylabel="high-frequency energy")
    right.set_title(
        f"samples' high-frequency energy\n{rows[0]['models']} models, {trained} training steps",
        fontsize=10,
    )
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return png(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, metavar="SWEEP_DIR", help="the sweep's folder")
    parser.add_argument(
        "--sweep", default="local-cifar10-samplers", help="sweep YAML file or shipped sweep"
    )
    parser.add_argument(
        "--cells", nargs="+", default=["isotropic"], help="cells whose id contains any of these"
    )
    parser.add_argument("--evals", nargs="+", default=EVALS, help="SAMPLER-STEPS[-x0RULE] labels")
    parser.add_argument("--num", type=int, default=500, help="samples per model and label")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="write the figure as a PNG here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    try:
        if args.num < 2:
            raise ValueError(
                f"--num must be at least 2 (a spread needs two samples), got {args.num}"
            )
        evaluations = list(dict.fromkeys(parse_evaluation(label) for label in args.evals))
        sweep = load_sweep(args.sweep, args.folder)
        cells = [c for c in sweep.cells if any(s in c.id for s in args.cells)]
        for ev in evaluations:  # everything sampling would refuse, before minutes of sampling
            checked_sampler(ev.sampler, ev.eta, ev.x0)
            if x0_rule(ev.x0).anchor_scaled:
                share_exponent(ev.sampler)
        check_steps(evaluations, cells)
        for out in (args.json, args.plot):
            if out is not None and not out.parent.is_dir():
                raise ValueError(f"{out}: folder {out.parent} does not exist; create it first")
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if len(cells) < 2:
        raise SystemExit(
            f"error: {len(cells)} cell(s) of {sweep.name} match --cells {' '.join(args.cells)}; "
            "the intervals need at least 2"
        )
    untrained = [c.id for c in cells if not list_checkpoints(c.config.out)]
    if untrained:
        raise SystemExit(
            f"error: {', '.join(untrained)} not trained under {args.folder}: give the sweep's "
            "folder, or train them with nfe_trained.py --train"
        )
    start = time.perf_counter()
    per: dict[str, list[dict]] = {ev.label: [] for ev in evaluations}
    jobs = list(itertools.product(cells, evaluations))
    for cell, ev in tqdm(jobs, desc="sampling", disable=args.quiet):
        per[ev.label].append(trace_run(Path(cell.config.out), ev, args.num, args.seed))
    data = image_stats(Run(cells[0].config.out).reference().images)
    rows = summary_rows(per)
    changed = changes(rows)
    print(format_tables(rows, changed, data))
    wall = time.perf_counter() - start
    print(f"({wall:.0f} s; {args.num} samples per model and label)", file=sys.stderr)
    trained = cells[0].config.steps
    if args.plot:
        args.plot.write_bytes(plot(rows, per, data, trained))
    if args.json:
        args.json.write_text(json.dumps({
            "cells": [c.id for c in cells], "training_steps": trained, "num": args.num,
            "seed": args.seed, "data": data,
            "rows": rows, "changes": changed, "traces": per, "wall_s": wall,
        }, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
