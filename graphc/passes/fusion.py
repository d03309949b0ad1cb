"""Elementwise fusion: connected elementwise work becomes ``fused`` nodes, one SymPy expression each.

Which nodes are fused: every elementwise op (built-ins, user activations, the derivative ops
``d<op>_d<x>`` autodiff builds, earlier ``fused`` nodes) with a float or bool result, float casts,
and ``broadcast_to`` (a fused node broadcasts its inputs, so a broadcast costs nothing inside one).
Scalar constants become numbers in the expression.

How groups are cut (the multi-output convention): a fused node has one output. A value is
*materialized* (becomes the output of its own fused node) when it is a graph output or update,
when a non-elementwise node reads it, or when its readers end up in different fused nodes;
everything else is inlined into the one fused node that reads it. So a connected elementwise
region with several outputs becomes several fused nodes, each reading the materialized values
it needs; no element is computed twice (except broadcasts and casts, which are free to repeat).
The forward ReLU output read by a GEMM is materialized once, and the backward mask reads it.

Each fused node lists the nodes it absorbed (``Node.absorbed``), in the order the expression was
built; :func:`graphc.passes.fused_provenance` prints them with their source lines.
"""
from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from ..ir import Attrs, Graph, Node
from ..ops import registry
from ..ops.elementwise import fused_symbols
from .core import Rewriter, absorbed_of, copy_node, make, make_constant, rewrite

#: Largest expression tree (in graph nodes, a value read twice counted twice) one fused node builds.
MAX_TREE = 256
#: Ops inlined into every fused node that reads them, never materialized on their own account.
_FREE = frozenset({"broadcast_to", "cast"})


def fusible(node: Node) -> bool:
    """Whether ``node`` can live inside a fused node."""
    if node.op == "broadcast_to":
        return True
    if node.op == "cast":
        return node.dtype.is_float
    if node.op == "fused":
        return True
    if not registry.is_registered(node.op):
        return False
    op = registry.get(node.op)
    return op.expr is not None and (node.dtype.is_float or node.dtype.kind == "b")


@functools.lru_cache(maxsize=None)
def op_template(op_name: str, attrs: Attrs) -> tuple[sp.Expr, tuple[sp.Symbol, ...]]:
    """The scalar expression of one node of ``op_name`` with ``attrs``, and the symbols of its inputs."""
    if op_name == "fused":
        expr = attrs["expr"]
        n = max((int(s.name[1:]) + 1 for s in expr.free_symbols), default=0)
        return expr, fused_symbols(n)
    op = registry.get(op_name)
    values = {sp.Symbol(p, real=True): sp.Float(float(attrs[p])) for p in op.params}
    return (op.expr.xreplace(values) if values else op.expr), op.symbols


def node_expr(node: Node, args: list[sp.Expr]) -> sp.Expr:
    """The expression ``node`` computes from the expressions of its inputs."""
    if node.op in _FREE:
        return args[0]
    if node.op == "fused":
        expr = node.attrs["expr"]
        return expr.xreplace(dict(zip(fused_symbols(len(args)), args)))
    expr, symbols = op_template(node.op, node.attrs)
    return expr.xreplace(dict(zip(symbols, args)))


def constant_number(node: Node) -> sp.Expr | None:
    """A one-element finite constant as a SymPy number (inlined into expressions), else None."""
    if node.op != "constant" or node.value is None or node.value.size != 1:
        return None
    v = node.value.reshape(())[()]
    if node.dtype.kind == "b":
        return sp.Integer(int(bool(v)))
    if node.dtype.kind == "i":
        return sp.Integer(int(v))
    if not np.isfinite(v):
        return None
    # The shortest decimal that gives the same value in the constant's own dtype: the f32 constant
    # 0.01 reads 0.01, not 0.00999999977648258, in the expression and in generated code.
    return sp.Float(str(v), 17 if node.dtype.name == "float64" else 9)


@functools.lru_cache(maxsize=4096)
def fused_cse(expr: sp.Expr) -> tuple[list[tuple[sp.Symbol, sp.Expr]], sp.Expr]:
    """``sympy.cse`` of a fused expression: (temporaries t0, t1, ... with their definitions, result).

    The form backends print as scalar code: one line per temporary, then the result.
    """
    replacements, (reduced,) = sp.cse([expr], symbols=sp.numbered_symbols("t"), optimizations=None)
    return list(replacements), reduced


