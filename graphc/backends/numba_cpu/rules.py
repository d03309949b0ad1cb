"""The lowering table of the numba_cpu backend: op name -> a small function that emits its code.

Each rule writes the code computing one node into the driver body through the :class:`Emitter`:
``em.at(n, index)`` is element ``index`` (flat, row-major) of node ``n``'s value; shapes are static,
so sizes, strides and offsets are printed as literals. Every elementwise op (built-in, user-defined,
derivative ``d<op>_d<x>``, ``fused``) goes through the one generic rule :func:`lower_elementwise`.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np
import sympy as sp

from ...ir import GraphcError, Node
from ...ops import registry
from .autotune import ConvGeometry
from .codegen import Emitter, Rule
from .scalar import float_alias_for, scalar_statements, store_cast

LOWERINGS: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            LOWERINGS[name] = fn
        return fn
    return register


def lowering_for(op: str) -> Rule:
    """The rule lowering ``op``: its table entry, or the generic elementwise rule for any op that is
    defined by a SymPy expression (including derivative ops registered on first use)."""
    if op in LOWERINGS:
        return LOWERINGS[op]
    if registry.is_registered(op) and registry.get(op).expr is not None:
        return lower_elementwise
    raise GraphcError(f"the numba_cpu backend has no lowering for op {op!r}")


def has_lowering(op: str) -> bool:
    try:
        lowering_for(op)
        return True
    except GraphcError:
        return False


# -- small code builders -------------------------------------------------------------------------------

def nest(sizes: Sequence[int], names: Sequence[str], body: Sequence[str], indent: int = 0) -> list[str]:
    """``for`` loops over ``sizes`` (outermost first) around ``body``."""
    lines = [("    " * (indent + d)) + f"for {i} in range({n}):" for d, (n, i) in enumerate(zip(sizes, names))]
    pad = "    " * (indent + len(sizes))
    return lines + [pad + b for b in body]


def linear(names: Sequence[str], sizes: Sequence[int]) -> str:
    """The row-major linear index of ``names`` over ``sizes``, with literal strides."""
    terms = []
    stride = 1
    for name, size in reversed(list(zip(names, sizes))):
        terms.append(name if stride == 1 else f"{name} * {stride}")
        stride *= size
    return " + ".join(reversed(terms)) if terms else "0"


def strides(shape: Sequence[int]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def typed(em: Emitter, dtype, value: float | int) -> str:
    if dtype.is_float:
        if math.isinf(value):
            return f"{em.cast(dtype)}({'-' if value < 0 else ''}math.inf)"
        return f"{em.cast(dtype)}({float(value)!r})"
    if dtype.kind == "b":
        return "True" if value else "False"
    return str(int(value))


def exp_of(dtype) -> str:
    """The exp function for ``dtype``: the inline, vectorizable float32 one, or libm's."""
    return "exp_f32" if dtype.name == "float32" else "math.exp"


def fill(em: Emitter, node: Node, value: str) -> list[str]:
    """Set every element of ``node`` to ``value``."""
    return [f"for j in range({node.size}):", f"    {em.at(node, 'j')} = {value}"] if node.size else []


class Converted:
    """A scratch copy of a node's value in another dtype, accessed like a node (``at``/``matrix``)."""

    def __init__(self, em: Emitter, node: Node, dtype):
        self.arr, self.off = em.scratch(node.size, dtype)
        self.node = node
        em.emit([f"for j in range({node.size}):",
                 f"    {self.arr}[{self.off} + j] = {em.cast(dtype)}({em.at(node, 'j')})"])

    def at(self, index: str) -> str:
        return f"{self.arr}[{self.off} + {index}]"

    def matrix(self, rows: int, cols: int, plus: str = "0") -> tuple[int, str, str, int]:
        return 0, self.arr, self.off if plus == "0" else f"{self.off} + {plus}", cols


def as_dtype_of(em: Emitter, node: Node, dtype):
    """``node`` itself when it has ``dtype``, else a converted scratch copy."""
    if node.dtype == dtype or node.size == 0:
        return _Same(em, node)
    return Converted(em, node, dtype)


class _Same:
    def __init__(self, em: Emitter, node: Node):
        self.em, self.node = em, node

    def at(self, index: str) -> str:
        return self.em.at(self.node, index)

    def matrix(self, rows: int, cols: int, plus: str = "0") -> tuple[int, str, str, int]:
        return self.em.matrix(self.node, rows, cols, plus)


