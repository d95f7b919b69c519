"""How exact is each sampler? The Gaussian oracle of DESIGN.md part 2, as tables.

    python benchmarks/gaussian_oracle.py [--json PATH]          # exact vs paper, 1000 steps
    python benchmarks/gaussian_oracle.py --nfe [--json PATH]    # few-step solvers vs NFE

For Gaussian data the optimal predictor is closed-form (``squeezed_diffusion.core.oracle``),
so a sampler that integrates the anisotropic process exactly reproduces the data covariance up
to Monte-Carlo error; the paper's heuristic sampler (``ddpm-paper``, here without clipping so
only the update rule differs) does not once ``S_t`` varies with t. Prints the relative
Frobenius error of the sampled covariance (16,384 pixel vectors, a CIFAR-like colour
covariance) per (variant, strength) and sampler; the isotropic row is the Monte-Carlo floor.
With ``--nfe``: the same error against the number of model evaluations for ddim, dpmpp-2m,
dpmpp-3m, their SDE forms and heun (heun takes 2 steps - 1 evaluations), at 10 to 50
evaluations (100 for dpmpp-3m-sde, which settles late).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from squeezed_diffusion import SAMPLERS, ChannelBasis, SqueezedDiffusion
from squeezed_diffusion.core.oracle import CIFAR_LIKE_COV, oracle_errors, top_direction

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
    """Rows: sampler and NFE; columns: (variant, strength)."""
    configs = list(dict.fromkeys((r["variant"], r["strength"]) for r in rows))
    names = ["isotropic" if v == "isotropic" else f"{v.upper()} {s:+g}" for v, s in configs]
    head = "| sampler | NFE | " + " | ".join(names) + " |"
    lines = [head, "|---|---|" + "---|" * len(configs)]
    keys = list(dict.fromkeys((r["sampler"], r["nfe"]) for r in rows))
    table = {
        (r["sampler"], r["nfe"], r["variant"], r["strength"]): r["cov_rel_error"] for r in rows
    }
    for sampler, nfe in keys:
        errs = " | ".join(f"{table[(sampler, nfe, v, s)]:.3f}" for v, s in configs)
        lines.append(f"| `{sampler}` | {nfe} | {errs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", action="store_true", help="few-step solvers against NFE")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = quality_vs_nfe() if args.nfe else exact_vs_paper()
    print(format_nfe(rows) if args.nfe else format_exact(rows))
    wall = time.perf_counter() - start
    print(f"({wall:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall}, indent=1) + "\n")


if __name__ == "__main__":
    main()
