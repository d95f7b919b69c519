"""The README's Python quick-start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    exec(compile(blocks[0], str(README), "exec"), {})
    assert "torch.Size([4, 3, 16, 16])" in capsys.readouterr().out


def test_readme_reproduction_tables_are_the_committed_results() -> None:
    """The README's and docs/results' tables are recomputed from the committed results.json."""
    import json

    from squeezed_diffusion.evaluation.report import paper_table, summarize

    results = README.parent / "docs" / "results" / "local-cifar10"
    items = summarize(json.loads((results / "results.json").read_text()))
    assert len({s.group for s in items}) == 1
    for doc in (README, results / "README.md", results / "report.md"):
        text = doc.read_text()
        for paired in (False, True):
            header, body = paper_table(items, paired=paired)
            assert len(body) == 7 - paired and len(header) == 6
            for row in body:
                assert "| " + " | ".join(row) + " |" in text, (doc.name, row)