class _Group:
    """One fused node under construction: its root, the leaves it reads and the nodes it absorbs."""

    def __init__(self, root: Node):
        self.root = root
        self.leaves: list[Node] = []
        self.leaf_index: dict[int, int] = {}
        self.members: list[Node] = []
        self.memo: dict[int, sp.Expr] = {}
        self.real_ops = 0

    def leaf(self, node: Node) -> sp.Expr:
        k = self.leaf_index.get(id(node))
        if k is None:
            k = self.leaf_index[id(node)] = len(self.leaves)
            self.leaves.append(node)
        return sp.Symbol(f"x{k}", real=True)


def _assign_roots(graph: Graph) -> dict[int, Node]:
    """id(fusible node) -> the node whose fused node computes it (itself when materialized).

    An expression is a tree over the graph's DAG: a value read twice inside one fused node appears
    twice in it. Where that would make an expression larger than MAX_TREE nodes, the value is
    materialized instead, so that repeated reuse (x <- x*x + x, k times) cannot grow an
    expression exponentially.
    """
    users = graph.consumers()
    forced: set[int] = set()
    while True:
        root_of = _roots(graph, users, forced)
        size: dict[int, int] = {}
        grew = False
        for n in graph.nodes:
            if id(n) not in root_of:
                continue
            mine = root_of[id(n)]
            size[id(n)] = 1 + sum(size.get(id(i), 0) for i in n.inputs
                                  if id(i) in root_of and root_of[id(i)] is not i
                                  and (root_of[id(i)] is None or root_of[id(i)] is mine or mine is None))
            if size[id(n)] > MAX_TREE and mine is not n and n.op not in _FREE:
                forced.add(id(n))
                size[id(n)] = 1
                grew = True
        if not grew:
            return root_of


def _roots(graph: Graph, users, forced: set[int]) -> dict[int, Node]:
    kept = {id(n) for n in graph.outputs} | {id(v) for _, v in graph.updates} | forced
    root_of: dict[int, Node] = {}
    for n in reversed(graph.nodes):
        if not fusible(n):
            continue
        readers = users[id(n)]
        if id(n) in kept or not readers or any(not fusible(r) for r in readers):
            root_of[id(n)] = n
            continue
        if n.op in _FREE:
            root_of[id(n)] = None  # inlined wherever it is read
            continue
        roots = {id(r_root): r_root for r in readers
                 for r_root in ([root_of[id(r)]] if root_of[id(r)] is not None else _free_roots(r, users, root_of))}
        root_of[id(n)] = next(iter(roots.values())) if len(roots) == 1 else n
    return root_of


def _free_roots(node: Node, users, root_of) -> list[Node]:
    """The roots a free node (inlined everywhere) ends up in."""
    out = []
    for r in users[id(node)]:
        rr = root_of[id(r)]
        out.extend([rr] if rr is not None else _free_roots(r, users, root_of))
    return out


def fuse_elementwise(graph: Graph) -> Graph:
    """Turn every elementwise region into ``fused`` nodes (see the module docstring).

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.relu(x * 2.0 + 1.0))
    >>> fused = fuse_elementwise(g)
    >>> [n.op for n in fused.nodes], fused.nodes[-1].attrs["expr"]
    (['input', 'fused'], Piecewise((2.0*x0 + 1.0, 2.0*x0 + 1.0 > 0), (0, True)))
    """
    root_of = _assign_roots(graph)

    def build(group: _Group, node: Node) -> sp.Expr:
        memo = group.memo.get(id(node))
        if memo is not None:
            return memo
        inside = node is group.root or (
            fusible(node) and id(node) in root_of and (root_of[id(node)] is None or root_of[id(node)] is group.root))
        if not inside:
            number = constant_number(node)
            expr = number if number is not None else group.leaf(node)
        else:
            expr = node_expr(node, [build(group, i) for i in node.inputs])
            group.members.append(node)
            if node.op not in _FREE:
                group.real_ops += 1
        group.memo[id(node)] = expr
        return expr

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        if root_of.get(id(old), False) is not old:
            return None
        group = _Group(old)
        expr = build(group, old)
        if group.real_ops == 0:
            return None  # only broadcasts/casts: nothing to fuse
        if not group.leaves and expr.is_number and expr.is_real:
            value = make_constant(float(expr), old.dtype, like=old)  # nothing left to compute at run time
            return value if not old.shape else make("broadcast_to", [value], {"shape": old.shape}, like=old)
        leaves = [rw.new(leaf) for leaf in group.leaves]
        node = make("fused", leaves, {"expr": expr, "dtype": old.dtype.name}, like=old,
                    absorbed=absorbed_of(group.members))
        if node.shape != old.shape:
            node = make("broadcast_to", [node], {"shape": old.shape}, like=old)
        return node

    return rewrite(graph, visit)


__all__ = ["copy_node", "fuse_elementwise", "fused_cse", "fusible", "node_expr", "op_template"]
