"""Training configuration: one dataclass, YAML presets, validation with one-line errors.

Choices are read from the registries that declare them (datasets, UNet presets, variants,
profiles, targets, bases and their options, samplers), never listed here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core import BASES, PROFILES, SAMPLERS, VARIANTS
from ..core.basis import basis_options
from ..core.fileio import atomic_write
from ..core.process import canonical_prediction_type, merge_target
from ..core.samplers import checked_sampler
from ..core.values import is_integer, is_number
from ..data import DATASETS, ImageDataset, check_options, load_dataset
from ..models import PRESETS as MODEL_PRESETS
from ..models import check_resolution

PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = (None, "tensorboard", "wandb", "all")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _float32(v: float) -> bool:
    """Finite in float32, which the optimiser computes in (1e308 would fail inside it)."""
    return abs(v) <= float(np.finfo(np.float32).max)


# field -> (test, what is allowed): every numeric field, so a bad value is a one-line error
# before any work (optimisers and schedulers would otherwise fail late, or not at all).
_RANGES = {
    "strength": (_finite, "a finite number"),
    "num_train_timesteps": (lambda v: v >= 1 and v == int(v), "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "grad_accum": (lambda v: v >= 1, "an integer >= 1"),
    "lr": (lambda v: _float32(v) and v > 0, "a number > 0 finite in float32 (<= 3.4e38)"),
    "adam_betas": (lambda v: 0 <= v < 1, "two numbers in [0, 1)"),
    "weight_decay": (lambda v: _float32(v) and v >= 0, "a number >= 0 finite in float32"),
    "adam_eps": (lambda v: _float32(v) and v > 0, "a number > 0 finite in float32"),
    "warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "grad_clip": (
        lambda v: _float32(v) and v >= 0,
        "a number >= 0 finite in float32 (0: no clipping)",
    ),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ema_inv_gamma": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "ema_power": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "log_every": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: v >= 1, "an integer >= 1"),
    "keep_checkpoints": (lambda v: v >= 1, "an integer >= 1"),
    "sample_every": (lambda v: v >= 0, "an integer >= 0 (0: only at the end)"),
    "sample_num": (lambda v: v >= 1, "an integer >= 1"),
    "sample_steps": (lambda v: v >= 1, "an integer >= 1"),
    "eval_every": (lambda v: v >= 0, "an integer >= 0 (0: no evaluation during training)"),
    "eval_num": (lambda v: v >= 2, "an integer >= 2"),
    "eval_steps": (lambda v: v >= 1, "an integer >= 1"),
    "seed": (lambda v: 0 <= v < 2**32 and v == int(v), "an integer in [0, 2**32)"),
}


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the field type ``hint``: YAML and Python callers can hand over
    anything, and ``hflip: "no"`` would otherwise read as true, ``steps: 1.5`` train 2 steps."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    if hint is float:
        return is_number(value)
    if hint is int:
        return is_integer(value)
    return value is None if hint is type(None) else isinstance(value, hint)


def _plain(value: Any) -> Any:
    """Python's own scalars and lists for numpy scalars and tuples: the types the checks
    below know and YAML writes."""
    if isinstance(value, np.generic):
        return value.item()
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _type_name(hint: Any) -> str:
    """``hint`` in the words of the error message."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return "a mapping" if typing.get_origin(hint) is dict else names.get(hint, "empty")