def gemm_call(em: Emitter, a, b, out: Node, m: int, n: int, k: int, out_plus: str = "0", a_plus: str = "0",
              b_plus: str = "0", beta: float | str = 0.0, alpha: float | str = 1.0) -> list[str]:
    """out[m, n] (+)= a[m, k] @ b[k, n] (``a``/``b``: _Same/Converted/... operands) as one BLAS call.

    Always BLAS, even for tiny products: loop nests over the flat workspace (which LLVM cannot prove
    free of aliasing) measured 1.4-3x slower on the 64-32-10 MLP step (docs/benchmarks.md).
    """
    ta, a_arr, a_off, lda = a.matrix(m, k, a_plus)
    tb, b_arr, b_off, ldb = b.matrix(k, n, b_plus)
    _, c_arr, c_off, ldc = em.matrix(out, m, n, out_plus)
    return [f"gemm({ta}, {tb}, {m}, {n}, {k}, {_coefficient(alpha)}, {a_arr}, {a_off}, {lda}, {b_arr}, {b_off}, {ldb}, "
            f"{_coefficient(beta)}, {c_arr}, {c_off}, {ldc})"]


def _coefficient(value: float | str) -> str:
    """BLAS's alpha or beta: a number, or the name of a variable computed just before the call."""
    return value if isinstance(value, str) else repr(value)


def gemm_coefficients(em: Emitter, node: Node, accumulation) -> tuple[list[str], tuple[float | str, float | str]]:
    """(statements, (alpha, beta)) for an update done by a GEMM (codegen.Accumulation): numbers stay
    literals; an expression of one-element operands (the learning rate) is computed into a variable."""
    n = em.number[id(node)]
    names = {s: f"{re.sub(r'[^0-9a-zA-Z_]', '_', i.name or s.name)}{n}" for s, i in accumulation.scalars.items()}
    lines = [f"{names[s]} = {em.at(i, '0')}" for s, i in accumulation.scalars.items()]
    values = []
    for label, expr in (("alpha", accumulation.alpha), ("beta", accumulation.beta)):
        if expr.is_number:
            # A low-precision Float (the passes' float32 constants) stands for its decimal text.
            values.append(float(str(expr)) if getattr(expr, "_prec", 53) < 53 else float(expr))
            continue
        float_alias = float_alias_for([i.dtype.name for i in accumulation.scalars.values()] + [node.dtype.name])
        statements, result = scalar_statements(expr, names, float_alias, temp_prefix=f"t{n}_{label}_")
        lines += statements + [f"{label}{n} = {result}"]
        values.append(f"{label}{n}")
    return lines, tuple(values)


# -- elementwise ----------------------------------------------------------------------------------------

def elementwise_expr(node: Node) -> tuple[sp.Expr, tuple[sp.Symbol, ...]]:
    """The node's scalar expression over one symbol per input, parameters replaced by their values."""
    if node.op == "fused":
        from ...ops.elementwise import fused_symbols

        return node.attrs["expr"], fused_symbols(len(node.inputs))
    op = registry.get(node.op)
    values = {sp.Symbol(p, real=True): sp.Float(float(node.attrs[p]) if p in node.attrs else float(default))
              for p, default in op.params.items()}
    return op.expr.xreplace(values), tuple(op.symbols)


def broadcast_groups(out_shape: Sequence[int], in_shapes: Sequence[Sequence[int]]) -> list[list]:
    """Output axes merged into loops: adjacent axes where every input is either full or broadcast alike.
    Returns [size, (input k spans this loop?)...] per loop; size-1 axes disappear."""
    r = len(out_shape)
    aligned = [(1,) * (r - len(s)) + tuple(s) for s in in_shapes]
    groups: list[list] = []
    for a in range(r):
        if out_shape[a] == 1:
            continue
        pattern = tuple(s[a] != 1 for s in aligned)
        if groups and groups[-1][1] == pattern:
            groups[-1][0] *= out_shape[a]
        else:
            groups.append([out_shape[a], pattern])
    return groups


