"""Sweeps: a grid of runs (dataset x variant x strength x profile x basis x seed ...), each
trained, sampled and evaluated once, collected into one tidy table.

A sweep file is YAML::

    preset: paper-cifar10          # optional: a training preset the cells start from
    base: {steps: 2000, ...}       # TrainConfig fields on top of the preset
    grid:                          # field -> list of values; the cells are the product
      variant: [sdm, hdm]
      strength: [-0.8, -0.4, 0.0]
      seed: [0, 1]
    eval: {num: 2000, steps: 50, sampler: ddim, metrics: [fd_effnet, prc_effnet],
           num_reference: 10000}

``grid`` may also be a list of such mappings: the cells are the union of their products
(e.g. one strength list for SDM, another for HDM). Relative ``data_dir`` paths resolve
against the current working directory when the sweep is loaded.

Strength 0 is the isotropic process whatever the variant, and isotropic noise ignores
strength, profile and basis: all such cells collapse into one ``isotropic`` cell per
remaining setting (reported with strength 0), the baseline of every variant.

Layout under ``--out``: ``cells/<cell id>/run`` (the training run),
``cells/<cell id>/samples.npz`` and ``samples.png`` (the evaluated samples) and
``cells/<cell id>/result.json`` (written last: a cell with it is finished and skipped
on rerun; one without it resumes from its latest checkpoint). ``results.csv`` and
``results.json`` are rebuilt from every finished cell's ``result.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core import SAMPLERS
from ..core.fileio import atomic_write
from ..run import Run
from ..training.config import TrainConfig, resolve_config
from .metrics import OFFLINE_METRICS, check_metrics, evaluate, load_samples, result_keys

AXES = ("dataset", "variant", "strength", "profile", "basis", "seed")
TABLE_COLUMNS = (
    "cell",
    *AXES,
    "extra",
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
class EvalSpec:
    """How every cell is sampled and scored (the ``eval:`` mapping)."""

    num: int = 10_000
    steps: int = 50
    sampler: str = "ddpm"
    seed: int = 0
    metrics: tuple[str, ...] = OFFLINE_METRICS
    num_reference: int | None = None
    prc_extractor: str = "vgg16"
    batch_size: int = 64
    sample_batch_size: int = 256
    grid_images: int = 64

    def validate(self) -> EvalSpec:
        check_metrics(self.metrics, self.prc_extractor)
        SAMPLERS.canonical(self.sampler)
        for name in ("num", "steps", "batch_size", "sample_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.num < 2:
            raise ValueError(f"eval.num must be >= 2 to compute statistics, got {self.num}")
        return self


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
    files = resources.files("squeezed_diffusion") / "sweeps"
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def _sweep_text(source: str | Path) -> tuple[str, str]:
    """(name, YAML text) of a sweep file, or of a sweep shipped with the package."""
    path = Path(source)
    if path.is_file():
        return path.stem, path.read_text()
    if str(source) in sweep_names():
        shipped = resources.files("squeezed_diffusion") / "sweeps" / f"{source}.yaml"
        return str(source), shipped.read_text()
    raise FileNotFoundError(
        f"sweep file {source} does not exist and is not a shipped sweep ({', '.join(sweep_names())})"
    )


def load_sweep(source: str | Path, out: str | Path = ".") -> Sweep:
    """Parse and validate a sweep; cells get their run folders under ``out/cells``."""
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
    eval_fields = {f.name for f in dataclasses.fields(EvalSpec)}
    eval_values = dict(spec.get("eval") or {})
    bad = sorted(set(eval_values) - eval_fields)
    if bad:
        raise ValueError(
            f"{source}: unknown eval field(s) {', '.join(bad)}; allowed: {', '.join(sorted(eval_fields))}"
        )
    if isinstance(eval_values.get("metrics"), (list, str)):
        metrics = eval_values["metrics"]
        eval_values["metrics"] = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    grids = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
    cells = expand(spec.get("preset"), dict(spec.get("base") or {}), grids, Path(out) / "cells")
    return Sweep(name, cells, EvalSpec(**eval_values).validate())


def _absolute_data_dir(values: dict[str, Any]) -> dict[str, Any]:
    data_dir = values.get("data_dir")
    if data_dir is not None and not Path(data_dir).expanduser().is_absolute():
        values = {**values, "data_dir": str(Path.cwd() / data_dir)}
    return values


def expand(
    preset: str | None, base: dict[str, Any], grids: list[dict[str, list]], cells_dir: Path
) -> list[Cell]:
    """All distinct cells of the grids, sorted by id (isotropic duplicates merged)."""
    cells: dict[str, Cell] = {}
    for grid in grids:
        if not isinstance(grid, dict) or not grid:
            raise ValueError("each grid must be a non-empty mapping of field -> list of values")
        for key, values in grid.items():
            if key == "out" or not isinstance(values, list) or not values:
                raise ValueError(
                    f"grid field {key!r} must be a TrainConfig field with a non-empty list"
                )
        extras = sorted(k for k in grid if k not in AXES)
        for combo in itertools.product(*grid.values()):
            overrides = _absolute_data_dir({**base, **dict(zip(grid, combo, strict=True))})
            cfg = resolve_config(preset, **overrides)
            if cfg.variant == "isotropic" or float(cfg.strength) == 0.0:
                cfg = dataclasses.replace(cfg, variant="isotropic", strength=0.0)
            cell_id, axes = _identify(cfg, extras)
            cfg = dataclasses.replace(cfg, out=str(cells_dir / cell_id / "run")).validate()
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
        parts += [f"s{cfg.strength:+g}", cfg.profile, cfg.basis]
    parts.append(f"seed{cfg.seed}")
    parts += [f"{k}{getattr(cfg, k)}" for k in extras]
    cell_id = "_".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "+-._=" else "-" for c in cell_id), axes


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """This shard's cells: position in the id-sorted list modulo ``count`` equals ``index``."""
    ordered = sorted(cells, key=lambda c: c.id)
    return [c for pos, c in enumerate(ordered) if pos % count == index]


