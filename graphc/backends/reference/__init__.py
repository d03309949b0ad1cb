"""The NumPy reference backend: evaluates any graph one node at a time.

It is the oracle every other backend and every pass is tested against, so it does the
obvious thing: each node's registered reference implementation, in topological order.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ...ir import Graph, GraphcError, InputError, Node
from ...ir.errors import at_op
from ...ops import registry
from ..executable import Executable, validate


def _key_node(graph: Graph, key: Any) -> Node:
    node = getattr(key, "node", key)
    if isinstance(node, Node):
        return node
    if isinstance(key, str):
        try:
            return graph.find(key)
        except KeyError:
            known = ", ".join(repr(n.name) for n in graph.inputs + graph.params)
            raise InputError(f"graph {graph.name!r} has no input or parameter named {key!r} "
                             f"(it has {known or 'none'})") from None
    raise TypeError(f"feeds and params are keyed by name or tensor, got {key!r}")


def evaluate(graph: Graph, feeds: Mapping[Any, Any] | None = None, outputs: Sequence[Node] | None = None,
             params: Mapping[Any, Any] | None = None) -> list[np.ndarray]:
    """Evaluate ``outputs`` (default: the graph's outputs) with NumPy; returns one array per output.

    ``feeds`` gives every needed input, keyed by name or tensor; ``params`` optionally
    overrides parameter values (otherwise their initial values are used).
    """
    outputs = list(graph.outputs if outputs is None else [getattr(o, "node", o) for o in outputs])
    values = run_nodes(graph, outputs, feeds, params)
    return [values[id(o)] for o in outputs]


def run_nodes(graph: Graph, roots: Sequence[Node], feeds: Mapping[Any, Any] | None,
              params: Mapping[Any, Any] | None) -> dict[int, np.ndarray]:
    """The value of every node ``roots`` depend on, keyed by id(node)."""
    fed = {id(_key_node(graph, k)): v for k, v in (feeds or {}).items()}
    overrides = {id(_key_node(graph, k)): v for k, v in (params or {}).items()}
    values: dict[int, np.ndarray] = {}
    for node in graph.ancestors(roots):
        values[id(node)] = _evaluate_node(node, values, fed, overrides)
    return values


def _evaluate_node(node: Node, values, fed, overrides) -> np.ndarray:
    if node.op == "input":
        if id(node) not in fed:
            raise InputError(f"input {node.name!r} ({node.type_str}) was not fed")
        return validate(node, fed[id(node)])
    if node.op == "param":
        return validate(node, overrides[id(node)], "param") if id(node) in overrides else node.value
    if node.op == "constant":
        return node.value
    args = [values[id(i)] for i in node.inputs]
    try:
        result = registry.get(node.op).reference(args, node.attrs)
    except GraphcError as err:
        raise at_op(err, node.op, ", ".join(i.type_str for i in node.inputs), node.loc) from None
    return np.array(np.broadcast_to(result, node.shape), dtype=node.dtype.np, order="C")


class ReferenceExecutable(Executable):
    """The reference backend behind :func:`graphc.compile`: NumPy, one node at a time."""

    backend = "reference"

    def __init__(self, graph: Graph, inputs: list[Node], check_finite: bool = False):
        super().__init__(graph, inputs)
        #: check_finite=True: NaN/Inf in inputs or parameters is an InputError; in outputs or updated
        #: parameters a NonFiniteError naming the node it came from (see graphc.backends.finite).
        self.check_finite = check_finite

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if not self.check_finite:
            return self._run(arrays)
        from .. import finite

        finite.check_inputs(self, arrays)
        before = finite.snapshot(self.params)
        outs = self._run(arrays)
        finite.check_outputs(self, arrays, outs, before)
        return outs

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {id(n): a for n, a in zip(self.inputs, arrays)}
        state = {id(p): self.params[k] for k, p in zip(self.params, self.graph.params)}
        roots = self.outputs + [v for _, v in self.graph.updates]
        values = run_nodes(self.graph, roots, {n: feeds[id(n)] for n in self.inputs},
                           {p: state[id(p)] for p in self.graph.params})
        outs = [values[id(o)].copy() for o in self.outputs]
        # All updates read the old values: every new value is copied before any is written, since one
        # can be another parameter's array itself (g.update(a, b); g.update(b, a) swaps them). So an input
        # that is a view of a parameter is read as passed too: nothing is written while anything is read.
        new_values = [values[id(v)].copy() for _, v in self.graph.updates]
        for (p, _), value in zip(self.graph.updates, new_values):
            state[id(p)][...] = value
        return outs


def build(graph: Graph, inputs: list[Node], check_finite: bool = False) -> ReferenceExecutable:
    """The reference executable of ``graph``; ``check_finite``: see :class:`ReferenceExecutable`."""
    return ReferenceExecutable(graph, inputs, check_finite=check_finite)
