"""One document model, two renderings: markdown (figures as PNG files beside it) and one
self-contained HTML page (figures as data URIs, inline CSS, no script).

Sweep reports and the demo build a list of blocks and render it both ways, so the two files
always say the same thing.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure as MplFigure

from ...core.fileio import atomic_write


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    name: str  # file name of the PNG in the markdown rendering
    png: bytes
    caption: str


Block = Heading | Text | Table | Figure


def png(fig: MplFigure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def to_markdown(blocks: list[Block], figures: Path) -> str:
    """Markdown text; writes each figure as a PNG into ``figures``."""
    figures.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
            lines.append("")
        else:
            atomic_write(figures / block.name, block.png)  # a kill leaves the old figure whole
            lines += [f"![{block.caption}]({figures.name}/{block.name})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}figcaption{font-size:12px;color:#555}
img{max-width:100%;min-width:240px;image-rendering:pixelated}"""


def to_html(blocks: list[Block]) -> str:
    """One self-contained page: inline CSS, figures as data URIs, no script."""
    esc = html.escape
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(
                f"<figure><img alt='{esc(block.caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_document(blocks: list[Block], out: Path, stem: str = "report") -> tuple[Path, Path]:
    """``out/STEM.md`` (figures in ``out/figures``) and the self-contained ``out/STEM.html``."""
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / f"{stem}.md", out / f"{stem}.html"
    # figures are numbered by position: those the previous STEM.md showed and this one does
    # not are removed; any other file in figures/ is not this document's and stays
    before = (
        set(re.findall(r"\]\(figures/([^)/]+\.png)\)", md.read_text())) if md.is_file() else set()
    )
    atomic_write(md, to_markdown(blocks, out / "figures"))
    atomic_write(page, to_html(blocks))
    for stale in before - {block.name for block in blocks if isinstance(block, Figure)}:
        (out / "figures" / stale).unlink(missing_ok=True)
    return md, page
