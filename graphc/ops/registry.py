"""The op registry: every fact about an op lives in its one entry.

An entry holds the op's shape/dtype rule, its NumPy reference implementation and its
derivative (a vector-Jacobian-product rule that builds graph nodes). Elementwise ops add
the one SymPy expression all of those are derived from (see :mod:`graphc.ops.elementwise`).
The facts passes and backends ask about an op are fields of its entry too (``source``, ``view``,
``gemm_product``, ``label_operand``, ``from_output``), never a list of op names kept elsewhere.
Backends keep their own lowering tables keyed by op name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ..ir import Attrs, DType, GraphcError, Node, Shape
from ..ir.errors import did_you_mean, line_text
from ..ir.source import user_location

#: shape rule: (input nodes, attrs) -> (output shape, output dtype); raises ShapeError/DTypeError.
ShapeRule = Callable[[Sequence[Node], Attrs], "tuple[Shape, DType]"]
#: reference: (input arrays, attrs) -> output array.
Reference = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]
#: vjp: (forward node, cotangent Tensor, input Tensors) -> one Tensor or None per input.
VJP = Callable[..., "list[Any]"]
#: labels: node -> (index of the operand holding integer class labels, number of classes), or None.
Labels = Callable[[Node], "tuple[int, int] | None"]


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
    """Everything graphc knows about one op (see the module docstring)."""

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
    #: A derivative op (``d<op>_d<input>``, registered by autodiff on first use): (op, input index).
    derivative_of: tuple[str, int] | None = None
    #: A value that exists before the first kernel runs (input, param, constant): it is stored, not computed.
    source: bool = False
    #: The output is the input's memory read again with another shape (reshape: every buffer is C-contiguous).
    view: bool = False
    #: A matrix product computed by one GEMM, whose alpha and beta can absorb a scaling of the product and
    #: an accumulation into the output's buffer (matmul, matmul_epilogue).
    gemm_product: bool = False
    #: Which operand holds integer class labels, and how many classes (see :meth:`label_operand`).
    labels: Labels | None = None
    #: Elementwise activations: their derivative as an expression of their output y (and their parameters),
    #: ``from_output(y, *params)``; graphc.passes.activations checks it before using it.
    from_output: Callable[..., sp.Expr] | None = None

    @property
    def is_elementwise(self) -> bool:
        """Whether the op is defined by a scalar SymPy expression (``fused`` nodes carry theirs in attrs)."""
        return self.expr is not None

    def label_operand(self, node: Node) -> tuple[int, int] | None:
        """(index of ``node``'s operand holding integer class labels, number of classes), or None when
        ``node`` reads no labels: a backend checks that every label lies in [0, classes)."""
        return None if self.labels is None else self.labels(node)


class UnknownOpError(GraphcError, KeyError):
    """An op name nobody registered (a KeyError too, as a dict lookup's would be)."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.name!r} is already registered")
    _REGISTRY[op.name] = op
    return op


def get(name: str) -> OpDef:
    """The entry of op ``name``; an :class:`UnknownOpError` (a KeyError) names an op nobody registered,
    the closest registered names and the user's line."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownOpError(f"unknown op {name!r}{did_you_mean(name, _REGISTRY)}; `graphc ops` lists the "
                             f"registered ops{line_text(user_location())}") from None


def all_ops() -> list[OpDef]:
    return list(_REGISTRY.values())


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def is_source(node: Node) -> bool:
    """Whether ``node`` is stored before the first kernel runs (an input, a parameter or a constant)."""
    return get(node.op).source


def is_view(node: Node) -> bool:
    """Whether ``node`` is its input's memory read with another shape (it computes nothing)."""
    return get(node.op).view
