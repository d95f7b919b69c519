"""The README's code runs as written, and every number in it is what its command prints."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

import pytest

from squeezed_diffusion.cli import main
from squeezed_diffusion.evaluation.sweep import Evaluation

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
STUDY_CELLS = ROOT / "docs" / "results" / "local-cifar10-samplers" / "cells"
FEW_STEP_DOCS = ROOT / "docs" / "results" / "few-step-samplers"
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_readme_quick_start_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    exec(compile(blocks[0], str(README), "exec"), {})
    assert "torch.Size([4, 3, 16, 16])" in capsys.readouterr().out


def test_diffusers_doc_examples_run(tmp_path, monkeypatch) -> None:
    """docs/diffusers.md's Examples (self-contained) run and give what their comments say."""
    text = (ROOT / "docs" / "diffusers.md").read_text().split("## Examples", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", text.split("\n## ", 1)[0], flags=re.S)
    assert len(blocks) == 2, "docs/diffusers.md's Examples changed: update this test"
    monkeypatch.chdir(tmp_path)  # the second block saves a scheduler folder
    sampled, swapped = {}, {}
    exec(compile(blocks[0], "docs/diffusers.md", "exec"), sampled)
    exec(compile(blocks[1], "docs/diffusers.md", "exec"), swapped)
    images = sampled["images"]
    assert images.shape == (4, 16, 16, 3) and images.min() >= 0 and images.max() <= 1
    assert swapped["target"].shape == swapped["noisy"].shape == (8, 3, 16, 16)
    config = swapped["squeezed"].config
    assert (config.timestep_spacing, config.variance_type, config.strength) == (
        "trailing",
        "fixed_large",
        -0.4,
    )


def _readme_sqdm_commands() -> list[list[str]]:
    """Every ``sqdm`` command of the README's bash blocks, continuation lines joined,
    trailing comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("sqdm "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def test_readme_train_commands_resolve_to_the_configs_they_promise(monkeypatch) -> None:
    """Each documented ``sqdm train`` is accepted and resolves (without training): a flag the
    CLI refused or renamed would break a user's first command."""
    import squeezed_diffusion.training.trainer as trainer

    configs = {}

    class Resolved:  # records the resolved config instead of training
        stop_signal = None

        def __init__(self, cfg, resume=None, progress=True) -> None:
            configs[cfg.out] = cfg

        def run(self) -> str:
            return "not trained"

    monkeypatch.setattr(trainer, "Trainer", Resolved)
    monkeypatch.chdir(ROOT)
    trains = [c for c in _readme_sqdm_commands() if c[0] == "train" and "--resume" not in c]
    assert len(trains) >= 3
    for argv in trains:
        assert main(argv) == 0, argv
    assert configs["runs/c10-sdm-0.4"].strength == -0.4
    baseline = configs["runs/c10-iso"]
    assert (baseline.variant, baseline.strength, baseline.model) == ("isotropic", 0.0, "paper")


def test_time_point_table_is_what_the_benchmark_prints() -> None:
    """`python benchmarks/gaussian_oracle.py --spacings`, recomputed (about 5 s), is the
    committed table; the readings the docs give hold in it."""
    import gaussian_oracle as bench

    rows = bench.quality_vs_spacing()
    table = bench.format_nfe(rows)
    doc = (ROOT / "docs/results/few-step-samplers/README.md").read_text()
    assert table in doc
    committed = json.loads(
        (ROOT / "docs/results/few-step-samplers/oracle-spacing.json").read_text()
    )
    assert bench.format_nfe(committed["rows"]) == table
    library = json.loads((ROOT / "docs/results/few-step-samplers/oracle-nfe.json").read_text())
    own = {(r["sampler"], r["steps"], r["variant"], r["strength"]): r for r in library["rows"]}
    shared = 0
    for r in rows:  # the solvers re-registered on uniform-t are the library's own, bit for bit
        key = (r["sampler"], r["steps"], r["variant"], r["strength"])
        if r["spacing"] == "uniform-t" and key in own:
            assert (r["nfe"], r["cov_rel_error"]) == (own[key]["nfe"], own[key]["cov_rel_error"])
            shared += 1
    assert shared >= 30
    err: dict[tuple, list[float]] = {}  # per (solver, spacing, steps): one per process
    for r in rows:
        err.setdefault((r["sampler"], r["spacing"], r["steps"]), []).append(r["cov_rel_error"])

    def worse(a: tuple, b: tuple) -> bool:  # a's error above b's for every process
        return all(x > y for x, y in zip(err[a], err[b], strict=True))

    uniform_2m = err[("dpmpp-2m", "uniform-t", 10)]
    logsnr_2m = err[("dpmpp-2m", "uniform-logsnr", 10)]
    assert all(x < y / 2 for x, y in zip(logsnr_2m, uniform_2m, strict=True))  # less than half
    logsnr_20, uniform_20 = (
        err[("dpmpp-2m", "uniform-logsnr", 20)],
        err[("dpmpp-2m", "uniform-t", 20)],
    )
    assert all(abs(x - y) < 0.005 for x, y in zip(logsnr_20, uniform_20, strict=True))  # the same
    assert worse(("dpmpp-3m", "uniform-logsnr", 10), ("dpmpp-3m", "uniform-t", 10))
    assert worse(("dpmpp-2m", "karras", 20), ("dpmpp-2m", "uniform-t", 20))
    assert worse(("dpmpp-2m", "karras", 50), ("dpmpp-2m", "uniform-t", 50))
    karras_10 = [x > y for x, y in zip(err[("dpmpp-2m", "karras", 10)], uniform_2m, strict=True)]
    assert any(karras_10) and not all(karras_10)  # worse for some processes, better for others
    fail = err[("dpmpp-3m", "karras", 10)]  # "fail at 10 (errors 0.94 to 0.99)"
    assert f"(errors {min(fail):.2f} to {max(fail):.2f})" in " ".join(doc.split())
    best = min((max(v), k) for k, v in err.items() if k[2] == 20 and k[0] != "heun")
    assert best[1] == ("dpmpp-3m", "karras", 20)  # the most accurate at 20
    assert all(min(err[("heun", s, 6)]) > 2 for s in ("karras", "uniform-logsnr"))  # overshoots
    for solver, counts in bench.SPACING_SOLVERS.items():  # stable on uniform-t, no better at 20
        assert all(max(err[(solver, "uniform-t", k)]) < 0.25 for k in counts)
    assert all(
        not worse(("dpmpp-2m", "uniform-t", 20), ("dpmpp-2m", s, 20)) for s in bench.SPACINGS
    )


def test_cluster_doc_commands_parse() -> None:
    """Every ``sqdm`` (or ``-m squeezed_diffusion.cli``) command of docs/cluster.md's bash
    blocks is accepted by the CLI's parser, shell variables standing in as plain words."""
    from squeezed_diffusion.cli import build_parser

    text = (ROOT / "docs" / "cluster.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.search(r"(?:^|\s)(?:sqdm|-m squeezed_diffusion\.cli)\s+(.*)", line)
            if found:
                words = re.sub(r"\$\(\(.*?\)\)|\$\w+", "X", found.group(1)).split(">")[0]
                commands.append(shlex.split(words, comments=True))
    assert {c[0] for c in commands} == {"sweep", "report", "train"} and len(commands) >= 6
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # an unknown flag exits with 2
        if argv[0] == "sweep" and "--list" not in argv and "--collect" not in argv:
            assert "--data-dir" in argv, argv  # a shipped sweep cannot find the data without


def test_readme_oracle_tables_are_what_the_benchmark_prints() -> None:
    """`python benchmarks/gaussian_oracle.py` and `--nfe`, recomputed (about 15 s)."""
    import gaussian_oracle as bench

    text = README.read_text()
    assert bench.format_exact(bench.exact_vs_paper()) in text
    nfe = bench.format_nfe(bench.quality_vs_nfe())
    assert nfe in text
    assert nfe in (ROOT / "docs/results/few-step-samplers/README.md").read_text()
    committed = json.loads((ROOT / "docs/results/few-step-samplers/oracle-nfe.json").read_text())
    assert bench.format_nfe(committed["rows"]) == nfe
    iso = {
        (r["sampler"], r["nfe"]): r["cov_rel_error"]
        for r in committed["rows"]
        if r["variant"] == "isotropic"
    }
    quoted = (
        f"(0.077 at 50 steps); isotropic `dpmpp-2m` reaches {iso[('dpmpp-2m', 20)]:.3f} with 20 "
        f"evaluations and {iso[('dpmpp-2m', 50)]:.3f} with 50."
    )
    assert f"{iso[('ddim', 50)]:.3f}" == "0.077" and quoted in " ".join(text.split())


def test_readme_parameter_counts_are_the_presets() -> None:
    from squeezed_diffusion.models import PRESETS, build_model, count_parameters

    text = README.read_text()
    for name in PRESETS:
        millions = count_parameters(build_model(name)) / 1e6
        assert re.search(rf"`{name}` \([^)]*?{millions:.2f}M", text), (name, millions)


def test_readme_cifar10_basis_is_what_fit_basis_prints(cifar_tar, tmp_path, capsys) -> None:
    assert main(["fit-basis", str(cifar_tar), "--out", str(tmp_path / "b.safetensors")]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [
        ln for ln in printed if ln.startswith(("eigenvalues:", "direction:", "angle to luminance"))
    ]
    assert len(lines) == 3
    text = README.read_text()
    for line in lines:
        assert f"  {line}\n" in text, line


@pytest.mark.parametrize(
    ("folder", "samplers", "cells", "paired_rows", "metrics"),
    [("local-cifar10", 1, 7, 6, 3), ("local-cifar10-samplers", 4, 4, 3, 4)],
)
def test_reproduction_tables_are_the_committed_results(
    folder, samplers, cells, paired_rows, metrics
) -> None:
    """docs/results' tables (one pair per sampler) are recomputed from the committed results."""
    from squeezed_diffusion.evaluation.report import paper_table, summarize

    results = ROOT / "docs" / "results" / folder
    items = summarize(json.loads((results / "results.json").read_text()))
    groups = sorted({s.group for s in items})
    assert len(groups) == samplers
    for doc in (results / "README.md", results / "report.md"):
        text = doc.read_text()
        for group in groups:
            for paired in (False, True):
                header, body = paper_table([s for s in items if s.group == group], paired=paired)
                assert len(body) == (paired_rows if paired else cells)
                assert len(header) == 3 + metrics
                for row in body:
                    assert "| " + " | ".join(row) + " |" in text, (doc.name, group, row)


def test_readme_sampler_study_is_the_committed_results() -> None:
    """16 cells x 4 samplers x 4 metrics committed; the README's verdicts recomputed from them."""
    from squeezed_diffusion.evaluation.report import summarize, verdict_table

    results = ROOT / "docs" / "results" / "local-cifar10-samplers"
    rows = json.loads((results / "results.json").read_text())
    assert len({r["cell"] for r in rows}) == 16
    assert {r["sampler"] for r in rows} == {"ddpm", "ddim", "ddpm-paper", "dpmpp-2m-sde"}
    assert {r["metric"] for r in rows} == {
        "fd_effnet", "precision_effnet", "recall_effnet", "fd_pixels8"
    }  # fmt: skip
    assert len(rows) == 16 * 4 * 4 and {r["num_samples"] for r in rows} == {2000}
    header, body = verdict_table(summarize(rows))
    assert len(body) == 4 * 3 and {row[3] for row in body} == {"4"}
    for doc in (README, results / "README.md", results / "report.md"):
        text = doc.read_text()
        for row in [header, *body]:
            assert "| " + " | ".join(row) + " |" in text, (doc.name, row)


def test_readme_sampler_contrasts_are_the_committed_results() -> None:
    """Whether the change depends on the sampler: every contrast row the READMEs show is
    recomputed from the committed results (the study's README and report show all of them),
    and the reading quotes the ddpm-paper − ddpm differences."""
    from squeezed_diffusion.evaluation.report import sampler_contrasts, verdict_table
    from squeezed_diffusion.evaluation.report.stats import _delta_text

    results = ROOT / "docs" / "results" / "local-cifar10-samplers"
    items = sampler_contrasts(json.loads((results / "results.json").read_text()))
    header, body = verdict_table(items, "samplers")
    assert len(body) == 6 * 3 and {row[3] for row in body} == {"4"}  # 4 samplers, 3 cells
    computed = {"| " + " | ".join(row) + " |" for row in body}
    for doc in (README, results / "README.md", results / "report.md"):
        text = doc.read_text()
        shown = {
            ln for ln in text.splitlines() if ln.startswith("| ") and " − " in ln.split("|")[1]
        }
        assert shown and shown <= computed, (doc.name, shown - computed)
        assert "| " + " | ".join(header) + " |" in text, doc.name
        if doc != README:
            assert shown == computed, doc.name
    by = {(c.group.evaluation, c.variant, c.strength, c.metric): c for c in items}
    paper = {
        k[1:3]: c
        for k, c in by.items()
        if k[0] == "ddpm-paper-50 − ddpm-50" and k[3] == "fd_effnet"
    }
    assert len(paper) == 3 and all(c.resolved and c.delta < 0 for c in paper.values())
    gains = sorted(-c.delta for c in paper.values())
    readme = " ".join(README.read_text().split())
    assert f"in every configuration (by {gains[0]:.1f} to {gains[-1]:.1f} fd_effnet)" in readme
    sdm = [c for k, c in by.items() if k[0] == "ddpm-paper-50 − ddpm-50" and k[1] == "sdm"]
    precision = [c for c in sdm if c.metric == "precision_effnet"]
    assert len(precision) == 2 and all(c.resolved and c.delta < 0 for c in precision)  # "a cost"
    exact = [c for k, c in by.items() if k[0] == "dpmpp-2m-sde-20 − ddpm-50" and k[1] == "sdm"]
    assert len(exact) == 8 and not any(c.resolved for c in exact)  # "not resolved in any metric"
    assert len(body) * (len(header) - 4) == 72  # "the table holds 72 intervals"
    study = " ".join((results / "README.md").read_text().split())
    quoted = [("ddpm-paper-50 − ddpm-50", v, s, m) for v, s in paper for m in ("fd_effnet",)]
    quoted += [("ddpm-paper-50 − ddpm-50", "sdm", s, m) for s in (-0.4, -0.8)
               for m in ("precision_effnet", "fd_pixels8")]  # fmt: skip
    quoted += [("dpmpp-2m-sde-20 − ddpm-50", "hdm", -0.4, "fd_effnet"),
               ("ddpm-50 − ddim-50", "hdm", -0.4, "fd_effnet")]  # fmt: skip
    for key in quoted:
        assert _delta_text(by[key]) in study, key
    rows = json.loads((results / "results.json").read_text())  # "at s = 0 the same sampler"
    iso = {}
    for r in rows:
        if r["variant"] == "isotropic" and r["sampler"] in ("ddpm", "ddpm-paper"):
            iso.setdefault((r["seed"], r["metric"]), set()).add(r["value"])
    assert len(iso) == 16 and all(len(v) == 1 for v in iso.values())


def test_sampler_study_repeats_the_earlier_grid_as_its_readme_says() -> None:
    """The ddpm-50 evaluations of seeds 0 and 1 against the earlier grid's, metric by metric,
    rounded up as the study's README states them."""
    earlier = json.loads((ROOT / "docs/results/local-cifar10/results.json").read_text())
    study = STUDY_CELLS.parent / "results.json"

    def key(r: dict) -> tuple:
        return r["variant"], r["strength"], r["seed"], r["metric"]

    before = {key(r): r["value"] for r in earlier}
    gaps: dict[str, list[float]] = {}
    for r in json.loads(study.read_text()):
        if (r["sampler"], r["steps"]) == ("ddpm", 50) and key(r) in before:
            gaps.setdefault(r["metric"], []).append(abs(r["value"] - before[key(r)]))
    counted = sum(map(len, gaps.values()))
    assert {r["seed"] for r in earlier} == {0, 1} and counted > 0
    worst = {m: math.ceil(max(v) * 1e4 - 1e-3) / 1e4 for m, v in gaps.items()}  # float noise
    text = " ".join((STUDY_CELLS.parent / "README.md").read_text().split())
    assert f"the {counted} `ddpm-50` numbers of seeds 0 and 1 equal the earlier" in text
    assert (
        f"to within {worst['fd_effnet']:g} in fd_effnet (values near 120), "
        f"{worst['precision_effnet']:g} in precision and {worst['recall_effnet']:g} in recall"
    ) in text


def test_readme_few_step_table_is_the_committed_evaluations() -> None:
    """The trained-model NFE table, recomputed from the committed result.json of each
    evaluation, is the README's, the few-step folder's and trained.json's."""
    import nfe_trained

    committed = json.loads((FEW_STEP_DOCS / "trained.json").read_text())
    cells = [STUDY_CELLS / name for name in committed["cells"]]
    assert len(cells) >= 2
    rows = nfe_trained.summary_rows(cells, committed["metric"])
    table = nfe_trained.format_table(rows, committed["metric"])
    assert table == nfe_trained.format_table(committed["rows"], committed["metric"])
    assert {(r["sampler"], r["nfe"]) for r in rows} >= {("dpmpp-2m", 20), ("ddpm", 50)}
    assert table in README.read_text()
    assert table in (ROOT / "docs/results/few-step-samplers/README.md").read_text()
    assert nfe_trained.plot(rows, committed["metric"]).startswith(b"\x89PNG")  # the figure's code
    by = {(r["sampler"], r["nfe"]): r for r in rows}  # the prose: dpmpp-2m-20 against ddpm-50
    loss = by[("dpmpp-2m", 20)]["paired_vs_ddpm-50"] / by[("ddpm", 50)]["mean"]
    assert f"by {by[('dpmpp-2m', 20)]['paired_vs_ddpm-50']:.3g}" in README.read_text()
    assert f"({100 * loss:.0f} %)" in README.read_text()


def test_nfe_trained_reads_evaluation_labels() -> None:
    """``--evals`` takes an evaluation's folder label back apart, refusing what is not one."""
    import nfe_trained

    assert nfe_trained.parse_evaluation("dpmpp-2m-sde-20") == Evaluation("dpmpp-2m-sde", 20)
    assert nfe_trained.parse_evaluation("ddim-200") == Evaluation("ddim", 200)
    for ev in (Evaluation("ddim", 50, 0.5, "clip-reuse"), Evaluation("dpmpp-2m", 20, x0="none")):
        assert nfe_trained.parse_evaluation(ev.label) == ev
    for bad in ("dpmpp-4m-20", "ddim-0", "ddim", "ddim-x", "ddim-50-x0clamp", "ddim-50-eta"):
        with pytest.raises(ValueError, match="SAMPLER-STEPS"):
            nfe_trained.parse_evaluation(bad)


def test_nfe_trained_keeps_eta_apart(tmp_path) -> None:
    """An evaluation with eta is its own row, named with it, and a step-count change pairs
    only rows of one sampler, eta and x_0 rule (eta was once dropped from the rows)."""
    import nfe_trained

    from squeezed_diffusion.evaluation.sweep import evaluation_folder

    labels = ["ddpm-50", "ddim-50", "ddim-20", "ddim-50-eta1", "ddim-20-eta1"]
    cells = [tmp_path / f"cell{i}" for i in range(2)]
    for i, cell in enumerate(cells):
        for j, label in enumerate(labels):
            folder = evaluation_folder(cell, label)
            folder.mkdir(parents=True)
            result = {"metrics": {"fd_effnet": 10.0 * j + i * (j + 1)}}
            (folder / "result.json").write_text(json.dumps(result))
    evaluations = [Evaluation.from_label(label) for label in labels[2:]]
    rows = nfe_trained.summary_rows(cells, "fd_effnet", evaluations)
    assert [nfe_trained.evaluation_of(r).label for r in rows] == labels
    table = nfe_trained.format_table(rows, "fd_effnet")
    assert "| `ddim` (eta 1) | 50 | 32 ± 25 |" in table  # 30 and 34: t(1) 12.7 x 2 / 1
    steps = [c["change"] for c in nfe_trained.changes(rows)][:2]
    assert steps == ["ddim-50 − ddim-20", "ddim-50-eta1 − ddim-20-eta1"]


def test_anchor_drift_measures_what_clipping_removes(monkeypatch) -> None:
    """The diagnostic's per-step correction is a_t times the RMS of x0hat beyond [-1, 1], at
    each of the sampler's timesteps, and its image statistics are what they say."""
    import anchor_drift
    import torch

    from squeezed_diffusion import SAMPLERS, SqueezedDiffusion
    from squeezed_diffusion.core.samplers import predict

    proc = SqueezedDiffusion(prediction_type="sample")  # the output is x0hat itself
    ev = Evaluation("dpmpp-2m", 10, x0="clip-anchor")
    ts = [t for t, _ in SAMPLERS["dpmpp-2m"].schedule(1000, 10)]
    beyond = anchor_drift.trace(lambda x, t: torch.full_like(x, 3.0), proc, (4, 3, 8, 8), ev, 0)
    assert [t for t, *_ in beyond["steps"]] == ts and beyond["clipping_nfe"] == 10
    expected = sum(2 * float(proc.alphas_cumprod[t].sqrt()) for t in ts)  # 3 clipped to 1
    assert beyond["correction"] == pytest.approx(expected, rel=1e-9)
    inside = anchor_drift.trace(lambda x, t: torch.full_like(x, 0.5), proc, (4, 3, 8, 8), ev, 0)
    assert inside["clipping_nfe"] == 0 and inside["correction"] == 0
    # clip-anchor-scaled: each direction's shift times 1 - exp(-h_i) (the SDE's 1 - exp(-2 h_i));
    # squeezed, so the directions differ
    from squeezed_diffusion import ChannelBasis

    squeezed = SqueezedDiffusion(
        ChannelBasis([0.5, 0.6, 0.62]), "sdm", -0.8, prediction_type="sample"
    )
    v = squeezed.basis.direction.double()
    abar = squeezed.alphas_cumprod

    def half_log_snr(t: int, c: float) -> float:
        return float((abar[t].sqrt() / ((1 - abar[t]).sqrt() * c)).log())

    # a renamed SDE sampler is still one (the share goes by the step function, not the name)
    renamed = dataclasses.replace(SAMPLERS["dpmpp-2m-sde"], name="dpmpp-2m-stochastic")
    monkeypatch.setitem(SAMPLERS._entries, renamed.name, renamed)
    odd = dataclasses.replace(SAMPLERS["dpmpp-2m"], name="dpmpp-odd", step=lambda *a, **k: None)
    monkeypatch.setitem(SAMPLERS._entries, odd.name, odd)
    with pytest.raises(ValueError, match="dpmpp-odd sampler steps with <lambda>, whose x_0 share"):
        anchor_drift.share_exponent(odd.name)
    for sampler, k in (("dpmpp-2m", 1), ("dpmpp-2m-sde", 2), (renamed.name, 2)):
        scaled = anchor_drift.trace(
            lambda x, t: torch.full_like(x, 3.0), squeezed, (4, 3, 8, 8),
            Evaluation(sampler, 10, x0="clip-anchor-scaled"), 0,
        )  # fmt: skip
        for (t, t_prev), (t_seen, _, size) in zip(
            SAMPLERS[sampler].schedule(1000, 10), scaled["steps"], strict=True
        ):
            w_main, w_rest = (
                1 - math.exp(k * (half_log_snr(t, c) - half_log_snr(t_prev, c_prev)))
                if t_prev >= 0 else 1
                for c, c_prev in (
                    (float(squeezed.c[t, 0]), float(squeezed.c[max(t_prev, 0), 0])),
                    (float(squeezed.c_rest[t]), float(squeezed.c_rest[max(t_prev, 0)])),
                )
            )  # fmt: skip
            b = 2 * torch.ones(3, dtype=torch.float64)  # 3 clipped to 1 in every channel
            shifted = w_rest * b + (w_main - w_rest) * (v @ b) * v
            assert t_seen == t
            expected = float(abar[t].sqrt() * shifted.pow(2).mean().sqrt())
            assert size == pytest.approx(expected, rel=1e-5)
            partial = min(w_main, w_rest) > 0.05 and max(w_main, w_rest) < 0.99
            assert t_prev < 0 or (partial and abs(w_main - w_rest) > 1e-3)  # and not uniform
    seen = []

    def noise_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return 5 * x  # an epsilon estimate whose x0hat lies far beyond [-1, 1] at large t

    eps_proc = SqueezedDiffusion()
    shifted = anchor_drift.trace(noise_net, eps_proc, (4, 3, 8, 8), ev, 0)
    assert shifted["clipping_nfe"] > 0
    for (t, share, size), x in zip(shifted["steps"], seen, strict=True):
        x0 = predict(eps_proc, 5 * x, x, t).x0
        abar = eps_proc.alphas_cumprod[t]
        start = abar.sqrt() * x0.clamp(-1, 1) + (1 - abar).sqrt() * 5 * x  # the anchored start
        assert size == pytest.approx(float((start - x).pow(2).mean().sqrt()), rel=1e-4, abs=1e-6)
        assert share == float((x0.abs() > 1).double().mean())
    flat = torch.arange(6, dtype=torch.uint8).mul(50).repeat_interleave(3 * 4 * 4)
    stats = anchor_drift.image_stats(flat.reshape(6, 3, 4, 4))  # one colour per image
    assert stats["hf"] == 0
    assert stats["colour_spread"] == pytest.approx(float(torch.arange(6.0).mul(50 / 127.5).std()))
    stripes = torch.tensor([0, 255]).repeat(2, 3, 4, 2).to(torch.uint8)  # columns 0, 255, 0, ...
    assert anchor_drift.image_stats(stripes)["hf"] == pytest.approx(2**0.5)  # dx = 2, dy = 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--evals", "ddpm-50-x0clip-anchor"], "x0 rule clip-anchor applies to the DPM-Solver"),
        (["--evals", "dpmpp-2m-1000"], "dpmpp-2m-1000: num_steps must be an integer in"),
        (["--evals", "dpmpp-4m-20"], "SAMPLER-STEPS"),
        (["--num", "1"], "--num must be at least 2"),
        (["--json", "missing/out.json"], "folder missing does not exist"),
        (["--cells", "isotropic_seed0"], "1 cell(s) of local-cifar10-samplers match --cells"),
        ([], "imagefolder_isotropic_seed0, imagefolder_isotropic_seed1, "),  # not trained
    ],
)
def test_anchor_drift_refuses_bad_input_before_sampling(
    tmp_path, monkeypatch, capsys, args, message
) -> None:
    """Each bad option stops the diagnostic with one line naming it, before any sampling (the
    sweep folder here holds no trained model, so reaching the sampling would fail otherwise)."""
    import anchor_drift

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["anchor_drift.py", str(tmp_path), *args])
    with pytest.raises(SystemExit) as exit_info:
        anchor_drift.main()
    assert str(exit_info.value).startswith("error: ") and message in str(exit_info.value)
    assert "\n" not in str(exit_info.value)


