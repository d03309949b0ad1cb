"""Executable: a compiled graph you call with NumPy arrays. It owns the parameters' current values.

Every backend's executable shares this boundary: arguments are bound and validated here
(shape, dtype, contiguity) before any backend code runs, and parameter updates (a training
step's optimizer) are applied to ``params`` in place.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..ir import Graph, InputError, Node
from ..ops.interpret import validate


def param_key(node: Node, index: int) -> str:
    return node.name or f"param{index}"


class Executable:
    """Call with the inputs positionally (in ``input_names`` order) or by name.

    >>> import graphc, numpy as np
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (2,))
    ...     y = g.output(x * 2.0)
    >>> f = graphc.compile(y)
    >>> f(np.array([1.0, 2.0], np.float32))
    array([2., 4.], dtype=float32)
    """

    backend = "abstract"

    def __init__(self, graph: Graph, inputs: list[Node]):
        self.graph = graph
        self.inputs = inputs
        self.outputs = list(graph.outputs)
        keys = [param_key(p, k) for k, p in enumerate(graph.params)]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise InputError(f"graph {graph.name!r} has several parameters named {dup}; names must be unique")
        #: Current parameter values, by name; updates are written into these arrays in place.
        self.params: dict[str, np.ndarray] = {
            k: np.array(p.value, dtype=p.dtype.np, order="C") for k, p in zip(keys, graph.params)}
        self.stats: dict[str, Any] = {}
        #: The graph as the user built it, before optimization (graphc.compile sets it when the passes ran):
        #: check_finite replays a failing call on it, whose nodes carry the user's lines and provenance.
        self.source_graph: Graph = graph

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.inputs]

    def bind(self, args: tuple, kwargs: Mapping[str, Any]) -> list[np.ndarray]:
        """Match arguments to inputs and validate them; returns C-contiguous arrays of the right dtype."""
        if len(args) > len(self.inputs):
            raise InputError(f"{self.graph.name}: expected {len(self.inputs)} inputs {self.input_names}, got {len(args)}")
        values: dict[str, Any] = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise InputError(f"{self.graph.name}: unknown input {k!r}; inputs are {self.input_names}")
            if k in values:
                raise InputError(f"{self.graph.name}: input {k!r} given twice")
            values[k] = v
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise InputError(f"{self.graph.name}: missing input(s) {missing}")
        return [validate(node, values[node.name]) for node in self.inputs]

    def __call__(self, *args: Any, **kwargs: Any):
        arrays = self.bind(args, kwargs)
        outs = self.run(arrays)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run on validated arrays; apply parameter updates in place; return the outputs."""
        raise NotImplementedError

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Overwrite parameter values (checked like inputs)."""
        by_key = dict(zip(self.params, self.graph.params))
        for k, v in values.items():
            if k not in by_key:
                raise InputError(f"{self.graph.name}: no parameter {k!r}; parameters are {list(self.params)}")
            self.params[k][...] = validate(by_key[k], v, "param")
