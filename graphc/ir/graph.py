"""Graph: nodes in topological order, with inputs, parameters, constants and outputs."""
from __future__ import annotations

import hashlib
import threading
from typing import Iterable, Sequence

from .errors import GraphcError
from .node import Node

_context = threading.local()

#: The ops whose names are how a graph is fed and read (feeds, exe.params, checkpoints): one namespace.
NAMED_SOURCES = ("input", "param")


class DuplicateNameError(GraphcError, ValueError):
    """A second input or parameter with a name the graph already has: feeds and parameters are found by
    name, so one of the two would silently take the other's value."""


def current_graph() -> "Graph | None":
    """The innermost graph opened with ``with Graph() as g:`` (or by tracing), if any."""
    stack = getattr(_context, "stack", [])
    return stack[-1] if stack else None


class Graph:
    """A static computational graph.

    Nodes are appended as they are built, which keeps them in topological order
    (a node's inputs always exist before it).

    >>> import graphc
    >>> with graphc.Graph("affine") as g:
    ...     x = graphc.input("x", (2, 3))
    ...     y = g.output(graphc.relu(x * 2.0 + 1.0))
    >>> len(g.nodes), g.outputs[0].op
    (6, 'relu')
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: list[Node] = []
        self.outputs: list[Node] = []
        #: In-place state updates run after the outputs are computed: (parameter, its new value).
        #: A training step's optimizer writes these; backends apply them in place.
        self.updates: list[tuple[Node, Node]] = []
        self._members: set[int] = set()
        self._sources: dict[str, Node] = {}  # input and parameter names -> their node

    # -- building -----------------------------------------------------------------------------
    def __enter__(self) -> "Graph":
        if not hasattr(_context, "stack"):
            _context.stack = []
        _context.stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context.stack.pop()

    def add(self, node: Node) -> Node:
        """Append a node whose inputs are already in this graph."""
        for i in node.inputs:
            if id(i) not in self._members:
                raise ValueError(f"{node.op}: input {i!r} belongs to another graph")
        if node.op in NAMED_SOURCES and node.name is not None:
            self._check_new_name(node)
            self._sources[node.name] = node
        self.nodes.append(node)
        self._members.add(id(node))
        return node

    def _check_new_name(self, node: Node) -> None:
        first = self._sources.get(node.name)
        if first is not None:
            where = f" at {node.loc}" if node.loc is not None else ""
            first_where = f" at {first.loc}" if first.loc is not None else ""
            raise DuplicateNameError(
                f"{node.op} {node.name!r} ({node.type_str}){where}: graph {self.name!r} already has {first.op} "
                f"{node.name!r} ({first.type_str}){first_where}; inputs and parameters are fed and found by name, "
                f"so names must be unique")

    def discard_unused_since(self, start: int, keep: Iterable[Node]) -> None:
        """Remove the nodes added since position ``start`` that ``keep`` does not depend on.

        Only for a graph still being built (autodiff drops the gradients its rules built for
        constants); nodes added earlier are never touched, so no existing node loses an input.
        """
        needed = {id(n) for n in self.ancestors(keep)}
        fresh = self.nodes[start:]
        self.nodes[start:] = [n for n in fresh if id(n) in needed]
        self._members.difference_update(id(n) for n in fresh if id(n) not in needed)
        for n in fresh:
            if id(n) not in needed and self._sources.get(n.name) is n:
                del self._sources[n.name]

    def __contains__(self, node: Node) -> bool:
        return id(node) in self._members

    def output(self, *tensors):
        """Mark tensors (DSL Tensors or Nodes) as outputs of the graph; returns its argument(s)."""
        for t in tensors:
            node = getattr(t, "node", t)
            if node not in self:
                raise ValueError(f"output {node!r} is not a node of graph {self.name!r}")
            self.outputs.append(node)
        return tensors[0] if len(tensors) == 1 else tensors

    def update(self, param, new_value) -> None:
        """After each run, set parameter ``param`` to ``new_value`` (same shape and dtype), in place."""
        p, v = getattr(param, "node", param), getattr(new_value, "node", new_value)
        if p.op != "param" or p not in self or v not in self:
            raise ValueError(f"update: {p!r} must be a parameter of graph {self.name!r} and {v!r} one of its nodes")
        if (p.shape, p.dtype) != (v.shape, v.dtype):
            raise ValueError(f"update of {p.name!r}: new value is {v.type_str}, the parameter is {p.type_str}")
        if any(q is p for q, _ in self.updates):
            raise ValueError(f"parameter {p.name!r} already has an update")
        self.updates.append((p, v))

    # -- views ----------------------------------------------------------------------------------
    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "input"]

    @property
    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "param"]

    @property
    def constants(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "constant"]

    @property
    def trainable_params(self) -> list[Node]:
        """Parameters learned by gradient descent (not optimizer or normalization state)."""
        return [n for n in self.params if n.attrs.get("trainable", True)]

    def parameter_count(self) -> int:
        """Total number of scalar trainable parameters (weights and biases)."""
        return sum(p.size for p in self.trainable_params)

    def find(self, name: str) -> Node:
        """The input or parameter called ``name``."""
        for n in self.nodes:
            if n.name == name and n.op in ("input", "param"):
                return n
        raise KeyError(f"graph {self.name!r} has no input or parameter named {name!r}")

    def consumers(self) -> dict[int, list[Node]]:
        """id(node) -> the nodes that read it."""
        users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[id(i)].append(n)
        return users

    def ancestors(self, roots: Iterable[Node]) -> list[Node]:
        """The nodes ``roots`` depend on (themselves included), in topological order."""
        needed: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if id(n) not in needed:
                needed.add(id(n))
                stack.extend(n.inputs)
        return [n for n in self.nodes if id(n) in needed]

    # -- identity -------------------------------------------------------------------------------
    def structural_hash(self) -> str:
        """A hash of ops, attributes, shapes, dtypes, constant values and topology; not names.

        Two graphs built the same way (by a ``with`` block or by tracing) hash equal; it is the
        compile-cache key.
        """
        index = {id(n): k for k, n in enumerate(self.nodes)}
        h = hashlib.sha256()
        for n in self.nodes:
            parts = [n.op, repr(n.attrs), n.dtype.name, repr(n.shape), repr([index[id(i)] for i in n.inputs])]
            if n.op == "constant":
                parts.append(hashlib.sha256(n.value.tobytes()).hexdigest())
            h.update("|".join(parts).encode())
            h.update(b"\n")
        h.update(repr([index[id(o)] for o in self.outputs]).encode())
        h.update(repr([(index[id(p)], index[id(v)]) for p, v in self.updates]).encode())
        return h.hexdigest()

    def text(self, nodes: Sequence[Node] | None = None, provenance: bool = True) -> str:
        """The stable one-node-per-line text form (see :mod:`graphc.ir.printer`)."""
        from .printer import graph_text

        return graph_text(self, nodes, provenance=provenance)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self.nodes)} nodes, {len(self.outputs)} outputs>"

    def to_dot(self) -> str:
        """The graph in Graphviz DOT syntax."""
        from .dot import graph_dot

        return graph_dot(self)

    def save_dot(self, path: str, format: str = "svg", nodes: Sequence[Node] | None = None) -> str:
        """Write ``path`` (.dot) and, when Graphviz ``dot`` is installed, render ``format`` beside it;
        ``nodes``: draw only those (numbered as in the whole graph)."""
        from .dot import save_dot

        return save_dot(self, path, format, nodes)
