"""Reports: statistics (``stats.py``), figures (``figures.py``), one document model rendered
as markdown and HTML (``render.py``), and the sweep report built from them (``build.py``)."""

from .build import build_blocks, write_report
from .stats import (
    Summary,
    interval95,
    paper_table,
    sampler_contrasts,
    summarize,
    verdict,
    verdict_table,
)

__all__ = [
    "Summary",
    "build_blocks",
    "interval95",
    "paper_table",
    "sampler_contrasts",
    "summarize",
    "verdict",
    "verdict_table",
    "write_report",
]