def emit_elementwise(em: Emitter, node: Node, expr: sp.Expr, symbols: Sequence[sp.Symbol],
                     inputs: Sequence[Node]) -> None:
    n = em.number[id(node)]
    literals = {}
    for s, i in zip(symbols, inputs):
        value = em.literal(i)
        if value is not None:
            literals[s] = sp.Integer(int(value)) if isinstance(value, (bool, int)) else sp.Float(value)
    with sp.evaluate(False):  # a literal 0 in x*y stays x*0: NaN for x = inf (IEEE), not 0
        expr = sp.sympify(expr).xreplace(literals)
    loaded = [k for k, s in enumerate(symbols) if s in expr.free_symbols]
    groups = broadcast_groups(node.shape, [inputs[k].shape for k in loaded])
    names = [f"i{d}" for d in range(len(groups))]
    sizes = [g[0] for g in groups]
    out_index = linear(names, sizes)
    float_alias = float_alias_for([i.dtype.name for i in inputs] + [node.dtype.name])
    body: list[str] = []
    if len(groups) > 1:
        body.append(f"j = {out_index}")
        out_index = "j"
    var_names = {}
    for pos, k in enumerate(loaded):
        spans = [(g[0], nm) for g, nm in zip(groups, names) if g[1][pos]]
        if len(spans) == len(groups):
            index = out_index
        else:
            index = linear([nm for _, nm in spans], [sz for sz, _ in spans])
        var_names[symbols[k]] = f"a{n}_{k}"
        body.append(f"a{n}_{k} = {em.at(inputs[k], index)}")
    statements, result = scalar_statements(expr, var_names, float_alias, temp_prefix=f"t{n}_")
    body += statements
    # Float kernels whose operands all have the result's dtype compute in it already: no conversion.
    same = node.dtype.is_float and all(inputs[k].dtype == node.dtype for k in loaded)
    body.append(f"{em.at(node, out_index)} = {result if same else store_cast(result, node.dtype.name)}")
    em.emit(nest(sizes, names, body))


def lower_elementwise(em: Emitter, node: Node) -> None:
    """Any elementwise op: its SymPy expression, printed as scalar code inside one loop nest."""
    if id(node) in em.accumulated_updates:
        product = em.accumulated_updates[id(node)]
        em.emit([f"pass  # computed by %{em.number[id(product)]}'s GEMM, which accumulated into the parameter"])
        return
    expr, symbols = elementwise_expr(node)
    emit_elementwise(em, node, expr, symbols, node.inputs)


@rule("fused")
def lower_fused(em: Emitter, node: Node) -> None:
    lower_elementwise(em, node)


@rule("broadcast_to")
def lower_broadcast_to(em: Emitter, node: Node) -> None:
    x = sp.Symbol("x0", real=True)
    emit_elementwise(em, node, x, (x,), node.inputs)


# -- shape ops --------------------------------------------------------------------------------------------

@rule("reshape")
def lower_reshape(em: Emitter, node: Node) -> None:
    # A view of its input (every buffer is C-contiguous): the planner makes it an alias, no code.
    em.emit([f"# view of %{em.number[id(node.inputs[0])]}"])


@rule("transpose")
def lower_transpose(em: Emitter, node: Node) -> None:
    """A copy in output order. Input axes that stay adjacent and in order (the H, W of an NCHW
    channel/batch swap) are one loop: the inner loop is then a contiguous, vectorized copy."""
    (x,) = node.inputs
    groups: list[list[int]] = []
    for p in node.attrs["perm"]:
        if groups and groups[-1][-1] + 1 == p:
            groups[-1].append(p)
        else:
            groups.append([p])
    sizes = [int(np.prod([x.shape[a] for a in g], dtype=np.int64)) for g in groups]
    in_strides = strides(x.shape)
    kept = [(size, in_strides[g[-1]]) for size, g in zip(sizes, groups) if size != 1]
    names = [f"i{d}" for d in range(len(kept))]
    src = " + ".join(nm if st == 1 else f"{nm} * {st}" for nm, (_, st) in zip(names, kept)) or "0"
    out_sizes = [size for size, _ in kept]
    em.emit(nest(out_sizes, names, [f"{em.at(node, linear(names, out_sizes))} = {em.at(x, src)}"]))


def _slice_index(names, starts, steps, shape_strides):
    terms = []
    for nm, b, s, st in zip(names, starts, steps, shape_strides):
        pos = nm if s == 1 else f"{nm} * {s}"
        pos = pos if b == 0 else f"({b} + {pos})"
        terms.append(f"{pos} * {st}" if st != 1 else pos)
    return " + ".join(terms) or "0"


@rule("slice")
def lower_slice(em: Emitter, node: Node) -> None:
    (x,) = node.inputs
    names = [f"i{d}" for d in range(node.ndim)]
    src = _slice_index(names, node.attrs["starts"], node.attrs["steps"], strides(x.shape))
    em.emit(nest(node.shape, names, [f"{em.at(node, linear(names, node.shape))} = {em.at(x, src)}"]))


@rule("unslice")
def lower_unslice(em: Emitter, node: Node) -> None:
    (g,) = node.inputs
    names = [f"i{d}" for d in range(g.ndim)]
    dst = _slice_index(names, node.attrs["starts"], node.attrs["steps"], strides(node.shape))
    em.emit(fill(em, node, typed(em, node.dtype, 0)))
    if g.size:
        em.emit(nest(g.shape, names, [f"{em.at(node, dst)} = {em.at(g, linear(names, g.shape))}"]))


