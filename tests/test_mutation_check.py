"""tests/mutation_check.py stays runnable: each mutant still applies to the code, and the
tests it names still exist (the check itself takes minutes and is not part of the suite)."""

from __future__ import annotations

import re

from mutation_check import MUTANTS, ROOT


def test_every_mutant_applies_once_and_names_existing_tests() -> None:
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert (ROOT / m.path).read_text().count(m.old) == 1, m.name
        assert m.old != m.new, m.name
        for node in m.tests:
            path, name = node.split("::")
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), node
