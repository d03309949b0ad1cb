"""Reduction fusion: softmax and log-softmax written by hand become the one op that computes them
in a single pass over each row (max, exp, sum, divide), stably.

  exp(x - max(x, a, keepdims)) / sum(exp(x - max(x, a, keepdims)), a, keepdims)  -> softmax(x, a)
  exp(x) / sum(exp(x), a, keepdims)                                          -> softmax(x, a)
  (x - m) - log(sum(exp(x - m), a, keepdims)),  m = max(x, a, keepdims) or 0   -> log_softmax(x, a)

A ``broadcast_to`` between the reduction and its use is looked through. The unshifted forms
become the stable op too (exp(x) alone overflows for x > 88 in float32).
"""
from __future__ import annotations

from ..ir import Graph, Node
from .core import Rewriter, conform, make, rewrite


def fuse_reductions(graph: Graph) -> Graph:
    """Replace hand-written softmax / log-softmax by the softmax / log_softmax ops.

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (2, 3))
    ...     e = graphc.exp(x - x.max(axis=1, keepdims=True))
    ...     y = g.output(e / e.sum(axis=1, keepdims=True))
    >>> [n.op for n in fuse_reductions(g).nodes]
    ['input', 'softmax']
    """
    return rewrite(graph, _visit)


def _unbroadcast(node: Node) -> Node:
    return node.inputs[0] if node.op == "broadcast_to" else node


def _row_reduction(node: Node, op: str) -> tuple[Node, int] | None:
    """(input, axis) when ``node`` (looking through a broadcast) is op(input, axes=(axis,), keepdims=True)."""
    node = _unbroadcast(node)
    if node.op == op and len(node.attrs["axes"]) == 1 and node.attrs["keepdims"]:
        return node.inputs[0], node.attrs["axes"][0]
    return None


def _shifted(t: Node, axis: int) -> Node | None:
    """x when ``t`` is x - max(x, axis, keepdims) or x itself (the unshifted form)."""
    if t.op == "sub":
        m = _row_reduction(t.inputs[1], "max")
        if m is not None and m[0] is t.inputs[0] and m[1] == axis:
            return t.inputs[0]
    return t


def _visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
    if old.op == "div":
        e, s = old.inputs
        red = _row_reduction(s, "sum")
        if e.op != "exp" or red is None or red[0] is not e or e.shape != old.shape:
            return None
        x = _shifted(e.inputs[0], red[1])
        if x.shape != old.shape or not x.dtype.is_float:
            return None
        return conform(make("softmax", [rw.new(x)], {"axis": red[1]}, like=old), old)
    if old.op == "sub":
        t, lg = old.inputs
        if _unbroadcast(lg).op != "log":
            return None
        red = _row_reduction(_unbroadcast(lg).inputs[0], "sum")
        if red is None or red[0].op != "exp" or red[0].inputs[0] is not t or t.shape != old.shape:
            return None
        x = _shifted(t, red[1])
        if x.shape != old.shape or not x.dtype.is_float:
            return None
        return conform(make("log_softmax", [rw.new(x)], {"axis": red[1]}, like=old), old)
    return None