@rule("concatenate")
def lower_concatenate(em: Emitter, node: Node) -> None:
    axis = node.attrs["axis"]
    outer = int(np.prod(node.shape[:axis], dtype=np.int64))
    after = int(np.prod(node.shape[axis + 1:], dtype=np.int64))
    total = node.shape[axis] * after
    offset = 0
    for x in node.inputs:
        inner = x.shape[axis] * after
        if inner:
            body = [f"{em.at(node, f'o * {total} + {offset} + c')} = {em.cast(node.dtype)}({em.at(x, f'o * {inner} + c')})"]
            em.emit(nest([outer, inner], ["o", "c"], body))
        offset += inner


# -- reductions ------------------------------------------------------------------------------------------------

class Acc:
    """``Acc(em, node)[index]``: the element-access expression, for readable rule code."""

    def __init__(self, em: Emitter, node: Node):
        self.em, self.node = em, node

    def __getitem__(self, index: str) -> str:
        return self.em.at(self.node, str(index))


def reduce_blocks(shape: Sequence[int], axes: Sequence[int]) -> list[list]:
    """Input axes merged into [size, reduced?] blocks (size-1 axes dropped)."""
    blocks: list[list] = []
    for a, d in enumerate(shape):
        if d == 1:
            continue
        red = a in axes
        if blocks and blocks[-1][1] == red:
            blocks[-1][0] *= d
        else:
            blocks.append([d, red])
    return blocks


def _combine(kind: str, acc: str, val: str) -> str:
    if kind in ("sum", "mean"):
        return f"{acc} + {val}"
    cmp = ">" if kind == "max" else "<"
    return f"{val} if ({val} {cmp} {acc} or {val} != {val}) else {acc}"  # NaN propagates, as in NumPy


def _reduce_init(em: Emitter, kind: str, dtype) -> str:
    if kind in ("sum", "mean"):
        return typed(em, dtype, 0)
    if dtype.is_float:
        return typed(em, dtype, -math.inf if kind == "max" else math.inf)
    if dtype.kind == "b":
        return "False" if kind == "max" else "True"
    info = np.iinfo(dtype.np)
    return str(info.min if kind == "max" else info.max)


@rule("sum", "mean", "max", "min")
def lower_reduce(em: Emitter, node: Node) -> None:
    (x,) = node.inputs
    kind = node.op
    blocks = reduce_blocks(x.shape, node.attrs["axes"])
    X, Y = Acc(em, x), Acc(em, node)
    wide = kind in ("sum", "mean") and node.dtype.is_float  # accumulate float sums in float64
    if x.size == 0:
        em.emit(fill(em, node, "math.nan" if kind == "mean" else _reduce_init(em, kind, node.dtype)))
        return
    names = [f"i{d}" for d in range(len(blocks))]
    kept = [(nm, b[0]) for nm, b in zip(names, blocks) if not b[1]]
    out_index = linear([k[0] for k in kept], [k[1] for k in kept])
    count = x.size // max(node.size, 1)
    lines: list[str] = []
    if blocks and blocks[-1][1] and not any(b[1] for b in blocks[:-1]):
        # The common case: the reduced axes are the trailing block; a scalar accumulator per output.
        n = blocks[-1][0]
        base = linear(names[:-1], [b[0] for b in blocks[:-1]])
        at = f"({base}) * {n} + r" if len(blocks) > 1 else "r"
        init = "f64(0.0)" if wide else _reduce_init(em, kind, x.dtype if kind in ("max", "min") else node.dtype)
        body = [f"acc = {init}", f"for r in range({n}):", f"    acc = {_combine(kind, 'acc', X[at])}"]
        result = f"acc / {n}" if kind == "mean" else "acc"
        body.append(f"{Y[out_index]} = {store_cast(result, node.dtype.name)}")
        lines += nest([b[0] for b in blocks[:-1]], names[:-1], body)
    else:
        # General: sweep the input once in memory order, accumulating into the outputs (in their dtype:
        # a float64 scratch accumulator would cost two more loops; float32 bias gradients stay well within
        # float32's tolerance).
        lines += fill(em, node, _reduce_init(em, kind, node.dtype))
        full = linear(names, [b[0] for b in blocks])
        value = _combine(kind, Y[out_index], X[full])
        if not (node.dtype == x.dtype and node.dtype.is_float):
            value = store_cast(value, node.dtype.name)
        lines += nest([b[0] for b in blocks], names, [f"{Y[out_index]} = {value}"])
        if kind == "mean":
            lines += [f"for j in range({node.size}):", f"    {Y['j']} = {store_cast(Y['j'] + f' / {count}', node.dtype.name)}"]
    em.emit(lines)


