"""How exact is each sampler? The Gaussian oracle of DESIGN.md part 2, as tables.

    python benchmarks/gaussian_oracle.py [--json PATH]          # exact vs paper, 1000 steps
    python benchmarks/gaussian_oracle.py --nfe [--json PATH]    # few-step solvers vs NFE
    python benchmarks/gaussian_oracle.py --spacings [--json PATH]  # their time points

For Gaussian data the optimal predictor is closed-form (``squeezed_diffusion.core.oracle``),
so a sampler that integrates the anisotropic process exactly reproduces the data covariance up
to Monte-Carlo error; the paper's heuristic sampler (``ddpm-paper``, here without clipping so
only the update rule differs) does not once ``S_t`` varies with t. Prints the relative
Frobenius error of the sampled covariance (16,384 pixel vectors, a CIFAR-like colour
covariance) per (variant, strength) and sampler; the isotropic row is the Monte-Carlo floor.
With ``--nfe``: the same error against the number of model evaluations for ddim, dpmpp-2m,
dpmpp-3m, their SDE forms and heun (heun takes 2 steps - 1 evaluations), at 10 to 50
evaluations (100 for dpmpp-3m-sde, which settles late). With ``--spacings``: the
deterministic solvers at about 10, 20 and 50 evaluations (heun 11, 21, 51; a time point two
targets share is one point) on three choices of time points: the
library's (DPMSolverMultistepScheduler's default, uniform in t), Karras et al.'s (rho = 7 in
the VE sigma, diffusers' ``use_karras_sigmas``) and uniform in the principal direction's
half-log-SNR (diffusers' ``use_lu_lambdas`` at strength 0); why the library keeps the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from squeezed_diffusion import SAMPLERS, ChannelBasis, SqueezedDiffusion
from squeezed_diffusion.core.oracle import CIFAR_LIKE_COV, oracle_errors, top_direction
from squeezed_diffusion.core.samplers import (
    heun_timesteps,
    ode_steps,
    ode_timesteps,
    with_corrections,
)

ROWS = [("isotropic", 0.0), ("sdm", -0.8), ("hdm", -0.4), ("sdm", 0.4), ("sdm", -2.0)]
NFE_ROWS = [("isotropic", 0.0)] + [(v, s) for v in ("sdm", "hdm") for s in (-0.4, -0.8)]
NFE_STEPS = {
    "ddim": (10, 20, 50),
    "dpmpp-2m": (10, 20, 50),
    "dpmpp-2m-sde": (10, 20, 50),
    "dpmpp-3m": (10, 20, 50),
    "dpmpp-3m-sde": (10, 20, 50, 100),
    "heun": (5, 6, 10, 11, 25),
}


def process(variant: str, strength: float) -> SqueezedDiffusion:
    return SqueezedDiffusion(ChannelBasis(top_direction(CIFAR_LIKE_COV)), variant, strength)


def exact_vs_paper(steps: int = 1000) -> list[dict]:
    """The README's table: covariance error of each sampler per (variant, strength)."""
    return [
        {
            "variant": variant,
            "strength": strength,
            "cov_rel_error": {
                name: oracle_errors(process(variant, strength), name, steps)[0]
                for name in ("ddpm", "ddim", "ddpm-paper")
            },
        }
        for variant, strength in ROWS
    ]


def quality_vs_nfe() -> list[dict]:
    """Covariance error against model evaluations, per sampler, variant and strength."""
    rows = []
    for variant, strength in NFE_ROWS:
        for sampler, steps_list in NFE_STEPS.items():
            for steps in steps_list:
                err = oracle_errors(process(variant, strength), sampler, steps)[0]
                nfe = SAMPLERS[sampler].nfe(steps)
                rows.append({"variant": variant, "strength": strength, "sampler": sampler,
                             "steps": steps, "nfe": nfe, "cov_rel_error": err})  # fmt: skip
    return rows


SPACING_SOLVERS = {"dpmpp-2m": (10, 20, 50), "dpmpp-3m": (10, 20, 50), "heun": (6, 11, 26)}
SPACINGS = ("uniform-t", "karras", "uniform-logsnr")


