"""The compiled training step (issue 11): on CUDA by default, off on CPUs, same numbers.

The slow tests compile the tiny UNet on the CPU (about a minute each); the fast ones check the
same wiring without compiling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from squeezed_diffusion.cli import main
from squeezed_diffusion.training.config import resolve_config
from squeezed_diffusion.training.state import use_compile
from squeezed_diffusion.training.trainer import Trainer


@pytest.fixture
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npy"
    np.save(path, rng.integers(0, 255, (64, 8, 8, 3), dtype=np.uint8))
    return path


def _cfg(data: Path, out: Path, **kw):
    return resolve_config(
        None, dataset="array", data_dir=str(data), model="tiny", out=str(out), steps=3,
        batch_size=16, lr=1e-3, warmup_steps=1, log_every=1, sample_steps=2, **kw,
    )  # fmt: skip


def test_compile_defaults_to_cuda_only_and_passes_the_mode(data, tmp_path, monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = _cfg(data, tmp_path / "a")
    assert cfg.compile is None and not use_compile(cfg, cpu) and use_compile(cfg, cuda)
    assert use_compile(_cfg(data, tmp_path / "b", compile=True), cpu)
    assert not use_compile(_cfg(data, tmp_path / "c", compile=False), cuda)
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    Trainer(_cfg(data, tmp_path / "d", compile=True, compile_mode="max-autotune"), progress=False)
    assert calls == [{"mode": "max-autotune"}]
    Trainer(_cfg(data, tmp_path / "e"), progress=False)  # CPU, default: not compiled
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown compile_mode 'fast'"):
        _cfg(data, tmp_path / "f", compile_mode="fast")


def test_sampling_compiles_the_unet_on_cuda_by_default_and_when_asked(data, tmp_path, monkeypatch):
    """generate() (sqdm sample, evaluate, sweeps) compiles as training does: by default on
    CUDA only, always with compile=True, never with False."""
    from squeezed_diffusion.evaluation.generate import generate

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "1", "--dataset", "array", "--data-dir",
                 str(data), "--model", "tiny", "--batch-size", "16", "--quiet"]) == 0  # fmt: skip
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    for compile_, compiled in ((None, torch.cuda.is_available()), (True, True), (False, False)):
        calls.clear()
        _, images = generate(run, 2, steps=2, compile=compile_, progress=False)
        assert images.shape == (2, 3, 8, 8) and len(calls) == compiled, compile_


@pytest.mark.slow
def test_compiled_and_eager_steps_agree_on_cpu(data, tmp_path) -> None:
    """fp32, tiny preset, 3 steps: the same losses to 1e-4 (relative)."""
    losses = {}
    for compiled in (False, True):
        trainer = Trainer(_cfg(data, tmp_path / str(compiled), compile=compiled), progress=False)
        assert (trainer.unwrapped._compiled_call_impl is not None) == compiled  # it did compile
        out = []
        for _ in range(3):
            out.append(float(trainer.train_step()))
            trainer.step += 1
        losses[compiled] = out
    assert np.allclose(losses[True], losses[False], rtol=1e-4), losses


@pytest.mark.slow
def test_compiled_run_resumes_exactly(data, tmp_path) -> None:
    """2 + resume + 2 compiled steps equal 4 compiled steps in one go (weights and log)."""
    args = ["--dataset", "array", "--data-dir", str(data), "--model", "tiny", "--batch-size", "16",
            "--warmup-steps", "1", "--log-every", "1", "--checkpoint-every", "2",
            "--sample-steps", "2", "--lr-schedule", "constant", "--compile", "--quiet"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--out", str(straight), "--steps", "4", *args]) == 0
    assert main(["train", "--out", str(split), "--steps", "2", *args]) == 0
    assert (
        main(["train", "--out", str(split), "--resume", "latest", "--steps", "4", "--quiet"]) == 0
    )
    logs = [[json.loads(ln)["loss"] for ln in (r / "log.jsonl").read_text().splitlines()]
            for r in (straight, split)]  # fmt: skip
    assert np.allclose(logs[0], logs[1], rtol=1e-5)


def test_cuda_graph_modes_start_a_graph_iteration_every_step(data, tmp_path, monkeypatch) -> None:
    """reduce-overhead / max-autotune replay CUDA graphs, whose outputs the next replay
    overwrites: each training step must begin a new graph iteration (CUDA only)."""
    trainer = Trainer(_cfg(data, tmp_path / "a"), progress=False)
    assert not trainer.state.cuda_graphs  # CPU, eager (a graph mode is refused there): no graphs
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    trainer.train_step()
    assert marks == []
    trainer.state.cuda_graphs = True
    trainer.train_step()
    trainer.train_step()
    assert marks == [1, 1]


def test_gpu_check_runs_on_cpu_and_records_every_variant(tmp_path, monkeypatch) -> None:
    """benchmarks/gpu_check.py at CPU toy sizes: the main rows, a variant row, a failing
    variant recorded with its error, and variants skipped when the budget is spent."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "VARIANTS", {
        "eager-again": {"compile": False}, "broken": {"compile": False, "compile_mode": "nope"},
    })  # fmt: skip
    gpu_check.main(["--json", str(tmp_path / "a.json"), "--variants"])
    result = json.loads((tmp_path / "a.json").read_text())
    rows = result["train"]["tiny"]
    assert rows["eager"]["images_per_s"] > 0 and rows["eager-again"]["images_per_s"] > 0
    assert rows["eager-again"]["settings"] == {"compile": False}
    assert "unknown compile_mode 'nope'" in rows["broken"]["skipped"]
    assert result["sampling"]["tiny"]["eager"]["images_per_s"] > 0
    gpu_check.main(["--json", str(tmp_path / "b.json"), "--variants", "--budget-s", "0"])
    rows = json.loads((tmp_path / "b.json").read_text())["train"]["tiny"]
    assert rows["eager"]["images_per_s"] > 0
    assert all(rows[m]["skipped"].startswith("needs about") for m in ("eager-again", "broken"))


def test_benchmark_training_rows_run_at_toy_size(tmp_path, monkeypatch) -> None:
    """benchmarks/run.py's training section (isotropic, SDM and HDM steps on one trainer, the
    loader and memory rows) on the micro UNet: the script's figures come from code that
    runs (an isotropic process built with the SDM run's strength once broke it)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    monkeypatch.setenv("SQDM_CACHE", str(tmp_path / "cache"))
    import run as bench

    rows = bench.bench_preset("micro", 2, 1, 0, tmp_path, False)
    assert set(rows["train"]) >= {"isotropic", "sdm", "hdm", "ratio_sdm", "ratio_hdm"}
    assert rows["memory"]["sdm_mb"] > 0 and rows["memory"]["isotropic_mb"] > 0