def _axis_layout(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


@rule("argmax")
def lower_argmax(em: Emitter, node: Node) -> None:
    (x,) = node.inputs
    (axis,) = node.attrs["axes"]
    outer, n, inner = _axis_layout(x.shape, axis)
    X, Y = Acc(em, x), Acc(em, node)
    body = [f"best = {X[f'o * {n * inner} + i']}",
            "at = 0",
            f"for r in range(1, {n}):",
            f"    val = {X[f'(o * {n} + r) * {inner} + i']}",
            "    if val > best or (val != val and best == best):  # the first NaN wins, as in NumPy",
            "        best = val",
            "        at = r",
            f"{Y[f'o * {inner} + i']} = at"]
    em.emit(nest([outer, inner], ["o", "i"], body))


# -- linear algebra -------------------------------------------------------------------------------------------

def emit_matmul_product(em: Emitter, node: Node, a: Node, b: Node, trans_a: bool = False,
                        trans_b: bool = False) -> None:
    """node [..., m, n] = op(a) @ op(b) with batch axes broadcast; op swaps a stored operand's last two
    axes (BLAS reads it transposed). A product that is only a parameter's update term is accumulated
    straight into the parameter: p += c * op(a) @ op(b) (BLAS's alpha and beta; see codegen)."""
    accumulation = em.accumulate.get(id(node))
    if accumulation is not None:
        sa = (a.shape[-1], a.shape[-2]) if trans_a else a.shape[-2:]
        sb = (b.shape[-1], b.shape[-2]) if trans_b else b.shape[-2:]
        A = _Flagged(_Same(em, a), trans_a)
        B = _Flagged(_Same(em, b), trans_b)
        lines, (alpha, beta) = gemm_coefficients(em, node, accumulation)
        em.emit(lines + gemm_call(em, A, B, accumulation.param, sa[0], sb[1], sa[1], beta=beta, alpha=alpha))
        return
    sa = a.shape[:-2] + ((a.shape[-1], a.shape[-2]) if trans_a else a.shape[-2:])
    sb = b.shape[:-2] + ((b.shape[-1], b.shape[-2]) if trans_b else b.shape[-2:])
    m, k = sa[-2:]
    n = sb[-1]
    if k == 0:
        em.emit(fill(em, node, typed(em, node.dtype, 0)))
        return
    A = _Flagged(as_dtype_of(em, a, node.dtype), trans_a)
    B = _Flagged(as_dtype_of(em, b, node.dtype), trans_b)
    batch = node.shape[:-2]
    if int(np.prod(batch, dtype=np.int64)) == 1:
        em.emit(gemm_call(em, A, B, node, m, n, k))
        return
    names = [f"i{d}" for d in range(len(batch))]
    r = len(batch)

    def batch_offset(x: Node, block: int) -> str:
        xb = (1,) * (r - (x.ndim - 2)) + tuple(x.shape[:-2])
        spans = [(nm, d) for nm, d in zip(names, xb) if d != 1]
        if not spans:
            return "0"
        return f"({linear([s[0] for s in spans], [s[1] for s in spans])}) * {block}"

    call = gemm_call(em, A, B, node, m, n, k, out_plus=f"({linear(names, batch)}) * {m * n}",
                     a_plus=batch_offset(a, m * k), b_plus=batch_offset(b, k * n))
    em.emit(nest(batch, names, call))


class _Flagged:
    """An operand stored transposed (the epilogue ops' transpose_a/b): flip BLAS's transpose flag."""

    def __init__(self, operand, transposed: bool):
        self.operand, self.transposed = operand, transposed

    def at(self, index: str) -> str:
        return self.operand.at(index)

    def matrix(self, rows: int, cols: int, plus: str = "0") -> tuple[int, str, str, int]:
        if not self.transposed:
            return self.operand.matrix(rows, cols, plus)
        t, arr, off, ld = self.operand.matrix(cols, rows, plus)  # stored [cols, rows]
        return 1 - t, arr, off, ld


@rule("matmul")
def lower_matmul(em: Emitter, node: Node) -> None:
    a, b = node.inputs
    emit_matmul_product(em, node, a, b)


def emit_epilogue(em: Emitter, node: Node) -> None:
    """out[i] = expr(product[i], x1[i], ...): the product is already in the output buffer."""
    from ...ops.elementwise import fused_symbols

    expr = node.attrs["expr"]
    symbols = fused_symbols(len(node.inputs) - 1)
    if expr == symbols[0]:
        return
    emit_elementwise(em, node, expr, symbols, [node] + list(node.inputs[2:]))


@rule("matmul_epilogue")
def lower_matmul_epilogue(em: Emitter, node: Node) -> None:
    a, b = node.inputs[:2]
    emit_matmul_product(em, node, a, b, node.attrs["transpose_a"], node.attrs["transpose_b"])
    emit_epilogue(em, node)


@rule("dense")
def lower_dense(em: Emitter, node: Node) -> None:
    x, w, b = node.inputs
    k, n = w.shape
    m = node.size // n
    Y, Bias = Acc(em, node), as_dtype_of(em, b, node.dtype)
    if k == 0:
        lines = []
    else:
        lines = gemm_call(em, as_dtype_of(em, x, node.dtype), as_dtype_of(em, w, node.dtype), node, m, n, k)
    add = "+=" if k else "="
    lines += nest([m, n], ["i0", "i1"], [f"{Y['i0 * %d + i1' % n]} {add} {Bias.at('i1')}"])
    em.emit(lines)


# -- softmax, losses, one_hot ------------------------------------------------------------------------------------

def _softmax_lines(em: Emitter, node: Node, log: bool) -> list[str]:
    (x,) = node.inputs
    outer, n, inner = _axis_layout(x.shape, node.attrs["axis"])
    X, Y = Acc(em, x), Acc(em, node)
    F = em.cast(node.dtype)
    at = f"(o * {n} + r) * {inner} + i" if inner != 1 else f"o * {n} + r"
    body = [f"m = {F}(-math.inf)",
            f"for r in range({n}):",
            f"    m = max(m, {X[at]})",
            f"s = {F}(0.0)",
            f"for r in range({n}):"]
    if log:
        body += [f"    s += {exp_of(node.dtype)}({X[at]} - m)",
                 "ls = math.log(s)",
                 f"for r in range({n}):",
                 f"    {Y[at]} = {X[at]} - m - ls"]
    else:
        body += [f"    e = {exp_of(node.dtype)}({X[at]} - m)",
                 f"    {Y[at]} = e",
                 "    s += e",
                 f"inv = {F}(1.0) / s",
                 f"for r in range({n}):",
                 f"    {Y[at]} *= inv"]
    return nest([outer, inner] if inner != 1 else [outer], ["o", "i"] if inner != 1 else ["o"], body)


@rule("softmax")
def lower_softmax(em: Emitter, node: Node) -> None:
    em.emit(_softmax_lines(em, node, log=False))


@rule("log_softmax")
def lower_log_softmax(em: Emitter, node: Node) -> None:
    em.emit(_softmax_lines(em, node, log=True))


@rule("softmax_cross_entropy")
def lower_softmax_cross_entropy(em: Emitter, node: Node) -> None:
    logits, labels = node.inputs
    rows, classes = logits.shape
    X, L = Acc(em, logits), Acc(em, labels)
    F = em.cast(node.dtype)
    at = f"r * {classes} + c"
    body = [f"m = {F}(-math.inf)",
            f"for c in range({classes}):",
            f"    m = max(m, {X[at]})",
            f"s = {F}(0.0)",
            f"for c in range({classes}):",
            f"    s += {exp_of(node.dtype)}({X[at]} - m)",
            "lse = m + math.log(s)"]
    if labels.dtype.is_int:
        body.append(f"y = {L['r']}")
        body += em.label_check(node, "y", "r", classes, em.root[id(labels)], 0)
        body.append(f"total += lse - {X[f'r * {classes} + y']}")
    else:
        body += [f"for c in range({classes}):",
                 f"    total -= {L[at]} * ({X[at]} - lse)"]
    lines = ["total = f64(0.0)"] + nest([rows], ["r"], body)
    lines.append(f"{Acc(em, node)['0']} = {F}(total / {rows})")
    em.emit(lines)


@rule("one_hot")
def lower_one_hot(em: Emitter, node: Node) -> None:
    (labels,) = node.inputs
    classes = node.attrs["classes"]
    lines = fill(em, node, typed(em, node.dtype, 0))
    body = [f"y = {Acc(em, labels)['r']}"] + em.label_check(node, "y", "r", classes, em.root[id(labels)], 0)
    body.append(f"{Acc(em, node)[f'r * {classes} + y']} = {typed(em, node.dtype, 1)}")
    em.emit(lines + nest([labels.size], ["r"], body))


@rule("batch_norm")
def lower_batch_norm(em: Emitter, node: Node) -> None:
    x, gamma, beta = node.inputs
    n, c = x.shape[:2]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    count = n * spatial
    X, Y, G, B = Acc(em, x), Acc(em, node), Acc(em, gamma), Acc(em, beta)
    F = em.cast(node.dtype)
    at = f"(k * {c} + ch) * {spatial} + q"
    body = ["s = f64(0.0)"] + nest([n, spatial], ["k", "q"], [f"s += {X[at]}"])
    body += [f"mu = s / {count}", "v = f64(0.0)"]
    body += nest([n, spatial], ["k", "q"], [f"d = {X[at]} - mu", "v += d * d"])
    body += [f"scale = {G['ch']} / math.sqrt(v / {count} + {node.attrs['eps']!r})",
             f"shift = {B['ch']} - mu * scale"]
    body += nest([n, spatial], ["k", "q"], [f"{Y[at]} = {F}({X[at]} * scale + shift)"])
    em.emit(nest([c], ["ch"], body))


# -- convolution and pooling ------------------------------------------------------------------------------------

@rule("conv2d")
def lower_conv2d(em: Emitter, node: Node) -> None:
    emit_conv2d(em, node, *node.inputs[:2])


@rule("conv2d_epilogue")
def lower_conv2d_epilogue(em: Emitter, node: Node) -> None:
    emit_conv2d(em, node, *node.inputs[:2])
    emit_epilogue(em, node)


def emit_conv2d(em: Emitter, node: Node, x: Node, w: Node) -> None:
    """im2col + GEMM, one GEMM per image: out[n] [O, Ho*Wo] = W [O, C*kh*kw] @ col [C*kh*kw, Ho*Wo];
    or the direct loop nest (runtime.conv2d_direct), whichever ``autotune`` measured faster."""
    N, C, H, W = x.shape
    Co, _, kh, kw = w.shape
    _, _, Ho, Wo = node.shape
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    K, P = C * kh * kw, Ho * Wo
    Xc, Wc = as_dtype_of(em, x, node.dtype), as_dtype_of(em, w, node.dtype)
    geometry = ConvGeometry(N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    method = em.conv_method(node, geometry)
    if geometry.is_pointwise:
        call = gemm_call(em, Wc, _Offset(Xc, f"n * {C * H * W}"), node, Co, P, K, out_plus=f"n * {Co * P}")
        em.emit(nest([N], ["n"], call))
        return
    # The same runtime kernels autotune timed: what was measured is what runs.
    (x_arr, x_off), (w_arr, w_off) = _base(Xc), _base(Wc)
    y_arr, y_off = em.storage(node)
    args = f"{x_arr}, {x_off}, {w_arr}, {w_off}, {', '.join(map(str, geometry))}"
    if method == "direct":
        em.emit([f"conv2d_direct({args}, {y_arr}, {y_off})  # direct loop nest (measured faster here)"])
        return
    col_arr, col_off = em.scratch(K * P, node.dtype)
    em.emit([f"conv2d_im2col({args}, {col_arr}, {col_off}, {y_arr}, {y_off})  # im2col + one GEMM per image"])


def _plus(off: str, extra: str) -> str:
    return extra if off == "0" else f"{off} + {extra}"


def _base(operand) -> tuple[str, str]:
    """(flat array, element offset) of a _Same/Converted operand."""
    _, arr, off, _ = operand.matrix(1, 1)
    return arr, off


class _Offset:
    """An operand shifted by a (run-time) element offset: image n of a batch."""

    def __init__(self, operand, plus: str):
        self.operand, self.plus = operand, plus

    def matrix(self, rows: int, cols: int, plus: str = "0") -> tuple[int, str, str, int]:
        return self.operand.matrix(rows, cols, self.plus if plus == "0" else f"{self.plus} + {plus}")


@rule("conv_transpose2d")
def lower_conv_transpose2d(em: Emitter, node: Node) -> None:
    """GEMM + col2im, per image: cols [O*kh*kw, H*W] = W^T @ x[n]; scatter-add cols into the output."""
    x, w = node.inputs
    N, C, H, W = x.shape
    _, Co, kh, kw = w.shape
    _, _, Ho, Wo = node.shape
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    K, P = Co * kh * kw, H * W
    Xc, Wc = as_dtype_of(em, x, node.dtype), as_dtype_of(em, w, node.dtype)
    arr, off = em.scratch(K * P, node.dtype)
    lines = fill(em, node, typed(em, node.dtype, 0))
    # W is stored [C, O*kh*kw]: BLAS reads it transposed.
    _, w_arr, w_off, _ = Wc.matrix(C, K)
    _, x_arr, x_off, _ = Xc.matrix(C, P, f"n * {C * P}")
    y_arr, y_off = em.storage(node)
    body = [f"gemm(1, 0, {K}, {P}, {C}, 1.0, {w_arr}, {w_off}, {K}, {x_arr}, {x_off}, {P}, 0.0, {arr}, {off}, {P})",
            f"col2im_add({arr}, {off}, {Co}, {kh}, {kw}, {H}, {W}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}, {Ho}, {Wo}, "
            f"{y_arr}, {_plus(y_off, f'n * {Co * Ho * Wo}')})"]
    em.emit(lines + nest([N], ["n"], body))


def _pool_geometry(node: Node, x: Node):
    N, C, H, W = x.shape
    Ho, Wo = _pooled(node, x)
    return N, C, H, W, Ho, Wo, node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]


def _pooled(node: Node, x: Node):
    from ...ops.conv import conv_output_size

    (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    return conv_output_size(x.shape[2], kh, sh, ph), conv_output_size(x.shape[3], kw, sw, pw)


def _pool_args(node: Node, x: Node) -> str:
    N, C, H, W, Ho, Wo, (kh, kw), (sh, sw), (ph, pw) = _pool_geometry(node, x)
    return f"{N * C}, {H}, {W}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {Ho}, {Wo}"


@rule("max_pool2d", "avg_pool2d")
def lower_pool(em: Emitter, node: Node) -> None:
    (x,) = node.inputs
    X = _base(as_dtype_of(em, x, node.dtype))
    y_arr, y_off = em.storage(node)
    kernel = "max_pool" if node.op == "max_pool2d" else "avg_pool"
    em.emit([f"{kernel}({X[0]}, {X[1]}, {_pool_args(node, x)}, {y_arr}, {y_off})"])


@rule("max_pool2d_backward", "max_pool2d_gather")
def lower_max_pool2d_backward(em: Emitter, node: Node) -> None:
    x, g = node.inputs
    X, G = _base(_Same(em, x)), _base(as_dtype_of(em, g, node.dtype))
    y_arr, y_off = em.storage(node)
    kernel = "max_pool_backward" if node.op == "max_pool2d_backward" else "max_pool_gather"
    em.emit([f"{kernel}({X[0]}, {X[1]}, {G[0]}, {G[1]}, {_pool_args(node, x)}, {y_arr}, {y_off})"])


# -- random numbers ------------------------------------------------------------------------------------------------

@rule("random_uniform")
def lower_random_uniform(em: Emitter, node: Node) -> None:
    from ...ops.random import KEY_MULTIPLIER

    (key,) = node.inputs
    salt = node.attrs["salt"]
    # NumPy's legacy Mersenne Twister, which Numba implements too: seeded the same, it draws the same numbers.
    lines = [f"np.random.seed((({Acc(em, key)['0']} % 4294967296) * {KEY_MULTIPLIER} + {salt}) % 4294967296)",
             f"for j in range({node.size}):",
             f"    {Acc(em, node)['j']} = {em.cast(node.dtype)}(np.random.random_sample())"]
    em.emit(lines)


@rule("random_shift2d")
def lower_random_shift2d(em: Emitter, node: Node) -> None:
    from ...ops.random import KEY_MULTIPLIER

    x, key = node.inputs
    N, C, H, W = x.shape
    span, ms = 2 * node.attrs["max_shift"] + 1, node.attrs["max_shift"]
    X, Y = Acc(em, x), Acc(em, node)
    at = f"((i * {C} + c) * {H} + r) * {W} + q"
    src = f"((i * {C} + c) * {H} + rr) * {W} + qq"
    lines = [f"np.random.seed((({Acc(em, key)['0']} % 4294967296) * {KEY_MULTIPLIER} + {node.attrs['salt']}) % 4294967296)",
             f"for i in range({N}):",
             f"    dy = i64(math.floor(np.random.random_sample() * {span})) - {ms}",
             f"    dx = i64(math.floor(np.random.random_sample() * {span})) - {ms}"]
    body = ["rr = r - dy", "qq = q - dx",
            f"{Y[at]} = {X[src]} if rr >= 0 and rr < {H} and qq >= 0 and qq < {W} else {typed(em, node.dtype, 0)}"]
    lines += nest([C, H, W], ["c", "r", "q"], body, indent=1)
    em.emit(lines)


@rule("random_flip2d")
def lower_random_flip2d(em: Emitter, node: Node) -> None:
    from ...ops.random import KEY_MULTIPLIER

    x, key = node.inputs
    N, C, H, W = x.shape
    X, Y = Acc(em, x), Acc(em, node)
    row = f"((i * {C} + c) * {H} + r) * {W}"
    lines = [f"np.random.seed((({Acc(em, key)['0']} % 4294967296) * {KEY_MULTIPLIER} + {node.attrs['salt']}) % 4294967296)",
             f"for i in range({N}):",
             "    flip = np.random.random_sample() < 0.5"]
    body = [f"{Y[f'{row} + q']} = {X[f'{row} + {W - 1} - q']} if flip else {X[f'{row} + q']}"]
    lines += nest([C, H, W], ["c", "r", "q"], body, indent=1)
    em.emit(lines)
