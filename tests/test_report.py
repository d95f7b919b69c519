"""`sqdm report`: the paper-style table with intervals, the plots, and an HTML page that renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from scipy import stats

from squeezed_diffusion.cli import main
from squeezed_diffusion.evaluation.report import (
    interval95,
    sampler_contrasts,
    summarize,
    verdict,
    verdict_table,
)

STRENGTHS = {"isotropic": [0.0], "sdm": [-0.8, -0.4, 0.4], "hdm": [-0.4]}


def fixture_rows() -> list[dict]:
    """fd_effnet = 20 + 10 s + seed - 1 (so seeds 0..2 give mean 20 + 10 s, sd 1), P/R alongside."""
    rows = []
    for variant, strengths in STRENGTHS.items():
        for s in strengths:
            for seed in range(3):
                cell = f"cifar10_{variant}_s{s:+g}_seed{seed}"
                iso = variant == "isotropic"
                shared = {
                    "cell": cell, "dataset": "cifar10", "variant": variant, "strength": s,
                    "profile": "" if iso else "beta", "basis": "" if iso else "channel",
                    "seed": seed, "extra": "", "num_samples": 2000, "num_reference": 10000,
                    "train_s": 300.0, "sample_s": 100.0, "eval_s": 60.0, "wall_s": 460.0,
                }  # fmt: skip
                values = {
                    "fd_effnet": 20 + 10 * s + seed - 1,
                    "precision_effnet": 0.6 + 0.1 * s,
                    "recall_effnet": 0.5 - 0.1 * s + 0.01 * seed,
                }
                rows += [
                    {**shared, "metric": m, "value": v, "feature_extractor": "effnet-lite0:1280"}
                    for m, v in values.items()
                ]
    return rows


@pytest.fixture
def results_dir(tmp_path) -> Path:
    (tmp_path / "results.json").write_text(json.dumps(fixture_rows()))
    return tmp_path


def test_interval_is_student_t() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    low, _ = stats.t.interval(0.95, 3, loc=3.5, scale=stats.sem(values))
    assert interval95(values) == pytest.approx(3.5 - low, rel=1e-9)
    assert interval95([5.0]) is None


def test_summary_uses_isotropic_as_strength_zero_of_every_variant() -> None:
    summary = summarize(fixture_rows())
    fd = {(s.variant, s.strength): s for s in summary if s.metric == "fd_effnet"}
    assert fd[("sdm", -0.4)].mean == pytest.approx(16.0)
    assert fd[("sdm", -0.4)].change_pct == pytest.approx(-20.0)
    assert fd[("sdm", -0.4)].ci == pytest.approx(stats.t.ppf(0.975, 2) / 3**0.5)
    assert fd[("isotropic", 0.0)].change_pct is None and fd[("isotropic", 0.0)].n == 3
    assert {s.group for s in summary} == {("cifar10", "", "beta", "channel", "")}


def test_paired_difference_matches_seeds_and_removes_their_common_scatter() -> None:
    # fd_effnet scatters by seed (sd 1) in every cell, identically: the paired difference from
    # the isotropic cell of the same seed is exactly 10 s with zero spread.
    rows = [r for r in fixture_rows() if not (r["variant"] == "isotropic" and r["seed"] == 2)]
    fd = {(s.variant, s.strength): s for s in summarize(rows) if s.metric == "fd_effnet"}
    sdm = fd[("sdm", -0.4)]
    assert sdm.pairs == 2 and sdm.n == 3  # seed 2 has no isotropic partner
    assert sdm.delta == pytest.approx(-4.0) and sdm.delta_ci == pytest.approx(0.0, abs=1e-9)
    assert sdm.ci > 1  # the unpaired interval keeps the seed scatter
    assert fd[("isotropic", 0.0)].delta is None and fd[("isotropic", 0.0)].pairs == 0
    # an unmatched seed shifts the paired mean: pair seed 0 with a deliberately different value
    rows = [dict(r) for r in rows]
    for r in rows:
        if r["cell"] == "cifar10_sdm_s-0.4_seed0" and r["metric"] == "fd_effnet":
            r["value"] += 2.0
    sdm = {(s.variant, s.strength): s for s in summarize(rows) if s.metric == "fd_effnet"}
    assert sdm[("sdm", -0.4)].delta == pytest.approx(-3.0)
    assert sdm[("sdm", -0.4)].delta_ci == pytest.approx(stats.t.ppf(0.975, 1) * 2**0.5 / 2**0.5)


def test_verdict_claims_a_direction_only_where_the_paired_interval_excludes_zero() -> None:
    rows = [dict(r) for r in fixture_rows()]
    for r in rows:  # SDM -0.4's fd_effnet differences from isotropic become -1, -7, -4: sd 3
        if r["variant"] == "sdm" and r["strength"] == -0.4 and r["metric"] == "fd_effnet":
            r["value"] += {0: 3.0, 1: -3.0, 2: 0.0}[r["seed"]]
        if r["variant"] == "sdm" and r["strength"] == -0.8:  # a little scatter: an interval
            r["value"] += {0: 1e-3, 1: -1e-3, 2: 0.0}[r["seed"]]
    items = summarize(rows)
    by = {(s.variant, s.strength, s.metric): s for s in items}
    noisy = by[("sdm", -0.4, "fd_effnet")]
    assert noisy.delta == pytest.approx(-4.0)
    assert noisy.delta_ci == pytest.approx(stats.t.ppf(0.975, 2) * 3 / 3**0.5)
    assert verdict(noisy).endswith("not resolved")
    # the same difference in every seed: a zero-width interval estimates no spread
    assert verdict(by[("sdm", 0.4, "fd_effnet")]) == "+4 ± 0 not resolved"
    assert verdict(by[("sdm", -0.8, "fd_effnet")]) == "-8 ± 0.0025 lower (better)"
    assert verdict(by[("sdm", -0.8, "precision_effnet")]).endswith("lower (worse)")
    assert verdict(by[("sdm", -0.8, "recall_effnet")]).endswith("higher (better)")
    assert verdict(by[("isotropic", 0.0, "fd_effnet")]) == ""
    header, body = verdict_table(items)
    assert header == ["sampler", "variant", "s", "pairs", "fd_effnet", "precision_effnet",
                      "recall_effnet"]  # fmt: skip
    assert [row[1:4] for row in body] == [
        ["sdm", "-0.8", "3"], ["sdm", "-0.4", "3"], ["sdm", "0.4", "3"], ["hdm", "-0.4", "3"]
    ]  # fmt: skip
    assert body[1][4] == verdict(noisy)


def test_sampler_contrast_is_the_seed_paired_difference_of_the_changes(tmp_path) -> None:
    """Each cell sampled by ddpm and ddim: ddim's isotropic cells are 5 higher in every seed
    (cancelled by pairing), its SDM -0.4 fd_effnet shifted by -3, -5, -4 per seed, its SDM
    -0.8 lacks seed 2. The contrast ddpm − ddim is then +3, +5, +4 (mean 4, sd 1) and pairs
    only the seeds all four cells have; the report has a section for it."""
    from squeezed_diffusion.evaluation.report import build_blocks
    from squeezed_diffusion.evaluation.report.render import Heading, Table

    ddpm = [{**r, "sampler": "ddpm", "steps": 2} for r in fixture_rows()]
    ddim = []
    for r in fixture_rows():
        if (r["variant"], r["strength"], r["seed"]) == ("sdm", -0.8, 2):
            continue
        r = {**r, "sampler": "ddim", "steps": 2}
        if r["metric"] == "fd_effnet":
            r["value"] += 5.0 if r["variant"] == "isotropic" else 0.0
            if (r["variant"], r["strength"]) == ("sdm", -0.4):
                r["value"] += 5.0 + {0: -3.0, 1: -5.0, 2: -4.0}[r["seed"]]
            elif r["variant"] != "isotropic":
                r["value"] += 5.0
        ddim.append(r)
    items = sampler_contrasts(ddpm + ddim)
    by = {(c.group.evaluation, c.variant, c.strength, c.metric): c for c in items}
    assert {c.group.evaluation for c in items} == {"ddpm-2 − ddim-2"}
    noisy = by[("ddpm-2 − ddim-2", "sdm", -0.4, "fd_effnet")]
    assert (noisy.delta, noisy.pairs) == (pytest.approx(4.0), 3)
    assert noisy.delta_ci == pytest.approx(stats.t.ppf(0.975, 2) / 3**0.5)
    assert verdict(noisy).endswith("higher (worse)")  # ddpm's change is the worse one
    same = by[("ddpm-2 − ddim-2", "sdm", -0.8, "fd_effnet")]
    assert (same.delta, same.pairs) == (pytest.approx(0.0), 2)
    assert ("ddpm-2 − ddim-2", "isotropic", 0.0, "fd_effnet") not in by
    header, body = verdict_table(items, "samplers")
    assert header[:4] == ["samplers", "variant", "s", "pairs"]
    assert ["ddpm-2 − ddim-2", "sdm", "-0.4", "3", verdict(noisy)] == body[1][:5]
    blocks = build_blocks(ddpm + ddim, tmp_path)
    at = next(
        i
        for i, b in enumerate(blocks)
        if isinstance(b, Heading) and "depend on the sampler" in b.text
    )
    table = next(b for b in blocks[at:] if isinstance(b, Table))
    assert table.rows == body
    assert sampler_contrasts(ddpm) == []  # one sampler: nothing to contrast
    assert sampler_contrasts(ddpm + fixture_rows()) == []  # nor with 0.1.0's unnamed one


def test_change_and_difference_use_the_seeds_both_cells_have(tmp_path) -> None:
    """Without isotropic seed 2, SDM -0.4's fd_effnet (22 - 4 + seed - 1 against 20 + seed - 1,
    its seed 2 far off) changes by -4 / 19.5 over seeds 0 and 1, not by its mean over all
    three seeds against isotropic's over two; a NaN value is refused naming its cell."""
    from squeezed_diffusion.evaluation.report.stats import load_rows

    rows = [r for r in fixture_rows() if not (r["variant"] == "isotropic" and r["seed"] == 2)]
    for r in rows:
        if (r["variant"], r["strength"], r["metric"], r["seed"]) == ("sdm", -0.4, "fd_effnet", 2):
            r["value"] += 30.0
    (s,) = [
        x
        for x in summarize(rows)
        if (x.variant, x.strength, x.metric) == ("sdm", -0.4, "fd_effnet")
    ]
    assert (s.pairs, s.n, s.delta) == (2, 3, pytest.approx(-4.0))
    assert s.change_pct == pytest.approx(100 * -4.0 / 19.5)
    rows[0]["value"] = float("nan")
    (tmp_path / "results.json").write_text(json.dumps(rows))
    with pytest.raises(
        ValueError, match=re.escape(f"cell {rows[0]['cell']} has value nan, not a finite number")
    ):
        load_rows(tmp_path)


