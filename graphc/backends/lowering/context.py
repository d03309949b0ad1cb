"""What a lowering rule sees: the layout of every value, and a way to append kernels.

A rule is a small function ``rule(lw, node)`` registered for one or more ops with :func:`rule`;
it reads operands with ``lw.load``, writes with ``lw.store``, asks for per-kernel scratch with
``lw.scratch`` and appends the statements it builds with ``lw.emit``. It never prints text: the
renderers do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ...ir import Graph, GraphcError, Node
from ...ir.printer import comment_text
from ...ops import registry
from .ir import (
    Assign,
    Buffer,
    Check,
    ErrorSite,
    Kernel,
    Load,
    Ref,
    Store,
    aligned,
    index_var,
    nest,
    scalar_var,
)

#: op name -> its lowering rule (the generic elementwise rule covers every op with a SymPy expression).
Rule = Callable[["Lowering", Node], None]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the lowering rule of ops ``names``."""
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn
    return register


def rule_for(op: str) -> Rule:
    """The rule lowering ``op``: its table entry, or the generic elementwise rule for any op that is
    defined by a SymPy expression (derivative ops registered on first use included)."""
    if op in RULES:
        return RULES[op]
    if registry.is_registered(op) and registry.get(op).expr is not None:
        return RULES["<elementwise>"]
    raise GraphcError(f"graphc cannot lower op {op!r}: no lowering rule")


def has_rule(op: str) -> bool:
    try:
        rule_for(op)
        return True
    except GraphcError:
        return False


def identifier(name: str | None, fallback: str) -> str:
    import keyword

    text = re.sub(r"\W", "_", name or "") or fallback
    if text[0].isdigit() or keyword.iskeyword(text):
        text = "_" + text
    return text


def op_label(node: Node) -> str:
    """``fused[sub, mul]``: the op, and for a node the passes fused, the ops it stands for."""
    if not node.absorbed:
        return node.op
    ops = list(dict.fromkeys(a.op for a in node.absorbed))
    return f"{node.op}[{', '.join(ops)}]"


@dataclass
class Accumulation:
    """``p <- beta * p + alpha * product``, done by the product's GEMM (BLAS's alpha and beta): alpha and
    beta are SymPy expressions over ``scalars`` (one-element operands such as a learning rate)."""

    param: Node
    alpha: sp.Expr
    beta: sp.Expr
    scalars: dict[sp.Symbol, Node]
    update: Node


@dataclass
class Operand:
    """A node's value as a GEMM operand or a library-call argument: its buffer, and whether the buffer
    holds the value's last two axes swapped (a transpose read in place)."""

    buffer: Buffer
    transposed: bool = False

    def ref(self, plus: sp.Expr | int = 0) -> Ref:
        return Ref(self.buffer, sp.sympify(plus))


