"""Linear algebra: batched matmul and the dense layer x @ W + b."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Attrs, Node, ShapeError
from .elementwise import broadcast_shapes
from .reduce import sum, sum_to_shape
from .registry import OpDef, float_operands, register
from .shape import reshape, transpose
from .tensor import Tensor, apply


def _matmul_rule(inputs: Sequence[Node], attrs: Attrs):
    a, b = inputs
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError("operands must have at least 2 dimensions")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"inner dimensions do not match: {a.shape[-1]} (last axis of the left operand) "
                         f"!= {b.shape[-2]} (second-to-last axis of the right operand)")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return batch + (a.shape[-2], b.shape[-1]), float_operands(inputs)


def _swap_last(t: Tensor) -> Tensor:
    perm = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return transpose(t, perm)


def _matmul_vjp(node, g, inputs):
    a, b = inputs
    return [sum_to_shape(matmul(g, _swap_last(b)), a.shape), sum_to_shape(matmul(_swap_last(a), g), b.shape)]


def _matmul_reference(arrays, attrs):
    return np.matmul(arrays[0], arrays[1])


register(OpDef("matmul", "linalg", "matrix product over the last two axes, batch axes broadcast (numpy.matmul)",
               _matmul_rule, _matmul_reference, _matmul_vjp, gemm_product=True))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with NumPy semantics: 1-D operands are promoted to matrices and the axis removed again."""
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    a2 = reshape(a, (1,) + a.shape) if a_vec else a
    b2 = reshape(b, b.shape + (1,)) if b_vec else b
    out = apply("matmul", [a2, b2])
    if a_vec or b_vec:
        shape = out.shape[:-2] + (() if a_vec else out.shape[-2:-1]) + (() if b_vec else out.shape[-1:])
        out = reshape(out, shape)
    return out


def _dense_rule(inputs: Sequence[Node], attrs: Attrs):
    x, w, b = inputs
    if w.ndim != 2:
        raise ShapeError(f"weights must be 2-D [in, out], got {w.type_str}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ShapeError(f"input features {x.shape[-1] if x.ndim else '()'} != weight rows {w.shape[0]} "
                         f"(x is [..., in], W is [in, out])")
    if b.shape != (w.shape[1],):
        raise ShapeError(f"bias must have shape [{w.shape[1]}], got {b.type_str}")
    return x.shape[:-1] + (w.shape[1],), float_operands(inputs)


def _dense_vjp(node, g, inputs):
    x, w, b = inputs
    x2 = reshape(x, (-1, x.shape[-1]))
    g2 = reshape(g, (-1, g.shape[-1]))
    return [reshape(matmul(g2, transpose(w)), x.shape), matmul(transpose(x2), g2), sum(g2, 0)]


register(OpDef("dense", "linalg", "x @ W + b for x [..., in], W [in, out], b [out]", _dense_rule,
               lambda a, at: np.matmul(a[0], a[1]) + a[2], _dense_vjp))


def dense(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The affine layer ``x @ W + b`` (x [..., in], W [in, out], b [out]) as one node."""
    return apply("dense", [x, w, b])
