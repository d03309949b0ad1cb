"""Constant folding: a node whose inputs are all constants becomes a constant, computed by the
NumPy reference backend (the same code that defines what the node means).
"""
from __future__ import annotations

from ..ir import Graph, GraphcError, Node
from .core import Rewriter, copy_node, make_constant, rewrite

#: Results with more elements than this are not baked into the graph: a broadcast of a scalar to
#: [128, 784] is cheaper to compute than to store (and would bloat dumps and the compile-cache key).
FOLD_LIMIT = 1024

#: Ops never folded: sources, and ops whose value depends on more than their inputs.
_NEVER = frozenset({"input", "param", "constant"})


def fold_constants(graph: Graph, limit: int = FOLD_LIMIT) -> Graph:
    """Replace each node computed only from constants, with at most ``limit`` elements, by a constant.

    >>> import graphc, numpy as np
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (3,))
    ...     y = g.output(x * (graphc.constant(2.0) + graphc.constant(3.0)))
    >>> [n.op for n in fold_constants(g).nodes]
    ['input', 'constant', 'mul']
    """
    from ..backends import reference

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        if old.op in _NEVER or not inputs or old.size > limit:
            return None
        if not all(i.op == "constant" for i in inputs):
            return None
        single = Graph("fold")
        args = [single.add(copy_node(i, ())) for i in inputs]
        node = single.add(copy_node(old, tuple(args), provenance=None, absorbed=()))
        try:
            (value,) = reference.evaluate(single, {}, [node])
        except (GraphcError, ArithmeticError, ValueError):
            return None  # e.g. an out-of-range label: leave it to fail at run time, where it is reported
        return make_constant(value, old.dtype, like=old)

    return rewrite(graph, visit)
