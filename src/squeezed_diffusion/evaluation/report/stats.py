"""The numbers of a sweep report: means over seeds, Student-t intervals, paired differences.

Per (configuration, variant, strength, metric): the mean over seeds and the half-width of
its 95 % interval, ``t(0.975, n - 1) * sd / sqrt(n)`` (none for one seed), and the change
of the mean relative to strength 0 (the isotropic cell of the same dataset and extra
settings; over the seeds both have), in %. Because a seed fixes the initialisation, the
data order and every noise draw, a cell and the isotropic cell of the same seed are a
matched pair: the paired difference (mean over seeds of cell minus isotropic, with its own Student-t interval)
separates the effect of the strength from seed-to-seed scatter. Where each cell was sampled
several ways, the same pairing compares samplers: per seed, the change under one sampler
minus the change under another (both against their own isotropic cell) says whether the
effect of the strength depends on the sampler.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ...core.values import is_integer, is_number
from ...metrics.table import higher_is_better, result_keys
from ..sweep import Evaluation

VARIANT_ORDER = {"isotropic": 0, "sdm": 1, "hdm": 2}
NEEDED_COLUMNS = (
    "cell",
    "dataset",
    "variant",
    "strength",
    "profile",
    "basis",
    "seed",
    "metric",
    "value",
)


class Group(NamedTuple):
    """A configuration and how it was sampled: everything but variant, strength and seed
    (one report section). ``evaluation`` is the sampler label, e.g. ``ddpm-50`` (blank for
    tables written before sweeps evaluated several samplers)."""

    dataset: str
    extra: str
    profile: str
    basis: str
    evaluation: str = ""

    @property
    def base(self) -> tuple[str, str, str, str]:
        """The configuration without the sampler."""
        return self.dataset, self.extra, self.profile, self.basis

    def title(self) -> str:
        parts = [self.dataset]
        parts += [f"profile {self.profile}", f"basis {self.basis}"] if self.profile else []
        parts += [self.extra] if self.extra else []
        return ", ".join(parts + ([f"sampler {self.evaluation}"] if self.evaluation else []))


@dataclass(frozen=True)
class Summary:
    """One (configuration, variant, strength, metric) over its seeds."""

    group: Group
    variant: str
    strength: float
    metric: str
    n: int
    mean: float
    ci: float | None
    change_pct: float | None
    delta: float | None = None  # mean over seeds of (cell - isotropic cell of the same seed)
    delta_ci: float | None = None
    pairs: int = 0

    @property
    def resolved(self) -> bool:
        """The paired 95 % interval excludes 0: a difference from isotropic this sweep resolves.
        An interval of zero width (every seed's difference the same, as metrics in steps of
        1/N give with few seeds) estimates no spread and resolves nothing."""
        return (
            self.delta is not None
            and self.delta_ci is not None
            and self.delta_ci > 0
            and abs(self.delta) > self.delta_ci
        )


def load_rows(source: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """The tidy rows and the folder holding the sweep's cells."""
    path = Path(source)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        fix = (
            "run the sweep, or rebuild its table with sqdm sweep NAME --out "
            f"{path.parent} --collect"
            if path.parent.is_dir() and path.name == "results.json"
            else "pass a sweep's --out folder or its results.json"
        )
        raise FileNotFoundError(f"{path} does not exist; {fix}")
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(
            f"{path} is not valid JSON; pass the sweep's --out folder or its results.json "
            "(sqdm sweep NAME --collect rebuilds it)"
        ) from None
    if rows == []:
        raise ValueError(
            f"{path} is empty: the sweep has no finished evaluation yet (run sqdm sweep, or "
            "--collect with the sweep file it ran with)"
        )
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and set(NEEDED_COLUMNS) <= set(r) for r in rows
    ):
        raise ValueError(
            f"{path} holds no sweep rows (need columns {', '.join(sorted(NEEDED_COLUMNS))})"
        )
    for row in rows:
        for column, ok in (("value", _finite), ("strength", _finite), ("seed", is_integer)):
            if not ok(row[column]):
                raise ValueError(
                    f"{path}: cell {row['cell']} has {column} {row[column]!r}, not a "
                    f"{'whole' if column == 'seed' else 'finite'} number; fix or remove the "
                    "row (a NaN is an evaluation that diverged), or rebuild the file with sqdm "
                    "sweep NAME --collect"
                )
    return rows, path.parent