# Fields a resumed run may change: its length, and bookkeeping that does not alter what it
# trains (evaluation during training forks the RNG; compiling changes float rounding only).
RESUMABLE = {
    "steps",
    "epochs",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_every",
    "sample_num",
    "sample_steps",
    "sample_sampler",
    "sample_x0",
    "compile",
    "compile_mode",
    "channels_last",
    "log_with",
    "eval_every",
    "eval_metrics",
    "eval_num",
    "eval_steps",
    "eval_sampler",
    "eval_x0",
    "eval_num_reference",
}
# Where the data lie: a run (or a sweep) may move, or find its data elsewhere; the data
# themselves are checked on resume (the basis' dataset fingerprint).
WHERE_DATA = {"data_dir", "download"}
LR_SCHEDULES = ("cosine", "constant")
# Fields that shape the squeezing: isotropic noise has none, so they have no effect there.
ISOTROPIC_IGNORES = ("strength", "profile", "basis", "basis_options")
# Evaluation during training: set without eval_every, they would have no effect.
EVAL_FIELDS = (
    "eval_metrics", "eval_num", "eval_steps", "eval_sampler", "eval_x0", "eval_num_reference"
)  # fmt: skip
# 0.1.0 configs held the PCA and DCT options as fields of their own.
_LEGACY_BASIS_FIELDS = {"basis_k": ("pca", "k"), "basis_cutoffs": ("dct", "cutoffs")}


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
    basis_options: dict[str, Any] = field(default_factory=dict)  # the basis' fit options
    prediction_type: str = "epsilon"  # what the UNet predicts (core/process.py PREDICTION_TYPES)
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
    compile: bool | None = None  # torch.compile the UNet; None: on CUDA only (state.py says why)
    compile_mode: str = "default"  # torch.compile mode (benchmarks/gpu_check.sh measures them)
    channels_last: bool = False  # NHWC activations on CUDA (gpu_check.py measures both)
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
    sample_x0: str = "clip"  # the grids' rule for the predicted x_0 (core/samplers.py X0_RULES)
    # trackers and evaluation during training (training/monitor.py)
    log_with: str | None = None  # tensorboard, wandb or all, through accelerate's trackers
    eval_every: int = 0  # steps between evaluations of the EMA weights (0: none)
    eval_metrics: list[str] = field(default_factory=lambda: ["fd_effnet"])
    eval_num: int = 500
    eval_steps: int = 50
    eval_sampler: str = "ddpm"
    eval_x0: str = "clip"
    eval_num_reference: int | None = 5000  # at most: all the images where there are fewer

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the field, the bad value and what is allowed."""
        for name, hint in typing.get_type_hints(TrainConfig).items():
            setattr(self, name, _plain(getattr(self, name)))
            if not _fits(getattr(self, name), hint):
                raise ValueError(f"{name} must be {_type_name(hint)}, got {getattr(self, name)!r}")
        choices = {
            "dataset": DATASETS,
            "model": tuple(MODEL_PRESETS),
            "variant": VARIANTS,
            "profile": PROFILES,
            "mixed_precision": PRECISIONS,
            "lr_schedule": LR_SCHEDULES,
            "compile_mode": COMPILE_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(allowed)}"
                )
        check_options(self.dataset, self.data_dir, self.download, self.skip_bad_images)
        for name in ("prediction_type", "basis", "basis_options"):  # options after their basis
            setattr(self, name, _canonical(self, name))
        SAMPLERS.canonical(self.sample_sampler)
        SAMPLERS.canonical(self.eval_sampler)
        if self.log_with not in TRACKERS:
            raise ValueError(
                f"unknown log_with {self.log_with!r}; choose one of: tensorboard, wandb, all"
            )
        from ..metrics.table import check_metrics

        check_metrics(self.eval_metrics)
        if self.eval_num_reference is not None and self.eval_num_reference < 2:
            raise ValueError(
                f"eval_num_reference must be >= 2 or empty (all), got {self.eval_num_reference}"
            )
        for name, (ok, allowed) in _RANGES.items():
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if not all(is_number(v) and ok(v) for v in values):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        if self.resolution is not None:
            check_resolution(self.model, self.resolution)
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be two numbers, got {self.adam_betas!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of --steps or --epochs")
        if (self.steps is not None and self.steps < 1) or (
            self.epochs is not None and not (_finite(self.epochs) and self.epochs > 0)
        ):
            raise ValueError(
                f"training length must be positive and finite, got steps={self.steps} "
                f"epochs={self.epochs}"
            )
        refuse_inert_settings(self)
        for name in ("sample", "eval") if self.eval_every else ("sample",):
            sampler, steps = getattr(self, f"{name}_sampler"), getattr(self, f"{name}_steps")
            x0 = getattr(self, f"{name}_x0")
            try:
                entry = checked_sampler(sampler, x0=x0)
            except ValueError as err:
                raise ValueError(
                    f"--{name}-x0 {x0} with --{name}-sampler {sampler}: {err}"
                ) from None
            try:  # checked now, not when the first grid or evaluation is due, after training
                entry.schedule(self.num_train_timesteps, steps)
            except ValueError as err:
                raise ValueError(
                    f"--{name}-steps {steps} with --{name}-sampler {sampler}: {err}"
                ) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_data(self) -> ImageDataset:
        """The training images. No seed: seeds differ only in training randomness, so every
        seed of a configuration (and its evaluation reference) sees the same images."""
        return load_dataset(
            self.dataset, self.data_dir, resolution=self.resolution, subset=self.subset,
            download=self.download, skip_bad_images=self.skip_bad_images,
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """A saved config. An isotropic run (the variant, or strength 0) saved with squeezing
        settings (earlier versions accepted them; they had no effect) reads with the defaults,
        so it resumes, and pairs in a sweep, as the same run made today."""
        values = _read_yaml(Path(path))
        if is_isotropic(values):
            values = without_squeezing(values)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from its fields; 0.1.0's ``basis_k``/``basis_cutoffs`` still load."""
        values = _upgrade(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; see `sqdm train --help`"
            )
        return cls(**values)


