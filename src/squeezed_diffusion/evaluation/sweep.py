"""Sweeps: a grid of runs (dataset x variant x strength x profile x basis x seed ...), each
trained, sampled and evaluated once, collected into one tidy table.

A sweep file is YAML::

    preset: paper-cifar10          # optional: a training preset the cells start from
    base: {steps: 2000, ...}       # TrainConfig fields on top of the preset
    grid:                          # field -> list of values; the cells are the product
      variant: [sdm, hdm]
      strength: [-0.8, -0.4, 0.0]
      seed: [0, 1]
    eval: {num: 2000, steps: 50, sampler: [ddpm, ddim, ddpm-paper],
           metrics: [fd_effnet, prc_effnet], num_reference: 10000}

``grid`` may also be a list of such mappings: the cells are the union of their products
(e.g. one strength list for SDM, another for HDM). Relative ``data_dir`` paths resolve
against the current working directory when the sweep is loaded.

Strength 0 is the isotropic process whatever the variant, and isotropic noise ignores
strength, profile and basis: all such cells collapse into one ``isotropic`` cell per
remaining setting (reported with strength 0), the baseline of every variant.

``eval.sampler`` is one sampler or a list; an entry may be a mapping with its own
``steps``, ``eta`` and ``x0`` (the rule for the predicted x_0, one of ``X0_RULES``;
``{sampler: ddim, steps: 20, x0: none}``), otherwise ``eval.steps``, ``eval.eta`` and
``eval.x0`` apply. Every trained cell is evaluated with each of them (an *evaluation*).

Layout under ``--out``: ``cells/<cell id>/run`` (the training run) and, per evaluation,
``cells/<cell id>/evals/<sampler>-<steps>[-eta<e>][-x0<rule>]/`` with ``samples.npz`` (and
``samples.json``, the sampling settings that made it), ``samples.png`` and ``result.json``
(written last). An evaluation with a ``result.json`` made by the same settings is skipped on
rerun, so adding a sampler to a finished sweep samples and scores only the new one, without
retraining; samples are reused only when they were drawn with the same sampler, steps, eta,
x_0 rule, seed and number; a cell whose run is unfinished resumes from its latest checkpoint.
``results.csv`` and ``results.json`` (one row per cell, evaluation and metric) are rebuilt
from the sweep's finished evaluations: its cells and samplers, scored with its settings.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core import BASES, SAMPLERS, ChannelBasis, SqueezedDiffusion
from ..core.fileio import atomic_write
from ..core.samplers import SAMPLE_BATCH, X0_RULES, checked_sampler
from ..core.values import check_count, is_number
from ..metrics import (
    DEFAULT_PRC_EXTRACTOR,
    OFFLINE_METRICS,
    FeatureWeightsError,
    check_reference,
    check_scoring,
    evaluate,
    extractors_for,
    fetch_weights,
    load_samples,
    result_keys,
)
from ..training.checkpoint import list_checkpoints
from ..training.config import (
    TrainConfig,
    is_isotropic,
    load_preset,
    resolve_config,
    shipped,
    training_differences,
    without_squeezing,
)
from ..training.run import Run

AXES = ("dataset", "variant", "strength", "profile", "basis", "seed")
EVAL_COLUMNS = ("sampler", "steps", "eta", "x0")
TABLE_COLUMNS = (
    "cell",
    *AXES,
    "extra",
    *EVAL_COLUMNS,
    "metric",
    "value",
    "feature_extractor",
    "num_samples",
    "num_reference",
    "train_s",
    "sample_s",
    "eval_s",
    "wall_s",
)
_SWEEP_KEYS = ("description", "preset", "base", "grid", "eval")


@dataclass(frozen=True)
class Evaluation:
    """One way of sampling a trained cell: a sampler, its steps, (DDIM) eta and the rule for
    the predicted x_0 (``X0_RULES``)."""

    sampler: str
    steps: int
    eta: float = 0.0
    x0: str = "clip"

    @property
    def label(self) -> str:
        """Its folder name and report label, e.g. ``ddim-50``, ``ddim-50-eta0.5`` or
        ``ddim-50-x0none``."""
        return (
            f"{self.sampler}-{self.steps}"
            + (f"-eta{_exact(self.eta)}" if self.eta else "")
            + (f"-x0{self.x0}" if self.x0 != "clip" else "")
        )

    @classmethod
    def from_label(cls, label: str) -> Evaluation:
        """The evaluation a :attr:`label` names (sampler aliases canonicalised)."""
        found = _LABEL.fullmatch(label)
        if not found:
            problem = "not a label"
        elif found["sampler"] not in SAMPLERS:
            problem = f"the sampler is one of {', '.join(SAMPLERS)}"
        elif int(found["steps"]) < 1:
            problem = "steps must be >= 1"
        elif found["x0"] not in (None, *X0_RULES):
            problem = f"the x0 rule is one of {', '.join(X0_RULES)}"
        else:
            name = SAMPLERS.canonical(found["sampler"])
            x0 = found["x0"] or "clip"
            return cls(name, int(found["steps"]), float(found["eta"] or 0), x0)
        raise ValueError(
            f"{label}: {problem}; give SAMPLER-STEPS[-etaE][-x0RULE], e.g. dpmpp-2m-20"
        )

    def record(self) -> dict[str, Any]:
        """Its fields as results record them; the default x0 rule is left out, so results
        written before the rule was a setting still match the evaluations they are."""
        fields = dataclasses.asdict(self)
        return fields if self.x0 != "clip" else {k: v for k, v in fields.items() if k != "x0"}


_LABEL = re.compile(
    r"(?P<sampler>.+?)-(?P<steps>\d+)(?:-eta(?P<eta>[\d.]+(?:e[+-]\d+)?))?(?:-x0(?P<x0>.+))?"
)


@dataclass(frozen=True)
class EvalSpec:
    """How every cell is sampled and scored (the ``eval:`` mapping)."""

    num: int = 10_000
    steps: int = 50
    sampler: str | tuple[str | dict, ...] = "ddpm"
    eta: float = 0.0
    x0: str = "clip"
    seed: int = 0
    metrics: tuple[str, ...] = OFFLINE_METRICS
    num_reference: int | None = None
    prc_extractor: str | None = None  # None: DEFAULT_PRC_EXTRACTOR
    batch_size: int | None = None  # the feature extractors'; None: evaluate()'s default
    sample_batch_size: int = SAMPLE_BATCH
    grid_images: int = 64

    @property
    def evaluations(self) -> list[Evaluation]:
        """Every (sampler, steps, eta, x0) this spec evaluates, in the order given."""
        out = []
        for entry in self._entries():
            unknown = sorted(set(entry) - {"sampler", "steps", "eta", "x0"})
            if unknown or "sampler" not in entry:
                raise ValueError(
                    f"eval.sampler entry {entry}: give a sampler name or a mapping of sampler, "
                    f"steps, eta and x0{f' (not {unknown})' if unknown else ''}"
                )
            name = SAMPLERS.canonical(entry["sampler"])
            eta = _number(entry.get("eta", self.eta if SAMPLERS.get(name).uses_eta else 0.0),
                          f"eval.sampler {name}: eta")  # fmt: skip
            steps = check_count(entry.get("steps", self.steps), f"eval.sampler {name}: steps")
            out.append(Evaluation(name, steps, float(eta), str(entry.get("x0", self.x0))))
        return list(dict.fromkeys(out))

    def _entries(self) -> list[dict[str, Any]]:
        """``sampler`` as a list of mappings, as the file gave them."""
        many = isinstance(self.sampler, (list, tuple))
        entries = list(self.sampler) if many else [self.sampler]
        if not entries:
            raise ValueError("eval.sampler is an empty list: name at least one sampler")
        for entry in entries:
            if not isinstance(entry, (str, dict)):
                raise ValueError(
                    f"eval.sampler entry {entry!r}: give a sampler name or a mapping of sampler, "
                    "steps, eta and x0"
                )
        return [{"sampler": e} if isinstance(e, str) else dict(e) for e in entries]

    def validate(self) -> EvalSpec:
        """Checked, with its numbers as Python's (numpy's would fail the results' JSON)."""
        least = {"num": 2, "steps": 1, "seed": 0, "sample_batch_size": 1, "grid_images": 1,
                 "num_reference": 2}  # fmt: skip
        for name, low in least.items():
            value = getattr(self, name)
            if name == "num_reference" and value is None:
                continue
            object.__setattr__(self, name, check_count(value, f"eval.{name}", low))  # frozen
        object.__setattr__(self, "eta", _number(self.eta, "eval.eta"))
        for name in ("x0", "prc_extractor"):
            if not isinstance(getattr(self, name), str) and getattr(self, name) is not None:
                raise ValueError(f"eval.{name} must be a name, got {getattr(self, name)!r}")
        check_scoring(self.metrics, self.prc_extractor, batch_size=self.batch_size,
                      spell=lambda option: f"eval.{option}")  # fmt: skip
        for ev in self.evaluations:
            checked_sampler(ev.sampler, ev.eta, ev.x0)
        return self

    def check_defaults_read(self) -> None:
        """``steps``, ``eta`` and ``x0`` are the defaults of the sampler entries that do not
        set their own (eta: of those that take it); one that no entry reads would be ignored.
        For a file, not for specs built in code, whose entries may carry every setting."""
        takes_eta = ", ".join(name for name, s in SAMPLERS.items() if s.uses_eta)
        for key in ("steps", "eta", "x0"):
            readers = [
                e for e in self._entries()
                if key not in e and (key != "eta" or SAMPLERS.get(e["sampler"]).uses_eta)
            ]  # fmt: skip
            if getattr(self, key) != getattr(EvalSpec, key) and not readers:
                why = f"; eta applies to {takes_eta}" if key == "eta" else ""
                raise ValueError(
                    f"eval.{key} {getattr(self, key)!r} is read by no eval.sampler entry (each "
                    f"sets its own{' or takes none' if key == 'eta' else ''}{why}): drop it"
                )

    def scoring(self) -> dict[str, Any]:
        """The settings a result was scored with: a result made otherwise is redone."""
        keys = ("num", "seed", "metrics", "num_reference")
        scoring = {
            k: list(v) if isinstance(v, tuple) else v for k in keys for v in [getattr(self, k)]
        }
        return {**scoring, "prc_extractor": self.prc_extractor or DEFAULT_PRC_EXTRACTOR}


