"""Checks of tuner arguments shared by the built-in tuners: a one-line ValueError naming the argument."""
from __future__ import annotations

from typing import Any

__all__ = ["check_int", "check_number"]


def check_int(name: str, value: Any, least: int = 1, optional: bool = False) -> None:
    """ValueError unless ``value`` is an integer >= ``least`` (a bool is not), or None when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= {least}" + (" or null" if optional else ""))


def check_number(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> float:
    """``value`` as a float; ValueError unless it is a number >= ``low`` (> with ``low_open``) and <= ``high``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and \
        (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name}: got {value!r}, expected a number {bound}" + (f" and <= {high}" if high else ""))
    return float(value)
