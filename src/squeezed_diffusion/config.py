"""Training configuration: one dataclass, YAML presets, validation with one-line errors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .basis import Basis
from .models import PRESETS as MODEL_PRESETS
from .process import PROFILES, TARGETS, VARIANTS, SqueezedDiffusion
from .samplers import SAMPLERS

BASES = ("channel", "pca", "dct")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run folder."""

    out: str = "runs/run"
    # data
    dataset: str = "photos"
    data_dir: str | None = None
    resolution: int | None = None
    subset: int | None = None
    hflip: bool = True
    download: bool = False
    skip_bad_images: bool = False
    # model and process
    model: str = "tiny"
    variant: str = "sdm"
    strength: float = 0.0
    profile: str = "beta"
    basis: str = "channel"
    basis_k: int = 16
    basis_cutoffs: list[float] = field(default_factory=lambda: [0.25])
    target: str = "squeezed"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    # optimisation
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-6
    adam_eps: float = 1e-8
    lr_schedule: str = "cosine"
    warmup_steps: int = 500
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    compile: bool = False  # torch.compile the UNet (worth it on GPUs; slow to start)
    ema_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    seed: int = 42
    skip_nonfinite: bool = False
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 0
    sample_num: int = 16
    sample_steps: int = 50
    sample_sampler: str = "ddpm"

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the field, the bad value and what is allowed."""
        from .data import DATASETS

        choices = {
            "dataset": DATASETS,
            "model": tuple(MODEL_PRESETS),
            "variant": VARIANTS,
            "profile": PROFILES,
            "basis": BASES,
            "target": TARGETS,
            "mixed_precision": PRECISIONS,
            "sample_sampler": tuple(SAMPLERS),
            "lr_schedule": ("cosine", "constant"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(allowed)}"
                )
        for name in ("strength", "lr", "weight_decay", "grad_clip", "ema_decay"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        positive = ("batch_size", "grad_accum", "log_every", "sample_steps", "keep_checkpoints")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of --steps or --epochs")
        if (self.steps is not None and self.steps < 1) or (
            self.epochs is not None and self.epochs <= 0
        ):
            raise ValueError(
                f"training length must be positive, got steps={self.steps} epochs={self.epochs}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        tmp = Path(path).with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(_read_yaml(Path(path)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; see `sqdm train --help`"
            )
        return cls(**values)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(
            f"{path} is not valid YAML ({err.__class__.__name__}); fix the file"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields")
    return data


def preset_names() -> list[str]:
    files = resources.files("squeezed_diffusion") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset's fields, following ``inherit:`` chains."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    path = resources.files("squeezed_diffusion") / "presets" / f"{name}.yaml"
    values = yaml.safe_load(path.read_text())
    parent = values.pop("inherit", None)
    return {**load_preset(parent), **values} if parent else values


def resolve_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Preset values, then every override that is not ``None``; validated."""
    values = load_preset(preset) if preset else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    for length, other in (("steps", "epochs"), ("epochs", "steps")):  # a flag beats the preset's
        if overrides.get(length) is not None and overrides.get(other) is None:
            values.pop(other, None)
    return TrainConfig.from_dict(values).validate()


def build_process(cfg: TrainConfig, basis: Basis) -> SqueezedDiffusion:
    """The run's squeezed process from its config and fitted basis."""
    return SqueezedDiffusion(
        basis,
        variant=cfg.variant,
        strength=cfg.strength,
        profile=cfg.profile,
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        target=cfg.target,
    )
