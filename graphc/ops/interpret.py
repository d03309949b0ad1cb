"""Evaluating nodes with NumPy: each node's registered reference implementation, in topological order.

This is what a graph *means*. Constant folding (:mod:`graphc.passes.fold`), ``check_grad``
(:mod:`graphc.autodiff.check`), the finiteness replay (:mod:`graphc.backends.finite`) and the reference
backend (:mod:`graphc.backends.reference`) all evaluate through it, so it sits here, below all of them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..ir import Graph, GraphcError, InputError, Node
from ..ir.errors import at_op
from . import registry


def validate(node: Node, value: Any, role: str = "input") -> np.ndarray:
    """The array for ``node``: right shape, a dtype that converts without changing meaning, C order."""
    label = f"{role} {node.name!r}" if node.name else role
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise InputError(f"{label}: expected an array {node.type_str}, got {type(value).__name__} ({err})") from None
    if arr.shape != node.shape:
        raise InputError(f"{label}: expected shape {list(node.shape)} ({node.type_str}), got {list(arr.shape)}")
    ok = arr.dtype.kind in "fiub" and (node.dtype.kind == "f" or arr.dtype.kind in "iub")
    if not ok or (node.dtype.kind == "b" and arr.dtype.kind != "b"):
        raise InputError(f"{label}: expected dtype {node.dtype.name}, got {arr.dtype.name}")
    if node.dtype.kind == "i" and arr.size and not np.can_cast(arr.dtype, node.dtype.np):
        info, low, high = np.iinfo(node.dtype.np), arr.min(), arr.max()
        if low < info.min or high > info.max:  # narrowing would wrap around silently
            raise InputError(f"{label}: values in [{low}, {high}] do not fit in {node.dtype.name}")
    return np.ascontiguousarray(arr, dtype=node.dtype.np) if arr.ndim else np.asarray(arr, dtype=node.dtype.np)


def key_node(graph: Graph, key: Any) -> Node:
    """The node a feed or parameter value is keyed by: a node, a tensor (``.node``) or a name."""
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
    fed = {id(key_node(graph, k)): v for k, v in (feeds or {}).items()}
    overrides = {id(key_node(graph, k)): v for k, v in (params or {}).items()}
    values: dict[int, np.ndarray] = {}
    for node in graph.ancestors(roots):
        values[id(node)] = evaluate_node(node, values, fed, overrides)
    return values


def evaluate_node(node: Node, values: Mapping[int, np.ndarray], fed: Mapping[int, Any],
                  overrides: Mapping[int, Any]) -> np.ndarray:
    """The value of ``node``: its inputs' ``values`` are known (by id); sources come from ``fed``
    (inputs, which must be there), ``overrides`` (parameters, else their initial value) or the node."""
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
