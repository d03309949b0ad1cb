"""Forward mode (jvp), built from the reverse-mode rules by transposing them twice.

For y = f(x), the VJP u -> J^T u is linear in the cotangent u, so the gradient of
<J^T u, v> with respect to u is J v. graphc builds J^T u with a placeholder u (a zeros
constant shaped like y: the result does not depend on its value) and differentiates again.
No op needs a separate JVP rule; the graph is about twice the size a dedicated forward-mode
rule would give, and the optimization passes remove the dead placeholder work.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..dsl import Tensor, constant, provenance
from ..ir import GraphcError
from .reverse import _as_tensor_list, backward, grad


def jvp(output: Tensor, wrt: Tensor | Sequence[Tensor], tangents: Any) -> Tensor:
    """Jacobian-vector product: the directional derivative of ``output`` along ``tangents``.

    ``tangents`` gives one Tensor (or array) per tensor of ``wrt``, shaped like it; the result
    is shaped like ``output``.

    >>> import graphc, numpy as np
    >>> with graphc.Graph("jvp") as g:
    ...     x = graphc.param("x", np.array([1.0, 2.0, 3.0]))
    ...     y = x * x                                   # J = diag(2x)
    ...     t = graphc.jvp(y, x, np.array([1.0, 0.0, -1.0]))
    >>> graphc.evaluate(t)
    array([ 2.,  0., -6.])
    """
    from ..ops.reduce import sum as reduce_sum

    if not isinstance(output, Tensor):
        raise TypeError(f"jvp: the output must be a graphc Tensor, got {output!r}")
    wrt_list, single = _as_tensor_list(wrt, "jvp: wrt")
    vs = [tangents] if single else list(tangents)
    if len(vs) != len(wrt_list):
        raise GraphcError(f"jvp: got {len(vs)} tangents for {len(wrt_list)} tensors")
    if not output.dtype.is_float:
        raise GraphcError(f"jvp: the output must be a float tensor, got {output.node.type_str}")
    graph = output.graph
    first_new = len(graph.nodes)
    with provenance(output.node, "jvp-placeholder"):
        u = constant(np.zeros(output.shape, output.dtype.np), graph=graph)
    vjps = grad(output, wrt_list, cotangent=u)
    total = None
    with provenance(output.node, "jvp"):
        for w, g, v in zip(wrt_list, vjps, vs):
            if not isinstance(v, Tensor):
                v = constant(np.asarray(v, dtype=w.dtype.np), graph=graph)
            if v.shape != w.shape:
                raise GraphcError(f"jvp: the tangent for {w.name or w.op!r} is {v.node.type_str}, "
                                  f"it must be shaped like {w.node.type_str}")
            term = reduce_sum(g * v)
            total = term if total is None else total + term
        seed = constant(np.ones((), total.dtype.np), graph=graph)
    result = backward(total.node, seed, [u.node]).get(id(u.node))
    if result is None:  # the output does not depend on wrt at all
        with provenance(output.node, "jvp"):
            result = constant(np.zeros(output.shape, output.dtype.np), graph=graph)
    graph.discard_unused_since(first_new, [result.node])
    return result
