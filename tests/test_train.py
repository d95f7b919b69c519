"""Training, resuming, presets and sampling through the `sqdm` command."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from squeezed_diffusion.cli import main
from squeezed_diffusion.evaluation.generate import generate
from squeezed_diffusion.training.checkpoint import list_checkpoints, load_checkpoint
from squeezed_diffusion.training.config import TrainConfig, resolve_config, resume_config


@pytest.fixture
def array_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    lum = rng.normal(120, 40, (64, 8, 8, 1))
    path = tmp_path / "data.npy"
    np.save(path, np.clip(lum + rng.normal(0, 8, (64, 8, 8, 3)), 0, 255).astype(np.uint8))
    return path


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "array", "--data-dir", str(data), "--model", "tiny", "--out", str(out),
        "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "2", "--log-every", "1",
        "--checkpoint-every", "2", "--sample-steps", "4", "--ema-decay", "0.9", "--quiet", *extra,
    ]  # fmt: skip


def test_train_writes_a_complete_run_and_sample_is_deterministic(array_data, tmp_path) -> None:
    run = tmp_path / "run"
    assert (
        main(train_args(array_data, run, "--steps", "4", "--variant", "hdm", "--strength", "-0.4"))
        == 0
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["variant"] == "hdm" and cfg["strength"] == -0.4 and cfg["steps"] == 4
    assert (run / "basis.safetensors").is_file()
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000004"]
    assert (run / "samples" / "final.png").is_file() and (
        run / "samples" / "trajectory.png"
    ).is_file()

    a, b, c = (tmp_path / f"{n}.npz" for n in "abc")
    for out, seed in ((a, "3"), (b, "3"), (c, "4")):
        assert (
            main(
                [
                    "sample",
                    str(run),
                    "--num",
                    "5",
                    "--steps",
                    "4",
                    "--batch-size",
                    "2",
                    "--seed",
                    seed,
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
    imgs = [np.load(p)["images"] for p in (a, b, c)]
    assert imgs[0].shape == (5, 8, 8, 3) and imgs[0].dtype == np.uint8
    assert np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[0], imgs[2])
    unclipped = tmp_path / "unclipped.npz"  # --x0 reaches the sampler: the same draws, unclipped
    argv = ["sample", str(run), "--num", "5", "--steps", "4", "--batch-size", "2", "--seed", "3"]
    assert main([*argv, "--x0", "none", "--out", str(unclipped), "--quiet"]) == 0
    _, want = generate(run, 5, 4, seed=3, batch_size=2, x0="none", progress=False)
    for bad, message in [  # no share, or another's; a string read as true: refused first
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size\), got rank 2 of 2"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"compile": "no"}, "compile True/False/None, got True, 'no'"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(run, 5, 4, progress=False, **bad)
    for num, steps, message in [(True, 4, "--num must be an integer >= 1, got True"),
                                (5, True, "--steps True with --sampler ddpm: num_steps must be")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):  # True read as 1 before
            generate(run, num, steps, progress=False)
    got = np.load(unclipped)["images"]
    assert np.array_equal(got, want.permute(0, 2, 3, 1).numpy()) and not np.array_equal(
        got, imgs[0]
    )
    folder = tmp_path / "pngs"
    assert (
        main(["sample", str(run), "--num", "3", "--steps", "2", "--out", str(folder), "--quiet"])
        == 0
    )
    assert len(list(folder.glob("*.png"))) == 3
    assert not list(tmp_path.glob(".pngs*"))  # filled under a temporary name, then renamed
    empty = tmp_path / "empty"  # an existing empty folder is a new one
    empty.mkdir()
    assert main([*argv, "--num", "3", "--out", str(empty), "--quiet"]) == 0
    assert len(list(empty.glob("*.png"))) == 3
    grid = tmp_path / "grid.PNG"  # one image: the samples tiled as save_image does
    assert main([*argv, "--out", str(grid), "--quiet"]) == 0
    tiled = np.asarray(Image.open(grid))
    assert tiled.shape == (2 + 3 * 10, 2 + 2 * 10, 3)  # 5 samples of 8 px: 3 rows of 2
    for i, image in enumerate(imgs[0]):
        top, left = 2 + 10 * (i // 2), 2 + 10 * (i % 2)
        assert np.array_equal(tiled[top : top + 8, left : left + 8], image)
    upper = tmp_path / "upper.NPZ"  # any case, and numpy adds no suffix of its own
    assert main([*argv, "--out", str(upper), "--quiet"]) == 0
    assert np.array_equal(np.load(upper)["images"], imgs[0])
    assert sorted(p.name for p in tmp_path.glob("upper*")) == ["upper.NPZ"]


def test_resume_continues_with_saved_optimizer_ema_and_rng(array_data, tmp_path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(train_args(array_data, straight, "--steps", "4")) == 0
    assert main(train_args(array_data, split, "--steps", "2")) == 0
    assert (
        main(["train", "--out", str(split), "--resume", "latest", "--steps", "4", "--quiet"]) == 0
    )
    one, two = (load_checkpoint(list_checkpoints(r)[-1]) for r in (straight, split))
    assert one["state"]["step"] == two["state"]["step"] == 4
    for key in ("model", "ema"):
        for name, tensor in one[key].items():
            assert torch.allclose(tensor, two[key][name], atol=1e-6), (key, name)
    opt1, opt2 = one["optimizer"]["optimizer"]["state"], two["optimizer"]["optimizer"]["state"]
    assert all(
        torch.allclose(opt1[k]["exp_avg_sq"], opt2[k]["exp_avg_sq"], atol=1e-9) for k in opt1
    )
    assert one["state"]["ema_optimization_step"] == two["state"]["ema_optimization_step"] == 4
    losses = [
        [json.loads(ln)["loss"] for ln in (r / "log.jsonl").read_text().splitlines()]
        for r in (straight, split)
    ]
    assert np.allclose(losses[0], losses[1], rtol=1e-5)


def test_fresh_train_refuses_to_overwrite_a_run(array_data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "2")) == 0
    before = load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))
    assert main(train_args(array_data, run, "--steps", "2")) == 2
    assert "already holds a run; pass --resume latest" in capsys.readouterr().err
    after = load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # resuming the finished run trains nothing, and says so
    assert main(["train", "--out", str(run), "--resume", "latest", "--quiet"]) == 0
    assert "the run already reached its 2 steps: nothing to train" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]


PAPER_CIFAR10 = {  # DESIGN.md part 1, field by field
    "dataset": "cifar10", "resolution": 32, "hflip": True, "model": "paper", "variant": "sdm",
    "strength": -0.4, "profile": "beta", "basis": "channel", "prediction_type": "epsilon",
    "num_train_timesteps": 1000, "beta_schedule": "linear", "epochs": 30, "steps": None,
    "batch_size": 128, "grad_accum": 1, "lr": 1e-4, "adam_betas": [0.95, 0.999],
    "weight_decay": 1e-6, "adam_eps": 1e-8, "lr_schedule": "cosine", "warmup_steps": 500,
    "grad_clip": 1.0, "mixed_precision": "fp16", "ema_decay": 0.9999, "ema_inv_gamma": 1.0,
    "ema_power": 0.75, "seed": 42, "sample_sampler": "ddpm-paper", "sample_steps": 50,
}  # fmt: skip


def test_paper_preset_resolves_to_the_documented_configuration() -> None:
    cfg = resolve_config("paper-cifar10", out="x").to_dict()
    assert {k: cfg[k] for k in PAPER_CIFAR10} == PAPER_CIFAR10
    c100 = resolve_config("paper-cifar100", out="x").to_dict()
    assert c100 == {**cfg, "dataset": "cifar100"}
    celeba = resolve_config("paper-celeba64", out="x").to_dict()
    assert celeba == {**cfg, "dataset": "celeba64", "resolution": 64}
    overridden = resolve_config("paper-cifar10", out="x", steps=10, strength=0.2)
    assert overridden.steps == 10 and overridden.epochs is None and overridden.strength == 0.2
    baseline = resolve_config("paper-cifar10", out="x", variant="isotropic").to_dict()
    squeezing = {"strength": 0.0, "profile": "beta", "basis": "channel", "basis_options": {}}
    assert baseline == {**cfg, "variant": "isotropic", **squeezing}  # the preset's own baseline
    with pytest.raises(ValueError, match="--profile given with variant isotropic"):
        resolve_config("paper-cifar10", out="x", variant="isotropic", profile="constant")


def test_isotropic_drops_a_presets_squeezing_and_loads_old_runs_as_today(
    tmp_path, monkeypatch
) -> None:
    """Over a preset that squeezes along DCT bands with a linear profile, ``--variant
    isotropic`` is its baseline; an isotropic run saved with such settings (0.1.0 accepted
    them) loads with the defaults and resumes."""
    import squeezed_diffusion.training.config as config

    shaped = {"dataset": "photos", "steps": 5, "variant": "sdm", "strength": -0.4,
              "profile": "linear", "basis": "dct", "basis_options": {"cutoffs": [0.5]}}  # fmt: skip
    monkeypatch.setattr(config, "load_preset", lambda name: dict(shaped))
    iso = resolve_config("shaped", out="x", variant="isotropic")
    assert (iso.strength, iso.profile, iso.basis, iso.basis_options) == (0.0, "beta", "channel", {})
    assert resolve_config("shaped", out="x").basis_options == {"cutoffs": [0.5]}
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({**shaped, "variant": "isotropic", "out": str(tmp_path)}))
    old = TrainConfig.load(saved)
    assert (old.strength, old.profile, old.basis) == (0.0, "beta", "channel")
    assert resume_config(old, {"steps": 9}).steps == 9
    # resumed with its original flags: they shape nothing (not: they differ from the defaults)
    with pytest.raises(ValueError, match=r"^--profile, --basis given with variant isotropic"):
        resume_config(old, {"steps": 9, "profile": "linear", "basis": "dct"})
    assert resume_config(old, {"steps": 9, "profile": "beta"}).profile == "beta"
    with pytest.raises(ValueError, match=r"^--strength -0\.4 differs from the run.s saved 0\.0"):
        resume_config(old, {"steps": 9, "strength": -0.4, "profile": "linear"})


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"variant": "sqdm"}, "unknown variant 'sqdm'"),
        ({"model": "huge"}, "unknown model 'huge'"),
        ({"strength": float("nan")}, "strength must be a finite number"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"epochs": 1.0}, "exactly one of --steps or --epochs"),
    ],
)
def test_config_validation(overrides, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        resolve_config(None, out="x", steps=1, **overrides)


def test_config_round_trips_through_yaml(tmp_path) -> None:
    cfg = resolve_config("demo", out=str(tmp_path / "r"))
    cfg.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("lr: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize(("variant", "strength"), [("sdm", -0.8), ("hdm", 0.6)])
def test_a_trained_run_keeps_its_variant_strength_and_noise_levels(
    array_data, tmp_path, variant, strength
):
    """Issue 17: after training, the process every consumer loads (Run, the pipeline) has the
    variant, the strength's sign and the per-direction sigma table of the command line, built
    here independently from those arguments and the saved basis; and the pipeline draws what
    sampling the run draws."""
    from squeezed_diffusion import SqueezedDiffusion, load_basis
    from squeezed_diffusion.pipelines import SqueezedDDPMPipeline
    from squeezed_diffusion.training.run import Run

    run = tmp_path / "run"
    assert (
        main(
            train_args(
                array_data, run, "--steps", "2", "--variant", variant, "--strength", str(strength)
            )
        )
        == 0
    )
    want = SqueezedDiffusion(load_basis(run / "basis.safetensors"), variant, strength, "beta")
    unet, proc = Run(run).load()
    pipe = SqueezedDDPMPipeline.from_run(run)
    for loaded in (proc, pipe.scheduler.process):
        assert (loaded.variant, float(loaded.strength[0])) == (variant, strength)
        assert torch.allclose(loaded.sigma_table(), want.sigma_table(), rtol=1e-6)
    isotropic = float((1 - proc.alphas_cumprod[-1]) ** 0.5)
    assert (float(proc.sigma_table()[-1, 0]) > isotropic) == (strength < 0)  # s < 0: more noise
    run_kw = {"generator": torch.Generator().manual_seed(0)}
    images = pipe(batch_size=3, num_inference_steps=5, output_type="latent", **run_kw).images
    direct = proc.sample(lambda x, t: unet(x, t).sample, (3, 3, 8, 8), 5, "ddpm", progress=False,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert (torch.as_tensor(images) - direct).abs().max() < 1e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "unit_epsilon", "sample", "v_prediction"])
def test_the_trainers_target_is_what_the_samplers_read(
    array_data, tmp_path, prediction_type
) -> None:
    """The target a training step regresses on, read back by the samplers' ``predict`` as a
    model output, gives the step's clean images and squeezed noise exactly. The process the
    samplers read is built here from the config's values, not taken from the Trainer, so a
    Trainer that trained another process (a flipped strength, say) fails."""
    from squeezed_diffusion import SqueezedDiffusion
    from squeezed_diffusion.core.samplers import predict
    from squeezed_diffusion.training.trainer import Trainer

    cfg = resolve_config(
        None, dataset="array", data_dir=str(array_data), out=str(tmp_path / "r"), steps=1,
        batch_size=8, variant="hdm", strength=-0.8, prediction_type=prediction_type, hflip=False,
    )  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    idx = trainer.batches.indices(0)
    x_t, t, target = trainer.batches.micro_batch(0, 0, idx)
    clean = trainer.batches.load_images(idx, None)
    proc = SqueezedDiffusion(trainer.basis, "hdm", -0.8, "beta", prediction_type=prediction_type)
    trained = trainer.process
    assert (trained.variant, trained.prediction_type) == ("hdm", proc.prediction_type)
    for table in ("sigma_table", "log_snr_table"):  # per direction and t
        assert torch.allclose(getattr(trained, table)().cpu(), getattr(proc, table)(), rtol=1e-6)
    for i in range(len(idx)):
        pred = predict(proc, target[i : i + 1], x_t[i : i + 1], int(t[i]))
        assert torch.allclose(
            pred.x0, clean[i : i + 1], atol=2e-3 / float(proc.alphas_cumprod[t[i]]) ** 0.5
        )
        shaped = proc.squeeze(pred.noise, int(t[i])) if pred.unit else pred.noise
        implied = x_t[i : i + 1] - float(proc.alphas_cumprod[t[i]]) ** 0.5 * clean[i : i + 1]
        assert torch.allclose(
            shaped * float(1 - proc.alphas_cumprod[t[i]]) ** 0.5, implied, atol=1e-4
        )


def test_v_prediction_trains_resumes_and_samples_with_every_sampler(array_data, tmp_path) -> None:
    """Issue 12: the command line trains a v-prediction run, resumes it (a bookkeeping flag
    such as --log-every is honoured on resume, a training flag is refused) and samples it."""
    run = tmp_path / "run"
    args = train_args(array_data, run, "--steps", "2", "--prediction-type", "v_prediction")
    assert main([*args, "--variant", "hdm", "--strength", "-0.4"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["prediction_type"] == "v_prediction"
    resume = ["train", "--out", str(run), "--resume", "latest", "--quiet"]
    assert main([*resume, "--steps", "6", "--log-every", "3"]) == 0
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 6]  # every step, then every third (4: a checkpoint boundary)
    assert main([*resume, "--steps", "8", "--prediction-type", "epsilon"]) == 2
    from squeezed_diffusion.core import SAMPLERS

    for sampler in SAMPLERS:
        out = tmp_path / f"{sampler}.npz"
        argv = [
            "sample",
            str(run),
            "--num",
            "2",
            "--steps",
            "3",
            "--sampler",
            sampler,
            "--out",
            str(out),
        ]
        assert main([*argv, "--quiet"]) == 0, sampler
        images = np.load(out)["images"]
        assert images.shape == (2, 8, 8, 3) and images.std() > 0, sampler


def test_an_extended_run_follows_the_new_schedule_from_the_resumed_step(
    array_data, tmp_path
) -> None:
    """Resuming with a longer --steps rebuilds the cosine for the new length; the first
    resumed update already uses it (the saved optimizer holds the old horizon's rate)."""
    from squeezed_diffusion.training.trainer import Trainer

    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "4")) == 0
    cfg = TrainConfig.load(run / "config.yaml")
    cfg.steps = 12
    trainer = Trainer(cfg, resume="latest", progress=False)
    # the cosine after 2 warm-up steps over the new 12, at step 4 (the old 4-step one is at 0)
    want = cfg.lr * 0.5 * (1 + math.cos(math.pi * (4 - 2) / (12 - 2)))
    assert trainer.state.optimizer.param_groups[0]["lr"] == pytest.approx(want)


