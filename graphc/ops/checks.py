"""The integer attributes users give ops (shapes, strides, paddings, windows, axes, class counts), checked.

Python would quietly turn ``1.5`` into ``1`` (``int()``) and ``True`` into ``1``; NumPy would raise its
own TypeError deep inside a reference implementation. Every op module converts its integer attributes
with these helpers, so every op refuses the same values with the same words: a ShapeError naming the
attribute and its value. :func:`located` (for checks a builder makes before ``apply``) and ``apply``
(for shape rules) add the op, its operands' types and the user's line.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ir import GraphcError, ShapeError
from ..ir.errors import at_op
from ..ir.source import current_location


def is_integer(value: Any) -> bool:
    """A Python or NumPy integer, not a bool (True is an int in Python, never a stride or an axis)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def show(value: Any) -> str:
    """``value`` as the user wrote it: NumPy scalars as plain numbers (NumPy 2 reprs them ``np.float64(2.0)``)."""
    if isinstance(value, np.generic):
        return repr(value.item())
    if isinstance(value, (tuple, list)):
        items = ", ".join(show(v) for v in value)
        return f"({items},)" if isinstance(value, tuple) and len(value) == 1 else (
            f"({items})" if isinstance(value, tuple) else f"[{items}]")
    return repr(value)


def integer(what: str, value: Any, low: int | None = None) -> int:
    """``value`` as an int; a float (even 2.0), a bool or a string is refused, as is a value below ``low``."""
    if not is_integer(value):
        raise ShapeError(f"{what} must be an integer, got {show(value)} ({type(value).__name__})")
    if low is not None and value < low:
        raise ShapeError(f"{what} must be >= {low}, got {value}")
    return int(value)


def positive_int(what: str, value: Any) -> int:
    """An integer >= 1 (a depth, a window size, a stride)."""
    return integer(what, value, 1)


def int_pair(what: str, value: Any, low: int) -> tuple[int, int]:
    """An integer or a pair of integers, as (height, width), each >= ``low`` (conv and pooling geometry)."""
    items = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value, value)
    if len(items) != 2 or not all(is_integer(v) for v in items):
        raise ShapeError(f"{what} must be an integer or a pair of integers, got {show(value)}")
    if any(v < low for v in items):
        raise ShapeError(f"{what} must be >= {low}, got {show(value)}")
    return int(items[0]), int(items[1])


def dims(what: str, shape: Any, low: int | None = 0) -> tuple[int, ...]:
    """A shape: an integer or a sequence of integers, each >= ``low`` (0: a dimension may be empty)."""
    if is_integer(shape):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, np.ndarray)):
        raise ShapeError(f"{what} must be a sequence of integers, got {show(shape)}")
    for d in shape:
        if not is_integer(d):
            raise ShapeError(f"{what} {show(tuple(shape))}: dimension {show(d)} is not an integer")
        if low is not None and d < low:
            raise ShapeError(f"{what} {show(tuple(shape))}: dimension {d} is {'negative' if low == 0 else f'below {low}'}")
    return tuple(int(d) for d in shape)


def axis(value: Any, ndim: int) -> int:
    """One axis of a tensor of rank ``ndim``, negatives counting from the end, as a non-negative int."""
    a = integer("axis", value)
    if not -ndim <= a < ndim:
        raise ShapeError(f"axis {a} is out of range for a tensor of rank {ndim}")
    return a % ndim


def axes(value: Any, ndim: int) -> tuple[int, ...]:
    """``None`` (every axis), an axis or a sequence of distinct axes, as sorted non-negative ints."""
    if value is None:
        return tuple(range(ndim))
    items = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value,)
    out = [axis(a, ndim) for a in items]
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {show(items)}")
    return tuple(sorted(out))


def at_user_line(err: GraphcError, op: str, operands: Sequence[Any]) -> GraphcError:
    """``err`` naming ``op``, its operands' types and the user's line, as the errors of shape rules do
    (for the checks a builder makes before ``apply``)."""
    types = ", ".join(o.node.type_str for o in operands if hasattr(o, "node"))
    return at_op(err, op, types, current_location())


class located:
    """``with located(op, operands):`` re-raises a GraphcError raised inside (a builder's attribute checks)
    by :func:`at_user_line`. A class, not a generator: the frames between the builder and the user's line
    must all be graphc's, so that the line found is the user's."""

    def __init__(self, op: str, operands: Sequence[Any]):
        self.op, self.operands = op, operands

    def __enter__(self) -> "located":
        return self

    def __exit__(self, kind, err, traceback) -> bool:
        if isinstance(err, GraphcError):
            raise at_user_line(err, self.op, self.operands) from None
        return False
