"""Checks of user-given env arguments: the value as given or a clear error, never a silent coercion."""

from __future__ import annotations

import math
import numbers
from typing import Any


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool, not a float such as 1.9 that ``int()`` would silently floor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def finite_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite real number (not a bool, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