def test_report_writes_markdown_and_self_contained_html(results_dir, capsys) -> None:
    out = results_dir / "report"
    assert main(["report", str(results_dir / "results.json"), "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "| variant | s | seeds | fd_effnet | precision_effnet | recall_effnet |" in md
    ci = stats.t.ppf(0.975, 2) / 3**0.5
    assert f"| sdm | -0.4 | 3 | 16 ± {ci:.2g} (-20.0 %) |" in md
    assert "| isotropic | 0 | 3 | 20 ± " in md
    assert "| variant | s | pairs | fd_effnet | precision_effnet | recall_effnet |" in md
    assert "| sdm | -0.4 | 3 | -4 ± 0 | -0.04 ± 0 | +0.04 ± 0 |" in md
    # rows without a sampler (0.1.0's single evaluation): no empty sampler column
    assert "## Wall time per cell (s)\n\n| cell | train_s | sample_s | eval_s | wall_s |" in md
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(links) == 3  # metrics, precision-recall, log-SNR
    for link in links:
        assert (out / link).stat().st_size > 5_000
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "<script" not in page
    assert "<th>fd_effnet</th>" in page and "16 ± " in page


def test_report_of_a_sweep_folder_includes_sample_grids(results_dir) -> None:
    grid = results_dir / "cells" / "cifar10_sdm_s-0.4_seed0" / "samples.png"
    grid.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 60, 20)).save(grid)
    unscored = grid.parent / "evals" / "heun-11" / "samples.png"  # sampled, not in the table
    unscored.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (20, 60, 200)).save(unscored)
    assert main(["report", str(results_dir)]) == 0
    md = (results_dir / "report.md").read_text()
    assert "## Samples" in md and "figures/samples-cifar10_sdm_s-0.4_seed0.png" in md
    assert "heun-11" not in md
    assert (results_dir / "report.html").read_text().count("data:image/png") == 4


