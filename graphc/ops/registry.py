"""The op registry: every fact about an op lives in its one entry.

An entry holds the op's shape/dtype rule, its NumPy reference implementation and its
derivative (a vector-Jacobian-product rule that builds graph nodes). Elementwise ops add
the one SymPy expression all of those are derived from (see :mod:`graphc.ops.elementwise`).
Backends keep their own lowering tables keyed by op name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..ir import Attrs, DType, Node, Shape

#: shape rule: (input nodes, attrs) -> (output shape, output dtype); raises ShapeError/DTypeError.
ShapeRule = Callable[[Sequence[Node], Attrs], "tuple[Shape, DType]"]
#: reference: (input arrays, attrs) -> output array.
Reference = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]
#: vjp: (forward node, cotangent Tensor, input Tensors) -> one Tensor or None per input.
VJP = Callable[..., "list[Any]"]


def float_operands(inputs: Sequence[Node]) -> DType:
    """Shape-rule helper: the promoted dtype of ``inputs``, which must be a float (matmul, conv, ...)."""
    from ..ir import DTypeError, promote

    dtype = promote(*(i.dtype for i in inputs))
    if not dtype.is_float:
        raise DTypeError(f"needs float operands, got {', '.join(i.dtype.name for i in inputs)}")
    return dtype


def no_gradient(node, g, inputs):
    """The derivative of an op whose output is not differentiable (integer, boolean, sources)."""
    return [None] * len(inputs)


@dataclass
class OpDef:
    name: str
    family: str
    doc: str
    shape_rule: ShapeRule
    reference: Reference
    vjp: VJP | None = None
    #: Elementwise ops only: the SymPy expression and its input/parameter symbols.
    expr: Any = None
    symbols: tuple = ()
    params: dict = field(default_factory=dict)
    #: Other conventions worth documenting (non-differentiable points, padding semantics, ...).
    notes: str = ""

    @property
    def is_elementwise(self) -> bool:
        return self.expr is not None


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.name!r} is already registered")
    _REGISTRY[op.name] = op
    return op


def get(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}") from None


def all_ops() -> list[OpDef]:
    return list(_REGISTRY.values())


def is_registered(name: str) -> bool:
    return name in _REGISTRY