def anchor_drift_quotes() -> dict[str, str]:
    """The numbers the anchor-drift section quotes, from the committed JSON, as it prints them
    (keys as its placeholders: ``CLIP_1500`` and ``CLIP_4500`` for the two training lengths),
    after checking each verdict its sentences state."""
    import anchor_drift
    import nfe_trained

    from squeezed_diffusion.evaluation.report.stats import sig

    def resolved(c: dict) -> bool:
        return abs(c["mean"]) > c["ci"]

    quotes: dict[str, str] = {}
    spread_clip: list[str] = []
    studies = {"1500": ("anchor-drift.json", "clip-anchor.json"),
               "4500": ("anchor-drift-longer.json", "clip-anchor-longer.json")}  # fmt: skip
    for length, (drift_name, fd_name) in studies.items():
        drift = json.loads((FEW_STEP_DOCS / drift_name).read_text())
        rows = {r["label"]: r for r in drift["rows"]}
        changed = {c["change"]: c for c in drift["changes"]}
        data = drift["data"]
        anchored = sorted((r for r in drift["rows"] if "x0clip-anchor" in r["label"]),
                          key=lambda r: r["nfe"])  # fmt: skip
        assert [r["nfe"] for r in anchored] == [10, 20, 50, 100]
        steps = [changed[f"{b['label']} − {a['label']}"] for a, b in itertools.pairwise(anchored)]
        assert all(resolved(c["hf"]) and c["hf"]["mean"] > 0 for c in steps)
        assert all(0.27 <= r["clipping_nfe"]["mean"] / r["nfe"] <= 0.4 for r in anchored)
        assert anchored[1]["hf"]["mean"] < data["hf"] < anchored[3]["hf"]["mean"]
        spreads = [r["colour_spread"]["mean"] / data["colour_spread"] for r in anchored]
        assert max(spreads) < 1 and max(spreads[1:]) < 0.5
        one_rule = changed["dpmpp-2m-50-x0clip-anchor − ddim-50"]
        assert all(resolved(one_rule[k]) and one_rule[k]["mean"] > 0 for k in ("correction", "hf"))
        assert 0.5 < one_rule["hf"]["mean"] / steps[0]["hf"]["mean"] < 2  # "the size of" 10 -> 20
        under_clip = changed["dpmpp-2m-50 − dpmpp-2m-20"]["hf"]
        assert not resolved(under_clip)
        assert rows["dpmpp-2m-20"]["colour_spread"]["mean"] > 2 * data["colour_spread"]
        fd = {c["change"]: c for c in json.loads((FEW_STEP_DOCS / fd_name).read_text())["changes"]}
        fd_10_20 = fd["dpmpp-2m-20-x0clip-anchor − dpmpp-2m-10-x0clip-anchor"]
        fd_rule = fd["ddim-50 − dpmpp-2m-50-x0clip-anchor"]
        assert fd_10_20["mean"] < 0 and abs(fd_rule["mean"]) < 1

        def diff(c: dict) -> str:
            return nfe_trained.difference(c["mean"], c["ci"])

        past_20 = [r for r in anchored if r["nfe"] >= 20]
        per_eval = [(b["correction"]["mean"] - a["correction"]["mean"]) / (b["nfe"] - a["nfe"])
                    for a, b in itertools.pairwise(past_20)]  # fmt: skip
        quotes |= {
            f"TABLE_{length}": anchor_drift.format_tables(drift["rows"], drift["changes"], data),
            f"CLIP_{length}": ", ".join(sig(r["clipping_nfe"]["mean"], 4) for r in anchored),
            f"PER_{length}": " and ".join(sig(v, 2) for v in per_eval),
            f"HF_CHANGES_{length}": ", ".join(diff(c["hf"]) for c in steps),
            f"HF_100_{length}": sig(anchored[3]["hf"]["mean"], 4),
            f"SPREAD_{length}": ", ".join(sig(r["colour_spread"]["mean"], 3) for r in anchored),
            f"DDIM_CORR_{length}": diff(one_rule["correction"]),
            f"DDIM_HF_{length}": diff(one_rule["hf"]),
            f"FD_DDIM_{length}": diff(fd_rule),
            f"HF_DDPM_{length}": sig(rows["ddpm-50"]["hf"]["mean"], 4),
            f"HF_CLIP_{length}": diff(under_clip),
            f"FD_10_20_{length}": diff(fd_10_20),
        }
        spread_clip.append(sig(rows["dpmpp-2m-20"]["colour_spread"]["mean"], 2))
        quotes["HF_DATA"] = sig(data["hf"], 4)
        quotes["SPREAD_DATA"] = sig(data["colour_spread"], 3)
    return quotes | {"SPREAD_CLIP": " and ".join(spread_clip)}


