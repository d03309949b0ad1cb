"""Epilogue fusion: the elementwise work on a GEMM's or convolution's result runs in the same
kernel, as the ``matmul_epilogue`` / ``conv2d_epilogue`` ops (see graphc/ops/fused.py).

Runs after elementwise fusion. A matmul, dense or conv2d whose only reader is one fused node of
its own shape absorbs that fused node: forward, the bias add and the activation
(``relu(x @ W + b)`` is one kernel); backward, the activation-derivative mask applied to the
GEMM that produces the incoming gradient (``(g @ W^T) * (h > 0)``). A swap of a matmul operand's
last two axes (``transpose``) becomes the op's ``transpose_a``/``transpose_b`` flag, so the
backward GEMMs ``g @ W^T`` and ``x^T @ g`` read their operands in place.

Not absorbed: a fused node that is a parameter-update value (``p - lr * g``); it stays an
elementwise kernel so that the buffer plan can compute it in place into the parameter.
"""
from __future__ import annotations

import sympy as sp

from ..ir import Graph, Node
from ..ops.elementwise import fused_symbols
from .core import Rewriter, absorbed_of, make, rewrite
from .fusion import same_values_when_written

_PRODUCERS = frozenset({"matmul", "dense", "conv2d", "matmul_epilogue", "conv2d_epilogue"})
_CONV_ATTRS = ("stride", "padding", "dilation")


def _swap_perm(ndim: int) -> tuple[int, ...]:
    return tuple(range(ndim - 2)) + (ndim - 1, ndim - 2)


def _is_swap(node: Node) -> bool:
    return node.op == "transpose" and node.ndim >= 2 and tuple(node.attrs["perm"]) == _swap_perm(node.ndim)


class _Product:
    """A producer seen as: core op, its operands and attributes, an epilogue over (x0, extras)."""

    def __init__(self, kind: str, operands: list[Node], attrs: dict, expr: sp.Expr, extras: list[Node]):
        self.kind, self.operands, self.attrs, self.expr, self.extras = kind, operands, attrs, expr, extras


def _as_product(node: Node) -> _Product | None:
    x0 = fused_symbols(1)[0]
    if node.op == "matmul":
        return _Product("matmul_epilogue", list(node.inputs), {"transpose_a": False, "transpose_b": False}, x0, [])
    if node.op == "dense" and node.inputs[0].ndim >= 2:
        x, w, b = node.inputs
        return _Product("matmul_epilogue", [x, w], {"transpose_a": False, "transpose_b": False},
                        x0 + fused_symbols(2)[1], [b])
    if node.op == "conv2d":
        return _Product("conv2d_epilogue", list(node.inputs), {k: node.attrs[k] for k in _CONV_ATTRS}, x0, [])
    if node.op in ("matmul_epilogue", "conv2d_epilogue"):
        keys = ("transpose_a", "transpose_b") if node.op == "matmul_epilogue" else _CONV_ATTRS
        return _Product(node.op, list(node.inputs[:2]), {k: node.attrs[k] for k in keys}, node.attrs["expr"],
                        list(node.inputs[2:]))
    return None


def _fold_transposes(product: _Product) -> bool:
    """Turn transposed matmul operands into flags; True when something changed."""
    if product.kind != "matmul_epilogue":
        return False
    changed = False
    for k, flag in ((0, "transpose_a"), (1, "transpose_b")):
        operand = product.operands[k]
        if _is_swap(operand):
            product.operands[k] = operand.inputs[0]
            product.attrs[flag] = not product.attrs[flag]
            changed = True
    return changed


def _plan(graph: Graph, fast_math: bool = False) -> dict[int, Node]:
    """id(fused consumer) -> the producer it absorbs (unless fast_math, only where SymPy's composed
    expression computes what the two nodes compute, NaN and infinities included)."""
    users = graph.consumers()
    update_values = {id(v) for _, v in graph.updates}
    kept = {id(n) for n in graph.outputs} | update_values
    plan = {}
    for p in graph.nodes:
        if p.op not in _PRODUCERS or id(p) in kept or _as_product(p) is None:
            continue
        readers = users[id(p)]
        if len(readers) != 1:
            continue
        f = readers[0]
        if (f.op == "fused" and id(f) not in update_values and f.shape == p.shape and f.dtype.is_float
                and sum(1 for i in f.inputs if i is p) == 1):
            if fast_math or _absorb(_as_product(p), f, p, check=True):
                plan[id(f)] = p
    return plan


def fuse_epilogue(graph: Graph, fast_math: bool = False) -> Graph:
    """Fuse bias/activation/mask epilogues and operand transposes into GEMMs and convolutions.

    >>> import graphc, numpy as np
    >>> from graphc.passes import fuse_elementwise
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (2, 3))
    ...     W = graphc.param("W", np.ones((3, 4), np.float32)); b = graphc.param("b", np.zeros(4, np.float32))
    ...     y = g.output(graphc.relu(graphc.dense(x, W, b)))
    >>> [n.op for n in fuse_epilogue(fuse_elementwise(g)).nodes]
    ['input', 'param', 'param', 'matmul_epilogue']
    """
    plan = _plan(graph, fast_math)
    absorbed_producers = {id(p) for p in plan.values()}

    def build(rw: Rewriter, product: _Product, like: Node, dtype, absorbed) -> Node:
        inputs = [rw.new(o) for o in product.operands] + [rw.new(e) for e in product.extras]
        attrs = dict(product.attrs, expr=product.expr, dtype=dtype.name)
        return make(product.kind, inputs, attrs, like=like, absorbed=absorbed)

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        producer = plan.get(id(old))
        if producer is not None:
            product = _as_product(producer)
            _fold_transposes(product)
            _absorb(product, old, producer)
            return build(rw, product, old, old.dtype, absorbed_of([producer, old]))
        if old.op == "matmul" and any(_is_swap(i) for i in old.inputs) and id(old) not in absorbed_producers:
            product = _as_product(old)
            _fold_transposes(product)
            return build(rw, product, old, old.dtype, absorbed_of([old]))
        return None

    return rewrite(graph, visit)


def _absorb(product: _Product, consumer: Node, producer: Node, check: bool = False) -> bool:
    """Compose the consumer's expression over the producer's epilogue: extras are merged. With
    ``check``, whether the composition SymPy evaluated computes what the two nodes compute."""
    index = {id(e): k + 1 for k, e in enumerate(product.extras)}
    n_in = len(consumer.inputs)
    syms = fused_symbols(n_in)
    mapping = {}
    for j, node in enumerate(consumer.inputs):
        if node is producer:
            mapping[syms[j]] = product.expr  # xreplace is simultaneous: its x0, x1.. are not renamed again
            continue
        if id(node) not in index:
            product.extras.append(node)
            index[id(node)] = len(product.extras)
        mapping[syms[j]] = sp.Symbol(f"x{index[id(node)]}", real=True)
    written = consumer.attrs["expr"]
    product.expr = written.xreplace(mapping)
    return not check or same_values_when_written(written, mapping, product.expr)
