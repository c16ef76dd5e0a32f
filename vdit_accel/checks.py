"""Argument checks shared by the configuration dataclasses: one message shape that names the field and the fix."""

from __future__ import annotations

import math
from typing import Any


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, hint: str = "") -> None:
    """Raise unless ``value`` is a finite real number in ``[lo, hi]`` (``None``: unbounded on that side).

    NaN and infinity are refused: both pass ordinary range comparisons (``nan < 1`` is False) and would silently
    turn a setting off or saturate it.

    Args:
        name (`str`): the field, as the user spells it (``"TokenSelectionConfig.w_alpha"``).
        value: the value given.
        lo, hi (`float`, *optional*): inclusive bounds.
        hint (`str`): appended to the message, e.g. an example of a valid value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r}.{hint}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.{hint}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"`{name}` must be in {rng}, got {value!r}.{hint}")