def _canonical(config: TrainConfig, name: str) -> Any:
    """``config``'s field ``name`` as :meth:`TrainConfig.validate` stores it (an alias as its
    registered name, a basis' options complete), so that the same setting compares equal."""
    value = getattr(config, name)
    if name == "prediction_type":
        return canonical_prediction_type(value)
    if name == "basis":
        return BASES.canonical(value)
    if name == "basis_options":
        return basis_options(BASES.canonical(config.basis), value)
    return value


def training_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The fields, in canonical form, whose values make ``saved`` and ``wanted`` train
    different models: all but the folder, where the data lie (``data_dir``, ``download``: a
    sweep run from elsewhere, or moved; the data themselves are checked on resume) and the
    bookkeeping that :data:`RESUMABLE` allows to change (logging, checkpoints, sample grids,
    evaluation during training), length included."""
    bookkeeping = (RESUMABLE - {"steps", "epochs"}) | WHERE_DATA
    names = [f.name for f in fields(TrainConfig) if f.name != "out"]
    return [
        name
        for name in names
        if name not in bookkeeping and _canonical(saved, name) != _canonical(wanted, name)
    ]


def refuse_inert_settings(config: TrainConfig, given: Mapping[str, Any] | None = None) -> None:
    """Settings of ``config`` that would have no effect: a one-line error, never ignored.
    ``given``: the flags a user passed, refused even at their default values; without it, the
    fields that differ from the defaults. Only a given ``--variant`` counts at strength 0: a
    config's variant can come from a preset or an earlier run, where it is harmless."""
    default = TrainConfig()

    def flags(names: tuple[str, ...]) -> list[str]:
        fields = [n for n in names if n != "basis_options"]
        if given is None:
            changed = [n for n in fields if getattr(config, n) != getattr(default, n)]
            own = basis_options(config.basis, {})
            options = [k for k, v in config.basis_options.items() if v != own.get(k)]
        else:
            changed = [n for n in fields if n in given]
            options = list(given.get("basis_options", {}))
        options = options if "basis_options" in names else []
        return [f"--{n.replace('_', '-')}" for n in changed] + [f"--basis-{k}" for k in options]

    isotropic = is_isotropic(vars(config))
    rules = (
        (
            config.variant == "isotropic",
            ISOTROPIC_IGNORES,
            "with variant isotropic, whose noise has no squeezing to shape: drop them or choose "
            "--variant sdm/hdm",
        ),
        (  # c_i(t) = 1 in every direction: the variant, profile and basis shape nothing
            isotropic and config.variant != "isotropic",
            ("variant",) * (given is not None) + ISOTROPIC_IGNORES[1:],
            "with strength 0, where the noise is isotropic: drop them, or give a non-zero "
            "--strength",
        ),
        (
            config.compile is False,
            ("compile_mode",),
            "with --no-compile, where compile_mode has no effect: drop one of the two",
        ),
        (
            config.eval_every == 0,
            EVAL_FIELDS,
            "without --eval-every: add --eval-every N or drop them",
        ),
    )
    for applies, names, why in rules:
        inert = flags(names) if applies else []
        if inert:
            raise ValueError(f"{', '.join(inert)} given {why}")


def is_isotropic(values: Mapping[str, Any]) -> bool:
    """Whether a config's noise is isotropic: the variant says so, or the strength is 0 (a
    strength that is no number is neither: validation names it)."""
    strength = values.get("strength", 0.0)
    return values.get("variant") == "isotropic" or (is_number(strength) and strength == 0)