def spaced_points(proc: SqueezedDiffusion, spacing: str, n: int) -> list[int]:
    """``n`` descending time points for the ODE solvers. ``uniform-t``: the library's own
    (``ode_timesteps``). The others run from t = T - 1 to t = 0, each target level at its
    nearest timestep (distinct ones: a repeated point is a zero step), as diffusers rounds
    them: ``karras`` uniform in sigma^(1/7) with sigma = sqrt((1 - abar) / abar);
    ``uniform-logsnr`` uniform in the principal direction's half-log-SNR."""
    if spacing == "uniform-t":
        return [t for t, _ in ode_timesteps(proc.num_train_timesteps, n)]
    abar = proc.alphas_cumprod.numpy()
    if spacing == "karras":
        sigma = np.sqrt((1 - abar) / abar)
        ramp = np.linspace(sigma[-1] ** (1 / 7), sigma[0] ** (1 / 7), n) ** 7
        level, target = np.log(sigma), np.log(ramp)
    else:
        level = proc.log_snr_table()[:, 0].numpy() / 2
        target = np.linspace(level[-1], level[0], n)
    nearest = np.abs(level[None, :] - target[:, None]).argmin(axis=1)
    return sorted(set(nearest.tolist()), reverse=True)


@contextmanager
def respaced(proc: SqueezedDiffusion, sampler: str, spacing: str) -> Iterator[str]:
    """``sampler`` on ``spacing``'s time points, registered for the block under a name of its
    own: the registry is how a user adds a sampler, and ``sample`` runs it like any other."""
    entry = SAMPLERS[sampler]

    def schedule(num_train_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
        steps = ode_steps(spaced_points(proc, spacing, num_steps))
        return with_corrections(steps) if entry.schedule is heun_timesteps else steps

    name = f"{sampler}@{spacing}"
    SAMPLERS.register(name, dataclasses.replace(entry, name=name, schedule=schedule))
    try:
        yield name
    finally:
        SAMPLERS.unregister(name)


def quality_vs_spacing() -> list[dict]:
    """Covariance error per solver, spacing and step count, per variant and strength."""
    rows = []
    for variant, strength in NFE_ROWS:
        proc = process(variant, strength)
        for sampler, steps_list in SPACING_SOLVERS.items():
            for spacing in SPACINGS:
                with respaced(proc, sampler, spacing) as name:
                    for steps in steps_list:
                        err = oracle_errors(proc, name, steps)[0]
                        rows.append({"variant": variant, "strength": strength,
                                     "sampler": sampler, "spacing": spacing, "steps": steps,
                                     "nfe": SAMPLERS[name].nfe(steps), "cov_rel_error": err})  # fmt: skip
    return rows


def format_exact(rows: list[dict]) -> str:
    lines = ["| variant, s (beta profile) | `ddpm` (exact) | `ddim` (exact) | `ddpm-paper` (no clipping) |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        label = (
            "isotropic (Monte-Carlo floor)"
            if r["variant"] == "isotropic"
            else f"{r['variant'].upper()} {r['strength']:+.1f}"
        )
        errs = " | ".join(
            f"{e:.3f}" if e >= 0.01 else f"{e:.4f}" for e in r["cov_rel_error"].values()
        )
        lines.append(f"| {label} | {errs} |")
    return "\n".join(lines)


def format_nfe(rows: list[dict]) -> str:
    """Rows: sampler (and spacing, where the rows have one) and step count, shown as its NFE;
    columns: (variant, strength)."""
    configs = list(dict.fromkeys((r["variant"], r["strength"]) for r in rows))
    names = ["isotropic" if v == "isotropic" else f"{v.upper()} {s:+g}" for v, s in configs]
    spaced = "spacing" in rows[0]
    head = "| sampler | " + ("spacing | " if spaced else "") + "NFE | " + " | ".join(names) + " |"
    lines = [head, "|---|---|" + "---|" * (len(configs) + spaced)]
    by = {
        (r["sampler"], r.get("spacing"), r["steps"], r["variant"], r["strength"]): r for r in rows
    }
    for sampler, spacing, steps in dict.fromkeys(k[:3] for k in by):
        cells = [by[(sampler, spacing, steps, v, s)] for v, s in configs]
        (nfe,) = {c["nfe"] for c in cells}  # one count per row, else the row would mislead
        errs = " | ".join(f"{c['cov_rel_error']:.3f}" for c in cells)
        lines.append(
            f"| `{sampler}` | " + (f"{spacing} | " if spaced else "") + f"{nfe} | {errs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", action="store_true", help="few-step solvers against NFE")
    parser.add_argument(
        "--spacings", action="store_true", help="the ODE solvers on three choices of time points"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.nfe and args.spacings:
        parser.error("--nfe and --spacings are two tables: pass one")
    start = time.perf_counter()
    if args.nfe or args.spacings:
        rows = quality_vs_nfe() if args.nfe else quality_vs_spacing()
        print(format_nfe(rows))
    else:
        rows = exact_vs_paper()
        print(format_exact(rows))
    wall = time.perf_counter() - start
    print(f"({wall:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall}, indent=1) + "\n")


if __name__ == "__main__":
    main()
