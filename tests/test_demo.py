"""`sqdm demo` at toy size: three sections in one self-contained page, from the runs it trained."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import paper_strength_t
from PIL import Image

from squeezed_diffusion.cli import main
from squeezed_diffusion.demo import NOISE_T, run_demo
from squeezed_diffusion.training.run import Run

TOY = {"steps": 3, "oracle_strengths": (-1.0, 0.0), "oracle_pixels": 1024, "num_samples": 16}
SECTIONS = (
    "1. What squeezing does",
    "2. Why the exact samplers matter",
    "3. Training: isotropic against SDM",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, progress=False, **TOY)


def test_demo_page_has_three_sections_from_the_trained_runs(demo) -> None:
    out, page = demo
    html = page.read_text()
    assert all(f"<h2>{title}</h2>" in html for title in SECTIONS)
    assert html.count("src='data:image/png;base64,") == 4 and "<script" not in html
    results = json.loads((out / "results.json").read_text())
    for row in results["trained"]:  # side by side, one thread each, wherever there are two
        assert (row["side_by_side"], row["threads"]) == (
            (True, torch.get_num_threads() // 2) if torch.get_num_threads() > 1 else (False, 1)
        )
    for row in results["trained"]:  # what the page reports is what the runs trained
        assert row["trained_steps"] == TOY["steps"] and row["train_s"] > 0
        proc = Run(out / row["run"]).process()
        assert (proc.variant, float(proc.strength[0])) == (row["variant"], row["strength"])
        assert (out / row["run"] / "samples" / "final.png").is_file()
    assert [(r["variant"], r["strength"]) for r in results["trained"]] == [
        ("isotropic", 0.0),
        ("sdm", -0.4),
    ]
    # the noising section: s < 0 widens the noise along the principal direction; HDM narrows
    # the other directions to compensate (SDM leaves them), s > 0 the reverse
    spread = {(r["variant"], r["strength"]): r for r in results["noising"]}
    iso = spread[("isotropic", 0.0)]
    assert iso["std_principal"] == pytest.approx(1, abs=0.05) and iso["std_orthogonal"] == (
        pytest.approx(1, abs=0.05)
    )
    for variant, sign in ((v, g) for v in ("sdm", "hdm") for g in (-1, 1)):
        row = spread[(variant, 1.5 * sign)]  # the same draw: the ratios are the scales, exactly
        s_t = paper_strength_t(1.5 * sign, "beta")[NOISE_T]
        along = row["std_principal"] / iso["std_principal"]
        assert along == pytest.approx(np.exp(-s_t), rel=1e-5), row
        across = row["std_orthogonal"] / iso["std_orthogonal"]
        assert across == pytest.approx(1 if variant == "sdm" else np.exp(s_t / 2), rel=1e-5), row
    # the oracle section: the paper's sampler drifts with |s|, the exact ones do not
    err = {(r["strength"], s): e for r in results["oracle"] for s, e in r["cov_rel_error"].items()}
    assert err[(-1.0, "ddpm-paper")] > 2 * err[(-1.0, "ddpm")]
    assert err[(0.0, "ddpm-paper")] == pytest.approx(err[(0.0, "ddpm")])


def test_demo_reruns_reuse_the_finished_runs(demo) -> None:
    out, page = demo
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/*/state.json")}
    assert "s per model" in page.read_text() and "reused" not in page.read_text()
    assert before and run_demo(out, progress=False, **TOY) == page
    assert before == {p: p.stat().st_mtime_ns for p in before}
    # and the page does not pass the reuse off as training time
    results = json.loads((out / "results.json").read_text())
    assert [r["trained_steps"] for r in results["trained"]] == [0, 0]
    html = page.read_text()
    assert "reused from an earlier sqdm demo" in html and "s per model" not in html
    assert html.count("<td>reused</td>") == 2


def test_demo_command_prints_the_page(tmp_path, capsys, monkeypatch) -> None:
    import squeezed_diffusion.demo as module

    # one configuration at a time here (the fixture trains them side by side)
    monkeypatch.setattr(
        module, "Settings", lambda: module.FULL.__class__(**TOY, side_by_side=False)
    )
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"report: /\S+/report\.html", out)
    stages = ["1/3 what squeezing does", "2/3 why the exact samplers matter: grading 3 samplers "
              "at 2 strengths", "3/3 a short training run: isotropic, sdm-0.4\n"]  # fmt: skip
    assert all(stage in out for stage in stages), out
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 0  # reuses both runs
    out = capsys.readouterr().out
    assert re.search(r"report: /\S+/report\.html", out) and "1/3" not in out
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert (
        "3/3 a short training run: isotropic, sdm-0.4 (reusing or resuming isotropic, sdm-0.4)"
        in capsys.readouterr().out
    )


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


def test_demo_page_renders_in_headless_chromium(demo, tmp_path) -> None:
    """Screenshots of the page, top to bottom: every third of it shows real content."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    _, page = demo
    shot = tmp_path / "page.png"
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,3600", page.resolve().as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for third in np.array_split(pixels[:3000], 3):
        drawn = (third < 240).any(axis=2).mean()  # not page white
        colours = len(np.unique(third.reshape(-1, 3)[::7], axis=0))
        assert drawn > 0.05 and colours > 200, (drawn, colours)


