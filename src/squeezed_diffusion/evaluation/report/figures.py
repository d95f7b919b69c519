"""The figures of a sweep report: metrics against strength, precision against recall, and the
per-direction log-SNR each configuration trains on."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from ...core import Basis, ChannelBasis, SqueezedDiffusion
from ...metrics.table import pr_pairs
from ...training.config import TrainConfig
from ...training.run import Run
from .render import png
from .stats import VARIANT_ORDER, Group, Summary, metric_rank

COLORS = {"isotropic": "0.3", "sdm": "C0", "hdm": "C1"}


def _by_variant(items: list[Summary]) -> dict[str, list[Summary]]:
    out: dict[str, list[Summary]] = defaultdict(list)
    for s in items:
        out[s.variant].append(s)
    return out


def metric_plot(items: list[Summary]) -> bytes:
    """Each metric against strength, one line per variant (the isotropic cell at s = 0),
    error bars: the 95 % intervals."""
    metrics = sorted({s.metric for s in items}, key=metric_rank)
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
                [s.strength for s in pts], [s.mean for s in pts], yerr=[s.ci or 0.0 for s in pts],
                marker="o", capsize=3, color=COLORS.get(variant), label=variant,
                linestyle="none" if variant == "isotropic" else "-",
            )  # fmt: skip
        ax.set(xlabel="strength s", title=metric)
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
        ax.legend(fontsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return png(fig)


def paired_plot(items: list[Summary]) -> bytes:
    """The paired difference from isotropic against strength, one line per sampler: one
    panel per metric (rows) and variant (columns); error bars are the 95 % intervals, and a
    sampler whose bar crosses 0 at some strength did not resolve a change there."""
    items = [s for s in items if s.delta is not None]
    metrics = sorted({s.metric for s in items}, key=metric_rank)
    variants = sorted({s.variant for s in items}, key=lambda v: VARIANT_ORDER.get(v, 9))
    fig = Figure(figsize=(4.2 * len(variants), 3.0 * len(metrics)))
    axes = fig.subplots(len(metrics), len(variants), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, variant in enumerate(variants):
            ax = axes[row][col]
            evaluations = sorted({s.group.evaluation for s in items})
            for k, evaluation in enumerate(evaluations):
                pts = sorted(
                    (
                        s
                        for s in items
                        if (s.metric, s.variant, s.group.evaluation)
                        == (metric, variant, evaluation)
                    ),
                    key=lambda s: s.strength,
                )
                shift = 0.015 * (k - (len(evaluations) - 1) / 2)  # keep overlapping bars apart
                ax.errorbar(
                    [s.strength + shift for s in pts], [s.delta for s in pts],
                    yerr=[s.delta_ci or 0.0 for s in pts], marker="o", capsize=3, label=evaluation,
                )  # fmt: skip
            ax.axhline(0, color="0.5", lw=0.8, zorder=0)
            ax.set(
                xlabel="strength s", ylabel=f"{metric} - isotropic", title=f"{variant}: {metric}"
            )
            # ticks at the strengths measured only: the samplers' shifts are not strengths
            shown = sorted(
                {s.strength for s in items if (s.metric, s.variant) == (metric, variant)}
            )
            ax.set_xticks(shown, [f"{v:g}" for v in shown])
            if len(shown) == 1:
                ax.set_xlim(shown[0] - 0.1, shown[0] + 0.1)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def pr_plot(items: list[Summary]) -> bytes | None:
    """Precision against recall per variant and strength (labelled with s)."""
    pairs = [p for p in pr_pairs() if {p[0], p[1]} <= {s.metric for s in items}]
    if not pairs:
        return None
    fig = Figure(figsize=(4.5 * len(pairs), 4))
    for ax, (p_name, r_name) in zip(
        fig.subplots(1, len(pairs), squeeze=False)[0], pairs, strict=True
    ):
        prec = {(s.variant, s.strength): s for s in items if s.metric == p_name}
        rec = {(s.variant, s.strength): s for s in items if s.metric == r_name}
        for variant in sorted({v for v, _ in prec}, key=lambda v: VARIANT_ORDER.get(v, 9)):
            keys = sorted(k for k in prec if k[0] == variant and k in rec)
            ax.errorbar(
                [rec[k].mean for k in keys], [prec[k].mean for k in keys],
                xerr=[rec[k].ci or 0.0 for k in keys], yerr=[prec[k].ci or 0.0 for k in keys],
                marker="o", capsize=3, linestyle="none", color=COLORS.get(variant), label=variant,
            )  # fmt: skip
            for k in keys:
                ax.annotate(
                    f"{k[1]:g}", (rec[k].mean, prec[k].mean), fontsize=7, xytext=(3, 3),
                    textcoords="offset points",
                )  # fmt: skip
        ax.set(xlabel=r_name, ylabel=p_name, title="precision vs recall (labels: s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def _saved_setting(
    group: Group, cells_dir: Path, cell_ids: list[str]
) -> tuple[TrainConfig, Basis] | None:
    """(config, basis) to rebuild a configuration's processes: a cell's saved ones when the
    cell folders are there, else the defaults with the luminance channel direction (C = 3),
    which gives the same per-direction curves as any fitted channel direction."""
    for cell in cell_ids:
        run = Run(cells_dir / cell / "run")
        if run.basis_path.is_file() and run.exists():
            return run.config(), run.basis()
    return (TrainConfig(), ChannelBasis.luminance(3)) if group.basis == "channel" else None


def log_snr_plot(
    group: Group, trained: set[tuple[str, float]], cells_dir: Path, cell_ids: list[str]
) -> bytes | None:
    """Per-direction log-SNR over t at each strength of the ``trained`` (variant, strength)
    pairs: isotropic, and the squeezed variants the sweep trained at that strength."""
    setting = _saved_setting(group, cells_dir, cell_ids)
    if setting is None:
        return None
    cfg, basis = setting

    def process(**change: object) -> SqueezedDiffusion:
        return SqueezedDiffusion.from_fields(basis, dataclasses.replace(cfg, **change).to_dict())

    iso = process(variant="isotropic", strength=0.0).log_snr_table()
    strengths = sorted({s for v, s in trained if v != "isotropic" and s != 0}) or [0.0]
    cols = min(4, len(strengths))
    fig = Figure(figsize=(3.6 * cols, 3.0 * math.ceil(len(strengths) / cols)))
    axes = fig.subplots(math.ceil(len(strengths) / cols), cols, squeeze=False).flatten()
    names = basis.group_names()
    for ax, strength in zip(axes, strengths, strict=False):
        ax.plot(iso[:, 0].numpy(), color=COLORS["isotropic"], lw=2.5, alpha=0.5, label="isotropic")
        for variant in (v for v in ("sdm", "hdm") if (v, strength) in trained):
            try:
                table = (
                    process(variant=variant, strength=strength, profile=group.profile)
                    .log_snr_table()
                    .numpy()
                )
            except ValueError:  # an invalid process (|s| too large for the profile): no curve
                continue
            for j in range(table.shape[1]):  # the squeezed groups solid, their complement dashed
                style = "--" if j == table.shape[1] - 1 else "-"
                ax.plot(
                    table[:, j],
                    style,
                    color=COLORS[variant],
                    lw=1,
                    label=f"{variant.upper()}: {names[j]}",
                )
        ax.set(xlabel="t", ylabel="log SNR", title=f"s = {strength:g}")
        ax.legend(fontsize=6)
    for ax in axes[len(strengths) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return png(fig)
