"""The run folder that ``sqdm train`` writes, and loading what it holds, for every consumer.

Layout of a run folder (0.1.0 runs have the same one and load unchanged)::

    config.yaml            the resolved TrainConfig
    basis.safetensors      the fitted basis
    log.jsonl              one line per log step (loss, lr, images/s, evaluations)
    checkpoints/step-N/    weights, EMA weights, optimiser and RNG state (training/checkpoint.py)
    samples/step-N.png     EMA sample grids during training (--sample-every)
    samples/final.png      the EMA sample grid at the end of training
    samples/trajectory.png predicted x_0 along the final grid's sampling, for four samples
    trackers/              TensorBoard and wandb files (--log-with)

Sampling, evaluation, sweeps, reports, the demo and ``SqueezedDDPMPipeline.from_run`` all go
through :class:`Run`, so a run is read one way everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import UNet2DModel
from safetensors.torch import load_file

from ..core import Basis, SqueezedDiffusion, load_basis
from ..core.fileio import atomic_write
from ..data import ImageDataset
from ..models import build_model
from .checkpoint import CheckpointError, find_checkpoint, list_checkpoints, load_weights
from .config import TrainConfig


class Run:
    """A run folder: paths of its parts and loaders for them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    basis_path = property(lambda self: self.path / "basis.safetensors")
    log_path = property(lambda self: self.path / "log.jsonl")
    samples_dir = property(lambda self: self.path / "samples")
    final_samples_path = property(lambda self: self.samples_dir / "final.png")
    trajectory_path = property(lambda self: self.samples_dir / "trajectory.png")
    trackers_dir = property(lambda self: self.path / "trackers")

    def step_samples_path(self, step: int) -> Path:
        """The sample grid written at ``step`` during training."""
        return self.samples_dir / f"step-{step:08d}.png"

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def exists(self) -> bool:
        """Whether the folder holds a run (its config.yaml)."""
        return self.config_path.is_file()

    def check_free(self) -> None:
        """Refuse a folder a new run would damage: one that holds a run's checkpoints, or files
        but no run (they would be overwritten, or mixed into the run's log). A run stopped
        before its first checkpoint (its config.yaml, no checkpoint) cannot be resumed; the
        new run replaces it."""
        if list_checkpoints(self.path):
            raise ValueError(
                f"{self.path} already holds a run; pass --resume latest or choose another --out"
            )
        if not self.path.is_dir() or all(p.name.startswith(".") for p in self.path.iterdir()):
            return  # new, empty, or holding only hidden files (.gitkeep), which it leaves
        if not self.exists():
            raise ValueError(
                f"{self.path} holds files but no run (no config.yaml); choose a new or empty --out"
            )
        try:
            self.config().validate()  # another tool's config.yaml may share field names
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{self.path} holds a config.yaml that is not a run's ({err}); choose a new or "
                "empty --out"
            ) from None

    def runs_inside_hint(self) -> str:
        """For a folder of runs given where one run is expected (``runs/demo``): the runs it
        holds and one to pass; empty otherwise."""
        inside = (
            sorted(p.parent.name for p in self.path.glob("*/config.yaml"))
            if self.path.is_dir()
            else []
        )
        if not inside:
            return ""
        return f"it holds the runs {', '.join(inside)}: pass one, e.g. {self.path / inside[0]}"

    def config(self) -> TrainConfig:
        """The resolved config the run was trained with."""
        if not self.exists():
            fix = self.runs_inside_hint() or "pass the --out of `sqdm train`"
            raise CheckpointError(f"{self.path} is not a run folder (no config.yaml); {fix}")
        return TrainConfig.load(self.config_path)

    def basis(self) -> Basis:
        return load_basis(self.basis_path)

    def process(self, config: TrainConfig | None = None) -> SqueezedDiffusion:
        """The run's squeezed process, rebuilt from its config and basis (no weights)."""
        cfg = config or self.config()
        return SqueezedDiffusion.from_fields(self.basis(), cfg.to_dict())

    def unet(self, ema: bool = True, checkpoint: str = "latest") -> UNet2DModel:
        """The UNet of a checkpoint (the newest that verifies by default), in eval mode."""
        cfg = self.config()
        shape = self.image_shape()
        ckpt = find_checkpoint(self.path, checkpoint)
        unet = build_model(cfg.model, shape[0], shape[-1])
        weights = load_file(str(ckpt / ("ema.safetensors" if ema else "model.safetensors")))
        load_weights(unet, weights, ckpt)
        return unet.eval()

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the run's images (and samples), read without loading weights."""
        c, h, w = self.basis().metadata["image_shape"]
        return c, h, w

    def load(
        self, ema: bool = True, checkpoint: str = "latest"
    ) -> tuple[UNet2DModel, SqueezedDiffusion]:
        """``(unet, process)``, EMA weights by default, ready for sampling."""
        return self.unet(ema, checkpoint), self.process()

    def reference(self) -> ImageDataset:
        """The images the run trained on: its evaluation reference, whatever its seed."""
        return self.config().load_data()

    def log(self) -> list[dict[str, Any]]:
        """The log records, oldest first; a last line without its newline (being written, or
        cut by a kill) is not a record yet."""
        if not self.log_path.is_file():
            return []
        text = self.log_path.read_text()
        finished = text[: text.rfind("\n") + 1]
        return [json.loads(ln) for ln in finished.splitlines() if ln]

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run's log reads as one uninterrupted run)."""
        if self.log_path.is_file():
            kept = [r for r in self.log() if r["step"] <= step]
            atomic_write(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))
