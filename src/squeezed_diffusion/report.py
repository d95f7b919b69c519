"""``sqdm report``: a sweep's tidy table as markdown and as one self-contained HTML page.

Both renderings come from one list of blocks (headings, text, tables, figures), so they
always say the same thing. The HTML embeds every figure as a base64 data URI and needs
no script; the markdown links PNG files written to ``figures/`` beside it.

Numbers: per (configuration, variant, strength, metric), the mean over seeds and the
half-width of its 95 % interval, ``t(0.975, n - 1) * sd / sqrt(n)`` (Student t; none for
one seed), and the change of the mean relative to strength 0 (the isotropic cell of the
same dataset and extra settings), in %. Because a seed fixes the initialisation, the data
order and every noise draw, a cell and the isotropic cell of the same seed are a matched
pair: the paired difference (mean over seeds of cell minus isotropic, with its own Student-t
interval) separates the effect of the strength from seed-to-seed scatter.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from .metrics import RESULT_KEYS

if TYPE_CHECKING:
    from .basis import Basis
    from .config import TrainConfig

_VARIANT_ORDER = {"isotropic": 0, "sdm": 1, "hdm": 2}
_COLORS = {"isotropic": "0.3", "sdm": "C0", "hdm": "C1"}
_PR_PAIRS = (("precision", "recall"), ("precision_effnet", "recall_effnet"))
_TIMING = ("train_s", "sample_s", "eval_s", "wall_s")


@dataclass(frozen=True)
class Summary:
    """One (configuration, variant, strength, metric) over its seeds."""

    group: tuple[str, str, str, str]  # dataset, extra, profile, basis
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


# ----------------------------------------------------------------------------- numbers


def load_rows(source: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """The tidy rows and the folder holding the sweep's cells."""
    path = Path(source)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; pass a sweep's --out folder or its results.json"
        )
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; rebuild it with sqdm sweep") from None
    needed = {
        "cell",
        "dataset",
        "variant",
        "strength",
        "profile",
        "basis",
        "seed",
        "metric",
        "value",
    }
    if not isinstance(rows, list) or not rows or not all(needed <= set(r) for r in rows):
        raise ValueError(f"{path} holds no sweep rows (need columns {', '.join(sorted(needed))})")
    return rows, path.parent


def interval95(values: list[float]) -> float | None:
    """Half-width of the Student-t 95 % interval of the mean; None for a single value."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def _config(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row's configuration: dataset, extra settings, profile, basis."""
    return row["dataset"], row.get("extra", ""), row["profile"], row["basis"]


def summarize(rows: Iterable[dict[str, Any]]) -> list[Summary]:
    """Mean, interval and change vs. strength 0 per configuration, variant, strength, metric.

    Isotropic cells (blank profile and basis) are the strength-0 row of every configuration
    of their dataset and extra settings.
    """
    values: dict[tuple, list[float]] = defaultdict(list)
    by_seed: dict[tuple, dict[int, float]] = defaultdict(dict)
    configs: set[tuple[str, str, str, str]] = set()
    for r in rows:
        key = (*_config(r), r["variant"], float(r["strength"]), r["metric"])
        values[key].append(float(r["value"]))
        by_seed[key][int(r["seed"])] = float(r["value"])
        if r["variant"] != "isotropic":
            configs.add(_config(r))
    iso_seed = {(k[0], k[1], k[6]): v for k, v in by_seed.items() if k[4] == "isotropic"}
    baseline = {
        (k[0], k[1], k[6]): statistics.fmean(v) for k, v in values.items() if k[4] == "isotropic"
    }
    if not configs:  # only isotropic cells: one configuration per dataset
        configs = {(k[0], k[1], "", "") for k in values}
    out = []
    for (dataset, extra, profile, basis, variant, strength, metric), vals in values.items():
        groups = (
            [g for g in configs if g[:2] == (dataset, extra)]
            if variant == "isotropic"
            else [(dataset, extra, profile, basis)]
        )
        mean = statistics.fmean(vals)
        base = baseline.get((dataset, extra, metric))
        change = None if variant == "isotropic" or not base else 100 * (mean - base) / abs(base)
        paired = _paired_differences(
            by_seed[(dataset, extra, profile, basis, variant, strength, metric)],
            iso_seed.get((dataset, extra, metric), {}) if variant != "isotropic" else {},
        )
        delta = statistics.fmean(paired) if paired else None
        for group in groups:
            out.append(
                Summary(
                    group,
                    variant,
                    strength,
                    metric,
                    len(vals),
                    mean,
                    interval95(vals),
                    change,
                    delta,
                    interval95(paired),
                    len(paired),
                )
            )
    return sorted(
        out,
        key=lambda s: (
            s.group,
            _metric_rank(s.metric),
            _VARIANT_ORDER.get(s.variant, 9),
            s.strength,
        ),
    )