# ------------------------------------------------------------------------------ running


def is_finished(cell: Cell) -> bool:
    return (Path(cell.config.out).parent / "result.json").is_file()


def run_cell(cell: Cell, spec: EvalSpec, progress: bool = True) -> dict[str, Any]:
    """Train (resuming), sample and evaluate one cell; writes and returns its result."""
    from torchvision.utils import save_image

    from ..training.trainer import train_to_completion
    from .generate import generate, save_samples

    run = Path(cell.config.out)
    cell_dir = run.parent
    start = time.perf_counter()
    resumed_at = train_to_completion(cell.config, progress)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    samples_file = cell_dir / "samples.npz"
    images = load_samples(samples_file) if samples_file.is_file() else None
    if images is None or len(images) != spec.num:
        _, images = generate(
            run,
            spec.num,
            spec.steps,
            spec.sampler,
            seed=spec.seed,
            batch_size=spec.sample_batch_size,
            progress=progress,
        )
        save_samples(images, samples_file)
        grid = images[: spec.grid_images].float() / 255
        save_image(grid, cell_dir / "samples.png", nrow=int(len(grid) ** 0.5) or 1)
    sample_s = time.perf_counter() - start

    start = time.perf_counter()
    scores = evaluate(
        images,
        Run(run).reference(),
        spec.metrics,
        num_reference=spec.num_reference,
        prc_extractor=spec.prc_extractor,
        batch_size=spec.batch_size,
        seed=spec.seed,
        verbose=progress,
    )
    eval_s = time.perf_counter() - start
    result = {
        "cell": cell.id,
        "axes": cell.axes,
        "metrics": {k: scores[k] for k in result_keys() if k in scores},
        "feature_extractor": scores["feature_extractor"],
        "num_samples": scores["num_samples"],
        "num_reference": scores["num_reference"],
        "eval": {**dataclasses.asdict(spec), "metrics": list(spec.metrics)},
        "resumed_from_step": resumed_at,
        "train_s": train_s,
        "sample_s": sample_s,
        "eval_s": eval_s,
        "wall_s": train_s + sample_s + eval_s,
    }
    atomic_write(cell_dir / "result.json", json.dumps(result, indent=1))
    return result


def run_sweep(
    sweep: Sweep, out: str | Path, index: int = 0, count: int = 1, progress: bool = True
) -> list[dict[str, Any]]:
    """Run this shard's unfinished cells, then rebuild the tables; returns all rows."""
    out = Path(out)
    for cell in shard(sweep.cells, index, count):
        if is_finished(cell):
            continue
        result = run_cell(cell, sweep.eval, progress=progress)
        collect(out)
        if progress:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items())
            print(f"{cell.id}: {scores} ({result['wall_s']:.0f} s)", flush=True)
    return collect(out)


# ------------------------------------------------------------------------------ the table


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell's result as tidy rows, one per metric."""
    shared = {
        "cell": result["cell"],
        **result["axes"],
        "num_samples": result["num_samples"],
        "num_reference": result["num_reference"],
        **{k: round(result[k], 3) for k in ("train_s", "sample_s", "eval_s", "wall_s")},
    }
    return [
        {**shared, "metric": m, "value": v, "feature_extractor": result["feature_extractor"][m]}
        for m, v in result["metrics"].items()
    ]


def collect(out: str | Path) -> list[dict[str, Any]]:
    """Rebuild ``results.json`` and ``results.csv`` from every finished cell under ``out``."""
    out = Path(out)
    rows = [
        {col: row[col] for col in TABLE_COLUMNS}
        for path in sorted(out.glob("cells/*/result.json"))
        for row in table_rows(json.loads(path.read_text()))
    ]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(rows, indent=1))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", table.getvalue())
    return rows
