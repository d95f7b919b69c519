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


def check_count(value: object, name: str, least: int = 1) -> int:
    """``value`` as a Python int, once it is a whole number >= ``least``; a one-line error
    naming ``name`` otherwise (``True`` is no count, a float count would be rounded)."""
    if not is_integer(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)
