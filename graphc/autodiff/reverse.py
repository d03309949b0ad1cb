"""Reverse mode: append the gradient of a scalar to the graph that computes it.

The gradient is built from ordinary graph nodes by each op's VJP rule (``OpDef.vjp``), so
it can be printed, drawn, optimized, compiled and differentiated again. Every backward node
records the forward node and the rule that produced it (``Node.provenance``); a finished
gradient also records which input or parameter it is the gradient of.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..dsl import Tensor, apply, constant, provenance
from ..ir import Graph, GraphcError, Node, Provenance
from ..ops import registry


def _as_tensor_list(wrt: Any, what: str) -> tuple[list[Tensor], bool]:
    """``wrt`` as a list of Tensors, and whether it was a single Tensor."""
    if isinstance(wrt, Tensor):
        return [wrt], True
    if isinstance(wrt, (list, tuple)) and all(isinstance(t, Tensor) for t in wrt):
        return list(wrt), False
    raise TypeError(f"{what} must be a graphc Tensor or a list of Tensors, got {wrt!r}")


def _check_same_graph(graph: Graph, tensors: Sequence[Tensor], what: str) -> None:
    for t in tensors:
        if t.graph is not graph or t.node not in graph:
            raise GraphcError(f"grad: {what} {t!r} is not a node of graph {graph.name!r}, the loss's graph")


def grad(loss: Tensor, wrt: Tensor | Sequence[Tensor], cotangent: Any = None) -> Any:
    """Gradient nodes of scalar ``loss`` with respect to each tensor of ``wrt``.

    The nodes are appended to the loss's graph; nothing is computed. A ``wrt`` the loss does
    not depend on gets a zero gradient. For a non-scalar ``loss``, pass ``cotangent`` (a
    Tensor or array shaped like it): the result is then the vector-Jacobian product.
    Returns a list (or one Tensor when ``wrt`` is one Tensor).

    >>> import graphc, numpy as np
    >>> with graphc.Graph("square") as g:
    ...     w = graphc.param("w", np.array([1.0, -2.0, 3.0]))
    ...     loss = graphc.sum(w * w)
    ...     (dw,) = graphc.grad(loss, [w])
    >>> graphc.evaluate(dw)
    array([ 2., -4.,  6.])
    """
    if not isinstance(loss, Tensor):
        raise TypeError(f"grad: the loss must be a graphc Tensor, got {loss!r}")
    wrt_list, single = _as_tensor_list(wrt, "grad: wrt")
    graph = loss.graph
    _check_same_graph(graph, wrt_list, "wrt")
    if not loss.dtype.is_float:
        raise GraphcError(f"grad: the loss must be a float tensor, got {loss.node.type_str} "
                          f"({loss.op} at {loss.node.loc})")
    for t in wrt_list:
        if not t.dtype.is_float:
            raise GraphcError(f"grad: cannot differentiate with respect to {t.node.type_str} {t.name or t.op!r}: "
                              f"only float tensors have gradients")
    first_new = len(graph.nodes)
    seed = _seed(loss, cotangent)
    cotangents = backward(loss.node, seed, [t.node for t in wrt_list])
    results = []
    for t in wrt_list:
        g = cotangents.get(id(t.node))
        if g is None:
            with provenance(t.node, "zero-gradient"):
                g = apply("broadcast_to", [constant(np.zeros((), t.dtype.np), graph=graph)], {"shape": t.shape}) \
                    if t.shape else constant(np.zeros((), t.dtype.np), graph=graph)
        _label(g.node, t.node)
        results.append(g)
    # VJP rules build a gradient for every float operand, constants included (the 2 of x ** 2);
    # nothing can refer to those fresh nodes yet, so they are dropped.
    graph.discard_unused_since(first_new, [r.node for r in results])
    return results[0] if single else results


def _seed(loss: Tensor, cotangent: Any) -> Tensor:
    """dL/dL: a constant 1 for a scalar loss, or the given cotangent."""
    graph = loss.graph
    with provenance(loss.node, "grad-seed"):
        if cotangent is None:
            if loss.shape != ():
                raise GraphcError(
                    f"grad: the loss must be a scalar, got {loss.node.type_str} from {loss.op} at {loss.node.loc}; "
                    f"reduce it (graphc.sum/mean) or pass cotangent= shaped like it")
            return constant(np.ones((), loss.dtype.np), graph=graph)
        if isinstance(cotangent, Tensor):
            _check_same_graph(graph, [cotangent], "cotangent")
            ct = cotangent
        else:
            ct = constant(np.asarray(cotangent, dtype=loss.dtype.np), graph=graph)
    if ct.shape != loss.shape:
        raise GraphcError(f"grad: the cotangent {ct.node.type_str} must have the loss's shape {loss.node.type_str}")
    return ct


def _on_paths(nodes: Sequence[Node], sources: set[int]) -> set[int]:
    """ids of the nodes (among ``nodes``, in topological order) that depend on a source."""
    reached = set()
    for n in nodes:
        if id(n) in sources or any(id(i) in reached for i in n.inputs):
            reached.add(id(n))
    return reached


def backward(root: Node, seed: Tensor, wrt: Sequence[Node]) -> dict[int, Tensor]:
    """Run the VJP rules from ``root`` (with cotangent ``seed``) back to ``wrt``.

    Returns id(node) -> cotangent Tensor for each node of ``wrt`` that ``root`` depends on.
    Only nodes on a path from some ``wrt`` to ``root`` are visited.
    """
    graph = seed.graph
    ancestors = graph.ancestors([root])
    relevant = _on_paths(ancestors, {id(n) for n in wrt})
    wanted = {id(n) for n in wrt}
    cotangent: dict[int, Tensor] = {id(root): seed}
    for node in reversed(ancestors):
        g = cotangent.get(id(node))
        if g is None or id(node) not in relevant or not node.inputs:
            continue
        if id(node) not in wanted:
            # Interior nodes' cotangents are no longer needed once their rule has run.
            del cotangent[id(node)]
        opdef = registry.get(node.op)
        if opdef.vjp is None:
            raise GraphcError(f"grad: op {node.op!r} has no derivative rule (vjp); it is used by "
                              f"%{node.id} {node.type_str}" + (f" at {node.loc}" if node.loc else ""))
        inputs = [Tensor(i, graph) for i in node.inputs]
        with provenance(node, f"{node.op}-vjp"):
            input_grads = opdef.vjp(node, g, inputs)
        if len(input_grads) != len(inputs):
            raise GraphcError(f"grad: the vjp rule of {node.op!r} returned {len(input_grads)} gradients "
                              f"for {len(inputs)} inputs")
        for x, gx in zip(node.inputs, input_grads):
            if gx is None or id(x) not in relevant or not x.dtype.is_float:
                continue
            if gx.shape != x.shape:
                raise GraphcError(f"grad: the vjp rule of {node.op!r} returned a gradient {gx.node.type_str} "
                                  f"for an input {x.type_str}" + (f" (at {node.loc})" if node.loc else ""))
            if gx.dtype != x.dtype:
                from ..ops.elementwise import cast
                with provenance(node, f"{node.op}-vjp"):
                    gx = cast(gx, x.dtype)
            previous = cotangent.get(id(x))
            if previous is None:
                cotangent[id(x)] = gx
            else:
                # A value used several times: its cotangent is the sum over its uses.
                with provenance(x, "sum-over-uses"):
                    cotangent[id(x)] = previous + gx
    return {k: v for k, v in cotangent.items() if k in wanted}


def _label(node: Node, wrt: Node) -> None:
    """Record on a finished gradient node which tensor it is the gradient of.

    Only backward nodes are labelled, and a node that already is another tensor's gradient
    (x + y: both get the same cotangent) keeps its first label.
    """
    p = node.provenance
    if p is None or node is wrt or (p.wrt is not None and p.wrt is not wrt):
        return
    node.provenance = Provenance(p.forward, p.rule, wrt=wrt)


def hvp(loss: Tensor, wrt: Tensor | Sequence[Tensor], v: Any) -> Any:
    """Hessian-vector product: the gradient of sum_i <grad_i(loss), v_i>, as graph nodes.

    ``v`` gives one Tensor (or array) per tensor of ``wrt``, shaped like it.

    >>> import graphc, numpy as np
    >>> with graphc.Graph("cubic") as g:
    ...     w = graphc.param("w", np.array([1.0, 2.0]))
    ...     loss = graphc.sum(w * w * w)                       # Hessian diag(6 w)
    ...     hv = graphc.hvp(loss, w, np.array([1.0, 1.0]))
    >>> graphc.evaluate(hv)
    array([ 6., 12.])
    """
    from ..ops.reduce import sum as reduce_sum

    wrt_list, single = _as_tensor_list(wrt, "hvp: wrt")
    vs = [v] if single else list(v)
    if len(vs) != len(wrt_list):
        raise GraphcError(f"hvp: got {len(vs)} vectors for {len(wrt_list)} tensors")
    grads = grad(loss, wrt_list)
    total = None
    with provenance(loss.node, "hvp"):
        for w, g, vi in zip(wrt_list, grads, vs):
            if not isinstance(vi, Tensor):
                vi = constant(np.asarray(vi, dtype=w.dtype.np), graph=loss.graph)
            if vi.shape != w.shape:
                raise GraphcError(f"hvp: the vector for {w.name or w.op!r} is {vi.node.type_str}, "
                                  f"it must be shaped like {w.node.type_str}")
            term = reduce_sum(g * vi)
            total = term if total is None else total + term
    result = grad(total, wrt_list)
    return result[0] if single else result


def gradient_nodes(gradient: Tensor) -> list[Node]:
    """The backward nodes (those with provenance) that ``gradient`` depends on, in graph order."""
    if not isinstance(gradient, Tensor):
        raise TypeError(f"gradient_nodes needs a Tensor, got {gradient!r}")
    return [n for n in gradient.graph.ancestors([gradient.node]) if n.provenance is not None]


def gradient_text(gradient: Tensor, forward: bool = False) -> str:
    """The text of the backward nodes a gradient depends on, each with its provenance.

    Nodes keep their numbers in the whole graph, so ``%12`` in an argument refers to the same
    forward node as in ``print(graph)``. With ``forward=True`` the forward nodes it reads are
    listed too.

    >>> import graphc, numpy as np
    >>> with graphc.Graph("tiny") as g:
    ...     w = graphc.param("w", np.array([1.0, 2.0]))
    ...     dw = graphc.grad(graphc.sum(graphc.exp(w)), w)
    >>> print(graphc.autodiff.gradient_text(dw))  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    graph tiny  # 7 nodes, 2 parameters
    %3:f64[] = constant 1.0                         # via grad-seed of %2 (...)
    %4:f64[1] = reshape[shape=(1,)] %3              # via sum-vjp of %2 (...)
    %5:f64[2] = broadcast_to[shape=(2,)] %4         # via sum-vjp of %2 (...)
    %6:f64[2] = mul %5, %1                          # dL/dw via exp-vjp of %1 (...)
    """
    if not isinstance(gradient, Tensor):
        raise TypeError(f"gradient_text needs a Tensor, got {gradient!r}")
    graph = gradient.graph
    shown = graph.ancestors([gradient.node]) if forward else gradient_nodes(gradient)
    return graph.text(nodes=shown)