class Lowering:
    """The lowering of one graph: layout decisions (made before any rule runs) and the kernels so far."""

    def __init__(self, graph: Graph, inputs: Sequence[Node], options: dict[str, Any],
                 choose_conv: Callable[..., str] | None = None):
        self.graph = graph
        self.inputs = list(inputs)
        self.options = options
        self.choose_conv = choose_conv
        self.number = {id(n): k for k, n in enumerate(graph.nodes)}
        self.kind: dict[int, str] = {}
        self.root: dict[int, Node] = {}
        self.buffers: dict[int, Buffer] = {}          # root id -> its buffer
        self.kernels: list[Kernel] = []
        self.checks: list[Kernel] = []
        self.errors: list[ErrorSite] = []
        self.inplace_target: dict[int, Node] = {}     # update value id -> the parameter it overwrites
        self.accumulate: dict[int, Accumulation] = {}  # product id -> the update its GEMM does in place
        self.accumulated_updates: dict[int, Node] = {}  # update value id -> the product accumulated into p
        self.checked_labels: set[tuple[int, int]] = set()  # (id(input), classes) checked up front
        self.current: Node | None = None
        self.plan = None
        self.slot_offset: list[int] = []
        self.scratch_base = 0
        self.scratch_top = 0
        self.scratch_high = 0
        self._scratch_count = 0
        self._var_count = 0

    def begin(self, node: Node) -> None:
        """Start lowering ``node``: its kernels get fresh scratch space (the previous node's is dead)."""
        self.current = node
        self.scratch_top = self.scratch_base
        self._scratch_count = 0

    # -- reading the layout ------------------------------------------------------------------------
    def buffer(self, node: Node) -> Buffer:
        """The buffer holding ``node``'s value, row-major from element 0 (views resolved)."""
        kind = self.kind[id(node)]
        if kind == "tview":
            raise GraphcError(f"internal: %{self.number[id(node)]} is a transposed view, only GEMMs read it")
        if kind == "alias":
            return self.buffer(node.inputs[0])
        if kind == "inplace":
            return self.buffer(self.inplace_target[id(node)])
        return self.buffers[id(node)]

    def operand(self, node: Node) -> Operand:
        """``node`` as a GEMM operand: a transposed view reads its source with the transpose flag."""
        if self.kind[id(node)] == "tview":
            return Operand(self.buffer(node.inputs[0]), True)
        return Operand(self.buffer(node))

    def literal(self, node: Node) -> Any:
        """The Python value of a one-element constant (inlined into scalar code), else None."""
        if node.op == "constant" and node.value is not None and node.value.size == 1:
            return node.value.reshape(()).item()
        return None

    # -- building statements -----------------------------------------------------------------------
    def var(self, stem: str) -> sp.Symbol:
        """A fresh scalar variable named after the current node: ``<stem><k>_<n>``."""
        self._var_count += 1
        return scalar_var(f"{stem}{self.number[id(self.current)]}_{self._var_count}")

    def integer_var(self, stem: str) -> sp.Symbol:
        """A fresh integer variable named after the current node: an argmax position, a label used as an
        index, a random key or shift."""
        return index_var(self.var(stem).name)

    def load(self, var: str | sp.Symbol, node: Node, index, guard: sp.Expr | None = None) -> Load:
        """``var = node[index]`` (flat, row-major)."""
        sym = scalar_var(var) if isinstance(var, str) else var
        return Load(sym, self.buffer(node), sp.sympify(index), guard)

    def store(self, node: Node, index, value, reduce: str | None = None, exact: bool = False) -> Store:
        return Store(self.buffer(node), sp.sympify(index), sp.sympify(value), reduce, exact)

    def fill(self, node: Node, value) -> list:
        """Set every element of ``node`` to ``value``."""
        if not node.size:
            return []
        return nest([node.size], ["j"], [self.store(node, index_var("j"), value, exact=True)])

    def scratch(self, nelems: int, dtype) -> Buffer:
        """A workspace block live only during the current node's kernels."""
        name = getattr(dtype, "name", dtype)
        itemsize = np.dtype(name).itemsize
        off = self.scratch_top
        self.scratch_top += aligned(int(nelems) * itemsize)
        self.scratch_high = max(self.scratch_high, self.scratch_top)
        k = self.number[id(self.current)]
        buf = Buffer(f"S{k}_{self._scratch_count}", "workspace", off // itemsize, int(nelems), name, (int(nelems),),
                     f"scratch of %{k} {self.current.op}: {nelems} x {name}")
        self._scratch_count += 1
        return buf

    def converted(self, node: Node, dtype) -> Operand:
        """``node`` in ``dtype``: itself when it has that dtype, else a converted scratch copy."""
        if node.dtype == dtype or node.size == 0:
            return self.operand(node)
        buf = self.scratch(node.size, dtype)
        j, v = index_var("j"), self.var("c")
        self.emit(nest([node.size], ["j"], [self.load(v, node, j),
                                             Store(buf, j, v)]), rule="convert", role=f"as {dtype} of")
        return Operand(buf)

    def label_check(self, node: Node, labels: sp.Expr, index: sp.Expr, classes: int,
                    source: Node | None) -> Check:
        """Stop the step, reporting (index, label), when ``labels`` is outside [0, classes)."""
        site = ErrorSite(code=len(self.errors) + 1, kind="label", op=node.op, node=self.number[id(node)],
                         where=node.loc.short if node.loc else "",
                         input=source.name if source is not None and source.op == "input" else None,
                         classes=classes)
        self.errors.append(site)
        return Check(sp.Or(labels < 0, labels >= classes), site, index, labels)

    def labels_checked(self, labels: Node, classes: int) -> bool:
        """Whether ``labels`` (an operand) was range-checked before the step began (it is an input)."""
        return (id(self.root[id(labels)]), classes) in self.checked_labels

    def conv_method(self, node: Node, geometry) -> str:
        """How conv2d ``node`` is computed ("im2col" or "direct"): the target's choice when it has one
        (numba_cpu measures both), else im2col; every choice is recorded in ``options["conv_methods"]``."""
        method = self.choose_conv(node, geometry) if self.choose_conv else "im2col"
        self.options.setdefault("conv_methods", []).append(method)
        return method

    def emit(self, body: list, rule: str | None = None, role: str = "", node: Node | None = None,
             note: str = "") -> None:
        """Append a kernel computing (part of) ``node`` (default: the node being lowered)."""
        node = node if node is not None else self.current
        if not body:
            return
        self.kernels.append(self.kernel(node, body, rule, role, note))

    def kernel(self, node: Node, body: list, rule: str | None, role: str = "", note: str = "") -> Kernel:
        return Kernel(node=self.number[id(node)], op=op_label(node), rule=rule or node.op,
                      where=comment_text(node, self.number), body=body, role=role, note=note)


def assign(var: sp.Symbol, value, dtype) -> Assign:
    return Assign(var, sp.sympify(value), getattr(dtype, "name", dtype))
