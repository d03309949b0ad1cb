"""Matrix products: one GEMM call each (per batch element for batched products), epilogues as loops."""
from __future__ import annotations

import numpy as np
import sympy as sp

from ...ir import Node
from .context import Lowering, Operand, assign, rule
from .ir import Gemm, Load, Ref, Store, index_var, linear, nest, scalar_var
from .rules_elementwise import compute_dtype, cse_assignments, elementwise_kernel

ONE, ZERO = sp.Float(1.0), sp.Float(0.0)


def gemm(a: Operand, b: Operand, c: Operand, m: int, n: int, k: int, a_plus=0, b_plus=0, c_plus=0,
         alpha: sp.Expr = ONE, beta: sp.Expr = ZERO) -> Gemm:
    """``c[m, n] = alpha * a[m, k] @ b[k, n] + beta * c`` where an operand stored transposed is read so."""
    return Gemm(m, n, k, sp.sympify(alpha),
                Ref(a.buffer, sp.sympify(a_plus)), a.transposed, m if a.transposed else k,
                Ref(b.buffer, sp.sympify(b_plus)), b.transposed, k if b.transposed else n,
                sp.sympify(beta), Ref(c.buffer, sp.sympify(c_plus)), n)


def flagged(operand: Operand, transposed: bool) -> Operand:
    """An operand the op itself reads transposed (the epilogue ops' transpose_a/b): flip the flag."""
    return Operand(operand.buffer, operand.transposed != transposed)


def number(expr: sp.Expr) -> sp.Float:
    # A low-precision Float (the passes' float32 constants) stands for its decimal text.
    return sp.Float(float(str(expr)) if getattr(expr, "_prec", 53) < 53 else float(expr))


def accumulation_coefficients(lw: Lowering, node: Node, accumulation) -> tuple[list, sp.Expr, sp.Expr]:
    """(statements, alpha, beta) of an update done by a GEMM (context.Accumulation): numbers stay
    numbers; an expression of one-element operands (the learning rate) is computed before the call."""
    n = lw.number[id(node)]
    body: list = []
    names = {}
    for s, i in accumulation.scalars.items():
        names[s] = scalar_var(f"{(i.name or s.name)}{n}".replace(".", "_"))
        body.append(lw.load(names[s], i, 0))
    dtype = compute_dtype([i.dtype.name for i in accumulation.scalars.values()] + [node.dtype.name])
    values = []
    for label, expr in (("alpha", accumulation.alpha), ("beta", accumulation.beta)):
        if expr.is_number:
            values.append(number(expr))
            continue
        statements, result = cse_assignments(expr, names, dtype, f"t{n}_{label}_")
        var = scalar_var(f"{label}{n}")
        body += statements + [assign(var, result, dtype)]
        values.append(var)
    return body, values[0], values[1]


def matmul_product(lw: Lowering, node: Node, a: Node, b: Node, trans_a: bool = False,
                   trans_b: bool = False) -> list:
    """node [..., m, n] = op(a) @ op(b) with batch axes broadcast; op swaps a stored operand's last two
    axes. A product that is only a parameter's update term is accumulated straight into the parameter:
    p = beta * p + alpha * op(a) @ op(b) (see layout.accumulate_updates)."""
    sa = a.shape[:-2] + ((a.shape[-1], a.shape[-2]) if trans_a else a.shape[-2:])
    sb = b.shape[:-2] + ((b.shape[-1], b.shape[-2]) if trans_b else b.shape[-2:])
    m, k = sa[-2:]
    n = sb[-1]
    accumulation = lw.accumulate.get(id(node))
    if accumulation is not None:
        body, alpha, beta = accumulation_coefficients(lw, node, accumulation)
        A, B = flagged(lw.operand(a), trans_a), flagged(lw.operand(b), trans_b)
        return body + [gemm(A, B, lw.operand(accumulation.param), m, n, k, alpha=alpha, beta=beta)]
    if k == 0:
        return lw.fill(node, 0)
    A = flagged(lw.converted(a, node.dtype), trans_a)
    B = flagged(lw.converted(b, node.dtype), trans_b)
    C = lw.operand(node)
    batch = node.shape[:-2]
    if int(np.prod(batch, dtype=np.int64)) == 1:
        return [gemm(A, B, C, m, n, k)]
    names = [f"i{d}" for d in range(len(batch))]
    r = len(batch)

    def batch_offset(x: Node, block: int) -> sp.Expr:
        xb = (1,) * (r - (x.ndim - 2)) + tuple(x.shape[:-2])
        spans = [(nm, d) for nm, d in zip(names, xb) if d != 1]
        return linear([s[0] for s in spans], [s[1] for s in spans]) * block

    call = gemm(A, B, C, m, n, k, a_plus=batch_offset(a, m * k), b_plus=batch_offset(b, k * n),
                c_plus=linear(names, batch) * (m * n))
    return nest(batch, names, [call])


def epilogue(lw: Lowering, node: Node) -> list:
    """out[i] = expr(product[i], x1[i], ...): the product is already in the output buffer."""
    from ...ops.elementwise import fused_symbols

    expr = node.attrs["expr"]
    symbols = fused_symbols(len(node.inputs) - 1)
    if expr == symbols[0]:
        return []
    return elementwise_kernel(lw, node, expr, symbols, [node] + list(node.inputs[2:]))


def accumulation_note(lw: Lowering, node: Node) -> str:
    accumulation = lw.accumulate.get(id(node))
    if accumulation is None:
        return ""
    p = accumulation.param
    return f", accumulated into the parameter {p.name or '%' + str(lw.number[id(p)])} by its GEMM"


@rule("matmul")
def lower_matmul(lw: Lowering, node: Node) -> None:
    lw.emit(matmul_product(lw, node, *node.inputs), note=accumulation_note(lw, node))


@rule("matmul_epilogue")
def lower_matmul_epilogue(lw: Lowering, node: Node) -> None:
    a, b = node.inputs[:2]
    lw.emit(matmul_product(lw, node, a, b, node.attrs["transpose_a"], node.attrs["transpose_b"])
            + epilogue(lw, node), note=accumulation_note(lw, node))


@rule("dense")
def lower_dense(lw: Lowering, node: Node) -> None:
    """y = x @ w + b: one GEMM, then the bias added row by row."""
    x, w, b = node.inputs
    k, n = w.shape
    m = node.size // n
    bias = lw.converted(b, node.dtype).buffer
    body = [] if k == 0 else [gemm(lw.converted(x, node.dtype), lw.converted(w, node.dtype), lw.operand(node), m, n, k)]
    i0, i1, v = index_var("i0"), index_var("i1"), scalar_var(f"b{lw.number[id(node)]}")
    add = Store(lw.buffer(node), i0 * n + i1, v, reduce="add" if k else None, exact=True)
    lw.emit(body + nest([m, n], ["i0", "i1"], [Load(v, bias, i1), add]))