def test_anchor_drift_tables_are_the_committed_traces() -> None:
    """The diagnostic's tables, recomputed from the per-model traces it committed, are the
    JSON's (each trace's counts and sums from its own steps); the docs' section quotes them,
    and the verdicts of its sentences hold (``anchor_drift_quotes``)."""
    import anchor_drift

    docs = " ".join((FEW_STEP_DOCS / "README.md").read_text().split())
    for name in (
        "anchor-drift.json", "anchor-drift-longer.json",
        "anchor-drift-scaled.json", "anchor-drift-scaled-longer.json",
    ):  # fmt: skip
        committed = json.loads((FEW_STEP_DOCS / name).read_text())
        table = anchor_drift.format_tables(
            committed["rows"], committed["changes"], committed["data"]
        )
        assert " ".join(table.split()) in docs, name
        for traces in committed["traces"].values():
            assert len(traces) == len(committed["cells"]) >= 2
            for tr in traces:
                shares = [share for _, share, _ in tr["steps"]]
                assert tr["clipping_nfe"] == sum(s > anchor_drift.CLIPPING for s in shares)
                assert tr["correction"] == pytest.approx(sum(c for *_, c in tr["steps"]))
        rows = anchor_drift.summary_rows(committed["traces"])
        assert rows == committed["rows"]
        assert anchor_drift.changes(rows) == committed["changes"]
        figure = anchor_drift.plot(
            rows, committed["traces"], committed["data"], committed["training_steps"]
        )
        assert figure.startswith(b"\x89PNG")
    q = anchor_drift_quotes()
    fragments = [
        q["TABLE_1500"], q["TABLE_4500"],
        f"{q['CLIP_1500']} evaluations at 10, 20, 50 and 100 steps after 1,500 training steps, "
        f"{q['CLIP_4500']} after 4,500",
        f"({q['PER_1500']} after 1,500 training steps, {q['PER_4500']} after 4,500)",
        f"({q['HF_CHANGES_1500']} after 1,500 training steps; {q['HF_CHANGES_4500']} after "
        f"4,500): from below the training data's ({q['HF_DATA']}) at 10 and 20 steps to above "
        f"it at 100 ({q['HF_100_1500']} and {q['HF_100_4500']})",
        f"below the data's ({q['SPREAD_DATA']}) throughout, under half of it from 20 steps on",
        f"({q['SPREAD_1500']}: the alike", f"after 4,500 ({q['SPREAD_4500']})",
        f"{q['DDIM_CORR_1500']} and {q['DDIM_HF_1500']} after 1,500 training steps, "
        f"{q['DDIM_CORR_4500']} and {q['DDIM_HF_4500']} after 4,500, all resolved",
        f"({q['FD_DDIM_1500']} and {q['FD_DDIM_4500']}, DDIM minus anchored)",
        f"smoother still ({q['HF_DDPM_1500']} and {q['HF_DDPM_4500']})",
        f"colour spread ({q['SPREAD_CLIP']})",
        f"({q['HF_CLIP_1500']} and {q['HF_CLIP_4500']}, against",
        f"({q['FD_10_20_1500']} and {q['FD_10_20_4500']}) though both grow",
    ]  # fmt: skip
    for fragment in fragments:
        assert " ".join(fragment.split()) in docs, fragment


