"""Shows that the tests guarding the risky behaviours can fail (issue 17).

Each mutant breaks one behaviour on purpose, in a copy of the repository beside it (so
``../shared`` is still found), and runs the tests meant to catch it; a mutant the tests do
not catch is reported as ``SURVIVED`` and makes the exit status 1 (2: the check itself could
not run). The unmutated copy runs the same tests first, so a failure is the mutant's, not
the test's. The working tree is never touched.

    python tests/mutation_check.py                 # every mutant (about 5 min on 2 cores)
    python tests/mutation_check.py --only hdm-det  # some of them
    python tests/mutation_check.py --json out.json # also write the table as JSON

Not part of the pytest suite (the file name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
PKG = "src/squeezed_diffusion/"


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str  # the behaviour broken, in words
    path: str  # the file changed, relative to the repository root
    old: str  # exact text replaced (must occur once)
    new: str
    tests: tuple[str, ...]  # pytest node ids meant to catch it


MUTANTS = (
    Mutant(
        "sampler-flipped-strength", "the samplers read the strength with its sign flipped",
        PKG + "core/samplers.py",
        "return proc.alphas_cumprod.float()[t], scales[t]",
        "return proc.alphas_cumprod.float()[t], 1 / scales[t]",
        ("tests/test_samplers.py::test_gaussian_oracle_respaced",),
    ),
    Mutant(
        "paper-is-exact", "the ddpm-paper sampler steps with the exact posterior",
        PKG + "core/samplers.py",
        'Sampler("ddpm-paper", ddpm_paper_step,', 'Sampler("ddpm-paper", ddpm_step,',
        ("tests/test_samplers.py::test_paper_sampler_error_and_constant_profile_equivalence",),
    ),
    Mutant(
        "prc-swapped", "torch-fidelity gets the reference as input1 (precision and recall swap)",
        PKG + "metrics/evaluate.py",
        "input1=_Uint8Images(samples),", "input1=_Uint8Images(reference),",
        ("tests/test_metrics.py::test_precision_and_recall_are_not_swapped",),
    ),
    Mutant(
        "effnet-scaling", "EfficientNet-Lite0 sees images in [0, 1] instead of (x - 127) / 128",
        PKG + "metrics/effnet.py",
        "MEAN, SCALE = 127.0, 128.0", "MEAN, SCALE = 0.0, 255.0",
        ("tests/test_metrics.py::test_effnet_input_scaling_and_imagenet_classes",),
    ),
    Mutant(
        "reference-seeded", "a run's evaluation reference is drawn with the run's seed",
        PKG + "training/run.py",
        "return self.config().load_data()",
        "cfg = self.config()\n        from ..data import load_dataset\n\n        return "
        "load_dataset(cfg.dataset, cfg.data_dir, resolution=cfg.resolution, "
        "subset=cfg.subset, seed=cfg.seed)",
        ("tests/test_metrics.py::test_run_reference_is_what_the_trainer_trained_on",),
    ),
    Mutant(
        "run-flips-strength", "a saved run loads with its strength's sign flipped",
        PKG + "training/run.py",
        "return SqueezedDiffusion.from_fields(self.basis(), cfg.to_dict())",
        "return SqueezedDiffusion.from_fields(\n            self.basis(), {**cfg.to_dict(), "
        '"strength": -cfg.strength}\n        )',
        ("tests/test_train.py::test_a_trained_run_keeps_its_variant_strength_and_noise_levels",),
    ),
    Mutant(
        "demo-trains-isotropic", "the demo trains every configuration as isotropic",
        PKG + "demo.py",
        "dataclasses.replace(base, variant=variant, strength=strength, out=str(out / name))",
        'dataclasses.replace(base, variant="isotropic", strength=0.0, out=str(out / name))',
        ("tests/test_demo.py::test_demo_page_has_three_sections_from_the_trained_runs",),
    ),
    Mutant(
        "demo-noise-unsqueezed", "the demo shows unsqueezed noise as every variant's noise",
        PKG + "demo.py",
        "noise = proc.squeeze(eps, NOISE_T)", "noise = eps",
        ("tests/test_demo.py::test_demo_page_has_three_sections_from_the_trained_runs",),
    ),
    Mutant(
        "hdm-det", "HDM's compensating scale is half what keeps det S_t = 1",
        PKG + "core/process.py",
        "log_rest = (s_t * dims).sum(1) / rest_dim",
        "log_rest = (s_t * dims).sum(1) / (2 * rest_dim)",
        ("tests/test_process.py::test_add_noise_matches_dense_paper_formula",),
    ),
    Mutant(
        "dct-radius", "DCT bands use the radius u / (H - 1) instead of u / H",
        PKG + "core/basis.py",
        "(torch.arange(h)[:, None] / h) ** 2", "(torch.arange(h)[:, None] / (h - 1)) ** 2",
        ("tests/test_basis.py::test_dct_matrix_is_orthonormal_and_bands_follow_the_radius",),
    ),
    Mutant(
        "channel-fit-luminance", "the channel basis fit returns the luminance direction",
        PKG + "core/basis.py",
        "direction = _sign_fix(evecs[:, :1].T)[0]",
        "direction = torch.ones(evecs.shape[0], dtype=evecs.dtype) / evecs.shape[0] ** 0.5",
        (
            "tests/test_cli.py::test_fit_basis_on_npy_prints_and_writes",
            "tests/test_readme.py::test_readme_cifar10_basis_is_what_fit_basis_prints",
        ),
    ),
    Mutant(
        "trainer-unit-target", "the Trainer regresses on unit noise while the config says epsilon",
        PKG + "training/batches.py",
        "x_t, target = self.process.add_noise(x0, noise[share], t[share])",
        "x_t, _ = self.process.add_noise(x0, noise[share], t[share])\n        "
        "target = noise[share]",
        ("tests/test_train.py::test_the_trainers_target_is_what_the_samplers_read",),
    ),
    Mutant(
        "v-sign", "the v target's sign is flipped (sigma_t x_0 - a_t S_t eps)",
        PKG + "core/process.py",
        "return x_t, (a * shaped).sub_(s * x0)  # v_prediction",
        "return x_t, (s * x0).sub_(a * shaped)  # v_prediction",
        (
            "tests/test_train.py::test_the_trainers_target_is_what_the_samplers_read",
            "tests/test_pipelines.py::test_get_velocity_is_the_process_v_target",
        ),
    ),
    Mutant(
        "sampler-v-sign", "the samplers read a v prediction with the sign flipped",
        PKG + "core/samplers.py",
        "return Prediction(a * x - sig * model_output, a * model_output + sig * x, False)",
        "return Prediction(a * x + sig * model_output, sig * x - a * model_output, False)",
        ("tests/test_samplers.py::test_gaussian_oracle_every_prediction_type",),
    ),
    Mutant(
        "ema-decay-range", "ema_decay 1.0 (an EMA that never moves) is accepted",
        PKG + "training/config.py",
        '"ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),',
        '"ema_decay": (lambda v: 0 <= v <= 1, "in [0, 1)"),',
        ("tests/test_reliability.py::test_bad_input_gives_one_line_and_exit_2",),
    ),
    Mutant(
        "resume-takes-strength", "sqdm train --resume accepts --strength and ignores it",
        PKG + "training/config.py",
        'RESUMABLE = {\n    "steps",', 'RESUMABLE = {\n    "strength",\n    "steps",',
        ("tests/test_reliability.py::test_bad_input_gives_one_line_and_exit_2",),
    ),
    Mutant(
        "sweep-reuses-samples", "a sweep reuses a cell's samples drawn with another seed",
        PKG + "evaluation/sweep.py",
        '"num": spec.num, "seed": spec.seed, "ema": True}', '"num": spec.num, "ema": True}',
        (
            "tests/test_sweep.py::"
            "test_several_samplers_per_cell_skip_per_sampler_and_add_one_later",
        ),
    ),
    Mutant(
        "readme-parameters", "the README's paper-UNet parameter count drifts",
        "README.md", "101.12M parameters", "101.13M parameters",
        ("tests/test_readme.py::test_readme_parameter_counts_are_the_presets",),
    ),
    Mutant(
        "readme-oracle", "the README's Gaussian-oracle table drifts",
        "README.md", "| SDM +0.4 | 0.0049 | 0.0045 | 0.060 |",
        "| SDM +0.4 | 0.0049 | 0.0045 | 0.061 |",
        ("tests/test_readme.py::test_readme_oracle_tables_are_what_the_benchmark_prints",),
    ),
)  # fmt: skip


def copy_repository(dest: Path) -> None:
    """The working tree's tracked and untracked, not ignored, files (what CI would see)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    """``(pytest's exit code, the first failing test, seconds)`` of pytest on ``tests`` in
    ``copy``, importing the copy's package. Exit code 1 means tests ran and failed; 2 and up
    mean they could not run (an import or collection error: a broken mutant, not a catch)."""
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=copy, env=env, capture_output=True, text=True,
    )  # fmt: skip
    failed = [ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("FAILED ")]
    return done.returncode, (failed[0] if failed else ""), time.perf_counter() - start


def _stop(message: str) -> NoReturn:
    """A setup failure: exit status 2, apart from a surviving mutant's 1."""
    print(f"mutation_check: {message}", file=sys.stderr)
    raise SystemExit(2)


