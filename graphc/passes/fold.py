"""Constant folding: a node whose inputs are all constants becomes a constant, computed by the
NumPy interpreter of nodes (:mod:`graphc.ops.interpret`, the same code that defines what the node means).

Uniform tensors (every element equal: ``broadcast_to(c, S)``) are folded whatever their size:
an elementwise op, a reshape, a transpose or a broadcast of uniform inputs is computed once on
the one-element values and broadcast to its shape. Any other result with more than ``limit``
elements is left as it is, so large constants are not baked into the graph. A folded result
whose elements are all equal is written as a one-element constant broadcast to the shape. The
mean of a uniform tensor is its value only while the sum stays finite (IEEE: NumPy's mean of
[1e308, 1e308] is inf).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, GraphcError, Node
from ..ops import interpret, is_elementwise, registry
from .core import Rewriter, copy_node, make, make_constant, rewrite, uniform_constant

#: Results with more elements than this are not baked into the graph: a broadcast of a scalar to
#: [128, 784] is cheaper to compute than to store (and would bloat dumps and the compile-cache key).
FOLD_LIMIT = 1024

#: Ops whose result is uniform when their inputs are, with the same value (elementwise ops aside).
_SAME_VALUE = frozenset({"reshape", "transpose", "broadcast_to", "max", "min", "mean"})


def _mean_overflows(value: Node, in_size: int, out_size: int) -> bool:
    """Whether summing the uniform value over the reduced elements overflows its dtype (IEEE: the
    mean of 1e308 twice is inf in float64, not 1e308)."""
    if not value.dtype.is_float:
        return False
    count = in_size // max(out_size, 1)
    with np.errstate(all="ignore"):
        total = np.abs(value.value.reshape(())).astype(value.dtype.np) * value.dtype.np.type(count)
    return not np.isfinite(total)


def _evaluate(op_node: Node) -> np.ndarray | None:
    """Evaluate one node over constant inputs with NumPy (None if it raises)."""
    single = Graph("fold")
    args = [single.add(copy_node(i, ())) for i in op_node.inputs]
    node = single.add(copy_node(op_node, tuple(args), provenance=None, absorbed=()))
    try:
        (value,) = interpret.evaluate(single, {}, [node])
    except (GraphcError, ArithmeticError, ValueError):
        return None  # e.g. an out-of-range label: leave it to fail at run time, where it is reported
    return value


def _as_constant(value: np.ndarray, old: Node) -> Node:
    flat = value.reshape(-1)
    if flat.size > 1 and np.all(flat == flat[0]):
        scalar = make_constant(flat[0], old.dtype, like=old)
        return make("broadcast_to", [scalar], {"shape": old.shape}, like=old)
    return make_constant(value, old.dtype, like=old)


def fold_constants(graph: Graph, limit: int = FOLD_LIMIT) -> Graph:
    """Replace each node computed only from constants by a constant (see the module docstring).

    >>> import graphc, numpy as np
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (3,))
    ...     y = g.output(x * (graphc.constant(2.0) + graphc.constant(3.0)))
    >>> [n.op for n in fold_constants(g).nodes]
    ['input', 'constant', 'mul']
    """

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        if registry.is_source(old) or not inputs or registry.get(old.op).collective:
            return None  # a collective's value comes from the other ranks, when the step runs
        if old.op == "broadcast_to" and inputs[0].op == "constant" and inputs[0].size == 1:
            return None  # already the canonical form of a uniform tensor
        uniform = [uniform_constant(i) for i in inputs]
        if old.op == "mean" and uniform[0] is not None and _mean_overflows(uniform[0], inputs[0].size, old.size):
            uniform[0] = None  # mean(c, ..., c) is c only while the sum stays finite: computed as written
        if all(u is not None for u in uniform) and (is_elementwise(old) or old.op in _SAME_VALUE):
            if old.op in _SAME_VALUE:
                value = uniform[0].value.reshape(())
            else:
                value = _evaluate(make(old.op, uniform, old.attrs, like=old))
            if value is not None:
                scalar = make_constant(value, old.dtype, like=old)
                return scalar if not old.shape else make("broadcast_to", [scalar], {"shape": old.shape}, like=old)
        if old.size > limit or not all(i.op == "constant" for i in inputs):
            return None
        value = _evaluate(copy_node(old, inputs))
        return None if value is None else _as_constant(value, old)

    return rewrite(graph, visit)
