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

IEEE semantics: SymPy simplifies an expression as it is built (``x - x`` is 0, ``x*0`` is 0, ``x/x``
is 1, ``exp(log(x))`` is x, ``2*(x + y)`` is ``2x + 2y``): identities of real numbers that are false
for NaN, infinities or overflow. Unless ``fast_math``, each node's expression is compared with the
node's operation written out unevaluated (:func:`faithful`); a node SymPy changed is not fused (it
stays its own op, computed as written). A cast to another float dtype is a value
(``float32(x0)``: the rounding, and the precision what follows computes in), never dropped.
"""
from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from ..ir import Graph, Node
from ..ops.elementwise import CAST_FUNCTIONS, fused_symbols, is_elementwise, node_expression, numpy_function
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
        return node.dtype.name in CAST_FUNCTIONS
    if node.op == "fused":
        return True
    return is_elementwise(node) and (node.dtype.is_float or node.dtype.kind == "b")


def node_expr(node: Node, args: list[sp.Expr]) -> sp.Expr:
    """The expression ``node`` computes from the expressions of its inputs (SymPy evaluates it as it
    builds it: see :func:`faithful`)."""
    if node.op == "broadcast_to" or (node.op == "cast" and node.inputs[0].dtype == node.dtype):
        return args[0]
    if node.op == "cast":
        return CAST_FUNCTIONS[node.dtype.name](args[0])
    if node.op == "fused":
        expr = node.attrs["expr"]
        return expr.xreplace(dict(zip(fused_symbols(len(args)), args)))
    expr, symbols = node_expression(node)
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


#: Values every input of an expression takes in :func:`faithful`: IEEE specials, signed zeros, the
#: extremes of float32 and float64 (where a rewrite overflows), and ordinary numbers.
_IEEE_POINTS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 1e-300, 30.0, -30.0, 1000.0,
                         -1000.0, 3.4e38, -3.4e38, 1e308, -1e308])


def _ieee_points(n: int) -> np.ndarray:
    """[n, k] points: every value for each input (the others random), and every value for all at once."""
    rng = np.random.default_rng(4321 + n)
    m = len(_IEEE_POINTS)
    pts = rng.choice(_IEEE_POINTS, size=(n, 2 * m + 12 * m))
    for i in range(n):
        pts[i, :m] = _IEEE_POINTS
    pts[:, m:2 * m] = _IEEE_POINTS
    return pts


def faithful(node: Node, args: list[sp.Expr], expr: sp.Expr) -> bool:
    """Whether ``expr`` (``node_expr(node, args)``, as SymPy evaluated it) computes what the node's
    operation applied to ``args`` computes, NaN, infinities and overflow included.

    SymPy's automatic simplifications assume real (finite) numbers. Where SymPy changed the
    structure (the operation count or the inputs differ from the node's operation over ``args``:
    equal counts mean reordering or ``x + x -> 2x``), the node's operation is evaluated with NumPy
    on the values of ``args`` at :data:`_IEEE_POINTS` and compared with ``expr`` there.
    """
    if node.op == "cast":
        template, symbols = CAST_FUNCTIONS[node.dtype.name](fused_symbols(1)[0]), fused_symbols(1)
    else:
        template, symbols = node_expression(node)
    return same_values_when_written(template, dict(zip(symbols, args)), expr)


def same_values_when_written(template: sp.Expr, mapping: dict, expr: sp.Expr) -> bool:
    """Whether ``expr`` (``template.xreplace(mapping)`` as SymPy evaluated it) computes what
    ``template`` computes on the values of the expressions ``mapping`` gives its symbols (see
    :func:`faithful`)."""
    symbols = tuple(mapping)
    args = tuple(mapping[s] for s in symbols)
    written_ops = _ops(template) + sum(template.count(s) * _ops(a) for s, a in zip(symbols, args))
    inputs = set().union(*(a.free_symbols for a in args)) if args else set()
    if written_ops == _ops(expr) and inputs == expr.free_symbols:
        return True
    return _same_values(template, symbols, args, expr)


@functools.lru_cache(maxsize=16384)
def _ops(expr: sp.Expr) -> int:
    return sp.count_ops(expr)


@functools.lru_cache(maxsize=8192)
def _same_values(template: sp.Expr, symbols: tuple, args: tuple, evaluated: sp.Expr) -> bool:
    inputs = sorted(set().union(evaluated.free_symbols, *(a.free_symbols for a in args)), key=lambda s: s.name)
    pts = _ieee_points(max(len(inputs), 1))[: len(inputs)]
    shape = pts.shape[1:]

    def values(expr: sp.Expr, over, at) -> np.ndarray:
        return np.broadcast_to(np.asarray(numpy_function(over, expr)(*at), dtype=np.float64), shape)

    try:
        with np.errstate(all="ignore"):
            written = values(template, symbols, [values(a, inputs, pts) for a in args])
            b = values(evaluated, inputs, pts)
    except Exception:  # noqa: BLE001 - not evaluable numerically: cannot be shown equal, so it is not fused
        return False
    nan_a, nan_b = np.isnan(written), np.isnan(b)
    if np.any(nan_a != nan_b):
        return False
    return bool(np.all(np.isclose(written[~nan_a], b[~nan_a], rtol=1e-6, atol=1e-290)))


@functools.lru_cache(maxsize=4096)
def fused_cse(expr: sp.Expr) -> tuple[list[tuple[sp.Symbol, sp.Expr]], sp.Expr]:
    """``sympy.cse`` of a fused expression: (temporaries t0, t1, ... with their definitions, result).

    The form backends print as scalar code: one line per temporary, then the result.
    """
    with sp.evaluate(False):  # as the cpu backend's scalar printer: no re-simplification (IEEE semantics)
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


def _assign_roots(graph: Graph, excluded: frozenset[int] = frozenset()) -> dict[int, Node]:
    """id(fusible node) -> the node whose fused node computes it (itself when materialized).

    An expression is a tree over the graph's DAG: a value read twice inside one fused node appears
    twice in it. Where that would make an expression larger than MAX_TREE nodes, the value is
    materialized instead, so that repeated reuse (x <- x*x + x, k times) cannot grow an
    expression exponentially.
    """
    users = graph.consumers()
    forced: set[int] = set()
    while True:
        root_of = _roots(graph, users, forced, excluded)
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


def _roots(graph: Graph, users, forced: set[int], excluded: frozenset[int]) -> dict[int, Node]:
    kept = {id(n) for n in graph.outputs} | {id(v) for _, v in graph.updates} | forced

    def inside(node: Node) -> bool:
        return fusible(node) and id(node) not in excluded

    root_of: dict[int, Node] = {}
    for n in reversed(graph.nodes):
        if not inside(n):
            continue
        readers = users[id(n)]
        if id(n) in kept or not readers or any(not inside(r) for r in readers):
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


def fuse_elementwise(graph: Graph, fast_math: bool = False) -> Graph:
    """Turn every elementwise region into ``fused`` nodes (see the module docstring).

    Unless ``fast_math``, a node whose expression SymPy simplified into something that differs for
    NaN, infinities or overflow (:func:`faithful`) is left out of fusion and computed as written.

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.relu(x * 2.0 + 1.0))
    >>> fused = fuse_elementwise(g)
    >>> [n.op for n in fused.nodes], fused.nodes[-1].attrs["expr"]
    (['input', 'fused'], Piecewise((0, 2.0*x0 + 1.0 <= 0), (2.0*x0 + 1.0, True)))
    """
    excluded: set[int] = set()
    while True:
        root_of = _assign_roots(graph, frozenset(excluded))
        unfaithful = _unfaithful_nodes(graph, root_of, fast_math)
        if not unfaithful:
            break
        excluded.update(unfaithful)
    return _fuse(graph, root_of)


def _unfaithful_nodes(graph: Graph, root_of: dict[int, Node], fast_math: bool = False) -> list[int]:
    """The nodes whose expressions SymPy could not build from their inputs' (``expr`` None: a NaN branch
    reaching a comparison) or, unless ``fast_math``, changed while building them (see :func:`faithful`)."""
    found: list[int] = []
    for root in {id(r): r for r in root_of.values() if r is not None}.values():
        group = _Group(root)

        def check(node: Node, args: list[sp.Expr], expr: sp.Expr | None) -> None:
            if expr is None or (not fast_math and node.op != "broadcast_to" and not faithful(node, args, expr)):
                found.append(id(node))

        _build(group, root, root_of, check)
    return found


def _build(group: _Group, node: Node, root_of: dict[int, Node], check=None, round_f32: bool = False) -> sp.Expr:
    """The expression of ``node`` inside ``group``: its inputs inlined when they belong to the group.

    ``round_f32``: the group mixes float32 and float64 values, so a kernel computes in float64; each
    float32 node's result is then rounded to float32 (``float32(...)``) as the node itself would round it.
    """
    memo = group.memo.get(id(node))
    if memo is not None:
        return memo
    inside = node is group.root or (
        fusible(node) and id(node) in root_of and (root_of[id(node)] is None or root_of[id(node)] is group.root))
    if not inside:
        number = constant_number(node)
        expr = number if number is not None else group.leaf(node)
    else:
        args = [_build(group, i, root_of, check, round_f32) for i in node.inputs]
        try:
            expr = node_expr(node, args)
        except TypeError:  # SymPy folding step's NaN branch into elu's `x >= 0`: "Invalid NaN comparison"
            if check is None:
                raise
            check(node, args, None)  # computed on its own, from its inputs' values
            expr = group.leaf(node)
            group.memo[id(node)] = expr
            return expr
        if check is not None:
            check(node, args, expr)
        if round_f32 and node.dtype.name == "float32" and node.op not in _FREE:
            expr = CAST_FUNCTIONS["float32"](expr)
        group.members.append(node)
        if node.op not in _FREE:
            group.real_ops += 1
    group.memo[id(node)] = expr
    return expr


def _mixes_float_widths(group: _Group) -> bool:
    """Whether a group computes float32 values next to float64 ones (its kernel computes in float64)."""
    widths = {n.dtype.name for n in group.members + group.leaves if n.dtype.is_float}
    return {"float32", "float64"} <= widths


def _fuse(graph: Graph, root_of: dict[int, Node]) -> Graph:
    def build(group: _Group, node: Node) -> sp.Expr:
        return _build(group, node, root_of)

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        if root_of.get(id(old), False) is not old:
            return None
        group = _Group(old)
        expr = build(group, old)
        if _mixes_float_widths(group):
            group = _Group(old)
            expr = _build(group, old, root_of, round_f32=True)
        if group.real_ops == 0:
            return None  # only broadcasts/casts: nothing to fuse
        if expr.is_number and expr.is_real:  # no inputs, or (fast_math) SymPy's x*0 -> 0: nothing to compute
            value = make_constant(float(expr), old.dtype, like=old)
            return value if not old.shape else make("broadcast_to", [value], {"shape": old.shape}, like=old)
        leaves = [rw.new(leaf) for leaf in group.leaves]
        node = make("fused", leaves, {"expr": expr, "dtype": old.dtype.name}, like=old,
                    absorbed=absorbed_of(group.members))
        if node.shape != old.shape:
            node = make("broadcast_to", [node], {"shape": old.shape}, like=old)
        return node

    return rewrite(graph, visit)


__all__ = ["copy_node", "fuse_elementwise", "fused_cse", "fusible", "node_expr"]
