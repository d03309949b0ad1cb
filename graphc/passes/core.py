"""What every pass shares: building a new graph from an old one, making nodes, reading constants.

A pass is a pure function ``Graph -> Graph``. It walks the old graph in topological order and
says, for each old node, which node of the new graph stands for it (:func:`rewrite`); the
new graph is built with :func:`graphc.ir.rewrite.rebuild`, so the old one is never touched.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..ir import Attrs, Graph, Node, Provenance
from ..ir.rewrite import clone, rebuild
from ..ops import registry


def is_kernel(node: Node) -> bool:
    """A kernel is a node that computes: anything but a source (input, parameter, constant) or a view
    (a C-order reshape: the same memory) -- the registry entry's ``source`` and ``view`` facts.

    This is the unit the pass statistics count: after fusion one kernel is one loop nest (or one
    GEMM/conv call with its epilogue) in generated code.
    """
    op = registry.get(node.op)
    return not (op.source or op.view)


def count_kernels(graph: Graph) -> int:
    """The number of kernels (see :func:`is_kernel`) in ``graph``."""
    return sum(1 for n in graph.nodes if is_kernel(n))


class Rewriter:
    """The state of one pass over one graph: the old graph, and old node -> new node so far."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.map: dict[int, Node] = {}

    def new(self, old: Node) -> Node:
        """The node of the new graph standing for ``old`` (which must come earlier in the old graph)."""
        return self.map[id(old)]


Visit = Callable[[Rewriter, Node, tuple], "Node | None"]


def copy_node(old: Node, inputs: tuple[Node, ...], **changes: Any) -> Node:
    """A fresh node like ``old`` (same op, attrs, type, name, location, provenance) over ``inputs``."""
    fields = {f.name: getattr(old, f.name) for f in dataclasses.fields(old) if f.name != "id"}
    fields.update(inputs=tuple(inputs), **changes)
    return Node(**fields)


def rewrite(graph: Graph, visit: Visit, name: str | None = None) -> Graph:
    """Build a new graph: ``visit(rw, old, new_inputs)`` returns the node standing for ``old``
    (built with :func:`make`, or an earlier new node), or None to copy ``old`` over its new inputs.

    Nodes nothing needs any more are dropped at the end. Provenance that pointed at a node a
    rewrite absorbed is re-pointed at the node that absorbed it.
    """
    rw = Rewriter(graph)

    def replace(old: Node, inputs: tuple) -> Node:
        node = visit(rw, old, inputs)
        if node is None:
            node = copy_node(old, inputs)
        rw.map[id(old)] = node
        return node

    built, _ = rebuild(graph, graph.nodes, graph.outputs, graph.updates, name=name or graph.name, replace=replace)
    result, _ = clone(built)
    _repoint_provenance(result, rw)
    return result


def _repoint_provenance(graph: Graph, rw: Rewriter) -> None:
    """Backward nodes name the forward node they came from; when that node was absorbed into a
    fused node, name the fused node instead."""
    members = {id(n) for n in graph.nodes}
    holder: dict[int, Node] = {}
    for n in graph.nodes:
        for a in n.absorbed:
            holder[id(a)] = n
            if id(a) in rw.map:
                holder[id(rw.map[id(a)])] = n
    if not holder:
        return

    def fix(target: Node | None) -> Node | None:
        if target is None or id(target) in members:
            return target
        return holder.get(id(target), target)

    for n in graph.nodes:
        p = n.provenance
        if p is not None and (id(p.forward) not in members or (p.wrt is not None and id(p.wrt) not in members)):
            n.provenance = Provenance(fix(p.forward), p.rule, fix(p.wrt))


def make(op: str, inputs: Iterable[Node], attrs: Mapping[str, Any] | None = None, like: Node | None = None,
         name: str | None = None, absorbed: tuple[Node, ...] = ()) -> Node:
    """A new node of registered ``op`` (not yet in any graph), typed by the op's shape rule.

    ``like`` lends its source location and provenance: a rewritten node still points at the
    user's line that created what it replaces.
    """
    inputs = tuple(inputs)
    frozen = Attrs(attrs or {})
    shape, dtype = registry.get(op).shape_rule(inputs, frozen)
    return Node(op, inputs, frozen, tuple(int(d) for d in shape), dtype,
                name=name if name is not None else (like.name if like is not None else None),
                loc=like.loc if like is not None else None,
                provenance=like.provenance if like is not None else None, absorbed=absorbed)


def make_constant(value: Any, dtype, like: Node | None = None) -> Node:
    """A constant node holding ``value`` (converted to ``dtype``)."""
    arr = np.array(value, dtype=dtype.np, copy=True)
    arr.setflags(write=False)
    return Node("constant", (), Attrs(), arr.shape, dtype, loc=like.loc if like is not None else None,
                value=arr, provenance=like.provenance if like is not None else None)


def uniform_constant(node: Node) -> Node | None:
    """The one-element constant whose value every element of ``node`` has, when ``node`` is a constant
    (or a broadcast or view of one) whose elements are all equal; else None."""
    while node.op == "broadcast_to" or registry.is_view(node):
        node = node.inputs[0]
    if node.op != "constant" or node.value is None or node.value.size == 0:
        return None
    flat = node.value.reshape(-1)
    if flat.size == 1:
        return node
    if np.all(flat == flat[0]):
        return make_constant(flat[0], node.dtype, like=node)
    return None


def uniform_value(node: Node) -> float | None:
    """The value of :func:`uniform_constant` as a Python float (a boolean as 0.0 or 1.0); else None."""
    scalar = uniform_constant(node)
    if scalar is None:
        return None
    value = scalar.value.reshape(())[()]
    return float(value) if scalar.dtype.kind != "b" else float(bool(value))


def conform(node: Node, like: Node) -> Node | None:
    """``node`` made to stand for ``like``: same dtype required; a smaller shape is broadcast up.
    None when that is impossible."""
    if node.dtype != like.dtype:
        return None
    if node.shape == like.shape:
        return node
    try:
        if np.broadcast_shapes(node.shape, like.shape) != like.shape:
            return None
    except ValueError:
        return None
    return make("broadcast_to", [node], {"shape": like.shape}, like=like)


def absorbed_of(nodes: Iterable[Node]) -> tuple[Node, ...]:
    """The user-level nodes behind ``nodes``: a node that itself absorbed others stands for them."""
    out: list[Node] = []
    seen: set[int] = set()
    for n in nodes:
        for a in (n.absorbed or (n,)):
            if id(a) not in seen:
                seen.add(id(a))
                out.append(a)
    return tuple(out)