def _recomputed_study(
    name: str, study: Path = STUDY_CELLS, changes_shown: bool = True
) -> tuple[list[dict], dict[str, str]]:
    """The rows of FEW_STEP_DOCS/``name``, recomputed from the committed evaluations of the
    cells under ``study`` and checked against the JSON and the docs' tables (the changes'
    table too unless ``changes_shown`` is False); with its paired changes as printed."""
    import nfe_trained

    committed = json.loads((FEW_STEP_DOCS / name).read_text())
    metric = committed["metric"]
    evaluations = [nfe_trained.evaluation_of(r) for r in committed["rows"]]
    rows = nfe_trained.summary_rows([study / c for c in committed["cells"]], metric, evaluations)
    table = nfe_trained.format_table(rows, metric)
    assert table == nfe_trained.format_table(committed["rows"], metric)
    docs = (FEW_STEP_DOCS / "README.md").read_text()
    assert table in docs
    changed = nfe_trained.changes(rows)
    assert changed == committed["changes"]
    assert not changes_shown or nfe_trained.format_changes(changed, metric) in docs
    return rows, {c["change"]: nfe_trained.difference(c["mean"], c["ci"]) for c in changed}


def _shown(row: dict, key: str = "") -> str:
    """A study row's mean, or its ``key`` paired difference, as the tables print them."""
    import nfe_trained

    if not key:
        return nfe_trained.level(row["mean"], row["ci"])
    return nfe_trained.difference(row[key], row[key.replace("_vs", "_ci_vs")])