side_by_side = pytest.mark.skipif(
    torch.get_num_threads() < 2, reason="one thread: the demo trains one run after the other"
)


@side_by_side
def test_a_signal_to_the_demo_stops_the_runs_training_side_by_side(tmp_path) -> None:
    """SIGTERM to the demo's own process only (as `kill` or a scheduler sends it) reaches the
    worker processes: each saves a checkpoint before its last step, nothing trains on, and
    the demo exits as interrupted, so a rerun resumes."""
    import signal
    import sys
    import time

    from squeezed_diffusion.training.checkpoint import list_checkpoints

    script = (
        "import sys\nfrom squeezed_diffusion.demo import run_demo\ntry:\n"
        f"    run_demo(sys.argv[1], progress=False, **{ {**TOY, 'steps': 2000}!r})\n"
        "except KeyboardInterrupt as err:\n    sys.exit(128 + err.signum)\n"  # as sqdm does
    )
    out = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.PIPE)
    runs = [out / "isotropic", out / "sdm-0.4"]
    try:
        deadline = time.monotonic() + 120
        while not all(len(Run(r).log()) >= 2 for r in runs):  # both past their first log step
            assert demo.poll() is None, demo.stderr.read()
            assert time.monotonic() < deadline, "the runs did not start training side by side"
            time.sleep(0.2)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        demo.kill()
    saved = {r: [p.name for p in list_checkpoints(r)] for r in runs}
    assert all(len(names) == 1 and names[0] < "step-00002000" for names in saved.values())
    logs = {r: Run(r).log_path.read_text() for r in runs}
    time.sleep(2)  # no worker is left training
    assert logs == {r: Run(r).log_path.read_text() for r in runs}


@side_by_side
def test_an_error_in_one_side_by_side_run_stops_the_other_and_is_raised(demo, tmp_path) -> None:
    """The SDM run's folder holds the isotropic run: its worker refuses with a ValueError,
    which stops the isotropic worker long before its last step (the demo waits for its
    workers, so without the stop the isotropic run would have logged step 5000) and reaches
    the caller unchanged."""
    import dataclasses

    from squeezed_diffusion.demo import Settings, train_and_sample

    out = tmp_path / "demo"
    shutil.copytree(demo[0] / "isotropic", out / "sdm-0.4")
    settings = dataclasses.replace(Settings(), **{**TOY, "steps": 5000})
    with pytest.raises(ValueError, match="differs from the run's saved"):
        train_and_sample(out, settings, progress=False)  # past run_demo's check of the folders
    assert all(record["step"] < 5000 for record in Run(out / "isotropic").log())


def test_demo_refuses_another_run_in_its_folders_before_any_work(demo, tmp_path) -> None:
    """Another run where the demo's would go fails at once, naming the folder and the fix
    (not a flag the user never gave), before the first sections are built."""
    out = tmp_path / "demo"
    shutil.copytree(demo[0] / "isotropic", out / "sdm-0.4")
    with pytest.raises(
        ValueError,
        match=r"^\S+sdm-0\.4 holds something other than this demo's sdm-0\.4 run: delete it, or pass sqdm demo another --out$",
    ):
        run_demo(out, progress=False, **TOY)
    assert sorted(p.name for p in out.iterdir()) == ["sdm-0.4"]


def test_demo_page_times_only_the_steps_it_trained() -> None:
    """Runs trained in full are timed; reused or resumed ones say so instead."""
    from squeezed_diffusion.demo import _train_cell, training_time

    def rows(*steps: int) -> list[dict]:
        return [{"trained_steps": n, "train_s": 10.0 * n, "side_by_side": True} for n in steps]

    assert training_time(rows(3, 3), 3) == "here 30 s per model, trained at the same time"
    assert training_time(rows(0, 0), 3).startswith("reused from an earlier sqdm demo")
    assert training_time(rows(3, 1), 3).startswith("partly reused")
    assert [_train_cell(r, 3) for r in rows(3, 1, 0)] == ["30", "10 (1 of 3 steps)", "reused"]
