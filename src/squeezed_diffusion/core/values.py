"""What counts as a number in a setting. Python's ``bool`` is an ``int``, but ``true`` where a
count or a strength belongs is a slip (YAML reads ``yes`` as true), not 1, so it counts as
neither; ``4.0`` is no whole number either, since a step count of 4.5 would be rounded.
numpy's scalars count as what they are."""

from __future__ import annotations

import numbers


def is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