def _keyed(rows: list[dict]) -> dict[tuple, dict]:
    """A study's rows by (sampler, steps, x_0 rule)."""
    return {(r["sampler"], r["steps"], r.get("x0", "clip")): r for r in rows}


def test_ode_limit_table_is_the_committed_evaluations() -> None:
    """The deterministic solvers' many-step table (does the ODE itself lose to ancestral
    DDPM?), recomputed from the committed evaluations, is ode-limit.json's and the docs'."""
    import nfe_trained

    rows, changes = _recomputed_study("ode-limit.json")
    evaluations = {nfe_trained.evaluation_of(r) for r in rows}
    assert {Evaluation("dpmpp-2m", 200), Evaluation("ddim", 200)} <= evaluations
    assert changes["dpmpp-2m-200 − dpmpp-2m-100"] in README.read_text()  # its sentence
    by = {(r["sampler"], r["steps"]): r for r in rows}  # the README's sentence
    for key, base in ((("dpmpp-2m", 200), "ddpm-50"), (("ddim", 200), "ddim-50")):
        r = by[key]
        shown = nfe_trained.difference(r[f"paired_vs_{base}"], r[f"paired_ci_vs_{base}"]) + " "
        assert shown in README.read_text().replace("\n", " "), shown


def test_x0_rule_study_is_the_committed_evaluations() -> None:
    """The x_0-rule tables, recomputed from the committed evaluations, are x0-rules.json's and
    the docs'; the sentences quote their pairs, and the reproduction check its files."""
    rows, changes = _recomputed_study("x0-rules.json")
    assert {r.get("x0", "clip") for r in rows} == {"clip", "none", "clip-reuse"}
    readme = " ".join(README.read_text().split())
    docs = " ".join((FEW_STEP_DOCS / "README.md").read_text().split())
    for change in ("ddim-200-x0clip-reuse − ddim-50-x0clip-reuse",
                   "ddim-200-x0clip-reuse − dpmpp-2m-200"):  # fmt: skip
        assert f"({changes[change]})" in readme and changes[change] in docs, change
    prose = {  # the bullets' sentences with the pair each quotes (signed, or its size)
        "ddim-50-x0clip-reuse − dpmpp-2m-50": "approaches `dpmpp-2m`: {signed} at 50 steps",
        "ddim-200-x0clip-reuse − dpmpp-2m-200": "and {signed} at 200, a quarter",
        "ddim-200 − ddim-200-x0clip-reuse": "DDIM with 200 steps is {signed} worse than under",
        "ddim-200-x0clip-reuse − ddim-50-x0clip-reuse": "with the steps ({signed} from 50",
        "ddpm-50 − ddpm-50-x0none": "scores {size} worse than clipped",
        "ddpm-50-x0none − dpmpp-2m-50-x0none": "still leads `dpmpp-2m` by {size} (barely",
    }
    for change, sentence in prose.items():
        signed = changes[change]
        assert sentence.format(signed=signed, size=signed.lstrip("+-")) in docs, change
    unclipped_rows = [r["mean"] for r in rows if r.get("x0") == "none"]
    low, high = math.floor(min(unclipped_rows)), math.ceil(max(unclipped_rows))
    assert f"lie between {low} and {high}" in docs
    unclipped = [c for c in json.loads((FEW_STEP_DOCS / "x0-rules.json").read_text())["changes"]
                 if c["change"].endswith("-x0none") and "x0none −" not in c["change"]]  # fmt: skip
    losses = sorted(-c["mean"] for c in unclipped)  # clipped − unclipped, same sampler and NFE
    assert len(losses) >= 4 and losses[0] > 0
    assert f"scores {losses[0]:.0f} to {losses[-1]:.0f} worse" in readme
    worst = {k: 0.0 for k in ("fd_effnet", "precision_effnet", "recall_effnet")}
    for seed in (0, 1):  # the retrained models' redraws against the committed evaluations
        again = json.loads((FEW_STEP_DOCS / f"reproduction/seed{seed}-ddpm-50.json").read_text())
        cell = STUDY_CELLS / f"imagefolder_isotropic_seed{seed}"
        first = json.loads((cell / "evals/ddpm-50/result.json").read_text())
        for k in worst:
            worst[k] = max(worst[k], abs(again["metrics"][k] - first["metrics"][k]))
    shown = (f"within {worst['fd_effnet']:.4f} in fd_effnet, {worst['precision_effnet']:.4f} in "
             f"precision and {worst['recall_effnet']:.4f} in recall")  # fmt: skip
    assert shown in docs


def test_longer_training_study_is_the_committed_evaluations(tmp_path) -> None:
    """The longer-training sweep is the few-step study's recipe with only ``steps`` changed,
    and its table, recomputed from the committed evaluations, is the JSON's, the docs' and
    the sentences'."""
    import dataclasses

    from squeezed_diffusion.evaluation.sweep import load_sweep

    longer = load_sweep(str(FEW_STEP_DOCS / "longer-training.yaml"), tmp_path / "a")
    study = load_sweep("local-cifar10-samplers", tmp_path / "b")
    same = {c.id: c for c in study.cells}
    assert [c.id for c in longer.cells] == [f"imagefolder_isotropic_seed{i}" for i in range(4)]
    for cell in longer.cells:
        ours, theirs = (dataclasses.asdict(c.config) for c in (cell, same[cell.id]))
        differ = {k for k in ours if ours[k] != theirs[k]}
        assert differ == {"steps", "out"} and ours["steps"] == 3 * theirs["steps"], differ
    spec, base = (dataclasses.asdict(s.eval) for s in (longer, study))
    assert {k for k in spec if spec[k] != base[k]} == {"sampler"}
    import nfe_trained

    rows, _ = _recomputed_study("longer-training.json", FEW_STEP_DOCS / "longer-training" / "cells")
    by = _keyed(rows)

    def paired(key: tuple) -> str:
        return nfe_trained.difference(by[key]["paired_vs_ddpm-50"], by[key]["paired_ci_vs_ddpm-50"])

    ddpm = by[("ddpm", 50, "clip")]
    readme = " ".join(README.read_text().split())
    docs = " ".join((FEW_STEP_DOCS / "README.md").read_text().split())
    assert (
        f"`ddpm` with 50 steps improves to {nfe_trained.level(ddpm['mean'], ddpm['ci'])}" in readme
    )
    for text in (readme, docs):
        assert f"20 evaluations is then {paired(('dpmpp-2m', 20, 'clip'))} above" in text
        assert f"({paired(('dpmpp-2m-sde', 20, 'clip'))}" in text
    assert f"with 50 evaluations {paired(('dpmpp-2m', 50, 'clip'))}" in docs
    d20 = by[("dpmpp-2m", 20, "clip")]  # "worse than ddim with 50": resolved, not a trend
    assert d20["paired_vs_ddim-50"] - d20["paired_ci_vs_ddim-50"] > 0
    assert "models trained three times as long it is worse than `ddim` with 50" in readme


