"""The NumPy reference backend: evaluates any graph one node at a time.

It is the oracle every other backend and every pass is tested against, so it does the
obvious thing: each node's registered reference implementation, in topological order
(:mod:`graphc.ops.interpret`, which constant folding and ``check_grad`` use too).
"""
from __future__ import annotations

import numpy as np

from ...ir import Graph, Node
from ...ops.interpret import evaluate, run_nodes
from ..executable import Executable


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


__all__ = ["ReferenceExecutable", "build", "evaluate", "run_nodes"]
