"""The package layout: the maths imports nothing else, no import cycles, one declaration per
concept (a new basis, sampler or metric is one registration that every consumer knows), and
run folders written by 0.1.0 still load, resume and sample."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from squeezed_diffusion import BASES, SAMPLERS, Basis, SqueezedDiffusion
from squeezed_diffusion.cli import build_parser, main

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "squeezed_diffusion"
REPO = PACKAGE.parents[1]
V010 = "fb80759"  # the last commit of the 0.1.0 layout


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (function-level imports too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found |= {n for n in (target, *names) if n.startswith("squeezed_diffusion")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("squeezed_diffusion")}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {n for n in found if n in modules} - {module}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_core_imports_nothing_else_from_the_package() -> None:
    for path in (PACKAGE / "core").glob("*.py"):
        outside = {m for m in _imports(path) if not m.startswith("squeezed_diffusion.core")}
        assert not outside, (path.name, outside)


# The README's Layout tree, top to bottom: a folder (or top-level module) may import only from
# those above it, so that the tree reads as the architecture.
LAYERS = ("core", "data", "models", "metrics", "training", "evaluation", "pipelines", "demo", "cli")


def test_folders_import_only_from_the_folders_above_them() -> None:
    def layer(module: str) -> str:  # the package root re-exports core/ only
        return module.split(".")[1] if "." in module else "core"

    rank = {name: i for i, name in enumerate(LAYERS)}
    seen = set()
    for path in PACKAGE.rglob("*.py"):
        here = layer(_module_name(path))
        assert here in rank, f"{path}: a new top-level module belongs in LAYERS and the README"
        for target in _imports(path):
            there = layer(target)
            seen.add((here, there))
            assert there == here or rank[there] < rank[here], (
                f"{path.relative_to(PACKAGE)} imports {target}: {here} sits above {there}"
            )
    assert ("training", "metrics") in seen and ("pipelines", "training") in seen


def test_no_import_cycles() -> None:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert graph["squeezed_diffusion.core.process"]  # the walk saw real edges


# -- one declaration per concept ---------------------------------------------------------------
def _help(*argv: str) -> str:
    parser = build_parser()
    for action in parser._subparsers._group_actions:
        if argv:
            return action.choices[argv[0]].format_help()
    return parser.format_help()


@pytest.fixture
def registered_examples():
    """An identity basis, a sampler alias and a metric, each one registration (the whole
    diff a new concept needs), removed again afterwards."""
    from squeezed_diffusion.core.samplers import Sampler, ddpm_step
    from squeezed_diffusion.metrics import METRICS, Metric

    class IdentityBasis(Basis):
        """Every channel its own group: squeezing scales all directions alike."""

        name = "identity"
        summary = "every channel its own group (an example)"

        def __init__(self, channels: int = 3, eigenvalues=None, metadata=None) -> None:
            super().__init__(eigenvalues, metadata)
            self.channels = int(channels)

        @classmethod
        def fit(cls, batches, max_images=None):
            first = next(iter(batches))
            return cls(first.shape[1], eigenvalues=torch.ones(first.shape[1]))

        group_dims = property(lambda self: (1,) * self.channels)
        ambient_dim = property(lambda self: self.channels)

        def check_shape(self, shape):
            if shape[1] != self.channels:
                raise ValueError("wrong channels")

        def scale_sum(self, terms):
            out = 0
            for x, group, _rest in terms:
                out = out + x * group.view(group.shape[0], -1, 1, 1)
            return out

        def _tensors(self):
            return {}

        def _config(self):
            return {"channels": self.channels}

    SAMPLERS.register(
        "ancestral",
        Sampler("ancestral", ddpm_step, "another name for ddpm"),
    )
    METRICS.register(
        "brightness",
        Metric(
            "brightness", "mean pixel value of the samples (an example)", {"brightness": True},
            compute=lambda gen, ref: {"brightness": float(gen.float().mean())}, space="pixels",
        ),
    )  # fmt: skip
    yield IdentityBasis
    BASES.unregister("identity")
    SAMPLERS.unregister("ancestral")
    METRICS.unregister("brightness")


def test_the_metric_table_refuses_a_key_clash_or_an_unmapped_output() -> None:
    """Results are one mapping by key: a second metric with a taken key would overwrite
    the first's number, and an output mapped to no key would be dropped."""
    from squeezed_diffusion.metrics import METRICS, Metric

    with pytest.raises(ValueError, match=r"result key\(s\) fd_effnet belong to another metric"):
        METRICS.register("fd2", Metric("fd2", "a clash", {"fd_effnet": False}, compute=len))
    with pytest.raises(ValueError, match=r"outputs name \[.fd.\] but keys are \[.fd2.\]"):
        Metric(
            "fd2", "a typo", {"fd2": False}, "effnet", "fid", {"frechet_inception_distance": "fd"}
        )
    with pytest.raises(ValueError, match="metric 'fd_pixels8' is already registered"):
        METRICS.register("fd_pixels8", METRICS.get("fd_pixels8"))  # not a key clash with itself
    assert "fd2" not in METRICS


