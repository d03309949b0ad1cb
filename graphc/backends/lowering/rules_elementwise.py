"""Elementwise ops: every op defined by a SymPy expression (built-in, user-defined, derivative
``d<op>_d<x>``, ``fused``) is one loop nest computing that expression, broadcasting included."""
from __future__ import annotations

from typing import Sequence

import sympy as sp

from ...ir import Node
from ...ops.elementwise import node_expression
from .context import Lowering, assign, rule
from .ir import Load, Store, index_var, is_condition, linear, nest, scalar_var

FLOAT_DTYPES = ("float32", "float64")


def compute_dtype(dtypes: Sequence[str]) -> str | None:
    """The float type a kernel computes in: the widest float among its operand and result dtypes."""
    floats = [d for d in dtypes if d in FLOAT_DTYPES]
    if not floats:
        return None
    return "float64" if "float64" in floats else "float32"


def cse_assignments(expr: sp.Expr, names: dict[sp.Symbol, sp.Symbol], dtype: str,
                    prefix: str) -> tuple[list, sp.Expr]:
    """``expr`` over the variables ``names`` as (assignments of common subexpressions, result)."""
    # Unevaluated: SymPy would otherwise re-simplify what the passes left alone on purpose (a literal
    # 0 substituted into x*y is x*0, which is NaN for x = inf, not 0).
    with sp.evaluate(False):
        renamed = sp.sympify(expr).xreplace(names)
        temps = sp.numbered_symbols(prefix, real=True)
        replacements, (reduced,) = sp.cse(renamed, symbols=temps)
    # A shared condition (a Piecewise's test) is a truth value, whatever the kernel computes in.
    return [assign(sym, value, "bool" if is_condition(value) else dtype)
            for sym, value in replacements], reduced


def broadcast_groups(out_shape: Sequence[int], in_shapes: Sequence[Sequence[int]]) -> list[list]:
    """Output axes merged into loops: adjacent axes where every input is either full or broadcast alike.
    Returns [size, (input k spans this loop?)...] per loop; size-1 axes disappear."""
    r = len(out_shape)
    aligned_shapes = [(1,) * (r - len(s)) + tuple(s) for s in in_shapes]
    groups: list[list] = []
    for a in range(r):
        if out_shape[a] == 1:
            continue
        pattern = tuple(s[a] != 1 for s in aligned_shapes)
        if groups and groups[-1][1] == pattern:
            groups[-1][0] *= out_shape[a]
        else:
            groups.append([out_shape[a], pattern])
    return groups


def elementwise_kernel(lw: Lowering, node: Node, expr: sp.Expr, symbols: Sequence[sp.Symbol],
                       inputs: Sequence[Node]) -> list:
    """One loop nest: load each operand (broadcast by its index), compute ``expr``, store into ``node``."""
    n = lw.number[id(node)]
    literals = {}
    for s, i in zip(symbols, inputs):
        value = lw.literal(i)
        if value is not None:
            literals[s] = sp.Integer(int(value)) if isinstance(value, (bool, int)) else sp.Float(value)
    with sp.evaluate(False):  # a literal 0 in x*y stays x*0: NaN for x = inf (IEEE), not 0
        expr = sp.sympify(expr).xreplace(literals)
    loaded = [k for k, s in enumerate(symbols) if s in expr.free_symbols]
    groups = broadcast_groups(node.shape, [inputs[k].shape for k in loaded])
    names = [f"i{d}" for d in range(len(groups))]
    sizes = [g[0] for g in groups]
    out_index = linear(names, sizes)
    dtype = compute_dtype([i.dtype.name for i in inputs] + [node.dtype.name]) or node.dtype.name
    body: list = []
    if len(groups) > 1:
        j = index_var("j")
        body.append(assign(j, out_index, "int64"))
        out_index = j
    variables = {}
    for pos, k in enumerate(loaded):
        spans = [(g[0], nm) for g, nm in zip(groups, names) if g[1][pos]]
        index = out_index if len(spans) == len(groups) else linear([nm for _, nm in spans], [sz for sz, _ in spans])
        variables[symbols[k]] = scalar_var(f"a{n}_{k}")
        body.append(Load(variables[symbols[k]], lw.buffer(inputs[k]), index))
    statements, result = cse_assignments(expr, variables, dtype, f"t{n}_")
    body += statements
    # Float kernels whose operands all have the result's dtype compute in it already: no conversion.
    exact = node.dtype.is_float and all(inputs[k].dtype == node.dtype for k in loaded)
    if not exact and not result.is_Atom:  # computed in `dtype`, then converted by the store
        var = scalar_var(f"y{n}")
        body.append(assign(var, result, dtype))
        result = var
    body.append(Store(lw.buffer(node), out_index, result, exact=exact))
    return nest(sizes, names, body)


@rule("<elementwise>", "fused")
def lower_elementwise(lw: Lowering, node: Node) -> None:
    """Any elementwise op: its SymPy expression, computed inside one loop nest."""
    if id(node) in lw.accumulated_updates:
        return  # the product's GEMM accumulated it into the parameter (layout.accumulate_updates)
    expr, symbols = node_expression(node)
    lw.emit(elementwise_kernel(lw, node, expr, symbols, node.inputs), rule="elementwise")


@rule("broadcast_to")
def lower_broadcast_to(lw: Lowering, node: Node) -> None:
    x = sp.Symbol("x0", real=True)
    lw.emit(elementwise_kernel(lw, node, x, (x,), node.inputs))


@rule("reshape")
def lower_reshape(lw: Lowering, node: Node) -> None:
    """A view of its input (every buffer is C-contiguous): the layout makes it an alias, no kernel."""
