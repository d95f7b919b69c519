"""`sqdm demo` end to end at toy size: three runs, samples, a metric, a report."""

from __future__ import annotations

import json

from squeezed_diffusion.demo import CONFIGS, run_demo


def test_demo_report_compares_three_configurations(tmp_path) -> None:
    report = run_demo(
        tmp_path / "demo", num_samples=16, progress=False, steps=3, subset=64, batch_size=16,
        sample_steps=3, checkpoint_every=3, resolution=8,
    )  # fmt: skip
    text = report.read_text()
    first_table_row = text.splitlines()[2]
    assert first_table_row == "| | isotropic | sdm s=-0.4 | hdm s=-0.4 |"
    assert "fd_pixels8" in text and "not FID" in text
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [(r["variant"], r["strength"]) for r in rows] == list(CONFIGS)
    assert all(r["fd_pixels8"] > 0 for r in rows)
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    for line in text.splitlines():
        for target in line.split("](")[1:]:
            assert (tmp_path / "demo" / target.split(")")[0]).is_file()
    again = run_demo(tmp_path / "demo", num_samples=16, progress=False, steps=3, subset=64, batch_size=16,
                     sample_steps=3, checkpoint_every=3, resolution=8)  # fmt: skip
    assert again == report  # a rerun reuses the finished runs instead of failing