def test_a_registered_basis_sampler_and_metric_reach_every_consumer(registered_examples, tmp_path):
    from squeezed_diffusion.core.samplers import sampler_for_scheduler
    from squeezed_diffusion.evaluation.report.build import intro
    from squeezed_diffusion.evaluation.sweep import EvalSpec
    from squeezed_diffusion.metrics import evaluate
    from squeezed_diffusion.pipelines import SqueezedDDPMScheduler, scheduler_from_process
    from squeezed_diffusion.training.config import TrainConfig

    identity = registered_examples
    # the CLI's choices and help
    assert "identity" in _help("fit-basis") and "identity" in _help("train")
    assert "ancestral" in _help("sample") and "ancestral" in _help("evaluate")
    assert "brightness" in _help("evaluate")
    # config validation
    cfg = TrainConfig(basis="identity", strength=-0.4, sample_sampler="ancestral", steps=1)
    cfg.validate()
    assert (cfg.basis, cfg.basis_options) == ("identity", {})
    EvalSpec(sampler="ancestral", metrics=("brightness",)).validate()
    # the process and the schedulers
    proc = SqueezedDiffusion(identity(3), "sdm", [-0.4, 0.0, 0.0])
    scheduler = scheduler_from_process(proc, sampler="ancestral")
    scheduler.save_pretrained(tmp_path)
    loaded = SqueezedDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.basis == "identity" and loaded.config.sampler == "ancestral"
    assert torch.equal(loaded.process.sigma_table(), proc.sigma_table())
    assert sampler_for_scheduler("ddpm", loaded.config).name == "ancestral"
    gen = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
    a, b = (proc.sample(lambda x, t: 0.5 * x, (2, 3, 4, 4), 5, s, generator=g, progress=False)
            for s, g in zip(("ancestral", "ddpm"), gen, strict=True))  # fmt: skip
    assert torch.equal(a, b)
    # the metric table: evaluation and the report
    images = torch.full((4, 3, 8, 8), 100, dtype=torch.uint8)
    assert evaluate(images, images, ["brightness"])["brightness"] == 100.0
    assert "Higher is better for brightness" in intro({"brightness"})


def test_config_and_cli_read_basis_options_from_the_basis(tmp_path, capsys) -> None:
    from squeezed_diffusion.training.config import TrainConfig

    squeezed = {"strength": -0.4, "steps": 1}  # at strength 0 a basis shapes nothing
    assert TrainConfig(basis="pca", **squeezed).validate().basis_options == {"k": 16}
    assert TrainConfig(basis="pixel_pca", **squeezed).validate().basis == "pca"  # 0.1.0's name
    with pytest.raises(ValueError, match="basis 'channel' has no option"):
        TrainConfig(basis="channel", basis_options={"k": 3}, **squeezed).validate()
    arr = tmp_path / "x.npy"
    np.save(arr, np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8))
    argv = ["train", "--dataset", "array", "--data-dir", str(arr), "--out", str(tmp_path / "r")]
    assert main([*argv, "--steps", "1", "--strength", "-0.4", "--basis-k", "3"]) == 2  # no k
    assert "basis 'channel' has no option(s) k" in capsys.readouterr().err