def check(mutants: list[Mutant], copy: Path) -> list[dict]:
    """One row per mutant: whether its tests failed, which one first, and how long they took.
    Stops (exit status 2) when the copy does not import, the unmutated tests fail, or a mutant
    no longer applies: then no verdict would mean anything."""
    copy_repository(copy)
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    where = subprocess.run(
        [sys.executable, "-c", "import squeezed_diffusion as p; print(p.__file__)"],
        env=env, cwd=copy, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    if not where.startswith(str(copy)):
        _stop(f"the copy's package is not the one imported ({where.strip()})")
    tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    code, _, seconds = run_tests(copy, tests)
    if code:
        _stop(f"the unmutated tests fail; fix them first: pytest {' '.join(tests)}")
    print(f"unmutated: {len(tests)} tests pass ({seconds:.0f} s)", flush=True)
    rows = []
    for m in mutants:
        target = copy / m.path
        original = target.read_text()
        if original.count(m.old) != 1:
            _stop(f"{m.name}: the text to replace is not in {m.path} exactly once")
        target.write_text(original.replace(m.old, m.new))
        try:
            code, failed, seconds = run_tests(copy, m.tests)
        finally:
            target.write_text(original)
        if code > 1:
            _stop(f"{m.name}: the mutated tests could not run (pytest exit {code})")
        rows.append({"mutant": m.name, "breaks": m.breaks, "caught": code == 1,
                     "failed": failed, "seconds": round(seconds, 1)})  # fmt: skip
        verdict = f"caught by {failed.split('::')[-1]}" if code == 1 else "SURVIVED"
        print(f"{m.name:<25} {seconds:4.0f} s  {m.breaks}\n{'':<25} {verdict}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[m.name for m in MUTANTS], metavar="NAME")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    copy = ROOT.parent / f".{ROOT.name}-mutant"
    try:
        rows = check(mutants, copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    survived = [r["mutant"] for r in rows if not r["caught"]]
    print(f"{len(rows) - len(survived)}/{len(rows)} mutants caught" +
          (f"; survived: {', '.join(survived)}" if survived else ""))  # fmt: skip
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
