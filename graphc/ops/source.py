"""Sources: the values a graph starts from. They exist before the first kernel runs and compute nothing.

``input`` (a placeholder fed at each call), ``param`` (a named value the executable keeps, updated by the
graph's updates) and ``constant`` (a value baked into the graph) are built by :func:`graphc.input`,
:func:`graphc.param` and :func:`graphc.constant`, which declare their shape and dtype; their value is fed or
stored in the node, so their entries have no shape rule or reference to run (:mod:`graphc.ops.interpret`
reads sources before it asks an entry). Their entries say ``source=True``: a pass or a backend asks that.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Attrs, GraphcError, Node
from .registry import OpDef, no_gradient, register


def _declared(inputs: Sequence[Node], attrs: Attrs):
    raise GraphcError("a source's shape and dtype are declared when it is created (graphc.input, graphc.param, "
                      "graphc.constant), not computed from operands")


def _stored(args: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    raise GraphcError("a source's value is fed (input) or stored in its node (param, constant): "
                      "graphc.ops.interpret reads it there")


for _name, _doc in (("input", "a placeholder for a value fed at each call (graphc.input)"),
                    ("param", "a named value the executable keeps between calls, changed only by the graph's "
                              "updates (graphc.param)"),
                    ("constant", "a value baked into the graph (graphc.constant; Python scalars in expressions)")):
    register(OpDef(_name, "source", _doc, _declared, _stored, vjp=no_gradient, source=True))