def _paired_differences(cell: dict[int, float], isotropic: dict[int, float]) -> list[float]:
    """cell - isotropic for every seed both have."""
    return [cell[seed] - isotropic[seed] for seed in sorted(cell.keys() & isotropic.keys())]


def _metric_rank(metric: str) -> int:
    return RESULT_KEYS.index(metric) if metric in RESULT_KEYS else len(RESULT_KEYS)


def _sig(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant figures in plain notation (1e+02 reads badly in a table)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{round(x, decimals):.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _cell_text(s: Summary) -> str:
    text = _sig(s.mean, 4) + (f" ± {_sig(s.ci, 2)}" if s.ci is not None else "")
    return text + (f" ({s.change_pct:+.1f} %)" if s.change_pct is not None else "")


def _delta_text(s: Summary) -> str:
    if s.delta is None:
        return ""
    sign = "+" if s.delta >= 0 else ""
    return sign + _sig(s.delta, 4) + (f" ± {_sig(s.delta_ci, 2)}" if s.delta_ci is not None else "")


def _group_title(group: tuple[str, str, str, str]) -> str:
    dataset, extra, profile, basis = group
    parts = [dataset] + ([f"profile {profile}", f"basis {basis}"] if profile else [])
    return ", ".join(parts + ([extra] if extra else []))


# ----------------------------------------------------------------------------- figures


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _by_variant(items: list[Summary]) -> dict[str, list[Summary]]:
    out: dict[str, list[Summary]] = defaultdict(list)
    for s in items:
        out[s.variant].append(s)
    return out


def metric_plot(items: list[Summary]) -> bytes:
    """Each metric against strength, one line per variant (the isotropic cell at s = 0),
    error bars: the 95 % intervals."""
    metrics = sorted({s.metric for s in items}, key=_metric_rank)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, metric in zip(axes, metrics, strict=False):
        per = _by_variant([s for s in items if s.metric == metric])
        base = per.get("isotropic", [])
        for variant, pts in per.items():
            pts = sorted(pts + (base if variant != "isotropic" else []), key=lambda s: s.strength)
            ax.errorbar(
                [s.strength for s in pts],
                [s.mean for s in pts],
                yerr=[s.ci or 0.0 for s in pts],
                marker="o",
                capsize=3,
                color=_COLORS.get(variant),
                label=variant,
                linestyle="none" if variant == "isotropic" else "-",
            )
        ax.set(xlabel="strength s", title=metric)
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
        ax.legend(fontsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def pr_plot(items: list[Summary]) -> bytes | None:
    """Precision against recall per variant and strength (labelled with s)."""
    pairs = [p for p in _PR_PAIRS if {p[0], p[1]} <= {s.metric for s in items}]
    if not pairs:
        return None
    fig = Figure(figsize=(4.5 * len(pairs), 4))
    for ax, (p_name, r_name) in zip(
        fig.subplots(1, len(pairs), squeeze=False)[0], pairs, strict=True
    ):
        prec = {(s.variant, s.strength): s for s in items if s.metric == p_name}
        rec = {(s.variant, s.strength): s for s in items if s.metric == r_name}
        for variant in sorted({v for v, _ in prec}, key=lambda v: _VARIANT_ORDER.get(v, 9)):
            keys = sorted(k for k in prec if k[0] == variant and k in rec)
            ax.errorbar(
                [rec[k].mean for k in keys],
                [prec[k].mean for k in keys],
                xerr=[rec[k].ci or 0.0 for k in keys],
                yerr=[prec[k].ci or 0.0 for k in keys],
                marker="o",
                capsize=3,
                linestyle="none",
                color=_COLORS.get(variant),
                label=variant,
            )
            for k in keys:
                ax.annotate(
                    f"{k[1]:g}",
                    (rec[k].mean, prec[k].mean),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set(xlabel=r_name, ylabel=p_name, title="precision vs recall (labels: s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _saved_setting(
    group: tuple[str, str, str, str], cells_dir: Path, cell_ids: list[str]
) -> tuple[TrainConfig, Basis] | None:
    """(config, basis) to rebuild a configuration's processes: a cell's saved ones when the
    cell folders are there, else the defaults with the luminance channel direction (C = 3),
    which gives the same per-direction curves as any fitted channel direction."""
    from .basis import ChannelBasis
    from .checkpoint import read_run
    from .config import TrainConfig

    for cell in cell_ids:
        run = cells_dir / cell / "run"
        if (run / "basis.safetensors").is_file() and (run / "config.yaml").is_file():
            return read_run(run)
    return (TrainConfig(), ChannelBasis.luminance(3)) if group[3] == "channel" else None


def log_snr_plot(
    group: tuple[str, str, str, str], strengths: list[float], cells_dir: Path, cell_ids: list[str]
) -> bytes | None:
    """Per-direction log-SNR over t for isotropic, SDM and HDM at each strength."""
    from .config import build_process

    setting = _saved_setting(group, cells_dir, cell_ids)
    if setting is None:
        return None
    cfg, basis = setting
    iso = build_process(dataclasses.replace(cfg, variant="isotropic"), basis).log_snr_table()
    strengths = [s for s in strengths if s != 0] or [0.0]
    cols = min(4, len(strengths))
    rows = math.ceil(len(strengths) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    names = basis.group_names()
    for ax, strength in zip(axes, strengths, strict=False):
        ax.plot(
            iso[:, 0].numpy(),
            color=_COLORS["isotropic"],
            lw=2.5,
            alpha=0.5,
            label="isotropic",
        )
        for variant in ("sdm", "hdm"):
            changed = dataclasses.replace(cfg, variant=variant, strength=strength, profile=group[2])
            try:
                table = build_process(changed, basis).log_snr_table().numpy()
            except ValueError:  # an invalid process (|s| too large for the profile): no curve
                continue
            for j in range(table.shape[1]):  # the squeezed groups solid, their complement dashed
                style = "--" if j == table.shape[1] - 1 else "-"
                label = f"{variant.upper()}: {names[j]}"
                ax.plot(table[:, j], style, color=_COLORS[variant], lw=1, label=label)
        ax.set(xlabel="t", ylabel="log SNR", title=f"s = {strength:g}")
        ax.legend(fontsize=6)
    for ax in axes[len(strengths) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- document


Block = tuple  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", name, png, caption)

_INTRO = (
    "Each entry: mean over seeds ± half-width of the 95 % interval (Student t, n - 1 degrees "
    "of freedom; none for one seed), and in brackets the change of the mean relative to "
    "strength 0 (the isotropic run). Lower is better for fid, kid and fd_*; higher for isc, "
    "precision and recall. fd_effnet is a Frechet distance in EfficientNet-Lite0 features, not FID."
)


_PAIRED = (
    "Paired difference from strength 0: mean over seeds of (cell - isotropic cell of the same "
    "seed; a seed fixes initialisation, data order and noise draws) ± half-width of its 95 % "
    "interval (Student t). An interval that excludes 0 is a difference this sweep resolves."
)


def paper_table(items: list[Summary], paired: bool = False) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: one row per (variant, strength), one column per metric; with
    ``paired`` the seed-matched differences from strength 0 instead of the means."""
    metrics = sorted({s.metric for s in items}, key=_metric_rank)
    if paired:
        items = [s for s in items if s.delta is not None]
    fmt = _delta_text if paired else _cell_text
    text = {(s.variant, s.strength, s.metric): fmt(s) for s in items}
    seeds = {(s.variant, s.strength): s.pairs if paired else s.n for s in items}
    rows = [
        [variant, f"{strength:g}", str(n), *(text.get((variant, strength, m), "") for m in metrics)]
        for (variant, strength), n in sorted(
            seeds.items(), key=lambda kv: (_VARIANT_ORDER.get(kv[0][0], 9), kv[0][1])
        )
    ]
    return ["variant", "s", "pairs" if paired else "seeds", *metrics], rows


def _group_blocks(
    i: int,
    group: tuple[str, str, str, str],
    items: list[Summary],
    cells: list[str],
    cells_dir: Path,
) -> list[Block]:
    header, body = paper_table(items)
    blocks: list[Block] = [("h", 2, _group_title(group)), ("table", header, body)]
    header, body = paper_table(items, paired=True)
    if body:
        blocks += [("p", _PAIRED), ("table", header, body)]
    blocks += [
        (
            "img",
            f"metrics-{i}.png",
            metric_plot(items),
            "metrics against strength (95 % intervals)",
        ),
    ]
    pr = pr_plot(items)
    if pr is not None:
        blocks.append(("img", f"precision-recall-{i}.png", pr, "precision vs recall"))
    strengths = sorted({s.strength for s in items})
    snr = log_snr_plot(group, strengths, cells_dir, cells) if group[2] else None
    if snr is not None:
        caption = "per-direction log-SNR over t: isotropic vs SDM vs HDM (equal curves overlap)"
        blocks.append(("img", f"log-snr-{i}.png", snr, caption))
    return blocks


def build_blocks(rows: list[dict[str, Any]], cells_dir: Path) -> list[Block]:
    """The whole report: intro, one section per configuration, sample grids, wall times."""
    summaries = summarize(rows)
    cell_ids = sorted({r["cell"] for r in rows})
    seeds = ", ".join(map(str, sorted({r["seed"] for r in rows})))
    extractors = sorted(
        {f"{r['metric']}: {r['feature_extractor']}" for r in rows if r.get("feature_extractor")}
    )
    blocks: list[Block] = [
        ("h", 1, "Squeezed diffusion sweep"),
        ("p", f"{len(cell_ids)} finished cells, seeds {seeds}. {_INTRO}"),
        ("p", "Feature extractors: " + "; ".join(extractors)),
    ]
    for i, group in enumerate(sorted({s.group for s in summaries})):
        items = [s for s in summaries if s.group == group]
        cells = sorted({r["cell"] for r in rows if _config(r) == group})
        blocks += _group_blocks(i, group, items, cells, cells_dir)
    grids = [(c, cells_dir / c / "samples.png") for c in cell_ids]
    grids = [(c, p) for c, p in grids if p.is_file()]
    if grids:
        blocks.append(("h", 2, "Samples"))
        blocks += [("img", f"samples-{c}.png", p.read_bytes(), c) for c, p in grids]
    timing = {r["cell"]: [f"{r[k]:.0f}" for k in _TIMING] for r in rows if set(_TIMING) <= set(r)}
    if timing:
        body = [[c, *t] for c, t in sorted(timing.items())]
        blocks += [("h", 2, "Wall time per cell (s)"), ("table", ["cell", *_TIMING], body)]
    return blocks


def to_markdown(blocks: list[Block], figures: Path) -> str:
    """Markdown text; writes each figure as a PNG into ``figures``."""
    figures.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, body = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(row) + " |" for row in body]
            lines.append("")
        else:
            (figures / block[1]).write_bytes(block[2])
            lines += [f"![{block[3]}]({figures.name}/{block[1]})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}figcaption{font-size:12px;color:#555}
img{max-width:100%;min-width:240px;image-rendering:pixelated}"""


def to_html(blocks: list[Block]) -> str:
    """One self-contained page: inline CSS, figures as data URIs, no script."""
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(blocks[0][2])}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block[2]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(block[2]).decode("ascii")
            parts.append(
                f"<figure><img alt='{esc(block[3])}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(block[3])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(source: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """``report.md`` (+ ``figures/``) and ``report.html`` for a sweep's results."""
    rows, results_dir = load_rows(source)
    out = Path(out) if out is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(rows, results_dir / "cells")
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks, out / "figures"))
    page.write_text(to_html(blocks))
    return md, page