# -- run folders written by 0.1.0 -------------------------------------------------------------
def _old_package(tmp_path: Path) -> Path:
    """The package as of 0.1.0, from git (a clean clone of the repository has it)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    have = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{V010}^{{commit}}"])
    if have.returncode != 0:
        pytest.skip(f"commit {V010} (0.1.0) is not in this clone (a shallow clone?)")
    archive = tmp_path / "old.tar"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), V010, "src"],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    return tmp_path / "old" / "src"


def test_run_folders_written_by_0_1_0_load_resume_and_sample(tmp_path) -> None:
    from squeezed_diffusion.training.run import Run

    old_src = _old_package(tmp_path)
    data = tmp_path / "data.npy"
    rng = np.random.default_rng(0)
    np.save(data, rng.integers(0, 255, (32, 8, 8, 3), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": str(old_src), "SQDM_CACHE": str(tmp_path / "old-cache")}
    runs = {"hdm-channel": ("hdm", "-0.4", "channel"), "sdm-pca": ("sdm", "-0.8", "pca")}
    for name, (variant, strength, basis) in runs.items():
        argv = [
            "train", "--dataset", "array", "--data-dir", str(data), "--out", str(tmp_path / name),
            "--model", "tiny", "--steps", "2", "--batch-size", "8", "--checkpoint-every", "2",
            "--sample-steps", "2", "--variant", variant, "--strength", strength, "--basis", basis,
            "--quiet",
        ]  # fmt: skip
        code = "import sys, squeezed_diffusion.cli as c; print(c.__file__); sys.exit(c.main(sys.argv[1:]))"
        old = subprocess.run(
            [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True
        )
        assert old.returncode == 0, old.stderr[-2000:]
        assert old.stdout.startswith(str(old_src))  # the 0.1.0 code wrote it
    saved = yaml.safe_load((tmp_path / "sdm-pca" / "config.yaml").read_text())
    assert "basis_k" in saved and "basis_options" not in saved  # the 0.1.0 layout
    for name, (variant, strength, basis) in runs.items():
        run = Run(tmp_path / name)
        proc = run.process()
        assert (proc.variant, float(proc.strength[0]), proc.basis.name) == (
            variant,
            float(strength),
            basis,
        )
        assert run.config().basis_options == ({"k": 16} if basis == "pca" else {})
        resume = ["train", "--out", str(run.path), "--resume", "latest", "--steps", "3", "--quiet"]
        assert main(resume) == 0
        assert (
            json.loads((run.path / "checkpoints" / "step-00000003" / "state.json").read_text())[
                "step"
            ]
            == 3
        )
        out = tmp_path / f"{name}.npz"
        assert (
            main(
                [
                    "sample",
                    str(run.path),
                    "--num",
                    "2",
                    "--steps",
                    "2",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        assert np.load(out)["images"].shape == (2, 8, 8, 3)


_V010_SCRIPT = """
import sys, warnings
import torch
from squeezed_diffusion import SAMPLERS, TARGETS, Basis, ChannelBasis, SqueezedDiffusion, sample

warnings.simplefilter("ignore", DeprecationWarning)  # Basis.load is deprecated, still works
torch.manual_seed(0)
ChannelBasis.fit([torch.rand(16, 3, 4, 4) * 2 - 1]).save(sys.argv[1] + ".basis")
proc = SqueezedDiffusion(Basis.load(sys.argv[1] + ".basis"), "hdm", -0.4, target="squeezed")
x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4) * 0.5
results = {}
assert "epsilon" in TARGETS or "squeezed" in TARGETS  # 0.2 names the targets as diffusers
for name in ("ddpm", "ddim", "ddpm-paper"):
    assert name in SAMPLERS and name in SAMPLERS.keys()
    step = SAMPLERS[name]
    g = torch.Generator().manual_seed(1)
    results[name] = step(proc, out, x, 500, 480, generator=g, eta=0.0, clip=True).prev_sample
results["sample"] = sample(proc, lambda x, t: 0.1 * x, (2, 3, 4, 4), num_steps=5,
                           generator=torch.Generator().manual_seed(2))
torch.save(results, sys.argv[1])
"""


def test_0_1_0_user_code_runs_and_gives_the_same_numbers(tmp_path) -> None:
    """A script written against 0.1.0's public API (``SAMPLERS`` as a dict of step
    functions, ``Basis.load``, ``target=``) runs today and steps to the same tensors."""
    script = tmp_path / "user.py"
    script.write_text(_V010_SCRIPT)
    outputs = {}
    for version, src in (("0.1.0", _old_package(tmp_path)), ("now", PACKAGE.parent)):
        env = {**os.environ, "PYTHONPATH": str(src)}
        out = tmp_path / f"{version}.pt"
        done = subprocess.run(
            [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{version}: {done.stderr[-2000:]}"
        outputs[version] = torch.load(out)
    old, now = outputs["0.1.0"], outputs["now"]
    for name in ("ddpm", "ddim", "ddpm-paper", "sample"):
        torch.testing.assert_close(now[name], old[name], rtol=1e-5, atol=1e-5, msg=name)


def test_a_registry_refuses_names_that_would_point_elsewhere() -> None:
    """An alias already taken (0.1.0's pixel_pca would load another basis), a name taken, an
    empty name: errors, and the registry is left as it was."""
    from squeezed_diffusion.core import BASES, SAMPLERS
    from squeezed_diffusion.core.samplers import Sampler, ddpm_step

    before = (SAMPLERS.names(), BASES.get("pixel_pca"))
    cases = [
        (lambda: SAMPLERS.register("mine", Sampler("mine", ddpm_step, "x"), ("ddim",)), "'ddim' is already"),
        (lambda: BASES.register("pca2", object(), ("pixel_pca",)), "basis 'pixel_pca' is already"),
        (lambda: SAMPLERS.register("ddpm", Sampler("ddpm", ddpm_step, "x")), "'ddpm' is already"),
        (lambda: SAMPLERS.register("", Sampler("", ddpm_step, "x")), "must be a non-empty string"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert (SAMPLERS.names(), BASES.get("pixel_pca")) == before
