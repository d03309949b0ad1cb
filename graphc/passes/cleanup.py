"""Dead-code elimination and common-subexpression elimination."""
from __future__ import annotations

import hashlib

from ..ir import Graph, Node
from ..ir.rewrite import clone
from .core import Rewriter, copy_node, rewrite

#: Constants larger than this many bytes are compared by a hash of their bytes (then checked in full).
_CONSTANT_KEY_BYTES = 64


def dce(graph: Graph) -> Graph:
    """Dead-code elimination: keep only the nodes the outputs and the parameter updates need.

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (3,))
    ...     unused = graphc.exp(x)
    ...     y = g.output(x * 2.0)
    >>> [n.op for n in dce(g).nodes]
    ['input', 'constant', 'mul']
    """
    return clone(graph)[0]


def _key(node: Node, inputs: tuple[Node, ...]):
    """Two nodes with equal keys compute the same value. Inputs and parameters are never merged."""
    if node.op in ("input", "param"):
        return None
    if node.op == "constant":
        raw = node.value.tobytes()
        digest = raw if len(raw) <= _CONSTANT_KEY_BYTES else hashlib.sha256(raw).digest()
        return ("constant", node.dtype, node.shape, digest)
    return (node.op, node.attrs, tuple(id(i) for i in inputs), node.shape, node.dtype)


def cse(graph: Graph) -> Graph:
    """Common-subexpression elimination: a node computing what an earlier node already computes
    (same op, attributes and inputs; equal constants) is replaced by that earlier node.

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (3,))
    ...     y = g.output(graphc.exp(x) + graphc.exp(x))
    >>> [n.op for n in cse(g).nodes]
    ['input', 'exp', 'add']
    """
    seen: dict = {}

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node:
        key = _key(old, inputs)
        earlier = seen.get(key) if key is not None else None
        if earlier is not None and (old.op != "constant" or _same_constant(earlier, old)):
            return earlier
        node = copy_node(old, inputs)
        if key is not None:
            seen.setdefault(key, node)
        return node

    return rewrite(graph, visit)


def _same_constant(a: Node, b: Node) -> bool:
    return a.value.shape == b.value.shape and a.value.tobytes() == b.value.tobytes()