def _number(value: Any, what: str) -> float:
    """``value`` if it is a number (not a string or a boolean)."""
    if not is_number(value):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return value if isinstance(value, int) else float(value)  # Python's, for the JSON


@dataclass
class Cell:
    """One grid point: its id, its full training config, and the table's axis values."""

    id: str
    config: TrainConfig
    axes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    name: str
    cells: list[Cell]
    eval: EvalSpec


# ------------------------------------------------------------------------------ loading


def sweep_names() -> list[str]:
    return shipped("sweeps")


def _sweep_text(source: str | Path) -> tuple[str, str]:
    """(name, YAML text) of a sweep file, or of a sweep shipped with the package."""
    path = Path(source)
    if path.is_file():
        return path.stem, path.read_text()
    if str(source) in sweep_names():
        shipped = resources.files("squeezed_diffusion") / "sweeps" / f"{source}.yaml"
        return str(source), shipped.read_text()
    if path.is_dir():
        raise IsADirectoryError(f"{source} is a folder; pass a sweep YAML file or a shipped sweep")
    raise FileNotFoundError(
        f"sweep file {source} does not exist and is not a shipped sweep ({', '.join(sweep_names())})"
    )


def load_sweep(
    source: str | Path, out: str | Path = ".", data: Mapping[str, Any] | None = None
) -> Sweep:
    """Parse and validate a sweep; cells get their run folders under ``out/cells``. ``data``
    (``data_dir``, ``download``: where this machine keeps the datasets, which a shipped sweep
    cannot know) replaces those fields of the file's ``base``; a grid that varies them
    refuses it, since it would be ignored there."""
    name, text = _sweep_text(source)
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(spec, dict) or "grid" not in spec:
        raise ValueError(
            f"{source} must be a mapping with a grid: (and optionally preset, base, eval)"
        )
    unknown = sorted(set(spec) - set(_SWEEP_KEYS))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_SWEEP_KEYS)}"
        )
    for key in ("base", "eval"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ValueError(f"{source}: {key} must be a mapping of fields, got {spec[key]!r}")
    eval_fields = {f.name for f in dataclasses.fields(EvalSpec)}
    eval_values = dict(spec.get("eval") or {})
    bad = sorted(set(eval_values) - eval_fields)
    if bad:
        raise ValueError(
            f"{source}: unknown eval field(s) {', '.join(bad)}; allowed: {', '.join(sorted(eval_fields))}"
        )
    for key, one in (("metrics", str), ("sampler", (str, dict))):
        value = eval_values.get(key)
        if key in eval_values and not isinstance(value, (list, one)):
            raise ValueError(f"{source}: eval.{key} must be a name or a list, got {value!r}")
        if isinstance(value, list) or (key == "metrics" and isinstance(value, str)):
            eval_values[key] = (value,) if isinstance(value, str) else tuple(value)
    base = dict(spec.get("base") or {})
    if "out" in base:
        raise ValueError(
            f"{source}: base.out: each cell's run folder is under the sweep's --out; drop it"
        )
    grids = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
    if not grids:
        raise ValueError(
            f"{source}: grid is an empty list; give at least one grid of field -> values"
        )
    data = dict(data or {})
    varied = sorted({k for grid in grids if isinstance(grid, dict) for k in grid if k in data})
    if varied:
        raise ValueError(
            f"{source}: the grid sets {', '.join(varied)} per cell, so one value for every "
            f"cell would be ignored there; drop --{varied[0].replace('_', '-')}"
        )
    base |= data
    try:
        cells = expand(spec.get("preset"), base, grids, Path(out) / "cells")
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        spec_eval = EvalSpec(**eval_values).validate()
        spec_eval.check_defaults_read()
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        check_steps(spec_eval.evaluations, cells)
    except ValueError as err:
        raise ValueError(f"{source}: eval.sampler {err}") from None
    check_processes(cells, source)
    return Sweep(name, cells, spec_eval)


def check_processes(cells: list[Cell], source: object) -> None:
    """Each SDM channel-basis cell's process is valid (its strength within what its profile
    allows), so a bad strength fails at load, not when its cell is reached hours into a
    cluster task. SDM squeezes the principal direction alone, so its validity depends on
    neither the direction nor the number of channels, and the luminance direction of RGB
    stands in for the data's; HDM's range depends on the channel count, which only the data
    tell, so HDM cells (and other bases) are checked when they train."""
    for cell in cells:
        if cell.config.variant != "sdm" or BASES.canonical(cell.config.basis) != "channel":
            continue
        try:
            SqueezedDiffusion.from_fields(ChannelBasis.luminance(3), cell.config.to_dict())
        except ValueError as err:
            raise ValueError(f"{source}: cell {cell.id}: {err}") from None


def check_trained(cells: list[Cell]) -> None:
    """Each cell whose folder holds a run was trained with the cell's settings. A sweep
    folder holds one setting: after an edit of the sweep's training settings (model, steps,
    learning rate, ...) its finished evaluations are of the old setting, so this is a one-line
    error naming what changed, not the old results under the new file."""
    for cell in cells:
        run = Run(cell.config.out)
        if not run.exists():
            continue
        saved = run.config()
        changed = training_differences(saved, cell.config)
        if changed:
            was = ", ".join(f"{k}={getattr(saved, k)!r}" for k in changed)
            now = ", ".join(f"{k}={getattr(cell.config, k)!r}" for k in changed)
            raise ValueError(
                f"{cell.id} was trained with {was}, the sweep now says {now}: give the changed "
                f"sweep another --out, or delete {Path(cell.config.out).parent} to redo the cell"
            )


def check_steps(evaluations: list[Evaluation], cells: list[Cell]) -> None:
    """Each evaluation's step count against the cells' processes (the ODE solvers take at most
    T - 1): a one-line ValueError naming the evaluation now, not after the cells trained."""
    for ev, timesteps in itertools.product(
        evaluations, sorted({c.config.num_train_timesteps for c in cells})
    ):
        try:
            SAMPLERS.get(ev.sampler).schedule(timesteps, ev.steps)
        except ValueError as err:
            raise ValueError(f"{ev.label}: {err}") from None


def _isotropic_baseline(preset: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A cell whose noise is isotropic (the variant, or strength 0) is the one isotropic
    baseline cell of its other settings: variant isotropic, without the strength, profile and
    basis that shape squeezing (``preset``: the preset's fields, under ``values``)."""
    if is_isotropic({"variant": TrainConfig.variant, **preset, **values}):
        return {**without_squeezing(values), "variant": "isotropic"}
    return values


def expand(
    preset: str | None, base: dict[str, Any], grids: list[dict[str, list]], cells_dir: Path
) -> list[Cell]:
    """All distinct cells of the grids, sorted by id (isotropic duplicates merged)."""
    cells: dict[str, Cell] = {}
    preset_fields = load_preset(preset) if preset else {}
    for grid in grids:
        if not isinstance(grid, dict) or not grid:
            raise ValueError("each grid must be a non-empty mapping of field -> list of values")
        for key, values in grid.items():
            if key == "out":
                raise ValueError("grid field 'out' is refused: each cell trains in its own folder")
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"grid field {key!r} must be a TrainConfig field with a non-empty list"
                )
        extras = sorted(k for k in grid if k not in AXES)
        for combo in itertools.product(*grid.values()):
            overrides = {**base, **dict(zip(grid, combo, strict=True))}
            cfg = resolve_config(preset, **_isotropic_baseline(preset_fields, overrides))
            cell_id, axes = _identify(cfg, extras)
            cfg = dataclasses.replace(cfg, out=str(cells_dir / cell_id / "run")).validate()
            taken = cells[cell_id].config.to_dict() if cell_id in cells else cfg.to_dict()
            differ = [k for k, v in cfg.to_dict().items() if taken[k] != v]
            if differ:  # same id, same config: an isotropic duplicate, merged
                raise ValueError(
                    f"two grid cells with different {', '.join(differ)} would share the folder "
                    f"{cell_id} (whose name writes characters other than letters, digits and "
                    "+-._= as -); give values whose names differ"
                )
            cells.setdefault(cell_id, Cell(cell_id, cfg, axes))
    return [cells[k] for k in sorted(cells)]


def _identify(cfg: TrainConfig, extras: list[str]) -> tuple[str, dict[str, Any]]:
    """A readable folder name and the table's axis values; profile and basis are blank for
    isotropic cells, where they change nothing."""
    iso = cfg.variant == "isotropic"
    axes: dict[str, Any] = {
        "dataset": cfg.dataset,
        "variant": cfg.variant,
        "strength": float(cfg.strength),
        "profile": "" if iso else cfg.profile,
        "basis": "" if iso else cfg.basis,
        "seed": cfg.seed,
    }
    axes["extra"] = ",".join(f"{k}={getattr(cfg, k)}" for k in extras)
    parts = [cfg.dataset, cfg.variant]
    if not iso:
        parts += [f"s{_exact(cfg.strength, '+')}", cfg.profile, cfg.basis]
    parts.append(f"seed{cfg.seed}")
    parts += [f"{k}{getattr(cfg, k)}" for k in extras]
    cell_id = "_".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "+-._=" else "-" for c in cell_id), axes


def _exact(value: float, sign: str = "") -> str:
    """``value`` as ``:g`` writes it where that reads back as the same number, else in full:
    two values that differ past six digits must not share a folder."""
    short = format(value, f"{sign}g")
    return short if float(short) == value else f"{sign if value >= 0 else ''}{float(value)!r}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_from_environment(environ: Mapping[str, str]) -> tuple[int, int]:
    """The shard of a cluster job-array task when ``--shard`` is not given; outside a job
    array the whole sweep (0/1). Other schedulers pass ``--shard``.

    A SLURM array ``--array=a-b`` or ``a-b:s`` is a range: task ``id`` is shard
    ``(id - a) / s`` of its ``SLURM_ARRAY_TASK_COUNT`` tasks. A list (``--array=1,3,8``) is
    refused: its ids have no position to derive a shard from, and a wrong shard would skip
    cells silently."""
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return 0, 1
    if not {"SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MAX"} & environ.keys():
        raise ValueError(
            "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
            "SLURM_ARRAY_TASK_MAX; pass --shard i/n"
        )

    def number(name: str, default: int) -> int:
        try:
            return int(environ.get(name, default))
        except ValueError:
            raise ValueError(
                f"{name}={environ[name]!r} is not an integer; pass --shard i/n"
            ) from None

    task, low = number("SLURM_ARRAY_TASK_ID", 0), number("SLURM_ARRAY_TASK_MIN", 0)
    step = number("SLURM_ARRAY_TASK_STEP", 1)
    count = number("SLURM_ARRAY_TASK_COUNT", 0)
    if "SLURM_ARRAY_TASK_COUNT" in environ and count < 1:
        raise ValueError(f"SLURM_ARRAY_TASK_COUNT={count} is not a task count; pass --shard i/n")
    span = (number("SLURM_ARRAY_TASK_MAX", 0) - low) // step + 1 if step > 0 else 0
    count = count or span
    is_range = step > 0 and (task - low) % step == 0
    if not is_range or ("SLURM_ARRAY_TASK_MAX" in environ and count != span):
        raise ValueError(
            f"the SLURM job array is not a range a-b or a-b:s (task {task}, min {low}, step "
            f"{step}, {count} tasks), so its tasks have no shard; submit --array=0-N or pass "
            "--shard i/n"
        )
    index = (task - low) // step
    if not 0 <= index < count:
        raise ValueError(
            f"SLURM array task {task} lies outside its array (min {low}, step {step}, {count} "
            "tasks), so it has no shard; submit --array=0-N or pass --shard i/n"
        )
    return index, count


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """This shard's cells: position in the id-sorted list modulo ``count`` equals ``index``."""
    ordered = sorted(cells, key=lambda c: c.id)
    return [c for pos, c in enumerate(ordered) if pos % count == index]


# ------------------------------------------------------------------------------ running


def evaluation_folder(cell_folder: Path, label: str) -> Path:
    """Where a cell keeps one evaluation (``label``: ``Evaluation.label``)."""
    return cell_folder / "evals" / label


def eval_dir(cell: Cell, evaluation: Evaluation) -> Path:
    return evaluation_folder(Path(cell.config.out).parent, evaluation.label)


def _recorded(path: Path) -> dict[str, Any] | None:
    """The JSON file at ``path``, or ``None`` where there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def _result_settings(evaluation: Evaluation, spec: EvalSpec) -> dict[str, Any]:
    return {**evaluation.record(), **spec.scoring()}


def finished_result(cell: Cell, evaluation: Evaluation, spec: EvalSpec) -> dict[str, Any] | None:
    """The evaluation's result if it was made with the current settings, else ``None``."""
    result = _recorded(eval_dir(cell, evaluation) / "result.json")
    wanted = _result_settings(evaluation, spec)
    return result if result is not None and result.get("settings") == wanted else None


def is_done(cell: Cell, evaluation: Evaluation, spec: EvalSpec) -> bool:
    return finished_result(cell, evaluation, spec) is not None


def is_finished(cell: Cell, spec: EvalSpec) -> bool:
    return all(is_done(cell, ev, spec) for ev in spec.evaluations)


def cell_status(cell: Cell, spec: EvalSpec) -> str:
    """What is left of a cell, as ``sqdm sweep --list`` and the progress lines say it."""
    left = [ev.label for ev in spec.evaluations if not is_done(cell, ev, spec)]
    if not left:
        return "done"
    run = Run(cell.config.out)
    saved = list_checkpoints(run.path) if run.exists() else []
    if run.final_samples_path.is_file():  # written once training has finished
        training = "trained"
    else:
        training = f"to train (resuming at {saved[-1].name})" if saved else "to train"
    return f"{training}; to evaluate: {', '.join(left)}"


def _samples(
    cell: Cell, ev: Evaluation, spec: EvalSpec, progress: bool
) -> tuple[torch.Tensor, bool]:
    """The evaluation's samples, and whether they were drawn now: reused when drawn with
    these settings before, else drawn and saved."""
    from .generate import generate, save_samples

    folder = eval_dir(cell, ev)
    drawn_with = {**ev.record(), "num": spec.num, "seed": spec.seed, "ema": True}
    if _recorded(folder / "samples.json") == drawn_with and (folder / "samples.npz").is_file():
        return load_samples(folder / "samples.npz"), False
    _, images = generate(
        cell.config.out, spec.num, ev.steps, ev.sampler, seed=spec.seed, eta=ev.eta, x0=ev.x0,
        batch_size=spec.sample_batch_size, progress=progress,
    )  # fmt: skip
    save_samples(images, folder / "samples.npz")
    atomic_write(folder / "samples.json", json.dumps(drawn_with))
    save_samples(images[: spec.grid_images], folder / "samples.png")
    return images, True


def _reference_key(cell: Cell) -> str:
    """The cells with one key share their reference images (their training data)."""
    cfg = cell.config
    return json.dumps([cfg.dataset, cfg.data_dir, cfg.resolution, cfg.subset])


def run_cell(
    cell: Cell, spec: EvalSpec, progress: bool = True, references: dict | None = None
) -> list[dict[str, Any]]:
    """Train (resuming), then sample and score every evaluation not done yet; writes and
    returns their results. ``references`` caches reference images across cells."""
    from ..training.trainer import train_to_completion

    start = time.perf_counter()
    resumed_at = train_to_completion(cell.config, progress)
    train_s = time.perf_counter() - start
    references = {} if references is None else references
    key = _reference_key(cell)
    results = []
    for ev in spec.evaluations:
        if is_done(cell, ev, spec):
            continue
        start = time.perf_counter()
        images, drawn = _samples(cell, ev, spec, progress)
        sample_s = time.perf_counter() - start
        if key not in references:
            references[key] = cell.config.load_data()  # the run's reference: its training data
        start = time.perf_counter()
        scores = evaluate(
            images, references[key], spec.metrics, num_reference=spec.num_reference,
            prc_extractor=spec.prc_extractor, batch_size=spec.batch_size, seed=spec.seed,
            verbose=progress,
        )  # fmt: skip
        eval_s = time.perf_counter() - start
        result = {
            "cell": cell.id, "axes": cell.axes, "evaluation": ev.record(),
            "settings": _result_settings(ev, spec),
            "metrics": {k: scores[k] for k in result_keys() if k in scores},
            "feature_extractor": scores["feature_extractor"], "num_samples": scores["num_samples"],
            "num_reference": scores["num_reference"], "resumed_from_step": resumed_at,
            "train_s": train_s, "sample_s": sample_s, "eval_s": eval_s,
            "sample_images_per_s": spec.num / sample_s if drawn else None,
            "wall_s": train_s + sample_s + eval_s,
        }  # fmt: skip
        atomic_write(eval_dir(cell, ev) / "result.json", json.dumps(result, indent=1))
        results.append(result)
        train_s = 0.0  # counted once, with the cell's first evaluation
    return results


def run_sweep(
    sweep: Sweep, out: str | Path, index: int = 0, count: int = 1, progress: bool = True
) -> list[dict[str, Any]]:
    """Run this shard's unfinished cells one after another in this process (data and
    reference images loaded once), then rebuild the tables; returns all rows.

    Seed by seed: an interrupted sweep holds complete seed-paired sets of configurations.
    """
    out = Path(out)
    references: dict[str, Any] = {}
    cells = sorted(shard(sweep.cells, index, count), key=lambda c: (c.config.seed, c.id))
    cells = [cell for cell in cells if not is_finished(cell, sweep.eval)]
    if cells:  # the feature weights before hours of training and sampling, not after
        try:
            fetch_weights(extractors_for(sweep.eval.metrics, sweep.eval.prc_extractor))
        except FeatureWeightsError as err:  # sqdm sweep has no --feature-weights
            metrics = ", ".join(sweep.eval.metrics)
            raise err.instead(
                f"drop the metrics that use it from the sweep's eval ({metrics})"
            ) from None
    for cell in cells:  # loaded once, and eval.num_reference checked, before any training
        key = _reference_key(cell)
        if key not in references:
            references[key] = cell.config.load_data()
            try:
                check_reference(references[key], sweep.eval.num_reference)
            except ValueError as err:
                raise ValueError(f"{sweep.name}: eval.num_reference: {err}") from None
    for k, cell in enumerate(cells, 1):
        if progress:
            print(
                f"cell {k}/{len(cells)} of this shard: {cell.id} ({cell_status(cell, sweep.eval)})"
            )
        for result in run_cell(cell, sweep.eval, progress=progress, references=references):
            if progress:
                scores = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items())
                label = Evaluation(**result["evaluation"]).label
                print(f"{cell.id} [{label}]: {scores} ({result['wall_s']:.0f} s)", flush=True)
        collect(sweep, out)
    return collect(sweep, out)