def test_clip_anchor_studies_are_the_committed_evaluations() -> None:
    """The clip-anchor tables at both training lengths (fd_effnet with their changes, recall),
    recomputed from the committed evaluations, are the JSONs' and the docs'; the sentences of
    both READMEs quote their numbers."""

    longer = FEW_STEP_DOCS / "longer-training" / "cells"
    studies = {"1500": STUDY_CELLS, "4500": longer}
    found = {}
    for length, cells in studies.items():
        name = "clip-anchor" + ("-longer" if length == "4500" else "")
        rows, changes = _recomputed_study(f"{name}.json", cells)
        recall, _ = _recomputed_study(f"{name}-recall.json", cells, changes_shown=False)
        assert {r.get("x0", "clip") for r in rows} == {"clip", "clip-reuse", "clip-anchor"}
        found[length] = (_keyed(rows), _keyed(recall), changes)

    anchor20 = ("dpmpp-2m", 20, "clip-anchor")
    readme = " ".join(README.read_text().split())
    docs = " ".join((FEW_STEP_DOCS / "README.md").read_text().split())
    (fd15, rc15, ch15), (fd45, rc45, ch45) = found["1500"], found["4500"]
    within = [_shown(fd[anchor20], "paired_vs_ddpm-50") for fd in (fd15, fd45)]
    better = [_shown(fd[anchor20], "paired_vs_ddim-50") for fd in (fd15, fd45)]
    for fd in (fd15, fd45):  # "within the seed scatter": not resolved; "better": resolved
        r = fd[anchor20]
        assert abs(r["paired_vs_ddpm-50"]) < r["paired_ci_vs_ddpm-50"]
        assert r["paired_vs_ddim-50"] + r["paired_ci_vs_ddim-50"] < 0
    assert f"with 50: {within[0]} after 1,500 training steps, {within[1]} after 4,500" in readme
    assert f"better than `ddim` with 50 ({better[0]} and {better[1]})" in readme
    assert f"({within[0]} and {within[1]}, the latter wide because one DDPM" in docs
    assert f"{_shown(fd15[anchor20])} after 1,500 steps (paired {within[0]} against" in docs
    assert f"{_shown(fd45[anchor20])} after 4,500 ({within[1]}, not resolved)" in docs
    assert f"better than `ddim` with 50 ({better[0]} and {better[1]})" in docs
    worse = "dpmpp-2m-50-x0clip-anchor − dpmpp-2m-20-x0clip-anchor"
    assert f"worse ({ch45[worse]} after 4,500 training steps)" in readme
    assert f"rises by {ch15[worse]} (1,500 steps) and {ch45[worse]} (4,500)" in docs
    more = ch45["dpmpp-2m-100-x0clip-anchor − dpmpp-2m-50-x0clip-anchor"]
    assert f"from 50 to 100 by {more} (4,500)" in docs
    one_rule = ("ddim-50 − dpmpp-2m-50-x0clip-anchor", "ddim-50-x0clip-reuse − dpmpp-2m-50")
    assert (
        f"agree: `ddim` (clip) against `dpmpp-2m` (clip-anchor) {ch15[one_rule[0]]} after" in docs
    )
    assert f"{ch45[one_rule[0]]} after 4,500; `ddim` (clip-reuse)" in docs
    assert f"{ch15[one_rule[1]]} and {ch45[one_rule[1]]} (three of the four resolved" in docs
    recall = (
        f"recall {_shown(rc15[anchor20])} against `ddpm`'s {_shown(rc15[('ddpm', 50, 'clip')])}"
    )
    assert recall in docs and recall in readme
    assert rc15[anchor20]["paired_vs_ddpm-50"] + rc15[anchor20]["paired_ci_vs_ddpm-50"] < 0
    assert f"(paired {_shown(rc15[anchor20], 'paired_vs_ddpm-50')})" in docs
    assert f"near `ddpm`'s ({_shown(rc45[anchor20])}, paired " in docs
    r = rc45[anchor20]  # "not resolved"
    assert abs(r["paired_vs_ddpm-50"]) < r["paired_ci_vs_ddpm-50"]
    assert f"{_shown(r, 'paired_vs_ddpm-50')}, not resolved); with more steps it falls" in docs
    assert f"({_shown(rc45[('dpmpp-2m', 100, 'clip-anchor')])} at 100)" in docs
    ddpm45 = fd45[("ddpm", 50, "clip")]
    per_seed = [a - b for a, b in zip(fd45[anchor20]["values"], ddpm45["values"], strict=True)]
    per_seed_shown = ", ".join(f"{v:+.3g}" for v in per_seed[:-1]) + f" and {per_seed[-1]:+.3g}"
    assert f"model by model the anchored solver is {per_seed_shown} (seeds 0 to 3)" in docs
    ddim45 = fd45[("ddim", 50, "clip")]
    assert abs(ddim45["paired_vs_ddpm-50"]) < ddim45["paired_ci_vs_ddpm-50"]
    assert f"`ddim` with 50 ({_shown(ddim45, 'paired_vs_ddpm-50')}) passes too" in docs
    # DDIM against dpmpp-2m under clip after 4,500 steps: resolved at 20 only
    vs_ddim = {n: fd45[("dpmpp-2m", n, "clip")] for n in (20, 50, 200)}
    assert [v["paired_vs_ddim-50"] > v["paired_ci_vs_ddim-50"] for v in vs_ddim.values()] == [
        True,
        False,
        False,
    ]
    assert (
        f"(resolved against 20 evaluations, {_shown(vs_ddim[20], 'paired_vs_ddim-50')}; not" in docs
    )
    assert f"`dpmpp-2m` with 50 ({ch15['ddim-50 − dpmpp-2m-50']})" in docs
    # one rule: nearly agree; between the rules: far apart
    same = [ch[k] for ch in (ch15, ch45) for k in one_rule]
    assert all(abs(float(v.split(" ± ")[0])) < 3 for v in same)
    between = [(ch, f"dpmpp-2m-{n} − dpmpp-2m-{n}-x0clip-anchor") for ch in (ch15, ch45)
               for n in (20, 50)]  # fmt: skip
    sizes = [abs(float(ch[k].split(" ± ")[0])) for ch, k in between]
    assert f"none above 3, against {min(sizes):.0f} to {max(sizes):.0f} between" in docs
    rule_prose = (f"clip-anchor`: {ch15[between[0][1]]}) and loses at 50 ({ch15[between[1][1]]});"
                  f" after 4,500 it wins at 20 ({ch45[between[0][1]]}) and at 50 is not resolved "
                  f"({ch45[between[1][1]]})")  # fmt: skip
    assert rule_prose in docs
    sde = [_shown(rc[("dpmpp-2m-sde", 20, "clip")], "paired_vs_ddpm-50") for rc in (rc45, rc15)]
    assert (
        f"training steps (paired {sde[0]}; after 1,500 its recall is lower, paired {sde[1]})"
        in docs
    )


