"""Sweeps: cell expansion and deduplication, sharding, skip-finished, and a tiny sweep end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from squeezed_diffusion.cli import main
from squeezed_diffusion.evaluation.generate import generate
from squeezed_diffusion.evaluation.report.stats import load_rows
from squeezed_diffusion.evaluation.sweep import (
    Evaluation,
    is_finished,
    load_sweep,
    parse_shard,
    run_sweep,
    shard,
    shard_from_environment,
    sweep_names,
)
from squeezed_diffusion.metrics import FeatureWeightsError
from squeezed_diffusion.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(path: Path, grid, base=None, eval_=None, **extra) -> Path:
    spec = {"base": base or {"dataset": "photos", "steps": 2}, "grid": grid, **extra}
    if eval_ is not None:
        spec["eval"] = eval_
    path.write_text(yaml.safe_dump(spec))
    return path


def test_cells_expand_dedupe_isotropic_and_resolve_relative_data(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    grid = {"variant": ["isotropic", "sdm", "hdm"], "strength": [0.0, -0.4], "seed": [0, 1]}
    base = {"dataset": "array", "data_dir": "data/x.npy", "steps": 2}
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", grid, base), tmp_path / "out")
    assert [c.id for c in sweep.cells] == [
        "array_hdm_s-0.4_beta_channel_seed0",
        "array_hdm_s-0.4_beta_channel_seed1",
        "array_isotropic_seed0",
        "array_isotropic_seed1",
        "array_sdm_s-0.4_beta_channel_seed0",
        "array_sdm_s-0.4_beta_channel_seed1",
    ]
    iso = sweep.cells[2]
    assert iso.axes == {
        "dataset": "array", "variant": "isotropic", "strength": 0.0, "profile": "", "basis": "",
        "seed": 0, "extra": "",
    }  # fmt: skip
    assert iso.config.variant == "isotropic" and iso.config.strength == 0.0
    assert iso.config.out == str(tmp_path / "out" / "cells" / iso.id / "run")
    assert iso.config.data_dir == str(tmp_path / "data" / "x.npy")
    assert sweep.name == "s" and sweep.eval.metrics == ("fd_effnet", "prc_effnet")

    # squeezing settings of the base or grid shape the squeezed cells, and only those
    shaped = {"variant": ["sdm"], "strength": [0.0, -0.4], "profile": ["linear", "constant"]}
    squeeze = {"dataset": "photos", "steps": 2, "basis": "pca", "basis_options": {"k": 4}}
    cells = load_sweep(write_sweep(tmp_path / "p.yaml", shaped, squeeze), tmp_path).cells
    assert [c.id for c in cells] == [
        "photos_isotropic_seed42", "photos_sdm_s-0.4_constant_pca_seed42",
        "photos_sdm_s-0.4_linear_pca_seed42",
    ]  # fmt: skip
    iso = cells[0].config
    assert (iso.profile, iso.basis, iso.basis_options) == ("beta", "channel", {})
    assert (cells[1].config.basis_options, cells[2].config.profile) == ({"k": 4}, "linear")

    union = [
        {"variant": ["sdm"], "strength": [-0.8, -0.4], "lr": [1e-3, 1e-4]},
        {"variant": ["hdm"], "strength": [-0.4]},
    ]
    ids = [c.id for c in load_sweep(write_sweep(tmp_path / "u.yaml", union), tmp_path).cells]
    assert len(ids) == 5 and "photos_sdm_s-0.8_beta_channel_seed42_lr0.001" in ids


def test_values_that_differ_past_six_digits_keep_their_own_folders(tmp_path) -> None:
    """``:g`` names -0.1234567 and -0.1234568 alike: the second cell would be dropped, and two
    such etas would overwrite each other's results; names that still collide are refused."""
    close = {"strength": [-0.1234567, -0.1234568, -0.4]}
    ids = [c.id for c in load_sweep(write_sweep(tmp_path / "c.yaml", close), tmp_path).cells]
    assert ids == [
        "photos_sdm_s-0.1234567_beta_channel_seed42", "photos_sdm_s-0.1234568_beta_channel_seed42",
        "photos_sdm_s-0.4_beta_channel_seed42",
    ]  # fmt: skip
    etas = {"sampler": [{"sampler": "ddim", "eta": e} for e in (0.1234567, 0.1234568, 1e-5)]}
    spec = load_sweep(write_sweep(tmp_path / "e.yaml", {"seed": [0]}, eval_=etas), tmp_path).eval
    labels = [e.label for e in spec.evaluations]
    assert labels == ["ddim-50-eta0.1234567", "ddim-50-eta0.1234568", "ddim-50-eta1e-05"]
    assert [Evaluation.from_label(label) for label in labels] == spec.evaluations
    (tmp_path / "x-y").mkdir()
    np.save(tmp_path / "x-y" / "z.npy", np.zeros((4, 8, 8, 3), np.uint8))
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "x" / "y-z.npy", np.zeros((4, 8, 8, 3), np.uint8))
    paths = {"data_dir": [str(tmp_path / "x-y" / "z.npy"), str(tmp_path / "x" / "y-z.npy")]}
    base = {"dataset": "array", "steps": 2}
    with pytest.raises(ValueError, match=r"two grid cells with different data_dir would share"):
        load_sweep(write_sweep(tmp_path / "d.yaml", paths, base), tmp_path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grid": {"variant": ["sdm"]}, "evaluation": {}}, "unknown key"),
        ({"grid": {"variant": "sdm"}}, "non-empty list"),
        ({"grid": []}, "grid is an empty list; give at least one grid"),
        ({"grid": {"variant": ["sdm"]}, "eval": {"sampler": []}}, "eval.sampler is an empty list"),
        ({"grid": {"out": ["x"]}}, "grid field 'out' is refused: each cell trains in its own"),
        ({"grid": {"colour": [1]}}, "unknown config field"),
        ({"grid": {"variant": ["sdm"]}, "eval": {"metric": ["fid"]}}, "unknown eval field"),
        ({"grid": {"variant": ["sdm"]}, "eval": {"metrics": ["fidd"]}}, "unknown metric"),
        ({"grid": {"variant": ["sdm"]}, "eval": {"sampler": "euler"}}, "unknown sampler"),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"sampler": [5]}},
            "eval.sampler entry 5: give a sampler name or a mapping",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"sampler": [["ddim"]]}},
            r"eval.sampler entry \['ddim'\]: give",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"sampler": ["ddpm", "heun"], "eta": 0.5}},
            "eval.eta 0.5 is read by no eval.sampler entry .each sets its own or takes none; eta applies to ddim",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"sampler": {"sampler": "ddpm", "eta": 1}}},
            "takes no eta",
        ),
        (
            {
                "grid": {"variant": ["sdm"]},
                "eval": {"sampler": {"sampler": "ddpm", "x0": "clip-reuse"}},
            },
            "x0 rule clip-reuse applies to samplers",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"sampler": "ddim", "x0": "clamp"}},
            "unknown x0 rule",
        ),
        (  # at load, not after training: the ODE solvers take at most T - 1 steps
            {"grid": {"variant": ["sdm"]}, "eval": {"sampler": "dpmpp-2m", "steps": 1000}},
            "eval.sampler dpmpp-2m-1000: num_steps must be an integer in \\[1, 999\\]",
        ),
        (
            {
                "grid": {"variant": ["sdm"], "num_train_timesteps": [1000, 100]},
                "eval": {"sampler": "ddim", "steps": 200},
            },
            "eval.sampler ddim-200: num_steps must be an integer in \\[1, 100\\]",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"num": "four"}},
            "eval.num must be an integer >= 2, got 'four'",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"num": 2.5}},
            "eval.num must be an integer >= 2, got 2.5",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"seed": -3}},
            "eval.seed must be an integer >= 0, got -3",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"grid_images": 0}},
            "eval.grid_images must be an integer >= 1, got 0",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"num_reference": 1}},
            "eval.num_reference must be an integer >= 2, got 1",
        ),
        ({"grid": {"variant": ["sdm"]}, "eval": {"eta": "x"}}, "eval.eta must be a number"),
        (
            {
                "grid": {"variant": ["sdm"]},
                "eval": {"sampler": {"sampler": "ddim", "steps": "ten"}},
            },
            "eval.sampler ddim: steps must be an integer >= 1, got 'ten'",
        ),
        (
            {"grid": {"variant": ["sdm"]}, "eval": {"prc_extractor": "inception"}},
            "eval.prc_extractor applies to the prc metric only",
        ),
        (
            {"base": {"steps": 2, "out": "x"}, "grid": {"variant": ["sdm"]}},
            "base.out: each cell's run folder",
        ),
        (
            {"base": [1, 2], "grid": {"seed": [0]}},
            "base must be a mapping of fields, got \\[1, 2\\]",
        ),
        ({"grid": {"seed": [0]}, "eval": ["num", 2]}, "eval must be a mapping of fields"),
        ({"grid": {"seed": [0]}, "eval": {"metrics": 5}}, "eval.metrics must be a name or a list"),
        ({"grid": {"seed": [0]}, "eval": {"sampler": 5}}, "eval.sampler must be a name or a list"),
        (  # YAML's strings would read as true, a fraction of a step would train one more
            {"base": {"steps": 2, "hflip": "no"}, "grid": {"seed": [0]}},
            "hflip must be true or false, got 'no'",
        ),
        ({"base": {"steps": 1.5}, "grid": {"seed": [0]}}, "steps must be an integer or empty"),
        (
            {"grid": {"variant": ["sdm"], "strength": ["abc"]}},
            "bad.yaml: strength must be a number, got 'abc'",
        ),
        (
            {"base": {"steps": 2, "data_dir": "x"}, "grid": {"seed": [0]}},
            "--data-dir does not apply to the photos dataset",
        ),
        (  # defaults that no entry reads
            {
                "grid": {"seed": [0]},
                "eval": {"steps": 20, "sampler": [{"sampler": "ddim", "steps": 2}]},
            },
            "eval.steps 20 is read by no eval.sampler entry",
        ),
        (
            {
                "grid": {"seed": [0]},
                "eval": {"x0": "none", "sampler": {"sampler": "ddim", "x0": "clip"}},
            },
            "eval.x0 'none' is read by no eval.sampler entry",
        ),
        (
            {
                "grid": {"seed": [0]},
                "eval": {"eta": 0.5, "sampler": [{"sampler": "ddim", "eta": 0.0}, "ddpm"]},
            },
            "eval.eta 0.5 is read by no eval.sampler entry \\(each sets its own or takes none;",
        ),
        (
            {"grid": {"seed": [0]}, "eval": {"batch_size": 5, "metrics": ["fd_pixels8"]}},
            "eval.batch_size is the feature extractors' batch, and fd_pixels8 extract no features",
        ),
        (  # at load, not when the cell is reached: SDM breaks above s = 4.5
            {"grid": {"variant": ["sdm"], "strength": [-0.4, 6.0]}},
            "cell photos_sdm_s\\+6_beta_channel_seed42: strength 6",
        ),
    ],
)
def test_bad_sweep_files_fail_with_one_line(tmp_path, spec, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": {"steps": 2}, **spec}))
    with pytest.raises(ValueError, match=message):
        load_sweep(path)


def test_an_eval_spec_built_in_code_takes_numpy_numbers_as_python_ones() -> None:
    """numpy's integers are integers, but its scalars fail the results' JSON, which is
    written after the sampling: validate() stores Python's."""
    import json

    from squeezed_diffusion.evaluation.sweep import EvalSpec

    spec = EvalSpec(num=np.int64(100), seed=np.int64(0), eta=np.float32(0.5), sampler="ddim")
    spec.validate()
    assert json.loads(json.dumps(spec.scoring()))["num"] == 100
    assert [(type(e.steps), type(e.eta)) for e in spec.evaluations] == [(int, float)]


def test_shards_partition_the_cells() -> None:
    cells = load_sweep("paper-cifar10").cells
    assert len(cells) == 2 * 8 * 3 + 3  # SDM and HDM at 8 non-zero strengths, one isotropic
    for count in (1, 2, 3, 7):
        parts = [[c.id for c in shard(cells, i, count)] for i in range(count)]
        flat = [cid for part in parts for cid in part]
        assert sorted(flat) == sorted(c.id for c in cells) and len(set(flat)) == len(flat)
    assert shard(cells, 1, 3) == shard(list(reversed(cells)), 1, 3)  # order-independent
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "a/b", "3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_hdm_strengths_are_left_to_the_data_at_load(tmp_path) -> None:
    """HDM's valid range depends on the channel count, which only the data tell: a strength
    valid for 4 channels but not for RGB loads (its cell trains, or says why)."""
    path = tmp_path / "hdm.yaml"
    path.write_text(
        yaml.safe_dump({"base": {"steps": 2}, "grid": {"variant": ["hdm"], "strength": [-12.0]}})
    )
    assert [c.config.strength for c in load_sweep(path).cells] == [-12.0]


def test_a_negative_shard_reaches_its_own_check(capsys) -> None:
    assert main(["sweep", "paper-cifar10", "--shard", "-1/2", "--list"]) == 2
    assert "--shard -1/2: need 0 <= i < n" in capsys.readouterr().err


def test_sweep_data_dir_and_download_come_from_the_command_line(
    tmp_path, monkeypatch, capsys
) -> None:
    """A shipped sweep cannot know where a machine keeps its data: --data-dir and --download
    set every cell's, relative paths resolving as in the file; a grid that varies them,
    --list and --collect refuse them (they would be ignored there)."""
    import squeezed_diffusion.evaluation.sweep as sweep_module

    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda sweep, *a, **k: ran.append(sweep) or [])
    argv = ["sweep", "paper-cifar10", "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, "--data-dir", "cifar", "--download"]) == 0
    (sweep,) = ran
    assert {(c.config.data_dir, c.config.download) for c in sweep.cells} == {
        (str(tmp_path / "cifar"), True)
    }
    assert {c.config.data_dir for c in load_sweep("paper-cifar10").cells} == {None}
    for extra in (["--list"], ["--collect"]):
        assert main([*argv, "--data-dir", "cifar", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "--data-dir and --download apply where cells train" in err and "\n" not in err
    grid = {"data_dir": ["a.npy", "b.npy"]}
    with pytest.raises(ValueError, match=r"the grid sets data_dir per cell.*drop --data-dir"):
        load_sweep(
            write_sweep(tmp_path / "d.yaml", grid, {"dataset": "array"}), data={"data_dir": "c"}
        )


def test_shipped_sweeps_load(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sweep_names() == [
        "local-cifar10", "local-cifar10-samplers", "paper-celeba64", "paper-cifar10", "paper-cifar100"
    ]  # fmt: skip
    study = load_sweep("local-cifar10-samplers")
    assert len(study.cells) == 16 and [e.label for e in study.eval.evaluations] == [
        "ddpm-50", "ddim-50", "ddpm-paper-50", "dpmpp-2m-sde-20"
    ]  # fmt: skip
    # the committed study's results (written before the x0 rule was a setting) are finished
    # evaluations of the shipped sweep: a rerun redoes none of them
    committed = load_sweep(study.name, ROOT / "docs" / "results" / "local-cifar10-samplers")
    assert all(is_finished(cell, committed.eval) for cell in committed.cells)
    local = load_sweep("local-cifar10")
    assert len(local.cells) == 14 and local.eval.metrics == ("fd_effnet", "prc_effnet")
    assert {c.axes["variant"] for c in local.cells} == {"isotropic", "sdm", "hdm"}
    assert local.cells[0].config.data_dir == str(
        tmp_path / "../shared/data/cifar10-jpeg-train.tar.gz"
    )
    for name in ("paper-cifar100", "paper-celeba64"):
        paper = load_sweep(name)
        assert paper.eval.num == 10_000 and paper.eval.num_reference == 50_000
        assert paper.eval.sampler == "ddpm-paper" and "fid" in paper.eval.metrics


def _tiny_sweep(tmp_path: Path, samplers) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npy"
    lum = rng.normal(120, 40, (64, 8, 8, 1))
    np.save(data, np.clip(lum + rng.normal(0, 8, (64, 8, 8, 3)), 0, 255).astype(np.uint8))
    base = {
        "dataset": "array", "data_dir": str(data), "model": "tiny", "steps": 2, "batch_size": 16,
        "warmup_steps": 1, "checkpoint_every": 2, "sample_num": 4, "sample_steps": 2,
    }  # fmt: skip
    evaluation = {
        "num": 6,
        "steps": 2,
        "sampler": samplers,
        "metrics": ["fd_pixels8"],
        "num_reference": 32,
    }
    grid = {"variant": ["sdm", "hdm"], "strength": [0.0, -0.4]}
    sweep_file = write_sweep(tmp_path / "tiny.yaml", grid, base, evaluation)
    return sweep_file, ["sweep", str(sweep_file), "--out", str(tmp_path / "out"), "--quiet"]


CELLS = [
    "array_hdm_s-0.4_beta_channel_seed42",
    "array_isotropic_seed42",
    "array_sdm_s-0.4_beta_channel_seed42",
]


def test_a_sweep_fetches_the_feature_weights_before_it_trains(tmp_path, monkeypatch) -> None:
    """Offline and without InceptionV3 weights, a FID sweep stops at once, not after
    training and sampling its first cell."""
    import urllib.error

    import squeezed_diffusion.training.trainer as trainer

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before fetching the feature weights")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(trainer, "train_to_completion", no_training)
    sweep_file, _ = _tiny_sweep(tmp_path, "ddim")
    spec = yaml.safe_load(sweep_file.read_text())
    spec["eval"]["metrics"] = ["fid"]
    sweep_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(FeatureWeightsError, match="weights-inception") as err:
        run_sweep(load_sweep(sweep_file, tmp_path / "out"), tmp_path / "out", progress=False)
    # the fixes a sweep takes: it has no --feature-weights
    assert "--feature-weights" not in str(err.value) and "from the sweep's eval (fid)" in str(
        err.value
    )


def test_a_sweep_checks_its_reference_size_before_it_trains(tmp_path, monkeypatch) -> None:
    """eval.num_reference above the training set's size stops the sweep at once, not after
    training and sampling its first cell; nothing is written."""
    import squeezed_diffusion.training.trainer as trainer

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the reference")

    monkeypatch.setattr(trainer, "train_to_completion", no_training)
    sweep_file, _ = _tiny_sweep(tmp_path, "ddim")
    spec = yaml.safe_load(sweep_file.read_text())
    spec["eval"]["num_reference"] = 65  # the tiny sweep's data: 64 images
    sweep_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"eval\.num_reference: .* but the reference has 64"):
        run_sweep(load_sweep(sweep_file, out), out, progress=False)
    assert not out.exists()
    spec["eval"]["num_reference"] = 64
    sweep_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(AssertionError, match="trained before checking"):  # the whole set: fine
        run_sweep(load_sweep(sweep_file, out), out, progress=False)


def test_tiny_sweep_end_to_end_with_shards_skip_and_resume(tmp_path, capsys) -> None:
    sweep_file, argv = _tiny_sweep(tmp_path, "ddim")
    out = tmp_path / "out"
    assert main([*argv, "--shard", "0/2"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert sorted({r["cell"] for r in first}) == CELLS[0::2]  # positions 0 and 2 of 3
    assert main([*argv, "--shard", "1/2"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted({r["cell"] for r in rows}) == CELLS and len(rows) == 3
    row = next(r for r in rows if r["variant"] == "isotropic")
    assert row["metric"] == "fd_pixels8" and row["value"] > 0 and row["strength"] == 0.0
    assert (row["sampler"], row["steps"], row["eta"]) == ("ddim", 2, 0.0)
    assert row["feature_extractor"].startswith("pixels") and row["num_reference"] == 32
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    from squeezed_diffusion import SqueezedDiffusion
    from squeezed_diffusion.training.run import Run

    for row in rows:  # each cell's run trained what its row says (variant, sign, noise levels)
        run = Run(out / "cells" / row["cell"] / "run")
        want = SqueezedDiffusion(
            run.basis(), row["variant"], row["strength"], row["profile"] or "beta"
        )
        assert torch.equal(run.process().sigma_table(), want.sigma_table()), row["cell"]
    for cell in CELLS:
        folder = out / "cells" / cell / "evals" / "ddim-2"
        assert (folder / "samples.png").is_file()
        assert np.load(folder / "samples.npz")["images"].shape == (6, 8, 8, 3)

    results = {c: out / "cells" / c / "evals" / "ddim-2" / "result.json" for c in CELLS}
    finished = {c: p.stat().st_mtime_ns for c, p in results.items()}
    assert main(argv) == 0  # everything finished: nothing is redone
    assert finished == {c: p.stat().st_mtime_ns for c, p in results.items()}

    redo = out / "cells" / CELLS[2]
    (redo / "evals" / "ddim-2" / "result.json").unlink()
    (redo / "evals" / "ddim-2" / "samples.npz").unlink()
    assert main(argv) == 0  # trained already: resumes at the last step, samples and scores
    result = json.loads((redo / "evals" / "ddim-2" / "result.json").read_text())
    assert result["resumed_from_step"] == 2 and result["metrics"]["fd_pixels8"] > 0
    (redo / "run" / "samples" / "final.png").unlink()  # as if stopped before its end
    (redo / "evals" / "ddim-2" / "result.json").unlink()
    capsys.readouterr()
    assert main([*argv, "--list"]) == 0
    listed = capsys.readouterr().out
    assert f"done  {CELLS[0]}\n" in listed
    assert (
        f"todo  {CELLS[2]}  (to train (resuming at step-00000002); to evaluate: ddim-2)" in listed
    )
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0  # the log-SNR panels come from the cells' saved bases
    report = (out / "report.md").read_text()
    assert "## Samples" in report and "figures/log-snr-0.png" in report

    # the data moved (another machine, another working directory): the same training
    moved = tmp_path / "moved.npy"
    moved.write_bytes(Path(yaml.safe_load(sweep_file.read_text())["base"]["data_dir"]).read_bytes())
    spec = yaml.safe_load(sweep_file.read_text())
    spec["base"]["data_dir"] = str(moved)
    sweep_file.write_text(yaml.safe_dump(spec))
    assert main([*argv, "--list"]) == 0

    # an edited training setting: the folder's runs are of the old one, so every command
    # that would list, collect or extend them says what changed, and touches nothing
    spec = yaml.safe_load(sweep_file.read_text())
    spec["base"].update(steps=3, lr=1e-3)
    sweep_file.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    table = (out / "results.csv").read_bytes()
    for extra in ([], ["--list"], ["--collect"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "was trained with steps=2, lr=0.0001, the sweep now says steps=3, lr=0.001" in err
        assert "another --out" in err and "\n" not in err
    assert (out / "results.csv").read_bytes() == table
    untouched = {c: p.stat().st_mtime_ns for c, p in results.items() if c != CELLS[2]}
    assert untouched == {c: t for c, t in finished.items() if c != CELLS[2]}  # redone above


def test_a_trained_sweep_takes_new_intervals_and_data_paths(tmp_path) -> None:
    """Bookkeeping in the file and where the data lie may change once cells trained: a rerun
    evaluates the new sampler, not refusing a sample interval the finished cell no longer
    reaches, nor another --data-dir (or a dropped --download: the data are checked anyway)."""
    from squeezed_diffusion.training.config import TrainConfig, resume_config

    sweep_file, argv = _tiny_sweep(tmp_path, "ddim")
    spec = yaml.safe_load(sweep_file.read_text())
    spec["grid"] = {"variant": ["sdm"], "strength": [-0.4]}
    data = Path(spec["base"].pop("data_dir"))
    sweep_file.write_text(yaml.safe_dump(spec))
    assert main([*argv, "--data-dir", str(data)]) == 0
    spec["base"]["sample_every"] = 1
    spec["eval"]["sampler"] = ["ddim", "ddpm"]
    sweep_file.write_text(yaml.safe_dump(spec))
    moved = tmp_path / "moved.npy"
    moved.write_bytes(data.read_bytes())
    assert main([*argv, "--data-dir", str(moved)]) == 0
    evals = tmp_path / "out" / "cells" / CELLS[2] / "evals"
    assert sorted(p.parent.name for p in evals.glob("*/result.json")) == ["ddim-2", "ddpm-2"]
    saved = TrainConfig(dataset="cifar10", data_dir="/a", download=True, steps=2).validate()
    again = resume_config(saved, {**saved.to_dict(), "data_dir": "/b", "download": False})
    assert (again.data_dir, again.download) == ("/b", False)


def test_sigterm_stops_a_sweep_with_143_and_a_rerun_resumes(tmp_path) -> None:
    """A scheduler's SIGTERM to a sweep task: the training cell saves a checkpoint and the task
    exits with 128 + 15, as ``sqdm train`` does, so the scheduler sees it unfinished."""
    import signal
    import subprocess
    import sys
    import time

    sweep_file, argv = _tiny_sweep(tmp_path, "ddim")
    spec = yaml.safe_load(sweep_file.read_text())
    spec["base"].update(steps=100_000, checkpoint_every=100_000)
    spec["grid"] = {"variant": ["isotropic"]}
    sweep_file.write_text(yaml.safe_dump(spec))
    task = subprocess.Popen(
        [sys.executable, "-m", "squeezed_diffusion.cli", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = tmp_path / "out" / "cells" / CELLS[1] / "run" / "log.jsonl"
    deadline = time.monotonic() + 90
    while not log.is_file() or not log.read_text():  # training, past its first log step
        assert task.poll() is None and time.monotonic() < deadline, task.stderr.read()
        time.sleep(0.1)
    task.send_signal(signal.SIGTERM)
    _, err = task.communicate(timeout=90)
    assert task.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal 15; run the same command again" in err and "Traceback" not in err
    assert list_checkpoints(log.parent)  # what the rerun resumes from


def test_several_samplers_per_cell_skip_per_sampler_and_add_one_later(
    tmp_path, monkeypatch, capsys
) -> None:
    """Each evaluation is its own row set; adding a sampler to a finished sweep samples and
    scores only that one, without retraining; changed sampling settings never reuse samples."""
    import squeezed_diffusion.training.trainer as trainer

    sweep_file, argv = _tiny_sweep(tmp_path, ["ddpm", "ddim"])
    out = tmp_path / "out"
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3 * 2 and {r["sampler"] for r in rows} == {"ddpm", "ddim"}
    ddpm = {r["cell"]: r["value"] for r in rows if r["sampler"] == "ddpm"}
    ddim = {r["cell"]: r["value"] for r in rows if r["sampler"] == "ddim"}
    assert ddpm != ddim  # different samplers, different samples

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(trainer.Trainer, "run", no_training)
    spec = yaml.safe_load(sweep_file.read_text())
    spec["eval"]["sampler"] = [
        "ddpm",
        "ddim",
        {"sampler": "ddim", "steps": 3, "eta": 1.0},
        "ddpm-paper",
        {"sampler": "ddim", "x0": "none"},
    ]
    sweep_file.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main([*argv, "--list"]) == 0  # what is left: the new samplers only
    left = "trained; to evaluate: ddim-3-eta1, ddpm-paper-2, ddim-2-x0none"
    assert capsys.readouterr().out.count(left) == 3
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/evals/*/result.json")}
    assert main(argv) == 0
    assert before == {p: p.stat().st_mtime_ns for p in before}  # the finished ones untouched
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3 * 5
    assert {(r["sampler"], r["steps"], r["eta"], r["x0"]) for r in rows} == {
        ("ddpm", 2, 0.0, "clip"), ("ddim", 2, 0.0, "clip"), ("ddim", 3, 1.0, "clip"),
        ("ddpm-paper", 2, 0.0, "clip"), ("ddim", 2, 0.0, "none"),
    }  # fmt: skip
    assert (out / "cells" / CELLS[0] / "evals" / "ddim-3-eta1" / "samples.npz").is_file()
    unclipped = out / "cells" / CELLS[0] / "evals" / "ddim-2-x0none"
    _, want = generate(out / "cells" / CELLS[0] / "run", 6, 2, "ddim", x0="none", progress=False)
    assert np.array_equal(np.load(unclipped / "samples.npz")["images"], want.permute(0, 2, 3, 1))

    # a different sampling seed: every evaluation is redone and no samples are reused
    spec["eval"]["seed"] = 5
    sweep_file.write_text(yaml.safe_dump(spec))
    npz = out / "cells" / CELLS[1] / "evals" / "ddpm-2" / "samples.npz"
    old = np.load(npz)["images"]
    assert main(argv) == 0
    assert not np.array_equal(np.load(npz)["images"], old)
    result = json.loads(npz.with_name("result.json").read_text())
    assert result["settings"]["seed"] == 5

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for label in ("ddpm-2", "ddim-2", "ddim-3-eta1", "ddpm-paper-2", "ddim-2-x0none"):
        assert f"sampler {label}" in report  # the paper-form and paired tables per sampler
    assert "the samplers side by side" in report and "paired-by-sampler" in report
    assert report.count("figures/log-snr-") == 1  # one configuration: its log-SNR drawn once

    # the table holds the sweep's evaluations only: a sampler dropped from the spec leaves
    # its folders (nothing is deleted) but not its rows
    spec["eval"]["sampler"] = ["ddpm"]
    sweep_file.write_text(yaml.safe_dump(spec))
    assert main([*argv, "--collect"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3 and {r["sampler"] for r in rows} == {"ddpm"}
    assert (out / "cells" / CELLS[0] / "evals" / "ddim-3-eta1" / "result.json").is_file()
    written = out / "cells" / CELLS[1] / "evals" / "ddpm-2" / "result.json"
    foreign = {**json.loads(written.read_text()), "cell": "elsewhere", "axes": {}}
    written.write_text(json.dumps(foreign))  # as another tool (nfe_trained.py) might write it
    assert main([*argv, "--collect"]) == 0
    assert json.loads((out / "results.json").read_text()) == rows  # the sweep labels its rows


def test_shard_from_a_slurm_job_array(tmp_path, capsys, monkeypatch) -> None:
    _, argv = _tiny_sweep(tmp_path, "ddim")
    listing = {}
    for env in ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, {}):
        for key in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        shard_arg = [] if env else ["--shard", "1/3"]
        assert main([*argv, "--list", *shard_arg]) == 0
        listing[bool(env)] = capsys.readouterr().out
    assert listing[True] == listing[False] and "in shard 1/3" in listing[True]
    assert shard_from_environment({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
                                   "SLURM_ARRAY_TASK_MAX": "8"}) == (2, 4)  # fmt: skip
    assert shard_from_environment({}) == (0, 1)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "2"})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT=0 is not a task count"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"})
    # --array=0-10:2 is six tasks, 0 2 4 6 8 10: task 6 is the fourth shard
    stepped = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "10",
               "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "6"}  # fmt: skip
    shards = [
        shard_from_environment({**stepped, "SLURM_ARRAY_TASK_ID": str(i)}) for i in range(0, 11, 2)
    ]
    assert shards == [(i, 6) for i in range(6)]
    # --array=1,3,8: a list has no shard order
    listed = {
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "8",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    with pytest.raises(ValueError, match="not a range"):
        shard_from_environment({**listed, "SLURM_ARRAY_TASK_ID": "3"})
    # a task id below the array's minimum or past its count has no shard
    for task, low in (("1", "5"), ("9", "0")):
        with pytest.raises(ValueError, match=f"SLURM array task {task} lies outside its array"):
            shard_from_environment({"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_MIN": low,
                                    "SLURM_ARRAY_TASK_COUNT": "3"})  # fmt: skip
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID='abc' is not an integer"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "abc", "SLURM_ARRAY_TASK_COUNT": "3"})


def test_collect_writes_the_table_of_the_finished_cells(tmp_path) -> None:
    _, argv = _tiny_sweep(tmp_path, "ddim")
    out = tmp_path / "out"
    assert main([*argv, "--shard", "0/3"]) == 0  # one of three cells
    (out / "results.json").unlink()
    (out / "results.csv").unlink()
    assert main([*argv, "--collect"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["cell"] for r in rows] == CELLS[:1]
    assert not (out / "cells" / CELLS[1]).exists()  # --collect trains nothing
    # a wrong --out, or edited eval settings, find nothing: an error, the tables kept
    table = (out / "results.csv").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    assert main([*argv[:-3], "--out", str(elsewhere), "--collect"]) == 2
    assert not elsewhere.exists()
    spec = yaml.safe_load(Path(argv[1]).read_text())
    spec["eval"]["num"] = 5
    Path(argv[1]).write_text(yaml.safe_dump(spec))
    assert main([*argv, "--collect"]) == 2
    assert (out / "results.csv").read_bytes() == table
    (out / "results.json").write_text("[]")
    with pytest.raises(ValueError, match="is empty: the sweep has no finished evaluation yet"):
        load_rows(out)
