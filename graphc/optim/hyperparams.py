"""Ranges of hyper-parameters: optimizers, learning-rate schedules and fit check every setting
when it is given, so that ``Adam(lr=-0.001, beta1=1.5)`` is an error at the user's line instead of
a run that trains backwards.

    >>> Range(0, 1, high_open=True).check("Adam", "beta1", 0.9)
    0.9
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir import GraphcError, user_location
from ..ir.errors import line_text


class HyperparameterError(GraphcError, ValueError):
    """An optimizer's, a schedule's or fit's setting outside its allowed range (or not a number)."""


def user_line_text() -> str:
    """``\\n  at file:line`` of the user's calling line (empty when there is none), for error messages."""
    return line_text(user_location())


def _real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (a NumPy scalar or 0-d array included); else None.
    Booleans and strings are not numbers here, although Python would convert them."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf":
        return float(value)
    return None


@dataclass(frozen=True)
class Range:
    """An interval of finite reals, each end closed or open; ``None`` for an end that is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None is allowed too (``clip_norm=None``: no clipping)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"a finite number {'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"

    def contains(self, v: float) -> bool:
        return (math.isfinite(v)
                and (self.low is None or (v > self.low if self.low_open else v >= self.low))
                and (self.high is None or (v < self.high if self.high_open else v <= self.high)))

    def check(self, owner: str, name: str, value: Any) -> float | None:
        """``value`` as a float; raises :class:`HyperparameterError` naming ``owner``, ``name`` and the range."""
        if value is None and self.optional:
            return None
        v = _real(value)
        allowed = f"{name} must be {self}" + (" (or None)" if self.optional else "")
        if v is None:
            raise HyperparameterError(f"{owner}: {name}={value!r} is not a number; {allowed}{user_line_text()}")
        if not self.contains(v):
            raise HyperparameterError(f"{owner}: {name}={value!r} is out of range; {allowed}{user_line_text()}")
        return v


POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)
UNIT = Range(0.0, 1.0, high_open=True)  # decay rates and momenta: [0, 1)


def check_count(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (steps, epochs, patience); 3.0 is accepted as 3, 2.5 is not."""
    v = _real(value)
    if v is None or not math.isfinite(v) or v != int(v) or v < minimum:
        raise HyperparameterError(f"{owner}: {name}={value!r} must be a whole number >= {minimum}{user_line_text()}")
    return int(v)


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise HyperparameterError(f"{owner}: {name}={value!r} must be one of {list(choices)}{user_line_text()}")
    return value


__all__ = ["HyperparameterError", "NON_NEGATIVE", "POSITIVE", "Range", "UNIT", "user_line_text", "check_choice",
           "check_count"]