def test_scaled_anchor_study_is_the_committed_evaluations() -> None:
    """The clip-anchor-scaled tables at both training lengths (fd_effnet with their changes,
    recall), recomputed from the committed evaluations, are the JSONs' and the docs'; the
    bullets quote them, and their verdicts (converging, resolved or not, lowest) hold."""
    import nfe_trained

    from squeezed_diffusion.evaluation.report.stats import interval95, sig

    longer = FEW_STEP_DOCS / "longer-training" / "cells"
    found = {}
    for length, cells in {"1500": STUDY_CELLS, "4500": longer}.items():
        name = "anchor-scaled" + ("-longer" if length == "4500" else "")
        rows, changes = _recomputed_study(f"{name}.json", cells)
        recall, _ = _recomputed_study(f"{name}-recall.json", cells, changes_shown=False)
        assert {r.get("x0", "clip") for r in rows} == {"clip", "clip-anchor", "clip-anchor-scaled"}
        found[length] = (_keyed(rows), _keyed(recall), changes)
    (fd15, rc15, ch15), (fd45, rc45, ch45) = found["1500"], found["4500"]
    docs = " ".join((FEW_STEP_DOCS / "README.md").read_text().split())

    def paired(a: dict, b: dict) -> str:
        """Seed-paired ``a - b`` of two rows over the same models, as the tables print it."""
        diffs = [x - y for x, y in zip(a["values"], b["values"], strict=True)]
        return nfe_trained.difference(statistics.fmean(diffs), interval95(diffs))

    def resolved(text: str) -> int:
        """-1 or +1 where the interval excludes 0, else 0."""
        mean, ci = (float(v) for v in text.split(" ± "))
        return 0 if abs(mean) < ci else (1 if mean > 0 else -1)

    scaled, plain = "dpmpp-2m-{}-x0clip-anchor-scaled", "dpmpp-2m-{}-x0clip-anchor"

    def step(ch: dict, label: str, a: int, b: int) -> str:
        return ch[f"{label.format(b)} − {label.format(a)}"]

    converging = [(step(ch, scaled, 20, 50), step(ch, scaled, 50, 100)) for ch in (ch15, ch45)]
    for first, second in converging:  # falls, by less each time
        assert resolved(first) == resolved(second) == -1
        assert abs(float(second.split(" ± ")[0])) < abs(float(first.split(" ± ")[0]))
    assert (
        f"({converging[0][0]} then {converging[0][1]} after 1,500 training steps; "
        f"{converging[1][0]} then {converging[1][1]} after 4,500)" in docs
    )
    worse = [step(ch15, plain, 20, 50), step(ch45, plain, 20, 50), step(ch45, plain, 50, 100)]
    assert all(resolved(w) == 1 for w in worse)
    assert (
        f"({worse[0]} from 20 to 50 after 1,500; {worse[1]} and then {worse[2]} after 4,500)"
        in docs
    )
    better = [_shown(fd15[("dpmpp-2m", n, "clip-anchor-scaled")], "paired_vs_ddpm-50")
              for n in (50, 100)]  # fmt: skip
    assert all(resolved(b) == -1 for b in better)
    assert f"better than `ddpm` with 50 ({better[0]} and {better[1]})" in docs
    others = [  # every other sampler measured on the 1,500-step models
        r for name in ("trained", "ode-limit", "x0-rules", "clip-anchor")
        for r in json.loads((FEW_STEP_DOCS / f"{name}.json").read_text())["rows"]
    ]  # fmt: skip
    best = min(others, key=lambda r: r["mean"])
    top = fd15[("dpmpp-2m", 100, "clip-anchor-scaled")]
    assert top["mean"] < best["mean"]
    assert resolved(paired(top, best)) == -1
    assert (
        f"({_shown(top)}; before it `{best['sampler']}` with {best['steps']}, {_shown(best)}, "
        f"paired {paired(top, best)})" in docs
    )
    r100 = rc15[("dpmpp-2m", 100, "clip-anchor-scaled")]
    assert resolved(_shown(r100, "paired_vs_ddpm-50")) == 1
    assert f"({_shown(r100)}, paired {_shown(r100, 'paired_vs_ddpm-50')})" in docs
    assert f"({_shown(rc15[('dpmpp-2m', 20, 'clip-anchor')])} at 20)" in docs
    within = [_shown(fd45[("dpmpp-2m", n, "clip-anchor-scaled")], "paired_vs_ddpm-50")
              for n in (50, 100)]  # fmt: skip
    assert all(resolved(w) == 0 for w in within)
    assert f"({within[0]} at 50, {within[1]} at 100, wide" in docs
    vs_ddim = _shown(fd45[("dpmpp-2m", 100, "clip-anchor-scaled")], "paired_vs_ddim-50")
    assert resolved(vs_ddim) == 0 and f"with 50 ({vs_ddim} at 100)" in docs
    r45 = rc45[("dpmpp-2m", 100, "clip-anchor-scaled")]
    assert resolved(_shown(r45, "paired_vs_ddpm-50")) == 1
    assert (
        f"({_shown(r45)} against {_shown(rc45[('ddpm', 50, 'clip')])}, paired "
        f"{_shown(r45, 'paired_vs_ddpm-50')})" in docs
    )
    at20 = [ch[f"{plain.format(20)} − {scaled.format(20)}"] for ch in (ch15, ch45)]
    s20 = [_shown(fd[("dpmpp-2m", 20, "clip-anchor-scaled")], "paired_vs_ddpm-50")
           for fd in (fd15, fd45)]  # fmt: skip
    assert [resolved(a) for a in at20] == [0, -1] and [resolved(v) for v in s20] == [0, 1]
    assert f"(plain minus scaled {at20[0]}; scaled against `ddpm` {s20[0]}, within" in docs
    assert f"better ({at20[1]}) and the scaled one is {s20[1]} against `ddpm`, resolvably" in docs
    deterministic = [  # every deterministic sampler measured on the 4,500-step models
        r for name in ("longer-training", "clip-anchor-longer", "anchor-scaled-longer")
        for r in json.loads((FEW_STEP_DOCS / f"{name}.json").read_text())["rows"]
        if r["sampler"] not in ("ddpm", "dpmpp-2m-sde") and not r.get("eta")
    ]  # fmt: skip
    lowest = min(deterministic, key=lambda r: r["mean"])
    assert (lowest["sampler"], lowest["steps"], lowest.get("x0")) == ("dpmpp-2m", 20, "clip-anchor")
    close = paired(lowest, fd45[("dpmpp-2m", 100, "clip-anchor-scaled")])
    assert resolved(close) == 0
    assert f"plain anchor's at 20 ({_shown(lowest)}), a count found by trying counts," in docs
    assert f"not resolved from the scaled rule at 100 (paired {close})" in docs
    recall20 = rc15[("dpmpp-2m", 20, "clip-anchor")], rc15[("dpmpp-2m", 20, "clip-anchor-scaled")]
    assert resolved(paired(*recall20)) == -1
    assert f"after 1,500 training steps: plain minus scaled {paired(*recall20)})" in docs

    def q(x: dict) -> str:
        return nfe_trained.difference(x["mean"], x["ci"])

    def counts(dch: dict, label: str, key: str) -> list[dict]:
        """The changes of ``key`` from 20 to 50 and from 50 to 100 steps."""
        pairs = ((20, 50), (50, 100))
        return [dch[f"{label.format(b)} − {label.format(a)}"][key] for a, b in pairs]

    drift_quotes = []
    for length, plain_name in (("", "anchor-drift"), ("-longer", "anchor-drift-longer")):
        drift = json.loads((FEW_STEP_DOCS / f"anchor-drift-scaled{length}.json").read_text())
        before = json.loads((FEW_STEP_DOCS / f"{plain_name}.json").read_text())["traces"]
        for label, traces in drift["traces"].items():  # the plain anchor's: the same traces
            assert "scaled" in label or traces == before[label], label
        drows = {r["label"]: r for r in drift["rows"]}
        dch = {c["change"]: c for c in drift["changes"]}
        shift, plain_shift = counts(dch, scaled, "correction"), counts(dch, plain, "correction")
        hf, plain_hf = counts(dch, scaled, "hf"), counts(dch, plain, "hf")
        assert shift[1]["mean"] < shift[0]["mean"] < plain_shift[0]["mean"] / 10  # levels off
        assert all(h["mean"] < p["mean"] / 10 for h, p in zip(hf, plain_hf, strict=True))
        spreads = [sig(drows[scaled.format(n)]["colour_spread"]["mean"], 4) for n in (20, 50, 100)]
        hfs = [sig(drows[scaled.format(n)]["hf"]["mean"], 4) for n in (20, 100)]
        data = drift["data"]
        assert all(abs(float(v) - data["colour_spread"]) < 0.1 for v in spreads)
        drift_quotes.append({
            "shift": f"{q(shift[0])} then {q(shift[1])}",
            "plain_shift": f"{q(plain_shift[0])} then {q(plain_shift[1])}",
            "hf": f"{q(hf[0])} then {q(hf[1])}", "plain_hf": f"{q(plain_hf[0])} then {q(plain_hf[1])}",
            "hf_range": f"{hfs[0]} to {hfs[1]}", "spreads": spreads,
            "plain_spread": sig(drows[plain.format(20)]["colour_spread"]["mean"], 4),
            "clips": [sig(drows[scaled.format(n)]["clipping_nfe"]["mean"], 4) for n in (20, 100)],
            "data": (sig(data["hf"], 4), sig(data["colour_spread"], 4)),
        })  # fmt: skip
    d15, d45 = drift_quotes
    assert resolved(d15["hf"].split(" then ")[1]) == 0  # "(not resolved)"
    for fragment in (
        f"grows by {d15['shift']} after 1,500 training steps (the plain anchor's by "
        f"{d15['plain_shift']}) and by {d45['shift']} after 4,500",
        f"high-frequency energy by {d15['hf']} (not resolved) after 1,500 (the plain anchor's "
        f"by {d15['plain_hf']}), staying a little above the data's ({d15['hf_range']} after "
        f"1,500, {d45['hf_range']} after 4,500, against {d15['data'][0]})",
        f"({', '.join(d15['spreads'][:2])} and {d15['spreads'][2]} after 1,500 training steps; "
        f"{', '.join(d45['spreads'][:2])} and {d45['spreads'][2]} after 4,500; the data's "
        f"{d15['data'][1]}), where the plain anchor's at 20 is {d15['plain_spread']} after 1,500 "
        f"training steps (a sixth of the data's, where its recall collapsed) and "
        f"{d45['plain_spread']} after 4,500",
        f"({d15['clips'][0]} of 20 and {d15['clips'][1]} of 100 after 1,500 training steps)",
    ):
        assert fragment in docs, fragment
    readme = " ".join(README.read_text().split())
    at100 = [_shown(fd[("dpmpp-2m", 100, "clip-anchor-scaled")], "paired_vs_ddpm-50")
             for fd in (fd15, fd45)]  # fmt: skip
    assert [resolved(a) for a in at100] == [-1, 0]
    assert f"beats DDPM-50 after 1,500 training steps ({at100[0]}) and is within" in docs
    assert f"its scatter after 4,500 ({at100[1]}), with higher recall at both" in docs
    recall100 = [_shown(rc[("dpmpp-2m", 100, "clip-anchor-scaled")], "paired_vs_ddpm-50")
                 for rc in (rc15, rc45)]  # fmt: skip
    assert (
        f"(from 20 to 50 to 100 evaluations: {converging[0][0]} then {converging[0][1]} after "
        f"1,500 training steps, {converging[1][0]} then {converging[1][1]} after 4,500): with "
        f"100 evaluations it is better than `ddpm` with 50 after 1,500 training steps "
        f"({at100[0]}) and within its scatter after 4,500 ({at100[1]}), with higher recall at "
        f"both (paired {recall100[0]} and {recall100[1]})" in readme
    )


