"""Epilogue ops: a GEMM or a convolution with the elementwise work on its result fused in.

The epilogue fusion pass (graphc.passes.epilogue) builds these; users do not. Both follow the
``fused`` op's convention: attribute ``expr`` is one SymPy expression over symbols x0, x1, ...
where **x0 is the product** (the matmul or conv2d result) and x1..xk are the extra inputs, in
order, broadcast against the product (a bias [C], a bias [1, C, 1, 1], an activation output, ...).
The result has the product's shape and dtype attribute ``dtype``. A backend computes the product
(BLAS, im2col/GEMM, a loop nest), then evaluates ``expr`` per element while the product is still
in cache: out[i] = expr(acc[i], x1[i], ..., xk[i]).

  matmul_epilogue(a, b, x1..xk)[transpose_a, transpose_b, expr, dtype]
      acc = op(a) @ op(b), op = swap of the last two axes when the flag is set (numpy.matmul rules)
  conv2d_epilogue(x, w, x1..xk)[stride, padding, dilation, expr, dtype]
      acc = conv2d(x, w) with conv2d's attributes

Their VJPs recompute the product (``acc`` is not an output), differentiate ``expr`` with SymPy,
and hand the product's cotangent to the VJP of matmul / conv2d.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import sympy as sp

from ..ir import Attrs, GraphcError, Node, ShapeError, as_dtype
from .elementwise import broadcast_shapes, cast, fused, fused_derivative, fused_symbols, numpy_function
from .reduce import sum_to_shape
from .registry import OpDef, get, register
from .shape import transpose
from .tensor import Tensor, apply


def _check_expr(attrs: Attrs, n_symbols: int) -> None:
    extra = attrs["expr"].free_symbols - set(fused_symbols(n_symbols))
    if extra:
        raise ShapeError(f"epilogue expression {attrs['expr']} uses symbols {sorted(map(str, extra))} "
                         f"that are not x0 (the product) or one of the {n_symbols - 1} extra inputs")


def _check_extras(acc_shape: tuple[int, ...], extras: Sequence[Node]) -> None:
    for e in extras:
        if broadcast_shapes(acc_shape, e.shape) != acc_shape:
            raise ShapeError(f"epilogue operand {e.type_str} does not broadcast to the product's shape "
                             f"{list(acc_shape)}")


@functools.lru_cache(maxsize=4096)
def _lambdified(expr: sp.Expr, n: int):
    return numpy_function(fused_symbols(n), expr)


def _apply_epilogue(acc: np.ndarray, extras: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    fn = _lambdified(attrs["expr"], 1 + len(extras))
    with np.errstate(all="ignore"):  # Piecewise evaluates every branch; the unused ones may overflow
        # broadcast first: a compound condition (x >= y) | isnan(x) is a logical_or.reduce over a tuple
        result = np.asarray(fn(*np.broadcast_arrays(acc, *extras)))
    return np.broadcast_to(result, acc.shape)


def _swap_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-2] + (shape[-1], shape[-2])


# -- matmul_epilogue ---------------------------------------------------------------------------------

def _matmul_operand_shapes(inputs: Sequence[Node], attrs: Attrs):
    a, b = inputs[0], inputs[1]
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError("operands must have at least 2 dimensions")
    sa = _swap_last(a.shape) if attrs["transpose_a"] else a.shape
    sb = _swap_last(b.shape) if attrs["transpose_b"] else b.shape
    if sa[-1] != sb[-2]:
        raise ShapeError(f"inner dimensions do not match: {sa[-1]} != {sb[-2]} "
                         f"(transpose_a={attrs['transpose_a']}, transpose_b={attrs['transpose_b']})")
    return sa, sb


def _matmul_epilogue_rule(inputs: Sequence[Node], attrs: Attrs):
    sa, sb = _matmul_operand_shapes(inputs, attrs)
    acc_shape = broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1])
    _check_expr(attrs, len(inputs) - 1)
    _check_extras(acc_shape, inputs[2:])
    return acc_shape, as_dtype(attrs["dtype"])


def _matmul_epilogue_reference(arrays, attrs):
    a, b = arrays[0], arrays[1]
    a = np.swapaxes(a, -1, -2) if attrs["transpose_a"] else a
    b = np.swapaxes(b, -1, -2) if attrs["transpose_b"] else b
    return _apply_epilogue(np.matmul(a, b), arrays[2:], attrs)


def _swap(t: Tensor) -> Tensor:
    return transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))


def _epilogue_cotangents(node: Node, g: Tensor, acc: Tensor, extras: Sequence[Tensor]):
    """(cotangent of the product or None, [cotangent of each extra or None])."""
    expr = node.attrs["expr"]
    n = 1 + len(extras)
    operands = [acc, *extras]
    out = []
    for k, x in enumerate(operands):
        d = fused_derivative(expr, n, k)
        if d == 0 or not x.dtype.is_float:
            out.append(None)
            continue
        local = g if d == 1 else g * fused(d, operands, node.dtype)
        out.append(sum_to_shape(cast(local, x.dtype), x.shape))
    return out[0], out[1:]


def _matmul_epilogue_vjp(node: Node, g: Tensor, inputs: Sequence[Tensor]):
    a, b, extras = inputs[0], inputs[1], list(inputs[2:])
    at = _swap(a) if node.attrs["transpose_a"] else a
    bt = _swap(b) if node.attrs["transpose_b"] else b
    acc = apply("matmul", [at, bt])
    g_acc, g_extras = _epilogue_cotangents(node, g, acc, extras)
    if g_acc is None:
        return [None, None] + g_extras
    da, db = get("matmul").vjp(acc.node, g_acc, [at, bt])
    da = _swap(da) if node.attrs["transpose_a"] and da is not None else da
    db = _swap(db) if node.attrs["transpose_b"] and db is not None else db
    return [da, db] + g_extras


register(OpDef("matmul_epilogue", "linalg",
               "op(a) @ op(b) (op: optional swap of the last two axes) followed by an elementwise epilogue "
               "expr(x0 = product, x1.. = extra inputs)",
               _matmul_epilogue_rule, _matmul_epilogue_reference, _matmul_epilogue_vjp,
               notes="built by the epilogue fusion pass; the VJP recomputes the product", gemm_product=True))


# -- conv2d_epilogue --------------------------------------------------------------------------------

_CONV_ATTRS = ("stride", "padding", "dilation")


def _conv_attrs(attrs: Attrs) -> Attrs:
    return Attrs({k: attrs[k] for k in _CONV_ATTRS})


def _conv2d_epilogue_rule(inputs: Sequence[Node], attrs: Attrs):
    acc_shape, _ = get("conv2d").shape_rule(inputs[:2], _conv_attrs(attrs))
    _check_expr(attrs, len(inputs) - 1)
    _check_extras(tuple(acc_shape), inputs[2:])
    return tuple(acc_shape), as_dtype(attrs["dtype"])


def _conv2d_epilogue_reference(arrays, attrs):
    acc = get("conv2d").reference(arrays[:2], _conv_attrs(attrs))
    return _apply_epilogue(acc, arrays[2:], attrs)


def _conv2d_epilogue_vjp(node: Node, g: Tensor, inputs: Sequence[Tensor]):
    x, w, extras = inputs[0], inputs[1], list(inputs[2:])
    acc = apply("conv2d", [x, w], dict(_conv_attrs(node.attrs)))
    g_acc, g_extras = _epilogue_cotangents(node, g, acc, extras)
    if g_acc is None:
        return [None, None] + g_extras
    conv_vjp = get("conv2d").vjp
    if conv_vjp is None:
        raise GraphcError("conv2d_epilogue: conv2d has no derivative rule registered")
    return list(conv_vjp(acc.node, g_acc, [x, w])) + g_extras


register(OpDef("conv2d_epilogue", "conv",
               "conv2d(x, w) followed by an elementwise epilogue expr(x0 = product, x1.. = extra inputs)",
               _conv2d_epilogue_rule, _conv2d_epilogue_reference, _conv2d_epilogue_vjp,
               notes="built by the epilogue fusion pass; the VJP recomputes the convolution"))