def without_squeezing(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the fields that shape squeezing, which isotropic noise has none of."""
    return {k: v for k, v in values.items() if k not in ISOTROPIC_IGNORES}


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """0.1.0 field layouts in today's: the options of the run's own basis move into
    ``basis_options`` (the other basis' option, which 0.1.0 always wrote, is dropped), and
    ``target`` ('squeezed', 'unit') is ``prediction_type``."""
    values = dict(values)
    if "target" in values:
        values["prediction_type"] = merge_target(
            values.get("prediction_type"), values.pop("target")
        )
    basis = values.get("basis", "channel")
    for old, (owner, option) in _LEGACY_BASIS_FIELDS.items():
        if old in values:
            value = values.pop(old)
            if basis in BASES and BASES.canonical(basis) == owner:
                values["basis_options"] = {option: value, **values.get("basis_options", {})}
    return values


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


def shipped(folder: str) -> list[str]:
    """The names of the YAML files the package ships in ``folder`` (presets, sweeps)."""
    files = resources.files("squeezed_diffusion") / folder
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def preset_names() -> list[str]:
    return shipped("presets")


def load_preset(name: str) -> dict[str, Any]:
    """A preset's fields, following ``inherit:`` chains."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    path = resources.files("squeezed_diffusion") / "presets" / f"{name}.yaml"
    values = yaml.safe_load(path.read_text())
    parent = values.pop("inherit", None)
    return {**load_preset(parent), **values} if parent else values


def absolute_data_dir(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a relative ``data_dir`` made absolute (against the working directory),
    so that a run, or a sweep cell, can be resumed and evaluated from anywhere."""
    data_dir = values.get("data_dir")
    if data_dir is not None and not Path(data_dir).expanduser().is_absolute():
        values = {**values, "data_dir": str(Path.cwd() / data_dir)}
    return values


def resolve_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Preset values, then every override that is not ``None``; validated.

    ``variant="isotropic"`` over a squeezing preset is that preset's isotropic baseline: the
    preset's strength, profile and basis are dropped (an override of them to anything but
    the default is refused)."""
    values = load_preset(preset) if preset else {}
    given = absolute_data_dir({k: v for k, v in overrides.items() if v is not None})
    if given.get("variant") == "isotropic":
        values = without_squeezing(values)
    values.update(given)
    for length, other in (("steps", "epochs"), ("epochs", "steps")):  # a flag beats the preset's
        if overrides.get(length) is not None and overrides.get(other) is None:
            values.pop(other, None)
    return TrainConfig.from_dict(values).validate()


def resume_config(saved: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The saved config of a run being resumed, with the bookkeeping ``overrides`` honoured
    (a longer ``steps``/``epochs``, other log, checkpoint, sample and evaluation settings,
    where the data lie).

    Overrides are compared in canonical form (``--target squeezed`` is the saved
    ``epsilon``); anything else that differs from the saved value would change what the run
    trains halfway through: a one-line error, never silently ignored. They are compared
    before the whole config is validated, so the error names the flag that differs (not, say,
    the saved strength that ``--variant isotropic`` would leave without effect).
    """
    given = {k: v for k, v in _upgrade(overrides).items() if k != "out" and v is not None}
    given = absolute_data_dir(given)
    values = saved.to_dict()
    if overrides.get("out") is not None:  # the folder being resumed, wherever it now lies
        values["out"] = str(overrides["out"])
    if given.keys() & {"steps", "epochs"}:
        values.update(steps=None, epochs=None)
    wanted = TrainConfig.from_dict({**values, **given})
    # an isotropic run has no squeezing to shape: validate() says that of a given profile or
    # basis (a run saved by 0.1.0 with them has the defaults now, which they would "differ" from)
    shapes_nothing = set(ISOTROPIC_IGNORES) - {"strength"} if is_isotropic(values) else set()
    for key in given.keys() - shapes_nothing:
        if key not in RESUMABLE | WHERE_DATA and _canonical(wanted, key) != _canonical(saved, key):
            raise ValueError(
                f"{_as_flags(key, given[key])} differs from the run's saved "
                f"{getattr(saved, key)!r}; a resumed run keeps its config (drop the flag, or "
                "train a new --out)"
            )
    return wanted.validate()


def _as_flags(key: str, value: Any) -> str:
    """Config field ``key`` at ``value`` as ``sqdm train`` spells it: a switch by its name
    (``--no-hflip``), basis options one flag each (``--basis-k 3``)."""
    if key == "basis_options":
        return " ".join(_as_flags(f"basis_{k}", v) for k, v in value.items())
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else value
    return f"--{name} {shown}"
