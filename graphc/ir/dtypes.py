"""The five dtypes graphc knows, and NumPy-style promotion between them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """A graphc dtype: a name, its short form used by the printer, and its NumPy dtype."""

    name: str
    short: str
    kind: str  # "f" float, "i" signed integer, "b" bool

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.name)

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:
        return self.kind == "i"

    def __repr__(self) -> str:
        return f"graphc.{self.name}"

    def __str__(self) -> str:
        return self.short


float32 = DType("float32", "f32", "f")
float64 = DType("float64", "f64", "f")
int32 = DType("int32", "i32", "i")
int64 = DType("int64", "i64", "i")
bool_ = DType("bool", "bool", "b")

ALL_DTYPES = (float32, float64, int32, int64, bool_)
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {d.short: d for d in ALL_DTYPES}

#: The float dtype used when an integer input meets a float-only op (as in JAX).
DEFAULT_FLOAT = float32


def as_dtype(x: object) -> DType:
    """Normalize a dtype spelling: a DType, "float32"/"f32", np.float32 or np.dtype.

    >>> as_dtype("f32") is float32
    True
    """
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in _BY_NAME:
        return _BY_NAME[x]
    try:
        name = np.dtype(x).name
    except TypeError:
        name = None
    if name in _BY_NAME:
        return _BY_NAME[name]
    raise TypeError(f"graphc supports dtypes {', '.join(d.name for d in ALL_DTYPES)}; got {x!r}")


def promote(*dtypes: DType) -> DType:
    """NumPy's promotion among graphc dtypes (int64 + float32 -> float64 is NumPy's rule too)."""
    return as_dtype(np.result_type(*[d.np for d in dtypes]))


def to_float(d: DType) -> DType:
    """The dtype a float-valued op (exp, sigmoid, ...) produces from an input of dtype ``d``."""
    return d if d.is_float else DEFAULT_FLOAT