def test_a_rewritten_report_leaves_no_figure_of_the_old_one(tmp_path) -> None:
    """Figures are named by position; a report with fewer of them removes the rest of the
    old report's (those its report.md showed), and leaves every other file alone."""
    from squeezed_diffusion.evaluation.report.render import Figure, Heading, write_document

    png = b"\x89PNG fake"
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "architecture.png").write_bytes(png)  # the user's, not a report's
    figures = [Figure(f"f-{i}.png", png, "a figure") for i in range(3)]
    write_document([Heading(1, "old"), *figures], tmp_path)
    write_document([Heading(1, "new"), figures[0]], tmp_path)
    kept = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert kept == ["architecture.png", "f-0.png"]


def test_the_log_snr_figure_shows_every_trained_process_once(tmp_path, monkeypatch) -> None:
    """Drawn once per configuration, with the (variant, strength) pairs any of its samplers
    scored: a sampler that scored fewer cells (added later, sorting first) hides none."""
    import squeezed_diffusion.evaluation.report.build as build

    drawn = []
    monkeypatch.setattr(build, "log_snr_plot", lambda g, trained, *a: drawn.append(trained))
    full = [{**r, "sampler": "ddpm", "steps": 2} for r in fixture_rows()]
    few = [
        {**r, "sampler": "ddim", "steps": 2}
        for r in fixture_rows()
        if (r["variant"], r["strength"]) in {("isotropic", 0.0), ("sdm", -0.8)}
    ]
    build.build_blocks(full + few, tmp_path)
    pairs = {(v, s) for v, strengths in STRENGTHS.items() for s in strengths}
    assert drawn == [pairs]


def test_a_sweep_without_its_isotropic_cells_says_why_nothing_is_paired(tmp_path) -> None:
    rows = [r for r in fixture_rows() if r["variant"] != "isotropic"]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "No paired differences: they need the isotropic cell of each seed" in md
    assert "Paired difference from strength 0" not in md


def test_bad_results_are_one_line_errors(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json does not exist" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("[]")
    assert main(["report", str(tmp_path)]) == 2
    assert "is empty: the sweep has no finished evaluation yet" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('[{"cell": "a"}]')
    assert main(["report", str(tmp_path)]) == 2
    assert "no sweep rows (need columns" in capsys.readouterr().err


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
)  # fmt: skip


def test_html_renders_in_headless_chromium(results_dir, tmp_path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    assert main(["report", str(results_dir)]) == 0
    url = (results_dir / "report.html").resolve().as_uri()
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, profile, "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<th>fd_effnet</th>" in dom.stdout and dom.stdout.count("<img") == 3
    assert "Uncaught" not in dom.stderr and ":CONSOLE" not in dom.stderr
    shot = tmp_path / "page.png"
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, profile, f"--screenshot={shot}", "--window-size=1280,2400", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 20_000  # the page drew its tables and figures