def test_tensorboard_holds_loss_lr_images_and_evaluations(array_data, tmp_path) -> None:
    """Issue 16: a 3-step run with --log-with tensorboard and --eval-every writes event files
    that read back with the loss, the learning rate, sample images and the evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    extra = ["--steps", "3", "--log-with", "tensorboard", "--eval-every", "3", "--eval-num", "8",
             "--eval-steps", "2", "--eval-metrics", "fd_pixels8", "--sample-every", "2"]  # fmt: skip
    assert main(train_args(array_data, run, *extra)) == 0
    events = list((run / "trackers").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss", "lr", "images_per_s", "eval/fd_pixels8"} <= set(tags["scalars"]), tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert {"samples", "samples/final"} <= set(tags["images"]), tags
    evals = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if "eval" in ln]
    assert len(evals) == 1 and evals[0]["step"] == 3 and evals[0]["eval"]["fd_pixels8"] > 0


def test_wandb_logs_offline(array_data, tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from accelerate.tracking import WandBTracker

    logged = []
    log = WandBTracker.log

    def spy(self, values, step=None, **kwargs):  # what reaches wandb, step by step
        logged.append((step, dict(values)))
        return log(self, values, step=step, **kwargs)

    monkeypatch.setattr(WandBTracker, "log", spy)
    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "2", "--log-with", "wandb")) == 0
    assert list((run / "trackers").rglob("offline-run-*/run-*.wandb"))
    records = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    scalars = {s: v for s, v in logged if "loss" in v}
    assert sorted(scalars) == [r["step"] for r in records] == [1, 2]
    for r in records:
        assert scalars[r["step"]]["loss"] == pytest.approx(r["loss"])
        assert scalars[r["step"]]["lr"] == pytest.approx(r["lr"])


def test_evaluation_during_training_keeps_resume_exact(array_data, tmp_path) -> None:
    """Evaluating every 2 steps (it samples, and torch-fidelity seeds RNGs) changes nothing
    the run trains: 2 + resume + 2 equals 4 in one go, and both logs hold the evaluations."""
    extra = ["--eval-every", "2", "--eval-num", "6", "--eval-steps", "2", "--eval-metrics",
             "fd_pixels8", "--lr-schedule", "constant"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(train_args(array_data, straight, "--steps", "4", *extra)) == 0
    assert main(train_args(array_data, split, "--steps", "2", *extra)) == 0
    assert (
        main(["train", "--out", str(split), "--resume", "latest", "--steps", "4", "--quiet"]) == 0
    )
    one, two = (load_checkpoint(list_checkpoints(r)[-1]) for r in (straight, split))
    for name, tensor in one["model"].items():
        assert torch.allclose(tensor, two["model"][name], atol=1e-6), name
    logs = [
        [json.loads(ln) for ln in (r / "log.jsonl").read_text().splitlines()]
        for r in (straight, split)
    ]
    assert [r["step"] for r in logs[0] if "eval" in r] == [2, 4]
    assert [r.get("eval") for r in logs[0]] == [r.get("eval") for r in logs[1]]


def test_evaluation_and_grids_sample_a_batch_at_a_time(array_data, tmp_path, monkeypatch) -> None:
    """``--eval-num 10000`` (the paper's evaluation size) in one batch would not fit a GPU: the
    samples are drawn ``SAMPLE_BATCH`` at a time (4 here), all of them, from one generator."""
    import squeezed_diffusion.training.monitor as monitor
    from squeezed_diffusion import SqueezedDiffusion

    monkeypatch.setattr(monitor, "SAMPLE_BATCH", 4)
    batches = []
    real = SqueezedDiffusion.sample

    def spy(self, model, shape, *args, **kwargs):
        batches.append(shape[0])
        return real(self, model, shape, *args, **kwargs)

    monkeypatch.setattr(SqueezedDiffusion, "sample", spy)
    extra = ["--steps", "1", "--eval-every", "1", "--eval-num", "6", "--eval-steps", "2",
             "--eval-metrics", "fd_pixels8", "--sample-num", "5"]  # fmt: skip
    assert main(train_args(array_data, tmp_path / "run", *extra)) == 0
    assert batches == [4, 2, 4, 1]  # the evaluation's 6, then the final grid's 5
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["eval_num"] == 6 and log[-1]["eval"]["fd_pixels8"] > 0


def test_resume_honours_bookkeeping_flags_in_canonical_form_and_keeps_them(
    array_data, tmp_path
) -> None:
    """--no-compile, evaluation and a longer --steps are bookkeeping; --target squeezed is the
    saved epsilon; the resumed config is saved, so a plain --resume later keeps the new length."""
    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "2")) == 0
    resume = ["train", "--out", str(run), "--resume", "latest", "--quiet"]
    flags = ["--steps", "4", "--no-compile", "--target", "squeezed", "--eval-every", "0"]
    assert main([*resume, *flags]) == 0
    cfg = TrainConfig.load(run / "config.yaml")
    assert (cfg.steps, cfg.compile, cfg.prediction_type) == (4, False, "epsilon")
    assert main([*resume, "--target", "unit"]) == 2  # unit noise is another target
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_train_to_completion_resumes_only_the_same_run(array_data, tmp_path) -> None:
    """A sweep cell or the demo finds its folder: a longer run resumes, another run is refused
    (a changed sweep base must not continue the old cells under a new config)."""
    import dataclasses

    from squeezed_diffusion.training.run import Run
    from squeezed_diffusion.training.trainer import train_to_completion

    cfg = resolve_config(None, dataset="array", data_dir=str(array_data), model="tiny",
                         out=str(tmp_path / "cell"), steps=2, batch_size=16, sample_steps=2,
                         warmup_steps=1, checkpoint_every=2)  # fmt: skip
    assert train_to_completion(cfg, progress=False) == 0
    with pytest.raises(ValueError, match=r"--lr 0\.5 differs from the run's saved"):
        train_to_completion(dataclasses.replace(cfg, lr=0.5), progress=False)
    assert train_to_completion(dataclasses.replace(cfg, steps=3), progress=False) == 2
    assert TrainConfig.load(tmp_path / "cell" / "config.yaml").steps == 3
    # a signal after the last checkpoint leaves no sample grid: the next call draws it
    final = Run(tmp_path / "cell").final_samples_path
    grid = final.read_bytes()
    final.unlink()
    assert train_to_completion(dataclasses.replace(cfg, steps=3), progress=False) == 3
    assert final.read_bytes() == grid


@pytest.mark.parametrize(("sampler", "steps", "frames"), [("ddpm", 9, 9), ("heun", 9, 9)])
def test_trajectory_strip_has_nine_moments_whatever_the_sampler(
    array_data, tmp_path, sampler, steps, frames
) -> None:
    """heun calls the model 2 n - 1 times for n steps: the strip follows the calls."""
    from PIL import Image

    run = tmp_path / "run"
    extra = ["--steps", "1", "--sample-sampler", sampler, "--sample-steps", str(steps)]
    assert main(train_args(array_data, run, *extra)) == 0
    width = Image.open(run / "samples" / "trajectory.png").size[0]
    assert width == frames * (8 + 2) + 2  # 8 px images, torchvision's 2 px padding


def test_grids_and_evaluations_during_training_take_the_x0_rule(array_data, tmp_path) -> None:
    """--sample-x0 reaches the grids and --eval-x0 the evaluations, each only its own: the same
    one-step run with one rule changed to none changes only that one's output, and the log
    says which rule scored."""
    from squeezed_diffusion.training.run import Run

    grids, evals = {}, {}
    for sample_x0, eval_x0 in (("clip", "clip"), ("none", "clip"), ("clip", "none")):
        run = tmp_path / f"{sample_x0}-{eval_x0}"
        extra = ["--steps", "1", "--sample-steps", "3", "--sample-x0", sample_x0,
                 "--eval-every", "1", "--eval-num", "8", "--eval-steps", "3",
                 "--eval-x0", eval_x0, "--eval-metrics", "fd_pixels8"]  # fmt: skip
        assert main(train_args(array_data, run, *extra)) == 0
        key = (sample_x0, eval_x0)
        grids[key] = Run(run).final_samples_path.read_bytes()
        (evals[key],) = [
            r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval" in r
        ]
        saved = TrainConfig.load(run / "config.yaml")
        assert (saved.sample_x0, saved.eval_x0) == key
        assert evals[key]["eval_x0"] == eval_x0
    score = {k: e["eval"]["fd_pixels8"] for k, e in evals.items()}
    clip = ("clip", "clip")
    assert grids[("none", "clip")] != grids[clip] == grids[("clip", "none")]
    assert score[("clip", "none")] != score[clip] == score[("none", "clip")]


def test_images_per_s_counts_training_steps_only(array_data, tmp_path, monkeypatch) -> None:
    """Checkpoints, sample grids and evaluations take no part in a window's images/s: with a
    clock on which each grid and evaluation lasts 1000 s, every one-step window stays short
    (a window restarted at the log step and then holding the grid read 0.016 images/s)."""
    import types

    import squeezed_diffusion.training.trainer as trainer_module

    offset = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0])
    monkeypatch.setattr(trainer_module, "time", clock)

    def slow(method):
        def wrapped(self, *args, **kwargs):
            offset[0] += 1000.0
            return method(self, *args, **kwargs)

        return wrapped

    for name in ("sample_grid", "evaluate"):
        monkeypatch.setattr(
            trainer_module.Trainer, name, slow(getattr(trainer_module.Trainer, name))
        )
    run = tmp_path / "run"
    extra = ["--steps", "4", "--model", "micro", "--sample-every", "2", "--eval-every", "3",
             "--eval-num", "8", "--eval-steps", "2", "--eval-metrics", "fd_pixels8"]  # fmt: skip
    assert main(train_args(array_data, run, *extra)) == 0
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    windows = {r["step"]: 16 / r["images_per_s"] for r in log if "loss" in r}  # one step each
    assert sorted(windows) == [1, 2, 3, 4] and offset[0] == 4000.0  # grids 2, 4, final; eval 3
    assert max(windows.values()) < 100, windows


def test_missing_metric_weights_stop_training_before_it_starts(
    array_data, tmp_path, monkeypatch, capsys
) -> None:
    """Offline with an empty weights cache, --eval-metrics fid is a one-line error naming the
    InceptionV3 file before any step (it used to train and checkpoint, then fail); the message
    names only fixes that `sqdm train` takes (it has no --feature-weights)."""
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    run = tmp_path / "run"
    extra = ["--steps", "6", "--eval-every", "6", "--eval-metrics", "fid"]
    assert main(train_args(array_data, run, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sqdm: error: --eval-metrics fid:") and "\n" not in err, err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "--feature-weights" not in err
    assert not run.exists()


@pytest.mark.parametrize(("length", "total"), [(["--steps", "2"], 2), (["--epochs", "0.5"], 2)])
def test_an_evaluation_interval_past_the_run_is_refused(
    array_data, tmp_path, capsys, length, total
) -> None:
    """--eval-every longer than the run (its length in steps, or in epochs of the loaded data:
    64 images in batches of 16) would never evaluate: refused before the run folder exists."""
    run = tmp_path / "run"
    extra = [*length, "--eval-every", "3", "--eval-metrics", "fd_pixels8"]
    assert main(train_args(array_data, run, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert "--eval-every 3 would never evaluate" in err and "\n" not in err
    assert f"no step this run trains (1 to {total}) is a multiple of it" in err
    assert f"give --eval-every {total} or less" in err and not run.exists()


def test_a_sample_interval_past_the_run_is_refused(array_data, tmp_path, capsys) -> None:
    """--sample-every is checked like --eval-every: a grid interval longer than the run would
    write no grid (it used to be accepted while --eval-every was refused)."""
    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "2", "--sample-every", "5")) == 2
    err = capsys.readouterr().err.strip()
    assert "--sample-every 5 would never write a sample grid" in err and "\n" not in err
    assert "give --sample-every 2 or less" in err and not run.exists()


def test_a_resumed_run_refuses_only_new_intervals_that_never_fire(
    array_data, tmp_path, capsys
) -> None:
    """A resumed run trains steps start+1..total only: an interval the resume asks for must
    fire among them (a finished run resumed with --eval-every evaluated nothing, yet its
    config.yaml recorded it), refused before anything is written. The saved interval, left
    as it is, is kept even where it no longer fires (a finished run, or a longer one)."""
    run = tmp_path / "run"
    first = train_args(array_data, run, "--model", "micro", "--steps", "3", "--sample-every", "3")
    assert main(first) == 0
    saved = {name: (run / name).read_text() for name in ("config.yaml", "log.jsonl")}
    resume = ["train", "--out", str(run), "--resume", "latest", "--quiet"]
    metric = ["--eval-metrics", "fd_pixels8"]
    cases = [
        (
            ["--eval-every", "1", *metric],
            "--eval-every 1 would never evaluate: the run is already at its last step (3); "
            "drop --eval-every, or give a longer --steps/--epochs",
        ),
        (
            ["--steps", "5", "--eval-every", "3", *metric],
            "--eval-every 3 would never evaluate: no step this run trains (4 to 5) is a "
            "multiple of it; give --eval-every 2 or less",
        ),
        (
            ["--steps", "5", "--sample-every", "6"],
            "--sample-every 6 would never write a sample grid: no step this run trains (4 to 5)",
        ),
    ]
    for extra, message in cases:
        assert main([*resume, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert {name: (run / name).read_text() for name in saved} == saved
    assert main(resume) == 0  # finished, with its saved --sample-every 3: nothing to refuse
    assert main([*resume, "--steps", "5"]) == 0  # the saved 3 does not fire in 4..5: kept
    assert TrainConfig.load(run / "config.yaml").sample_every == 3
    assert sorted(p.name for p in (run / "samples").glob("step-*")) == ["step-00000003.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="compiling is on by default with CUDA")
def test_a_compile_mode_without_compiling_is_refused(array_data, tmp_path, capsys) -> None:
    """On a CPU the UNet is not compiled unless --compile is given, so --compile-mode alone
    would train eagerly with the mode ignored: a one-line error before the run folder."""
    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "1", "--compile-mode", "max-autotune")) == 2
    err = capsys.readouterr().err.strip()
    assert "compile_mode 'max-autotune' applies only when compiling" in err and "\n" not in err
    assert "add --compile or drop --compile-mode" in err and not run.exists()


def test_resuming_before_later_checkpoints_is_refused_and_changes_nothing(
    array_data, tmp_path, capsys
) -> None:
    """From step 2 of a run checkpointed at 2 and 4, training would leave step 4 (another
    history) as the latest that sampling reads: refused, naming it, with the folder as it was."""
    run = tmp_path / "run"
    assert main(train_args(array_data, run, "--steps", "4")) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    first = list_checkpoints(run)[0]
    assert main(["train", "--out", str(run), "--resume", str(first), "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds checkpoints after step-00000002 (step-00000004)" in err and "\n" not in err
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    assert main(["train", "--out", str(run), "--resume", str(list_checkpoints(run)[-1]),
                 "--steps", "5", "--quiet"]) == 0  # fmt: skip  # the newest, by path: resumes
    assert [p.name for p in list_checkpoints(run)][-1] == "step-00000005"


def test_a_new_run_clears_what_an_unresumable_start_left(array_data, tmp_path, capsys) -> None:
    """A start killed before its first checkpoint leaves its config, a log and grids but
    nothing to resume; training the folder anew must not read them as its own. A folder that
    holds files but no run, or a config.yaml that is not a run's, is refused and keeps them."""
    run, mine, theirs = tmp_path / "run", tmp_path / "mine", tmp_path / "theirs"
    for folder in (run, mine, theirs):
        (folder / "samples").mkdir(parents=True)
        (folder / "samples" / "step-00000500.png").write_bytes(b"old")
        (folder / "log.jsonl").write_text(json.dumps({"step": 500, "loss": 9.0}) + "\n")
    (run / "config.yaml").write_text("steps: 500\n")  # what a start writes first
    (theirs / "config.yaml").write_text("model: resnet50\nlr: 0.1\n")  # sqdm's field names
    assert main(train_args(array_data, run, "--steps", "2", "--sample-every", "2")) == 0
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert sorted(p.name for p in (run / "samples").glob("step-*")) == ["step-00000002.png"]
    for folder, why in (
        (mine, "holds files but no run"),
        (theirs, "holds a config.yaml that is not a run's"),
    ):
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert main(train_args(array_data, folder, "--steps", "2")) == 2
        assert why in capsys.readouterr().err
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    kept = tmp_path / "kept"  # hidden files alone (.gitkeep) do not make a folder taken
    kept.mkdir()
    (kept / ".gitkeep").write_bytes(b"")
    assert main(train_args(array_data, kept, "--steps", "1")) == 0
    assert (kept / ".gitkeep").is_file()


def test_resuming_with_another_variant_names_the_variant(tmp_path) -> None:
    """--variant isotropic on an SDM run differs from the saved variant: the error says so,
    not that the saved strength would be ignored (no --strength was given)."""
    saved = resolve_config(None, out=str(tmp_path), steps=2, variant="sdm", strength=-0.4)
    with pytest.raises(ValueError) as err:
        resume_config(saved, {"out": str(tmp_path), "variant": "isotropic", "steps": 4})
    message = str(err.value)
    assert message.startswith("--variant isotropic differs from the run's saved 'sdm'"), message
    assert "--strength" not in message
    assert resume_config(saved, {"variant": "sdm", "target": "squeezed", "steps": 4}).steps == 4


@pytest.mark.parametrize(
    ("override", "flag"),
    [
        ({"hflip": False}, "--no-hflip differs"),
        ({"skip_nonfinite": True}, "--skip-nonfinite differs"),
        ({"basis_options": {"k": 3}}, "--basis-k 3 differs"),
        ({"adam_betas": [0.8, 0.99]}, "--adam-betas 0.8 0.99 differs"),
    ],
)
def test_a_refused_resume_flag_is_named_as_given(tmp_path, override, flag) -> None:
    """The error names the flag as ``sqdm train`` spells it, not the config field."""
    saved = resolve_config(None, out=str(tmp_path), steps=2, variant="sdm", strength=-0.4,
                           basis="pca", basis_options={"k": 2})  # fmt: skip
    with pytest.raises(ValueError) as err:
        resume_config(saved, {"out": str(tmp_path), **override})
    assert str(err.value).startswith(flag), err.value


def test_a_log_line_without_its_newline_is_not_a_record(tmp_path) -> None:
    """A line still being written (read by the demo's progress bar) or cut by a kill is not
    parsed; resuming drops it from the file."""
    from squeezed_diffusion.training.run import Run

    run = Run(tmp_path)
    run.append_log({"step": 1, "loss": 0.5})
    run.append_log({"step": 2, "loss": 0.4})
    with open(run.log_path, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in run.log()] == [1, 2]
    run.truncate_log(5)
    assert run.log_path.read_text().count("\n") == 2 and run.log_path.read_text().endswith("}\n")


def test_cuda_rng_states_go_back_to_their_own_devices(monkeypatch) -> None:
    """Saved as cuda0..cudaN; restored by device number, not as strings sort (cuda10 before
    cuda2), which with 11 or more GPUs would give dropout another device's stream."""
    from squeezed_diffusion.training.checkpoint import restore_rng

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    rng = {"torch": torch.get_rng_state(), **{f"cuda{i}": torch.tensor([i]) for i in range(12)}}
    restore_rng(rng)
    assert [int(s) for s in restored] == list(range(12))


@pytest.mark.parametrize(
    ("basis", "options"), [("pca", {"k": 3}), ("dct", {"cutoffs": [0.3]}), ("channel", {})]
)
def test_a_0_1_0_config_loads_in_todays_layout(tmp_path, basis, options) -> None:
    """0.1.0 saved both bases' options as fields of their own (``basis_k``, ``basis_cutoffs``,
    always both) and the target as ``target``: the run's own basis keeps its option, the
    other's is dropped, ``squeezed`` is ``epsilon``. (test_layout checks this against the
    0.1.0 code itself where git holds it; this needs no git.)"""
    saved = {"dataset": "photos", "steps": 5, "variant": "sdm", "strength": -0.4,
             "basis": basis, "basis_k": 3, "basis_cutoffs": [0.3], "target": "squeezed",
             "out": str(tmp_path)}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = TrainConfig.load(tmp_path / "config.yaml")
    assert (cfg.basis, cfg.basis_options, cfg.prediction_type) == (basis, options, "epsilon")
    assert "basis_k" not in cfg.to_dict() and "target" not in cfg.to_dict()
