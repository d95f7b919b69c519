"""Two runs of ``benchmarks/run.py --json`` side by side: has a change made anything slower?

    python benchmarks/compare.py BEFORE.json AFTER.json

Compares only the ratios each run measured within itself (our step / diffusers' step, SDM /
isotropic, dense / ours), never absolute times of two runs: a shared machine drifts between
runs, but a ratio of interleaved cases does not. Prints one markdown row per ratio with both
medians and their min-max ranges; a change shows as ranges that no longer overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ratios(tree: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every ratio ``Stats`` (a mapping with median, min and max) under a ``ratio``/``speedup``
    key, by its dotted path."""
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        name = f"{path}.{key}" if path else key
        if isinstance(value, dict) and {"median", "min", "max"} <= set(value):
            if key.startswith(("ratio", "speedup")):
                yield name, value
        else:
            yield from ratios(value, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = (dict(ratios(json.loads(p.read_text()))) for p in (args.before, args.after))
    print("| ratio | before: median (min-max) | after: median (min-max) | ranges overlap |")
    print("|---|---|---|---|")
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name], after[name]
        overlap = a["min"] <= b["max"] and b["min"] <= a["max"]
        cells = [f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})" for s in (a, b)]
        print(f"| `{name}` | {cells[0]} | {cells[1]} | {'yes' if overlap else 'no'} |")
    missing = sorted(before.keys() ^ after.keys())
    if missing:
        print(f"(in one run only: {', '.join(missing)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
