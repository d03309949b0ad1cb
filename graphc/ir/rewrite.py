"""Copying graphs: passes never mutate the graph they are given, they build a new one."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from .graph import Graph
from .node import Node, Provenance


def clone(graph: Graph, outputs: Iterable[Node] | None = None, name: str | None = None,
          keep_updates: bool = True) -> tuple[Graph, dict[int, Node]]:
    """A new graph holding copies of the nodes that ``outputs`` (default: the graph's outputs) and
    the updates need, in the same order; returns it and the map id(old node) -> new node.

    Dead nodes are dropped. Provenance pointing at copied nodes is re-pointed at the copies.
    """
    outputs = list(graph.outputs if outputs is None else outputs)
    updates = graph.updates if keep_updates else []
    roots = outputs + [n for pair in updates for n in pair]
    return rebuild(graph, graph.ancestors(roots), outputs, updates, name)


def rebuild(graph: Graph, nodes: Iterable[Node], outputs: Iterable[Node], updates, name: str | None = None,
            replace: Callable[[Node, tuple[Node, ...]], Node] | None = None) -> tuple[Graph, dict[int, Node]]:
    """Copy ``nodes`` (topologically ordered) into a new graph, re-pointing inputs at the copies.

    ``replace(old, new_inputs)`` may return a different node to stand for ``old``; by default each
    node is copied with its new inputs.
    """
    new = Graph(name or graph.name)
    mapping: dict[int, Node] = {}
    for old in nodes:
        inputs = tuple(mapping[id(i)] for i in old.inputs)
        node = replace(old, inputs) if replace is not None else None
        if node is None:
            node = dataclasses.replace(old, inputs=inputs, id=_fresh_id())
        if node not in new:
            _add_with_inputs(new, node)
        mapping[id(old)] = node
    for node in new.nodes:
        p = node.provenance
        if p is not None and (id(p.forward) in mapping or (p.wrt is not None and id(p.wrt) in mapping)):
            node.provenance = Provenance(mapping.get(id(p.forward), p.forward), p.rule,
                                         mapping.get(id(p.wrt), p.wrt) if p.wrt is not None else None)
    new.outputs = [mapping[id(o)] for o in outputs]
    new.updates = [(mapping[id(p)], mapping[id(v)]) for p, v in updates]
    return new, mapping


def _add_with_inputs(graph: Graph, node: Node) -> None:
    """Add ``node``, first adding any of its inputs (a replacement's new helpers) not yet in ``graph``."""
    for i in node.inputs:
        if i not in graph:
            _add_with_inputs(graph, i)
    graph.add(node)


def _fresh_id() -> int:
    from .node import _ids

    return next(_ids)
