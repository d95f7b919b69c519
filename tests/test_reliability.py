"""Reliability: kills never corrupt a run, signals save, NaNs stop cleanly, bad input is one line,
pickles cannot run code, and two processes train what one would."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from squeezed_diffusion import ChannelBasis
from squeezed_diffusion.cli import main
from squeezed_diffusion.core.fileio import sha256
from squeezed_diffusion.evaluation.generate import generate
from squeezed_diffusion.training.batches import Batches
from squeezed_diffusion.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    verify,
)
from squeezed_diffusion.training.run import Run

SQDM = [sys.executable, "-m", "squeezed_diffusion.cli"]


def write_array(path: Path, n: int = 64, channels: int = 3, size: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lum = rng.normal(120, 40, (n, size, size, 1))
    arr = np.clip(lum + rng.normal(0, 8, (n, size, size, channels)), 0, 255).astype(np.uint8)
    np.save(path, arr[..., 0] if channels == 1 else arr)
    return path


def base_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "array", "--data-dir", str(data), "--model", "tiny", "--out", str(out),
        "--batch-size", "16", "--warmup-steps", "1", "--log-every", "1", "--sample-steps", "2",
        "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture
def data(tmp_path) -> Path:
    return write_array(tmp_path / "data.npy")


@pytest.fixture
def trained(data, tmp_path) -> Path:
    run = tmp_path / "run"
    assert main(base_args(data, run, "--steps", "2", "--checkpoint-every", "2")) == 0
    return run


# -- crash safety -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_sigkill_at_random_moments_never_leaves_a_bad_checkpoint(data, tmp_path, compiled) -> None:
    """Kill -9 repeatedly (often mid-write, since every step checkpoints); resume must always
    work. Slow: the deterministic kill tests below cover the same code paths."""
    run = tmp_path / "run"
    rng = random.Random(0)
    kills, mid_write, resumed_steps = 0, 0, []
    compile_flag = ["--compile"] if compiled else []
    args = [
        *SQDM,
        *base_args(data, run, "--steps", "400", "--checkpoint-every", "1", *compile_flag),
    ]
    while kills < 6 or mid_write == 0:
        assert kills < 14, "never caught a checkpoint mid-write"
        resume = ["--resume", "latest"] if list_checkpoints(run) else []
        proc = subprocess.Popen([*args, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not list_checkpoints(run) or (
            resumed_steps and _latest_step(run) <= resumed_steps[-1]
        ):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        mid_write += bool(list((run / "checkpoints").glob("*.tmp-*")))
        for done in list_checkpoints(run):  # nothing under a final name is ever partial
            verify(done)
        ckpt = find_checkpoint(run, "latest")
        loaded = load_checkpoint(ckpt)
        assert loaded["state"]["step"] == int(ckpt.name.split("-")[1])
        resumed_steps.append(loaded["state"]["step"])
    assert resumed_steps == sorted(resumed_steps)  # every resume made progress or held still


def _latest_step(run: Path) -> int:
    ckpts = list_checkpoints(run)
    return int(ckpts[-1].name.split("-")[1]) if ckpts else -1


def test_a_kill_while_pruning_old_checkpoints_leaves_only_complete_ones(
    tmp_path, monkeypatch
) -> None:
    """Deleting an old checkpoint is not atomic: killed half-way, it must not be left under
    its final name (it was, once, in the SIGKILL test above: step-N without state.json)."""
    import squeezed_diffusion.training.checkpoint as ckpt

    model = torch.nn.Linear(2, 2)
    save = {"model": model, "ema_params": dict(model.named_parameters()), "state": {}}
    save["optimizer_state"] = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    ckpt.save_checkpoint(tmp_path, 1, keep=1, **save)

    real_rmtree = ckpt.shutil.rmtree

    def killed_half_way(path, ignore_errors=False) -> None:
        if not (Path(path) / "state.json").is_file():  # e.g. a stale .tmp that is not there
            return real_rmtree(path, ignore_errors=ignore_errors)
        (Path(path) / "state.json").unlink()  # the first file gone, then the process dies
        raise SystemExit("killed")

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_half_way)
    with pytest.raises(SystemExit):
        ckpt.save_checkpoint(tmp_path, 2, keep=1, **save)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    for path in list_checkpoints(tmp_path):
        verify(path)
    ckpt.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002"]


@pytest.mark.parametrize("where", ["weights", "manifest", "rename"])
def test_a_kill_while_writing_a_checkpoint_leaves_only_complete_ones(
    tmp_path, monkeypatch, where
) -> None:
    """Deterministic twin of the random SIGKILL test: the writer dies after the weights, after
    the manifest, or just before the rename; the old checkpoint stays the newest complete one
    and the next start removes the partial folder."""
    import squeezed_diffusion.training.checkpoint as ckpt

    model = torch.nn.Linear(2, 2)
    save = {"model": model, "ema_params": dict(model.named_parameters()), "state": {}}
    save["optimizer_state"] = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    ckpt.save_checkpoint(tmp_path, 1, keep=3, **save)

    def die(*args, **kwargs):
        raise SystemExit("killed")

    target = {
        "weights": (ckpt, "save_tensors"),
        "manifest": (ckpt, "sha256"),
        "rename": (Path, "rename"),
    }
    monkeypatch.setattr(*target[where], die)
    with pytest.raises(SystemExit):
        ckpt.save_checkpoint(tmp_path, 2, keep=3, **save)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert find_checkpoint(tmp_path, "latest").name == "step-00000001"
    assert list((tmp_path / "checkpoints").glob("step-00000002.tmp-*"))  # the partial write
    ckpt.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]


def test_weights_and_bases_are_readable_as_any_other_file(tmp_path) -> None:
    """safetensors creates its files 0600; on a shared cluster a teammate must read the
    checkpoints and the basis as the run's other files: 0666 less the umask."""
    import os

    import squeezed_diffusion.training.checkpoint as ckpt
    from squeezed_diffusion import ChannelBasis

    model = torch.nn.Linear(2, 2)
    old = os.umask(0o022)
    try:
        folder = ckpt.save_checkpoint(
            tmp_path, 1, model=model, ema_params=dict(model.named_parameters()),
            optimizer_state={}, state={},
        )  # fmt: skip
        ChannelBasis.luminance().save(tmp_path / "basis.safetensors")
    finally:
        os.umask(old)
    for path in [*folder.glob("*.safetensors"), tmp_path / "basis.safetensors"]:
        assert path.stat().st_mode & 0o777 == 0o644, path.name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit(data, tmp_path, signum) -> None:
    run = tmp_path / "run"
    args = [*SQDM, *base_args(data, run, "--steps", "100000", "--checkpoint-every", "100000")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "log.jsonl").is_file() or not (run / "log.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    ckpt = find_checkpoint(run, "latest")
    assert load_checkpoint(ckpt)["state"]["step"] >= 1


@pytest.mark.parametrize(
    ("method", "at", "steps", "code", "evals", "stopped", "says"),
    [
        ("evaluate", 2, 5, 143, [2], 3, "signal 15: saved step 3; to resume"),
        ("train_step", 3, 5, 143, [2], 4, "saved step 4 (its evaluation runs when resumed)"),
        ("evaluate", 2, 3, 0, [2], 3, "signal 15 came at the last step: the run is finished"),
    ],
    ids=["during-evaluation", "before-evaluation", "at-last-step"],
)
def test_a_signal_around_an_evaluation_stops_at_its_step(
    data, tmp_path, monkeypatch, capsys, method, at, steps, code, evals, stopped, says
) -> None:
    """A signal is seen once per step, at the same point in every process: one during step
    2's evaluation stops at step 3 (logged and saved), and one seen at a step whose evaluation
    is due stops before that evaluation (it could outlast a scheduler's grace period). A run
    that reached its last step is finished: exit 0, not 143 and "run it again". The signal
    is simulated: the trainer's flag set as its handler would, in ``method``. Resumed, the
    run makes up an evaluation the signal skipped, before its first step, with the scores of
    an uninterrupted run; a signal during that evaluation stops the run right after it."""
    import squeezed_diffusion.training.trainer as trainer_module

    original = getattr(trainer_module.Trainer, method)

    def signalled(self):
        result = original(self)
        if self.step == at:  # train_step runs before the step count moves on
            self.stop_signal = signal.SIGTERM
        return result

    monkeypatch.setattr(trainer_module.Trainer, method, signalled)
    run = tmp_path / "run"
    extra = ["--model", "micro", "--steps", str(steps), "--log-every", "5", "--checkpoint-every",
             "5", "--eval-every", "2", "--eval-num", "8", "--eval-steps", "2", "--eval-metrics",
             "fd_pixels8"]  # fmt: skip
    assert main(base_args(data, run, *extra)) == code
    assert says in capsys.readouterr().out
    log = Run(run).log()
    assert [r["step"] for r in log if "eval" in r] == evals
    assert [r["step"] for r in log if "loss" in r] == [stopped]  # logged at the stop or end
    assert [p.name for p in list_checkpoints(run)] == [f"step-{stopped:08d}"]
    assert (run / "samples" / "final.png").is_file() == (code == 0)
    if code == 0:
        return
    monkeypatch.setattr(trainer_module.Trainer, method, original)
    if method == "train_step":  # a signal during the made-up evaluation stops right after it
        evaluate = trainer_module.Trainer.evaluate

        def interrupted(self):
            record = evaluate(self)
            self.stop_signal = signal.SIGTERM
            return record

        monkeypatch.setattr(trainer_module.Trainer, "evaluate", interrupted)
        assert main([*base_args(data, run, *extra), "--resume", "latest"]) == 143
        assert "signal 15: stopped at step 4 after its evaluation" in capsys.readouterr().out
        assert [r["step"] for r in Run(run).log()] == [2, 4, 4]  # no step past it
        assert [p.name for p in list_checkpoints(run)] == ["step-00000004"]
        monkeypatch.setattr(trainer_module.Trainer, "evaluate", evaluate)
    assert main([*base_args(data, run, *extra), "--resume", "latest"]) == 0
    whole = tmp_path / "whole"
    assert main(base_args(data, whole, *extra)) == 0
    evals = [(r["step"], r["eval"]) for r in Run(whole).log() if "eval" in r]
    assert [(r["step"], r["eval"]) for r in Run(run).log() if "eval" in r] == evals


def test_an_evaluation_killed_at_the_last_step_is_made_up_by_every_runner(data, tmp_path) -> None:
    """A kill during the last step's evaluation leaves the finished checkpoint without the
    evaluation record (nor the final grid): ``sqdm train --resume`` and a sweep's or the
    demo's rerun (``train_to_completion``) both make it up, with the same scores."""
    from squeezed_diffusion.training.trainer import train_to_completion

    run = tmp_path / "run"
    extra = ["--model", "micro", "--steps", "2", "--checkpoint-every", "2", "--eval-every", "2",
             "--eval-num", "8", "--eval-steps", "2", "--eval-metrics", "fd_pixels8"]  # fmt: skip
    assert main(base_args(data, run, *extra)) == 0
    whole = [r for r in Run(run).log() if "eval" in r]
    kept = [r for r in Run(run).log() if "eval" not in r]

    def killed() -> None:
        Run(run).log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        (run / "samples" / "final.png").unlink()

    for resume in (
        lambda: main([*base_args(data, run, *extra), "--resume", "latest"]),
        lambda: train_to_completion(Run(run).config(), progress=False),
    ):
        killed()
        resume()
        assert [r["eval"] for r in Run(run).log() if "eval" in r] == [whole[0]["eval"]]
        assert (run / "samples" / "final.png").is_file()


@pytest.mark.parametrize(
    "error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")]
)
def test_out_of_memory_is_one_line_naming_what_to_lower(
    tmp_path, monkeypatch, capsys, error
) -> None:
    """Sizes beyond the machine (numpy's and torch's out-of-memory errors) end in one line
    that says what to ask less of; any other RuntimeError is a bug and keeps its traceback."""
    import squeezed_diffusion.evaluation.generate as generate

    run = tmp_path / "run"
    (run).mkdir()
    monkeypatch.setattr(generate, "generate_all", lambda *a, **k: (_ for _ in ()).throw(error))
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sqdm: error: out of memory (") and err.count("\n") == 1
    assert "a smaller --batch-size" in err
    monkeypatch.setattr(
        generate, "generate_all", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug"))
    )
    with pytest.raises(RuntimeError, match="bug"):
        main(["sample", str(run), "--out", str(tmp_path / "s.npz")])


# -- non-finite loss --------------------------------------------------------------------
def _poison_step(monkeypatch, bad_step: int) -> None:
    """Make the training target NaN at one step, as a diverging run would."""
    original = Batches.micro_batch

    def poisoned(self, step, micro, idx):
        x_t, t, target = original(self, step, micro, idx)
        return x_t, t, target * float("nan") if step == bad_step else target

    monkeypatch.setattr(Batches, "micro_batch", poisoned)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good(
    data, tmp_path, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    _poison_step(monkeypatch, bad_step=3)
    code = main(base_args(data, run, "--steps", "8", "--checkpoint-every", "2"))
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "non-finite by step 4" in err and "step-00000002" in err and "\n" not in err
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]  # nothing non-finite saved
    good = load_checkpoint(list_checkpoints(run)[-1])
    assert all(torch.isfinite(t).all() for t in good["model"].values())
    assert "strength" not in err  # noise at the data's scale: the strength is not the suspect
    far = ["--variant", "sdm", "--strength", "-30", "--steps", "4"]
    assert main(base_args(data, tmp_path / "far", *far)) == 1
    assert "or use a strength closer to 0 (its noise std reaches" in capsys.readouterr().err


def test_skip_nonfinite_counts_skipped_batches(data, tmp_path, monkeypatch) -> None:
    _poison_step(monkeypatch, bad_step=1)
    assert main(base_args(data, tmp_path / "r", "--steps", "3", "--skip-nonfinite")) == 0
    log = [json.loads(ln) for ln in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped_batches"] == 1 and all(np.isfinite(r["loss"]) for r in log)
    final = load_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    assert all(torch.isfinite(t).all() for t in final["model"].values())


def test_a_skipped_batch_changes_nothing_it_would_have_trained(data, tmp_path, monkeypatch) -> None:
    """--skip-nonfinite drops the batch whole: weights, EMA, optimizer state and the learning
    rate schedule stay as they were (a skip that still stepped would pass the count check)."""
    from squeezed_diffusion.training.config import resolve_config
    from squeezed_diffusion.training.trainer import Trainer

    _poison_step(monkeypatch, bad_step=0)
    cfg = resolve_config(None, dataset="array", data_dir=str(data), model="tiny", steps=2,
                         batch_size=16, skip_nonfinite=True, out=str(tmp_path / "r"))  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    state = trainer.state
    weights = {k: v.clone() for k, v in state.unwrapped.state_dict().items()}
    shadow = [p.clone() for p in state.ema.shadow_params]
    epoch, ema_steps = state.lr_scheduler.last_epoch, state.ema.optimization_step
    assert float(trainer.train_step()) == 0.0 and state.skipped_batches == 1
    assert all(torch.equal(v, state.unwrapped.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(a, b) for a, b in zip(shadow, state.ema.shadow_params, strict=True))
    assert (state.lr_scheduler.last_epoch, state.ema.optimization_step) == (epoch, ema_steps)
    assert not state.optimizer.state  # AdamW never stepped: no moments
    trainer.step = 1  # the next, clean batch trains
    assert float(trainer.train_step()) > 0 and state.optimizer.state


def test_a_step_over_micro_batches_trains_on_their_mean_loss(data, tmp_path) -> None:
    """With --grad-accum 2 a step returns the mean MSE over its two micro-batches and applies
    the gradient of that mean (autograd of the same forward passes, unclipped); a batch that
    processes x grad_accum do not divide is refused."""
    import torch.nn.functional as F

    from squeezed_diffusion.training.config import resolve_config
    from squeezed_diffusion.training.trainer import Trainer

    cfg = resolve_config(None, dataset="array", data_dir=str(data), model="tiny", steps=2,
                         batch_size=16, grad_accum=2, grad_clip=0.0, out=str(tmp_path / "r"))  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    state, batches = trainer.state, trainer.batches
    model = state.unwrapped
    model.zero_grad()
    losses = []
    for micro, part in enumerate(batches.indices(0).chunk(2)):
        x_t, t, target = batches.micro_batch(0, micro, part)
        losses.append(F.mse_loss(model(x_t, t).sample, target))
    want = torch.stack(losses).mean()
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    seen = []
    step = state.optimizer.step

    def spy(*args, **kwargs):  # the gradients the optimizer is given
        seen.extend(p.grad.clone() for p in model.parameters())
        return step(*args, **kwargs)

    state.optimizer.step = spy
    assert float(trainer.train_step()) == pytest.approx(float(want), rel=1e-5)
    for got, expected in zip(seen, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    odd = dataclasses.replace(cfg, batch_size=15, out=str(tmp_path / "odd"))
    with pytest.raises(
        ValueError, match="batch_size 15 must be divisible by processes x grad_accum"
    ):
        Trainer(odd, progress=False)


# -- safe loading -----------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SQDM_PWNED']}",))


def test_crafted_pickle_checkpoint_is_refused(trained, tmp_path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SQDM_PWNED", str(marker))
    ckpt = list_checkpoints(trained)[-1]
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": _Payload()}))
    state = json.loads((ckpt / "state.json").read_text())
    state["manifest"]["optimizer.pt"] = sha256(ckpt / "optimizer.pt")  # a consistent forgery
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(ckpt)
    assert (
        main(["train", "--out", str(trained), "--resume", str(ckpt), "--steps", "3", "--quiet"])
        == 2
    )
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


# -- bad input --------------------------------------------------------------------------
def _bad_cases(tmp_path: Path, data: Path, run: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(broken / f"{i}.png")
    (broken / "bad.png").write_bytes(b"not a png")
    junk = tmp_path / "junk.tar.gz"  # tarfile's message for it spans five lines
    junk.write_bytes(b"junk\n")
    gray = write_array(tmp_path / "gray.npy", channels=1)
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((4, 8, 16, 3), np.uint8))
    out = str(tmp_path / "new")
    t = ["train", "--out", out, "--steps", "1", "--model", "tiny", "--quiet"]
    arr = ["--dataset", "array", "--data-dir", str(data)]
    return [
        ([*t, "--preset", "paper-cifar1000"], "unknown preset 'paper-cifar1000'; choose one of"),
        ([*t, *arr, "--variant", "sqdm"], "unknown variant 'sqdm'; choose one of"),
        ([*t, *arr, "--profile", "cosine"], "unknown profile 'cosine'; choose one of"),
        ([*t, "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of"),
        ([*t, *arr, "--strength", "nan"], "strength must be a finite number"),
        ([*t, *arr, "--strength", "inf"], "strength must be a finite number"),
        ([*t, *arr, "--strength", "12"], "invalid SDM process"),
        (
            [*t, "--dataset", "array", "--data-dir", str(wide)],
            "the array images are 8x16 pixels, not square; pass --resolution N to centre-crop and resize them to N x N",
        ),
        (
            [*t, *arr, "--resolution", "6"],
            "model preset 'tiny' downsamples 2 times, so the resolution must be a multiple of 4, got 6",
        ),
        ([*t, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "nowhere")], "nowhere"),
        ([*t, "--dataset", "imagefolder", "--data-dir", str(empty)], "no images"),
        ([*t, "--dataset", "imagefolder", "--data-dir", str(junk)], "cannot read archive"),
        (
            [*t, "--dataset", "imagefolder", "--data-dir", str(broken), "--batch-size", "2"],
            "bad.png",
        ),
        (
            [
                *t,
                "--dataset",
                "array",
                "--data-dir",
                str(gray),
                "--variant",
                "hdm",
                "--strength",
                "-0.4",
            ],
            "HDM needs directions outside",
        ),
        ([*t, "--dataset", "cifar10", "--data-dir", str(empty)], "--download"),
        ([*t, *arr, "--batch-size", "0"], "batch_size must be an integer >= 1"),
        (
            ["sample", str(run), "--num", "0", "--out", str(tmp_path / "s.npz")],
            "argument --num: must be an integer >= 1, got 0",
        ),
        (
            ["sample", str(run), "--sampler", "euler", "--out", str(tmp_path / "s.npz")],
            "unknown sampler 'euler'",
        ),
        (
            ["sample", str(tmp_path), "--out", str(tmp_path / "s.npz")],
            f"is not a run folder (no config.yaml); it holds the runs run: pass one, e.g. {run}",
        ),
        (
            ["sample", str(empty), "--out", str(tmp_path / "s.npz")],
            "is not a run folder (no config.yaml); pass the --out of `sqdm train`",
        ),
        (["evaluate", str(tmp_path)], "is not a run folder: it holds the runs run: pass one"),
        (["evaluate", str(empty)], "is not a run folder: pass --reference DATASET_OR_PATH"),
        (["sample", str(run), "--out", str(data / "x.npz")], "not a writable folder"),
        *(  # a folder that refuses files even to root, whatever its permission bits say
            [(["sample", str(run), "--out", "/proc/sqdm/x.npz"], "not a writable folder")]
            if Path("/proc/self").is_dir()
            else []
        ),
        ([*t[:1], "--out", str(data / "run"), "--steps", "1", *arr], "not a writable folder"),
        (["fit-basis", str(empty)], "no images"),
        (["demo", "--fast"], "unrecognized arguments: --fast (see sqdm demo --help)"),
        (
            ["--quiet", "demo"],
            "--quiet given before the command: a command's options go after it (sqdm demo --quiet ...)",
        ),
        (["sample", "--num", "2"], "required: run, --out (see sqdm sample --help)"),
        *[
            ([*t, *arr, flag, *value.split()], f"{flag[2:].replace('-', '_')} must be {allowed}")
            for flag, value, allowed in (
                ("--ema-decay", "1.0", "in [0, 1)"),
                ("--checkpoint-every", "0", "an integer >= 1"),
                ("--lr", "-0.0001", "a number > 0 finite in float32 (<= 3.4e38)"),
                ("--lr", "-1e-3", "a number > 0 finite in float32"),  # a number, not a flag
                ("--lr", "1e308", "a number > 0 finite in float32"),  # else fails inside AdamW
                ("--weight-decay", "-inf", "a number >= 0 finite in float32"),
                ("--warmup-steps", "-1", "an integer >= 0"),
                ("--sample-every", "-1", "an integer >= 0"),
                ("--weight-decay", "-0.1", "a number >= 0 finite in float32"),
                ("--adam-betas", "0.9 1.0", "two numbers in [0, 1)"),
                ("--sample-num", "0", "an integer >= 1"),
                ("--ema-inv-gamma", "0", "a finite number > 0"),
                ("--grad-clip", "nan", "a number >= 0 finite in float32"),
            )
        ],
        (
            ["train", "--out", str(run), "--resume", "latest", "--strength", "-0.8"],
            "--strength -0.8 differs from the run's saved 0.0; a resumed run keeps its config",
        ),
        (["train", "--out", str(tmp_path / "nothing"), "--resume", "latest"], "cannot resume"),
        (["train", "--out", str(run), "--resume", ""], "argument --resume: is empty"),
        (
            ["train", "--out", str(run), "--resume", "latest", "--preset", "paper-cifar10"],
            "--preset does not apply to --resume",
        ),
        *_ignored_flag_cases(tmp_path, data, run, t, arr),
    ]


def _ignored_flag_cases(tmp_path: Path, data: Path, run: Path, t: list, arr: list) -> list:
    """Flags that would be accepted and have no effect: each must be refused instead."""
    other = tmp_path / "other" / "checkpoints" / "step-00000001"
    other.mkdir(parents=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("not samples")
    empty_png = tmp_path / "grid.png"  # what 0.1.0 made of --out grid.png: a folder
    empty_png.mkdir()
    full = tmp_path / "full"  # a folder that holds something: new samples would mix in
    full.mkdir()
    (full / "old.png").write_bytes(b"")
    blob = tmp_path / "results.json"
    blob.write_bytes(bytes(range(256)))
    row = {"cell": "c", "dataset": "d", "variant": "sdm", "strength": -0.4, "profile": "beta",
           "basis": "channel", "seed": 0, "metric": "fd_effnet", "value": None}  # fmt: skip
    (tmp_path / "null").mkdir()
    (tmp_path / "null" / "results.json").write_text(json.dumps([row]))
    t0 = [a for a in t if a not in ("--steps", "1")]
    out = ["--out", str(tmp_path / "s.npz")]
    samples = ["evaluate", str(data), "--reference", str(data)]
    cuda_only = [] if torch.cuda.is_available() else [
        ([*t, *arr, "--mixed-precision", "fp16"], "fp16 needs CUDA (on cpu it would train in fp32)"),
        ([*t, *arr, "--channels-last"], "channels_last applies on CUDA only"),
    ]  # fmt: skip
    return [
        *cuda_only,
        ([*t, *arr, "--variant", "isotropic", "--strength", "0.7"], "--strength given with variant isotropic"),
        ([*t, *arr, "--variant", "isotropic", "--basis", "pca", "--basis-k", "2"], "--basis, --basis-k given with variant isotropic"),
        ([*t, *arr, "--profile", "linear"], "--profile given with strength 0, where the noise is isotropic"),
        ([*t, *arr, "--variant", "hdm", "--basis", "pca"], "--basis given with strength 0"),
        ([*samples, "--metrics", "fd_pixels8", "--batch-size", "7"], "--batch-size is the feature extractors' batch, and fd_pixels8 extract no features"),
        (["fit-basis", "cifar10"], "CIFAR-10 needs a data path; pass --data-dir PATH (sqdm train and sqdm sweep can add --download"),
        ([*t0, *arr, "--epochs", "inf"], "training length must be positive and finite"),
        ([*t0, *arr, "--epochs", "nan"], "training length must be positive and finite"),
        ([*t, *arr, "--prediction-type", "v_prediction", "--target", "squeezed"], "contradicts"),
        ([*t, *arr, "--eval-num", "7"], "--eval-num given without --eval-every"),
        ([*t, *arr, "--eval-x0", "none"], "--eval-x0 given without --eval-every"),
        ([*t, *arr, "--eval-x0", "clip-reuse"], "--eval-x0 given without --eval-every"),
        ([*t, *arr, "--sample-x0", "clip-reuse"], "--sample-x0 clip-reuse with --sample-sampler ddpm: x0 rule clip-reuse applies to samplers"),
        ([*t, *arr, "--eval-every", "5", "--eval-sampler", "dpmpp-2m", "--eval-x0", "clip-reuse"], "--eval-x0 clip-reuse with --eval-sampler dpmpp-2m"),
        ([*t, *arr, "--sample-x0", "clamp"], "--sample-x0 clamp with --sample-sampler ddpm: unknown x0 rule 'clamp'; choose one of"),
        ([*t, *arr, "--no-compile", "--compile-mode", "reduce-overhead"], "--compile-mode given with --no-compile, where compile_mode has no effect"),
        ([*t, "--dataset", "shapes", "--data-dir", str(tmp_path)], "--data-dir does not apply to the shapes"),
        ([*t, *arr, "--download"], "--download does not apply to the array dataset"),
        ([*t, *arr, "--num-train-timesteps", "10"], "--sample-steps 50 with --sample-sampler ddpm"),
        ([*t, *arr, "--seed", "-1"], "seed must be an integer in [0, 2**32)"),
        (["train", "--out", str(run), "--resume", "latest", "--steps", "1"], "past the 1 steps asked for"),
        (["train", "--out", str(run), "--resume", str(tmp_path / "nowhere")], "not found"),
        (["train", "--out", str(run), "--resume", str(other)], "is not one of"),
        (["sample", str(run), "--sampler", "ddim", "--eta", "nan", *out], "takes eta in [0, 1]"),
        (["sample", str(run), "--sampler", "ddim", "--eta", "1.5", *out], "takes eta in [0, 1]"),
        (["sample", str(run), "--seed", "-5", *out], "argument --seed: must be an integer >= 0"),
        (["sample", str(run), "--x0", "clip-reuse", *out], "x0 rule clip-reuse applies to samplers"),
        (["sample", str(run), "--sampler", "ddim", "--x0", "clip-anchor", *out], "the ddim sampler keeps the network's noise estimate under clip already: use clip"),
        ([*t, *arr, "--sample-x0", "clip-anchor"], "--sample-x0 clip-anchor with --sample-sampler ddpm: x0 rule clip-anchor applies to the DPM-Solver++ samplers (dpmpp-2m, dpmpp-2m-sde, dpmpp-3m, dpmpp-3m-sde); the ddpm sampler does not implement it"),
        (["sample", str(run), "--x0", "clamp", *out], "argument --x0: invalid choice: 'clamp'"),
        ([*samples, "--x0", "none"], "--x0 applies to sampling a run"),
        (["sample", str(run), "--sampler", "dpmpp-2m-sde", "--eta", "0", *out], "--eta given with --sampler dpmpp-2m-sde, which takes none (eta applies to ddim"),
        (["evaluate", str(run), "--eta", "0"], "--eta given with the default sampler ddpm, which takes none (eta applies to ddim): drop it, or pass --sampler ddim"),
        (["sample", str(run), "--out", str(notes)], "not .txt; name a folder without a suffix"),
        (["sample", str(run), "--out", str(empty_png)], "is a folder, but this output is one file"),
        (["sample", str(run), "--out", str(full)], "already holds files, which would be scored"),
        (["train", "--out", str(notes), "--steps", "1", *arr], "is a file, but this output is a folder"),
        ([*samples, "--out", str(tmp_path)], "is a folder, but this output is one file"),
        (["train", "--out", "", "--steps", "1", *arr], "argument --out: is empty; name a file or folder"),
        ([*samples, "--out", " "], "argument --out: is empty"),
        (["report", str(blob), "--out", ""], "argument --out: is empty"),
        ([*samples, "--out", str(data)], f"--out {data} is the input {data}, which writing it would replace"),
        (["evaluate", str(run), "--out", str(run / "log.jsonl")], "is a file of the input"),
        (["fit-basis", str(data), "--out", str(full)], "is a folder, but this output is one file"),
        (["fit-basis", str(data), "--out", f"{tmp_path}/new/"], "names a folder, but a basis is one file"),
        ([*t, *arr, "--resolution", "-4"], "the resolution must be positive, got -4"),
        (["fit-basis", str(tmp_path / "absent.npy")], "absent.npy does not exist; check the path"),
        (["report", str(full)], f"results.json does not exist; run the sweep, or rebuild its table with sqdm sweep NAME --out {full} --collect"),
        (["report", str(tmp_path / "null")], "cell c has value None, not a finite number; fix or remove the row"),
        (["report", str(blob)], "is not valid JSON; pass the sweep's --out folder or its results.json"),
        (["sweep", str(full)], "is a folder; pass a sweep YAML file or a shipped sweep"),
        (["sample", str(run), "--steps", "2000", *out], "--steps 2000 with --sampler ddpm: num_steps must be"),
        (["evaluate", str(run), "--metrics", "fd_pixels8", "--num", "2", "--num-reference", "1000000"], "ask for at most"),
        (["--lr", "1", *t, *arr], "--lr 1 given before the command: a command's options go after it (sqdm train --lr 1 ...)"),
        ([*t, *arr, "--eval-num", "500"], "--eval-num given without --eval-every"),
        ([*t, *arr, "--variant", "isotropic", "--strength", "0"], "--strength given with variant isotropic"),
        ([*t, *arr, "--no-compile", "--compile-mode", "default"], "--compile-mode given with --no-compile"),
        ([*t, *arr, "--variant", "hdm"], "--variant given with strength 0, where the noise is isotropic: drop them, or give a non-zero --strength"),
        ([*t, *arr, "--variant", "sdm", "--strength", "0"], "--variant given with strength 0"),
        ([*t, *arr, "--strength", "0", "--profile", "beta", "--basis", "channel"], "--profile, --basis given with strength 0"),
        ([*samples, "--steps", "3"], "--steps applies to sampling a run"),
        ([*samples, "--prc-extractor", "inception"], "applies to the prc metric only"),
        ([*samples, "--feature-weights", "inception=/nowhere.pt"], "no requested metric uses inception"),
        ([*samples, "--data-dir", str(tmp_path)], "--data-dir applies to a dataset name"),
        ([*samples, "--num-reference", "1"], "argument --num-reference: must be an integer >= 2"),
        (["evaluate", str(tmp_path / "nothing")], "does not exist"),
        (["evaluate", str(run), "--data-dir", str(tmp_path)], "describe --reference"),
        (["fit-basis", str(data), "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
        (["sweep", "local-cifar10", "--out", str(tmp_path / "sw"), "--collect", "--list"], "--collect"),
        (["sweep", "local-cifar10", "--out", str(tmp_path / "sw"), "--collect", "--shard", "1/2"], "--collect"),
    ]  # fmt: skip


def test_evaluate_rewrites_its_own_results_inside_the_run(trained) -> None:
    """--out may name a results file inside the run (only the run's own files are refused),
    also when it is there from an earlier evaluation."""
    out = trained / "eval.json"
    argv = ["evaluate", str(trained), "--num", "2", "--steps", "1", "--metrics", "fd_pixels8",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    out.write_text("{}")
    assert main(argv) == 0
    assert "fd_pixels8" in json.loads(out.read_text())


def test_bad_input_gives_one_line_and_exit_2(data, trained, tmp_path, capsys) -> None:
    cases = _bad_cases(tmp_path, data, trained)
    assert len(cases) >= 15
    for argv, pattern in cases:
        before = sorted(p for p in tmp_path.rglob("*") if "sqdm-cache" not in str(p))
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("sqdm: error:") and pattern in err, (argv, err)
        assert not err.startswith("sqdm: error: sqdm"), err  # said once
        assert "\n" not in err and "Traceback" not in err, err
        after = sorted(p for p in tmp_path.rglob("*") if "sqdm-cache" not in str(p))
        assert after == before, (argv, set(after) - set(before))  # nothing left behind


def test_a_copied_run_resumes_in_its_own_folder_from_anywhere(data, tmp_path, monkeypatch) -> None:
    """``--out`` names the run being resumed even when its saved config names another folder
    (a copy), the original is left untouched, and a relative --data-dir is saved absolute so
    that the resume works from another working directory."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(base_args(Path(data.name), run, "--steps", "2", "--checkpoint-every", "1")) == 0
    assert Run(run).config().data_dir == str(data)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    original = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--out", str(copy), "--resume", "latest", "--steps", "3", "--quiet"]) == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == original
    assert Run(copy).config().out == str(copy) and Run(copy).config().steps == 3
    assert list_checkpoints(copy)[-1].name.endswith("3")


def test_a_folder_is_written_whole_or_not_at_all(tmp_path) -> None:
    """atomic_folder: a writer that fails leaves neither the folder nor its temporary one;
    a destination that holds files is never overwritten."""
    from squeezed_diffusion.core.fileio import atomic_folder

    out = tmp_path / "samples"
    with pytest.raises(RuntimeError, match="killed"), atomic_folder(out) as tmp:
        (tmp / "a.png").write_bytes(b"x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(out) as tmp:
        (tmp / "a.png").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]
    with pytest.raises(OSError, match=r"not empty|exists"), atomic_folder(out) as tmp:
        (tmp / "b.png").write_bytes(b"y")  # renaming onto a full folder fails, replacing nothing
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "samples"]
    assert (out / "a.png").read_bytes() == b"x"


def test_an_output_folder_is_tried_not_trusted(tmp_path, monkeypatch) -> None:
    """Writability is tried with a temporary file (and nothing is left): permission bits that
    say yes, as for root, a read-only mount or /proc, do not decide."""
    from squeezed_diffusion import cli

    cli._check_writable(tmp_path / "new" / "x.npz", "file")
    assert list(tmp_path.iterdir()) == []

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    with pytest.raises(PermissionError, match="is not a writable folder; choose another"):
        cli._check_writable(tmp_path / "x.npz", "file")


def test_wandb_without_a_login_is_one_line(data, tmp_path) -> None:
    """In a subprocess: wandb keeps its settings per process, and would keep these."""
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update(WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), NETRC=str(tmp_path / "no-netrc"))
    args = base_args(data, tmp_path / "run", "--steps", "1", "--log-with", "wandb")
    done = subprocess.run([*SQDM, *args], env=env, capture_output=True, text=True, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert err.startswith("sqdm: error: wandb did not start") and "WANDB_MODE=offline" in err, err
    assert "\n" not in err


def test_skip_bad_images_counts_them(tmp_path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(broken / f"{i}.png")
    (broken / "bad.png").write_bytes(b"not a png")
    out, shown = str(tmp_path / "b.safetensors"), warnings.showwarning
    assert main(["fit-basis", str(broken), "--skip-bad-images", "--out", out]) == 0
    captured = capsys.readouterr()
    assert "on 4 images" in captured.out
    assert captured.err == "sqdm: warning: skipped 1 unreadable image file(s)\n"  # one line
    assert warnings.showwarning is shown  # main() restores the caller's hook


def test_truncated_checkpoint_and_other_preset_are_refused(trained, capsys) -> None:
    ckpt = list_checkpoints(trained)[-1]
    cfg_path = trained / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("model: tiny", "model: small"))
    assert main(["sample", str(trained), "--num", "1", "--out", str(trained / "s.npz")]) == 2
    assert "holds weights for a different model" in capsys.readouterr().err
    cfg_path.write_text(cfg_path.read_text().replace("model: small", "model: tiny"))
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["sample", str(trained), "--num", "1", "--out", str(trained / "s.npz")]) == 2
    # One line each (not Python's warning format, with its source path and code line), and
    # no advice that `sample` cannot follow (it has no --resume).
    warning, error = capsys.readouterr().err.splitlines()
    assert warning == (
        f"sqdm: warning: checkpoint {ckpt} is corrupt (model.safetensors is missing or does not "
        "match its checksum); skipping it"
    )
    assert error == (
        f"sqdm: error: no usable checkpoint in {trained / 'checkpoints'} (it holds 1, all "
        f"corrupt); to train the run again, delete {trained} (or give sqdm train another --out)"
    )


def test_resume_latest_passes_over_a_corrupt_newest_checkpoint(data, tmp_path, capsys) -> None:
    """``--resume latest`` takes the newest checkpoint that verifies and trains on, re-saving
    the corrupt step; only a checkpoint named by the user is refused for later ones."""
    run = tmp_path / "run"
    assert main(base_args(data, run, "--steps", "2", "--checkpoint-every", "1")) == 0
    weights = list_checkpoints(run)[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()
    resume = ["train", "--out", str(run), "--resume", "latest", "--steps", "3", "--quiet"]
    assert main(resume) == 0, capsys.readouterr().err
    assert [p.name for p in list_checkpoints(run)][-2:] == ["step-00000002", "step-00000003"]
    assert all(verify(p) for p in list_checkpoints(run))


def test_all_corrupt_checkpoints_give_advice_that_does_not_loop(data, trained, capsys) -> None:
    """Every checkpoint corrupt: "train the run first" sent the user to `sqdm train`, which
    refuses a folder holding a run ("pass --resume latest"), which said "train the run
    first" again. Resuming now names the fix, and following it trains the run."""
    for ckpt in list_checkpoints(trained):
        (ckpt / "state.json").write_text("{")
    assert main(base_args(data, trained, "--steps", "2")) == 2
    assert "--resume latest" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--resume", str(ckpt), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"sqdm: error: checkpoint {ckpt} is incomplete or corrupt (state.json: JSONDecodeError); "
        "pass latest or another of the run's checkpoints\n"
    )
    assert main(["train", "--out", str(trained), "--resume", "latest", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"to train the run again, delete {trained}" in err and "train the run first" not in err
    shutil.rmtree(trained)
    assert main(base_args(data, trained, "--steps", "2")) == 0


def test_basis_from_other_data_is_refused_on_resume(trained, tmp_path, capsys) -> None:
    other = ChannelBasis([1.0, 0.0, 0.0])
    other.metadata.update({"dataset": "array", "fingerprint": "0" * 16, "image_shape": [3, 8, 8]})
    other.save(trained / "basis.safetensors")
    assert (
        main(["train", "--out", str(trained), "--resume", "latest", "--steps", "3", "--quiet"]) == 2
    )
    assert "the run's data changed; pass --data-dir with the data it" in capsys.readouterr().err
    # without its basis a run cannot check its data: refused, not refitted on what is given
    (trained / "basis.safetensors").unlink()
    before = sorted(p for p in trained.rglob("*"))
    assert (
        main(["train", "--out", str(trained), "--resume", "latest", "--steps", "3", "--quiet"]) == 2
    )
    assert "basis.safetensors is missing: a run resumes with the basis" in capsys.readouterr().err
    assert sorted(p for p in trained.rglob("*")) == before


# -- distributed ------------------------------------------------------------------------
WORKER = """
import sys, torch
from squeezed_diffusion.training.config import resolve_config
from squeezed_diffusion.training.trainer import Trainer
data, out, dump, mode = sys.argv[1:5]
cfg = resolve_config(None, dataset="array", data_dir=data, model="tiny", out=out, steps=3,
                     batch_size=16, lr=1e-2, adam_eps=1.0, warmup_steps=1, log_every=1,
                     sample_steps=2, compile=mode == "compiled")  # large eps: no float noise blow-up
trainer = Trainer(cfg, progress=False)
trainer.run()
rank = trainer.accelerator.process_index
torch.save({n: p.detach().cpu() for n, p in trainer.unwrapped.named_parameters()}, f"{dump}.{rank}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_two_processes_train_what_one_process_would(data, tmp_path, mode) -> None:
    """Slow (two processes start torch and gloo, and compile); the fast twin below checks the
    batch split, test_compile the compiled step."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    for procs, name in ((2, "two"), (1, "one")):
        cmd = [
            *launch,
            str(procs),
            str(script),
            str(data),
            str(tmp_path / name),
            str(tmp_path / name),
            mode,
        ]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1, single = (
        torch.load(tmp_path / f, weights_only=True) for f in ("two.0", "two.1", "one.0")
    )
    for n in single:
        assert torch.equal(rank0[n], rank1[n]), n
        assert torch.allclose(rank0[n], single[n], atol=1e-5), n


SIGNAL_WORKER = """
import signal, sys
from squeezed_diffusion.training.config import resolve_config
from squeezed_diffusion.training.trainer import Trainer
data, out, resume = sys.argv[1:4]
cfg = resolve_config(None, dataset="array", data_dir=data, model="micro", out=out, steps=6,
                     batch_size=8, log_every=2, checkpoint_every=6, sample_steps=2,
                     eval_every=2, eval_num=8, eval_steps=2, eval_metrics=["fd_pixels8"])
trainer = Trainer(cfg, progress=False, resume=resume if resume == "latest" else None)
step = trainer.train_step

def signalled():
    loss = step()
    if trainer.accelerator.process_index == 1 and trainer.step == 0:  # in step 1, rank 1 only
        trainer.stop_signal = signal.SIGTERM
    return loss

if resume != "latest":
    trainer.train_step = signalled
trainer.run()
print(f"rank {trainer.accelerator.process_index} stopped at {trainer.step}")
"""


def test_two_processes_stop_together_on_one_ones_signal(data, tmp_path) -> None:
    """A signal seen by one process only (they arrive one by one): both stop at the next log
    step and save it, where one that stopped alone would leave the other waiting in the next
    step's all-reduce until a timeout. Resumed, both make up the evaluation the stop skipped
    (the main process decides for both: one that skipped it would wait in the all-reduce)."""
    script = tmp_path / "worker.py"
    script.write_text(SIGNAL_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), str(data), str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run([*cmd, "fresh"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout  # two processes share the pipe: their lines may run together
    assert sorted(re.findall(r"rank (\d+) stopped at (\d+)", out)) == [("0", "2"), ("1", "2")]
    said = "signal 15: saved step 2 (its evaluation runs when resumed);"
    assert out.count(said) == 1 and "signal" not in out.replace(said, "")  # said once
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000002"]
    assert not [r for r in Run(tmp_path / "run").log() if "eval" in r]  # skipped at the stop
    # the two processes trained what one process trains on the same global batches (gradients
    # averaged over both shares, one set of weights): the fast twin of the slow test above
    from squeezed_diffusion.training.config import resolve_config
    from squeezed_diffusion.training.trainer import Trainer

    cfg = resolve_config(None, dataset="array", data_dir=str(data), model="micro", steps=6,
                         batch_size=8, sample_steps=2, out=str(tmp_path / "one"))  # fmt: skip
    one = Trainer(cfg, progress=False)
    for _ in range(2):
        one.train_step()
        one.step += 1
    two = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["model"]
    for name, param in one.unwrapped.named_parameters():
        torch.testing.assert_close(param.detach(), two[name], rtol=1e-4, atol=1e-5, msg=name)
    result = subprocess.run([*cmd, "latest"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in Run(tmp_path / "run").log() if "eval" in r] == [2, 4, 6]


def test_processes_split_each_global_batch_into_disjoint_shares(data) -> None:
    """Fast twin of the 2-process test: the shares of N ranks, in rank order, are exactly the
    one-process batch (same images, timesteps, noise and targets)."""
    from squeezed_diffusion import SqueezedDiffusion
    from squeezed_diffusion.data import load_dataset
    from squeezed_diffusion.training.batches import Batches

    dataset, proc = load_dataset("array", data), SqueezedDiffusion(strength=-0.4)
    kw = {"batch_size": 16, "seed": 3, "hflip": True, "device": torch.device("cpu")}
    one = Batches(dataset, proc, **kw)
    idx = one.indices(5)
    whole = one.micro_batch(5, 0, idx)
    for world in (2, 4):
        shares = [
            Batches(dataset, proc, rank=r, world=world, **kw).micro_batch(5, 0, idx)
            for r in range(world)
        ]
        for k in range(3):
            assert torch.equal(torch.cat([share[k] for share in shares]), whole[k]), (world, k)


def test_distributed_sampling_covers_every_index_once(trained) -> None:
    full_idx, full = generate(trained, 7, steps=2, batch_size=2, progress=False)
    parts = [
        generate(trained, 7, steps=2, batch_size=2, rank=r, world_size=3, progress=False)
        for r in range(3)
    ]
    indices = sorted(i for idx, _ in parts for i in idx)
    assert indices == full_idx == list(range(7))
    gathered = torch.cat([imgs for _, imgs in parts])[
        torch.tensor([i for idx, _ in parts for i in idx]).argsort()
    ]
    assert torch.equal(gathered, full)
