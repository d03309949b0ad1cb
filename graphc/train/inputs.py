"""The data fit, evaluate and predict accept, checked once at the call, before anything compiles or
runs: a bad array is a graphc error naming the argument, never an IndexError, a NumPy broadcast that
scores (N, 1) labels against every row, or a label -1 silently read as the last class.

Array-likes (nested lists, tuples) are converted with ``np.asarray``, as Keras does. Features must
be floating point (integer images are usually unscaled: converting them silently would hide that);
labels must be integers, as PyTorch's ``cross_entropy`` requires for class indices.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import DTypeError, InputError
from ..nn.layers import Module
from ..optim.hyperparams import check_count, user_line_text


def data_pair(data: Any, where: str, arg: str) -> tuple[Any, Any]:
    """``data`` unpacked as (x, y)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        got = f"a {type(data).__name__} of {len(data)}" if isinstance(data, (tuple, list)) else type(data).__name__
        raise InputError(f"{where}: {arg} must be a pair (x, y), got {got}{user_line_text()}")
    return data[0], data[1]


def as_array(value: Any, where: str, arg: str) -> np.ndarray:
    """``value`` as a NumPy array (no copy when it already is one)."""
    try:
        arr = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise InputError(f"{where}: {arg} is not a rectangular array ({err}){user_line_text()}") from None
    if arr.dtype == object:
        raise InputError(f"{where}: {arg} is not a rectangular array of numbers (NumPy made an object array "
                         f"of shape {list(arr.shape)}){user_line_text()}")
    return arr


def features(x: Any, model: Module, where: str, arg: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous array of the model's float dtype, shape [N, *model.in_shape]."""
    if model.in_shape is None:
        raise InputError(f"{where}: the model has no input shape yet: give it one, "
                         f"e.g. Sequential([...], input_shape=...){user_line_text()}")
    arr = as_array(x, where, arg)
    dtype = np.dtype(getattr(model, "dtype", np.float32))
    if arr.dtype.kind != "f":
        raise DTypeError(f"{where}: {arg} has dtype {arr.dtype}; the model takes floating-point inputs ({dtype}): "
                         f"convert (and scale) it, e.g. x.astype(np.{dtype}){user_line_text()}")
    expected = ["N", *model.in_shape]
    if arr.ndim != len(expected) or arr.shape[1:] != tuple(model.in_shape):
        raise InputError(f"{where}: {arg} has shape {list(arr.shape)}; the model takes "
                         f"[{', '.join(map(str, expected))}] (rows of {list(model.in_shape)}){user_line_text()}")
    return np.ascontiguousarray(arr, dtype=dtype)


def require_rows(x: np.ndarray, where: str, arg: str, why: str) -> None:
    """Refuse an empty data set (``why`` says what needs rows)."""
    if len(x) == 0:
        raise InputError(f"{where}: {arg} has 0 rows: {why}{user_line_text()}")


def classes_of(model: Module, where: str) -> int:
    """The number of classes: the width of the model's outputs [N, C]."""
    if model.out_shape is None or len(model.out_shape) != 1:
        shape = None if model.out_shape is None else ["N", *model.out_shape]
        raise InputError(f"{where}: a classifier's outputs are [N, classes]; the model's are {shape}{user_line_text()}")
    return int(model.out_shape[0])


def labels(y: Any, rows: int, classes: int, where: str, arg: str = "y", x_arg: str = "x") -> np.ndarray:
    """``y`` as int64 class indices, shape [rows], each in [0, classes)."""
    arr = as_array(y, where, arg)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"{where}: {arg} has dtype {arr.dtype}; class labels must be integers (as for PyTorch's "
                         f"cross_entropy with class indices): convert with y.astype(np.int64){user_line_text()}")
    if arr.shape != (rows,):
        raise InputError(f"{where}: {arg} has shape {list(arr.shape)}; expected [{rows}], one class index per row "
                         f"of {x_arg}{_shape_hint(arr, rows, classes)}{user_line_text()}")
    bad = np.flatnonzero((arr < 0) | (arr >= classes))
    if bad.size:
        first = int(bad[0])
        raise InputError(f"{where}: {arg}: label {int(arr[first])} at index {first} is out of range [0, {classes}) "
                         f"for a model with {classes} outputs; {bad.size} of {rows} labels are out of range"
                         f"{user_line_text()}")
    return arr.astype(np.int64, copy=False)


def values(y: Any, rows: int, row_shape: tuple[int, ...], dtype: np.dtype, where: str, arg: str = "y",
           x_arg: str = "x", what: str = "the loss", value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``y`` as float targets of ``dtype``, shape [rows, *row_shape] (the model's outputs), finite and, with
    ``value_range``, inside it (binary cross-entropy's 0/1 targets)."""
    arr = as_array(y, where, arg)
    expected = [rows, *row_shape]
    if arr.dtype.kind != "f":
        raise DTypeError(f"{where}: {arg} has dtype {arr.dtype}; {what} takes float targets shaped like the model's "
                         f"outputs {expected}: convert with y.astype(np.{dtype}){user_line_text()}")
    if arr.shape != tuple(expected):
        hint = f" (reshape it: y.reshape({rows}, {', '.join(map(str, row_shape))}))" \
            if arr.size == math.prod(expected) else ""
        raise InputError(f"{where}: {arg} has shape {list(arr.shape)}; {what} takes targets shaped like the model's "
                         f"outputs: expected {expected}, one row per row of {x_arg}{hint}{user_line_text()}")
    if value_range is not None and arr.size:
        lo, hi = value_range
        bad = np.flatnonzero(~((arr >= lo) & (arr <= hi)))
        if bad.size:
            index = [int(i) for i in np.unravel_index(bad[0], arr.shape)]
            raise InputError(f"{where}: {arg}{index} = {float(arr.flat[bad[0]]):g} is outside [{lo:g}, {hi:g}]: {what} "
                             f"takes targets in [{lo:g}, {hi:g}]; {bad.size} of {arr.size} are outside"
                             f"{user_line_text()}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _shape_hint(arr: np.ndarray, rows: int, classes: int) -> str:
    """The likely fix for labels of the wrong shape."""
    if arr.shape == (rows, 1):
        return " (flatten it: y.reshape(-1))"
    if arr.shape == (rows, classes):
        return " (one-hot rows? pass y.argmax(axis=1))"
    return ""


def batch_size(value: Any, where: str) -> int:
    """A batch size: a whole number >= 1."""
    return check_count(where, "batch_size", value, minimum=1)