def _finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def interval95(values: list[float]) -> float | None:
    """Half-width of the Student-t 95 % interval of the mean; None for a single value."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def row_group(row: dict[str, Any]) -> Group:
    label = (
        Evaluation(
            row["sampler"], int(row["steps"]), float(row.get("eta", 0)), row.get("x0") or "clip"
        ).label
        if row.get("sampler")
        else ""
    )
    return Group(row["dataset"], row.get("extra", ""), row["profile"], row["basis"], label)


def metric_rank(metric: str) -> int:
    keys = result_keys()
    return keys.index(metric) if metric in keys else len(keys)


Seeds = dict[int, float]


def _by_seed(
    rows: Iterable[dict[str, Any]],
) -> tuple[dict[tuple[Group, str, float, str], Seeds], dict[tuple[str, str, str, str], Seeds]]:
    """Each (group, variant, strength, metric)'s value per seed, and the isotropic cell's per
    (dataset, extra settings, sampler, metric): the strength-0 row of every configuration of
    that dataset sampled that way (isotropic cells have a blank profile and basis)."""
    by_seed: dict[tuple[Group, str, float, str], Seeds] = defaultdict(dict)
    for r in rows:
        by_seed[(row_group(r), r["variant"], float(r["strength"]), r["metric"])][int(r["seed"])] = (
            float(r["value"])
        )
    isotropic = {
        (g.dataset, g.extra, g.evaluation, m): v
        for (g, var, _, m), v in by_seed.items()
        if var == "isotropic"
    }
    return by_seed, isotropic


def _changes(cell: Seeds, isotropic: Seeds) -> Seeds:
    """cell - isotropic for every seed both have (a seed on one side only would mix seed
    scatter into the change)."""
    return {k: cell[k] - isotropic[k] for k in sorted(cell.keys() & isotropic.keys())}


def _order(s: Summary) -> tuple:
    return s.group, metric_rank(s.metric), VARIANT_ORDER.get(s.variant, 9), s.strength


def summarize(rows: Iterable[dict[str, Any]]) -> list[Summary]:
    """Mean, interval and change vs. strength 0 per configuration, variant, strength, metric."""
    by_seed, isotropic = _by_seed(rows)
    groups = {g for g, var, _, _ in by_seed if var != "isotropic"} or {
        Group(g.dataset, g.extra, "", "", g.evaluation) for g, _, _, _ in by_seed
    }
    out = []
    for (group, variant, strength, metric), seeds in by_seed.items():
        vals = list(seeds.values())
        key = (group.dataset, group.extra, group.evaluation, metric)
        base = isotropic.get(key, {}) if variant != "isotropic" else {}
        # the % change over the seeds both cells have, as the paired difference
        by_seed_change = _changes(seeds, base)
        mean, paired = statistics.fmean(vals), list(by_seed_change.values())
        iso_mean = statistics.fmean(base[k] for k in by_seed_change) if paired else None
        change = 100 * statistics.fmean(paired) / abs(iso_mean) if iso_mean else None
        same = (group.dataset, group.extra, group.evaluation)
        targets = (
            [g for g in groups if (g.dataset, g.extra, g.evaluation) == same]
            if variant == "isotropic"
            else [group]
        )
        out += [
            Summary(
                g, variant, strength, metric, len(vals), mean, interval95(vals), change,
                statistics.fmean(paired) if paired else None, interval95(paired), len(paired),
            )
            for g in targets
        ]  # fmt: skip
    return sorted(out, key=_order)


def sampler_contrasts(rows: Iterable[dict[str, Any]]) -> list[Summary]:
    """Does the change from isotropic depend on the sampler? For each configuration, variant,
    strength and metric sampled two ways A and B (each pair once, A the label that sorts
    later, named first in "A − B"): the mean over seeds of (cell_A - isotropic_A) -
    (cell_B - isotropic_B), the seeds paired across all four, with its Student-t interval.
    Returned as summaries whose ``group.evaluation`` reads "A − B", so the verdict of a
    paired difference applies."""
    by_seed, isotropic = _by_seed(rows)
    changes: dict[tuple, dict[str, Seeds]] = defaultdict(dict)
    for (group, variant, strength, metric), seeds in by_seed.items():
        base = isotropic.get((group.dataset, group.extra, group.evaluation, metric), {})
        if variant != "isotropic" and group.evaluation:
            key = (group.base, variant, strength, metric)
            changes[key][group.evaluation] = _changes(seeds, base)
    out = []
    for (base, variant, strength, metric), by_label in changes.items():
        labels = sorted(by_label)
        for i, b in enumerate(labels):
            for a in labels[i + 1 :]:
                shared = sorted(by_label[a].keys() & by_label[b].keys())
                diff = [by_label[a][k] - by_label[b][k] for k in shared]
                if not diff:
                    continue
                mean, ci = statistics.fmean(diff), interval95(diff)
                group = Group(*base, evaluation=f"{a} − {b}")
                out.append(
                    Summary(group, variant, strength, metric, len(diff), mean, ci, None,
                            mean, ci, len(diff))
                )  # fmt: skip
    return sorted(out, key=_order)


def sig(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant figures in plain notation (1e+02 reads badly in a table)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{round(x, decimals):.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _cell_text(s: Summary) -> str:
    text = sig(s.mean, 4) + (f" ± {sig(s.ci, 2)}" if s.ci is not None else "")
    return text + (f" ({s.change_pct:+.1f} %)" if s.change_pct is not None else "")


def _delta_text(s: Summary) -> str:
    if s.delta is None:
        return ""
    sign = "+" if s.delta >= 0 else ""
    return sign + sig(s.delta, 4) + (f" ± {sig(s.delta_ci, 2)}" if s.delta_ci is not None else "")


def _by_metric(
    items: list[Summary],
    row: Callable[[Summary], tuple],
    fmt: Callable[[Summary], str],
    count: Callable[[Summary], int],
) -> tuple[list[str], list[list[str]]]:
    """The metrics, sorted, and one row per ``row(s)`` key (its fields, the count, then one
    ``fmt(s)`` per metric); rows sorted by the key with variants in their usual order."""
    metrics = sorted({s.metric for s in items}, key=metric_rank)
    text = {(row(s), s.metric): fmt(s) for s in items}
    counts = {row(s): count(s) for s in items}

    def order(key: tuple) -> tuple:
        return tuple(VARIANT_ORDER.get(v, 9) if v in VARIANT_ORDER else v for v in key)

    rows = [
        [*(v or "-" if isinstance(v, str) else f"{v:g}" for v in key), str(counts[key]),
         *(text.get((key, m), "") for m in metrics)]
        for key in sorted(counts, key=order)
    ]  # fmt: skip
    return metrics, rows


def paper_table(items: list[Summary], paired: bool = False) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: one row per (variant, strength), one column per metric; with
    ``paired`` the seed-matched differences from strength 0 instead of the means."""
    if paired:
        items = [s for s in items if s.delta is not None]
    metrics, rows = _by_metric(
        items, lambda s: (s.variant, s.strength), _delta_text if paired else _cell_text,
        lambda s: s.pairs if paired else s.n,
    )  # fmt: skip
    return ["variant", "s", "pairs" if paired else "seeds", *metrics], rows


def verdict(s: Summary) -> str:
    """The paired difference in words: its direction (and whether that is better) when the
    95 % interval excludes 0, else "not resolved"; what the README may claim and no more."""
    if s.delta is None:
        return ""
    if not s.resolved:
        return f"{_delta_text(s)} not resolved"
    better = higher_is_better(s.metric)
    judged = "" if better is None else (" (better)" if (s.delta > 0) == better else " (worse)")
    return f"{_delta_text(s)} {'higher' if s.delta > 0 else 'lower'}{judged}"


def verdict_table(
    items: list[Summary], label: str = "sampler"
) -> tuple[list[str], list[list[str]]]:
    """Every configuration against isotropic, one row per (sampler, variant, strength) and one
    column per metric, each entry the paired difference with its verdict (``label`` heads the
    first column: "samplers" for the contrasts of ``sampler_contrasts``)."""
    paired = [s for s in items if s.delta is not None]
    metrics, rows = _by_metric(
        paired, lambda s: (s.group.evaluation, s.variant, s.strength), verdict, lambda s: s.pairs
    )
    return [label, "variant", "s", "pairs", *metrics], rows