# ------------------------------------------------------------------------------ the table


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """An evaluation's result as tidy rows, one per metric."""
    shared = {
        "cell": result["cell"],
        **result["axes"],
        **Evaluation(**result["evaluation"]).__dict__,
        "num_samples": result["num_samples"],
        "num_reference": result["num_reference"],
        **{k: round(result[k], 3) for k in ("train_s", "sample_s", "eval_s", "wall_s")},
    }
    return [
        {**shared, "metric": m, "value": v, "feature_extractor": result["feature_extractor"][m]}
        for m, v in result["metrics"].items()
    ]


def collect(sweep: Sweep, out: str | Path) -> list[dict[str, Any]]:
    """Rebuild ``results.json`` and ``results.csv`` under ``out`` from the sweep's finished
    evaluations (:func:`collected_rows`); returns the rows."""
    return write_tables(collected_rows(sweep), out)


def write_tables(rows: list[dict[str, Any]], out: str | Path) -> list[dict[str, Any]]:
    """``rows`` as ``out/results.json`` and ``out/results.csv`` (atomically); returns them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(rows, indent=1))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", table.getvalue())
    return rows


def collected_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """The table rows of the sweep's finished evaluations: its cells and samplers, scored with
    its settings (what other tools wrote into a cell's folder, such as
    ``benchmarks/nfe_trained.py``'s few-step evaluations, and evaluations of settings the
    sweep no longer asks for, are not the sweep's)."""
    pairs = sorted(
        ((cell, ev) for cell in sweep.cells for ev in sweep.eval.evaluations),
        key=lambda pair: eval_dir(*pair),
    )
    return [
        {col: row[col] for col in TABLE_COLUMNS}
        for cell, ev in pairs
        if (result := finished_result(cell, ev, sweep.eval)) is not None
        # the sweep's own id and axes label each row, whoever wrote the result
        for row in table_rows({**result, "cell": cell.id, "axes": cell.axes})
    ]
