"""``sqdm report``: a sweep's tidy table as a document (``render.py``) of tables
(``stats.py``) and figures (``figures.py``), written as markdown and as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...metrics.table import METRICS, higher_is_better
from ..sweep import evaluation_folder
from .figures import log_snr_plot, metric_plot, paired_plot, pr_plot
from .render import Block, Figure, Heading, Table, Text, write_document
from .stats import (
    Group,
    Summary,
    load_rows,
    paper_table,
    row_group,
    sampler_contrasts,
    summarize,
    verdict_table,
)

TIMING = ("train_s", "sample_s", "eval_s", "wall_s")
PAIRED = (
    "Paired difference from strength 0: mean over seeds of (cell - isotropic cell of the same "
    "seed; a seed fixes initialisation, data order and noise draws) ± half-width of its 95 % "
    "interval (Student t). An interval that excludes 0 is a difference this sweep resolves."
)
VERDICT = (
    "Each configuration against the isotropic cells of the same seeds, per sampler: the "
    "paired difference ± its 95 % interval, and which way it goes where the interval excludes "
    "0; 'not resolved' where it does not (the sweep cannot tell that difference from 0)."
)

CONTRAST = (
    "Whether the change from isotropic depends on the sampler: per seed, the change under the "
    "first sampler minus the change under the second (each against the isotropic cell of the "
    "same seed and sampler), mean ± half-width of its 95 % interval. An interval that excludes "
    "0 says the samplers disagree about that configuration, and '(better)' that the change "
    "under the sampler named first (before −) is the better one; 'not resolved' says this "
    "sweep cannot tell them apart."
)
NO_BASELINE = (
    "No paired differences: they need the isotropic cell of each seed, which this sweep has not "
    "finished (add variant isotropic, or strength 0, to its grid)."
)


def intro(metrics: set[str]) -> str:
    """How to read the tables, and what each metric in them is (from the metric table)."""
    lower = sorted(m for m in metrics if higher_is_better(m) is False)
    higher = sorted(m for m in metrics if higher_is_better(m))
    spaces = "; ".join(
        f"{name}: {metric.summary}"
        for name, metric in METRICS.items()
        if set(metric.keys) & metrics
    )
    return (
        "Each entry: mean over seeds ± half-width of the 95 % interval (Student t, n - 1 degrees "
        "of freedom; none for one seed), and in brackets the change of the mean relative to "
        "strength 0 (the isotropic run). "
        + (f"Lower is better for {', '.join(lower)}. " if lower else "")
        + (f"Higher is better for {', '.join(higher)}. " if higher else "")
        + f"Metrics: {spaces}."
    )


def _group_blocks(
    i: int,
    group: Group,
    items: list[Summary],
    cells: list[str],
    cells_dir: Path,
    trained: set[tuple[str, float]] | None,
) -> list[Block]:
    """One sampler's section of a configuration: its tables and figures, and given the
    configuration's ``trained`` (variant, strength) pairs the log-SNR figure (the same for
    every sampler, so drawn with the first)."""
    header, body = paper_table(items)
    blocks: list[Block] = [Heading(2, group.title()), Table(header, body)]
    header, body = paper_table(items, paired=True)
    if body:
        blocks += [Text(PAIRED), Table(header, body)]
    elif any(s.variant != "isotropic" for s in items):
        blocks.append(Text(NO_BASELINE))
    blocks.append(
        Figure(f"metrics-{i}.png", metric_plot(items), "metrics against strength (95 % intervals)")
    )
    pr = pr_plot(items)
    if pr is not None:
        blocks.append(Figure(f"precision-recall-{i}.png", pr, "precision vs recall"))
    figure = log_snr_plot(group, trained, cells_dir, cells) if trained and group.profile else None
    if figure is not None:
        caption = "per-direction log-SNR over t of the trained processes (equal curves overlap)"
        blocks.append(Figure(f"log-snr-{i}.png", figure, caption))
    return blocks


def build_blocks(rows: list[dict[str, Any]], cells_dir: Path) -> list[Block]:
    """The whole report: intro, one section per configuration, sample grids, wall times."""
    summaries, contrasts = summarize(rows), sampler_contrasts(rows)
    cell_ids = sorted({r["cell"] for r in rows})
    seeds = ", ".join(map(str, sorted({r["seed"] for r in rows})))
    extractors = sorted(
        {f"{r['metric']}: {r['feature_extractor']}" for r in rows if r.get("feature_extractor")}
    )
    blocks: list[Block] = [
        Heading(1, "Squeezed diffusion sweep"),
        Text(
            f"{len(cell_ids)} finished cell{'s' if len(cell_ids) != 1 else ''}, seeds {seeds}. "
            f"{intro({r['metric'] for r in rows})}"
        ),
        Text("Feature extractors: " + "; ".join(extractors)),
    ]
    i = 0
    for base in sorted({s.group.base for s in summaries}):
        together = [s for s in summaries if s.group.base == base]  # every sampler's
        groups = sorted({s.group for s in together})
        title = groups[0].title().rsplit(", sampler", 1)[0]  # the configuration, any sampler
        header, body = verdict_table(together)
        if body:
            blocks += [Heading(2, f"{title}: what this sweep resolves"), Text(VERDICT)]
            blocks.append(Table(header, body))
        header, body = verdict_table([c for c in contrasts if c.group.base == base], "samplers")
        if body:
            blocks += [Heading(2, f"{title}: does the change depend on the sampler?")]
            blocks += [Text(CONTRAST), Table(header, body)]
        trained = {(s.variant, s.strength) for s in together}
        for group in groups:
            items = [s for s in summaries if s.group == group]
            cells = sorted({r["cell"] for r in rows if row_group(r) == group})
            first = group == groups[0]
            blocks += _group_blocks(i, group, items, cells, cells_dir, trained if first else None)
            i += 1
        if len(groups) > 1 and any(s.delta is not None for s in together):
            caption = "paired difference from isotropic against strength, one line per sampler"
            blocks += [
                Heading(2, f"{title}: the samplers side by side"),
                Figure(f"paired-by-sampler-{i}.png", paired_plot(together), caption),
            ]
    scored = sorted({(r["cell"], row_group(r).evaluation) for r in rows})
    folders = [  # 0.1.0's single evaluation kept its grid in the cell folder itself
        evaluation_folder(cells_dir / c, label) if label else cells_dir / c for c, label in scored
    ]
    grids = [f / "samples.png" for f in folders if (f / "samples.png").is_file()]
    if grids:
        blocks.append(Heading(2, "Samples"))
        for path in grids:
            name = "-".join(path.relative_to(cells_dir).parent.parts).replace("-evals-", "-")
            blocks.append(Figure(f"samples-{name}.png", path.read_bytes(), name))
    timing = {
        (r["cell"], row_group(r).evaluation): [f"{r[k]:.0f}" for k in TIMING]
        for r in rows
        if set(TIMING) <= set(r)
    }
    if timing:
        labelled = any(e for _, e in timing)  # 0.1.0's sweeps had one, unnamed, evaluation
        body = [[c, *([e] if labelled else []), *t] for (c, e), t in sorted(timing.items())]
        title = (
            "Wall time per cell and sampler (s; a cell's training is counted with the "
            "evaluation it ran first)"
            if labelled
            else "Wall time per cell (s)"
        )
        header = ["cell", *(["sampler"] if labelled else []), *TIMING]
        blocks += [Heading(2, title), Table(header, body)]
    return blocks


def write_report(source: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """``report.md`` (+ ``figures/``) and ``report.html`` for a sweep's results."""
    rows, results_dir = load_rows(source)
    out = Path(out) if out is not None else results_dir
    return write_document(build_blocks(rows, results_dir / "cells"), out)