def test_benchmark_comparison_is_the_committed_runs() -> None:
    """docs/benchmarks.md's no-regression table is what benchmarks/compare.py prints for the
    two committed --quick runs."""
    import subprocess

    runs = sorted((ROOT / "benchmarks" / "results").glob("cpu-quick-*.json"))
    before = ROOT / "benchmarks" / "results" / "cpu-quick-fb80759.json"
    (after,) = [p for p in runs if p != before]
    script = ROOT / "benchmarks" / "compare.py"
    out = subprocess.run([sys.executable, str(script), str(before), str(after)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.count("\n") > 10 and "| no |" not in out
    assert out.strip() in (ROOT / "docs" / "benchmarks.md").read_text()


def test_side_by_side_table_is_the_committed_run() -> None:
    """docs/benchmarks.md's side-by-side table is what benchmarks/side_by_side.py prints for
    the committed run."""
    import side_by_side

    paths = sorted((ROOT / "benchmarks" / "results").glob("cpu-side-by-side-*.json"))
    assert len(paths) == 2  # micro and tiny
    for path in paths:
        table = side_by_side.markdown(json.loads(path.read_text()))
        assert "processes x 1 thread |" in table
        assert table in (ROOT / "docs" / "benchmarks.md").read_text(), path.name
    micro, tiny = (json.loads(p.read_text()) for p in paths)
    readme = " ".join(README.read_text().split())
    assert f"({micro['gain']:.1f}x the training throughput" in readme
    assert f"at {sum(tiny['rows'][1]['runs']):.0f} images/s side by side" in readme


def test_readme_mutation_count_is_the_scripts() -> None:
    """The README's mutation-check figure counts the mutants tests/mutation_check.py has."""
    from mutation_check import MUTANTS

    n = len(MUTANTS)
    assert f"({n} of {n} caught," in " ".join(README.read_text().split())


def test_readme_sampler_study_prose_is_the_committed_results() -> None:
    """The percentages and differences that the README's plain-words reading quotes are the
    committed results' (fd_effnet change against the isotropic cell of the same sampler)."""
    from squeezed_diffusion.evaluation.report import summarize

    rows = json.loads((ROOT / "docs/results/local-cifar10-samplers/results.json").read_text())
    items = {
        (s.group.evaluation, s.variant, s.strength, s.metric): s
        for s in summarize(rows)
        if s.strength != 0
    }

    def pct(sampler: str, variant: str, strength: float) -> str:
        return f"{items[(sampler, variant, strength, 'fd_effnet')].change_pct:.1f} %"

    iso = next(
        s
        for s in summarize(rows)
        if (s.group.evaluation, s.variant, s.metric) == ("ddpm-paper-50", "isotropic", "fd_effnet")
    )
    text = " ".join(README.read_text().split())  # sentences wrap across lines
    paper = (
        f"SDM -0.4: {pct('ddpm-paper-50', 'sdm', -0.4)}, SDM -0.8: "
        f"{pct('ddpm-paper-50', 'sdm', -0.8)}, HDM -0.4: {pct('ddpm-paper-50', 'hdm', -0.4)} of "
        f"the isotropic {iso.mean:.1f})"
    )
    assert paper in text
    assert f"resolvably ({pct('ddpm-50', 'hdm', -0.4)})" in text
    assert f"resolvably ({pct('dpmpp-2m-sde-20', 'hdm', -0.4)})" in text
    ddim = items[("ddim-50", "hdm", -0.4, "fd_effnet")].delta
    ddim_precision = items[("ddim-50", "hdm", -0.4, "precision_effnet")].delta
    assert f"(fd_effnet {ddim:+.0f}, precision {ddim_precision:+.2f})" in text


def test_readme_demo_description_is_the_demo_settings() -> None:
    """The README's account of `sqdm demo` (model, its size, steps; --full's) is the code's."""
    from squeezed_diffusion.demo import FULL, Settings
    from squeezed_diffusion.models import build_model, count_parameters

    text = " ".join(README.read_text().split())
    quick = Settings()
    params = count_parameters(build_model(quick.model, 3, 16)) / 1e6
    assert f"{params:.2f}M-parameter `{quick.model}` UNet and seed, {quick.steps:,} steps" in text
    assert (
        f"`sqdm demo --full` trains longer ({FULL.steps:,} steps of the `{FULL.model}` UNet" in text
    )


def test_third_order_study_is_the_committed_evaluations() -> None:
    """The third-order table, recomputed from the committed evaluations, is third-order.json's
    and the docs'; the sentences quote its pairs."""
    import nfe_trained

    rows, changes = _recomputed_study("third-order.json")
    by = _keyed(rows)
    assert {("dpmpp-3m", 10, "clip"), ("dpmpp-3m-sde", 20, "clip")} <= set(by)
    sde = by[("dpmpp-3m-sde", 20, "clip")]
    vs_ddpm = nfe_trained.difference(sde["paired_vs_ddpm-50"], sde["paired_ci_vs_ddpm-50"])
    assert sde["paired_vs_ddpm-50"] + sde["paired_ci_vs_ddpm-50"] < 0  # resolved, better
    readme = " ".join(README.read_text().split())
    docs = " ".join((FEW_STEP_DOCS / "README.md").read_text().split())
    beats = vs_ddpm.lstrip("-")
    assert f"beats `ddpm` with 50 by {beats} fd_effnet" in readme
    assert f"better than exact DDPM with 50: by {beats} fd_effnet" in docs
    for change in ("dpmpp-2m-sde-20 − dpmpp-3m-sde-20", "dpmpp-2m-10 − dpmpp-3m-10"):
        assert changes[change].lstrip("+") in docs, change
