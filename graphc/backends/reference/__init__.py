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


def _key_node(graph: Graph, key: Any) -> Node:
    node = getattr(key, "node", key)
    if isinstance(node, Node):
        return node
    if isinstance(key, str):
        return graph.find(key)
    raise TypeError(f"feeds and params are keyed by name or tensor, got {key!r}")


def check_input(node: Node, value: Any, role: str = "input") -> np.ndarray:
    """Convert a fed value to the node's dtype, refusing what would change its meaning."""
    arr = np.asarray(value)
    label = f"{role} {node.name!r}" if node.name else role
    if arr.shape != node.shape:
        raise InputError(f"{label}: expected shape {list(node.shape)} ({node.type_str}), got {list(arr.shape)}")
    kind_ok = arr.dtype.kind in "fiub" and (node.dtype.kind == "f" or arr.dtype.kind in "iub")
    if not kind_ok or (node.dtype.kind == "b" and arr.dtype.kind != "b"):
        raise InputError(f"{label}: expected dtype {node.dtype.name}, got {arr.dtype.name}")
    return arr.astype(node.dtype.np, copy=False)


def evaluate(graph: Graph, feeds: Mapping[Any, Any] | None = None, outputs: Sequence[Node] | None = None,
             params: Mapping[Any, Any] | None = None) -> list[np.ndarray]:
    """Evaluate ``outputs`` (default: the graph's outputs) with NumPy; returns one array per output.

    ``feeds`` gives every needed input, keyed by name or tensor; ``params`` optionally
    overrides parameter values (otherwise their initial values are used).
    """
    outputs = list(graph.outputs if outputs is None else [getattr(o, "node", o) for o in outputs])
    fed = {id(_key_node(graph, k)): v for k, v in (feeds or {}).items()}
    overrides = {id(_key_node(graph, k)): v for k, v in (params or {}).items()}
    values: dict[int, np.ndarray] = {}
    for node in graph.ancestors(outputs):
        values[id(node)] = _evaluate_node(node, values, fed, overrides)
    return [values[id(o)] for o in outputs]


def _evaluate_node(node: Node, values, fed, overrides) -> np.ndarray:
    if node.op == "input":
        if id(node) not in fed:
            raise InputError(f"input {node.name!r} ({node.type_str}) was not fed")
        return check_input(node, fed[id(node)])
    if node.op == "param":
        return check_input(node, overrides[id(node)], "param") if id(node) in overrides else node.value
    if node.op == "constant":
        return node.value
    args = [values[id(i)] for i in node.inputs]
    try:
        result = registry.get(node.op).reference(args, node.attrs)
    except GraphcError as err:
        raise at_op(err, node.op, ", ".join(i.type_str for i in node.inputs), node.loc) from None
    return np.array(np.broadcast_to(result, node.shape), dtype=node.dtype.np, order="C")
