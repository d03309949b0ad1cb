"""check_grad: compare symbolic gradients with central finite differences, in float64.

"Check the gradients using finite differences" (the course's tricks for gradient descent).
The loss and the gradients are evaluated with NumPy (:mod:`graphc.ops.interpret`) on a float64 copy
of the graph, so float32 networks are checked without float32 rounding noise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..dsl import Tensor
from ..ir import Attrs, Graph, GraphcError, Node, float64
from ..ir.rewrite import rebuild
from ..ops import interpret, registry


@dataclass
class Entry:
    """One checked entry of one gradient."""

    index: tuple[int, ...]
    symbolic: float
    numeric: float
    rel_error: float


@dataclass
class TensorCheck:
    """The result for one tensor of ``wrt``: its largest relative error and its worst entries."""

    name: str
    shape: tuple[int, ...]
    checked: int
    max_rel_error: float
    worst: list[Entry] = field(default_factory=list)


@dataclass
class GradCheck:
    """What :func:`check_grad` found; true when every relative error is below ``rtol``."""

    ok: bool
    rtol: float
    max_rel_error: float
    tensors: list[TensorCheck]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        lines = [f"gradient check {verdict}: max relative error {self.max_rel_error:.3g} (tolerance {self.rtol:g})"]
        for t in self.tensors:
            lines.append(f"  {t.name} {list(t.shape)}: {t.checked} entries, max relative error {t.max_rel_error:.3g}")
            for e in t.worst:
                lines.append(f"    [{','.join(map(str, e.index))}] symbolic {e.symbolic:.10g}  "
                             f"numeric {e.numeric:.10g}  rel. error {e.rel_error:.3g}")
        return "\n".join(lines)

    __repr__ = __str__


def _float64_attrs(attrs: Attrs) -> Attrs:
    items = dict(attrs)
    if items.get("dtype") in ("float32", "f32"):
        items["dtype"] = "float64"
    return Attrs(items)


def float64_copy(graph: Graph, roots: Sequence[Node]) -> tuple[Graph, dict[int, Node]]:
    """A copy of what ``roots`` need, with every float32 tensor (and float32 dtype attribute) as float64."""
    def replace(old: Node, inputs: tuple[Node, ...]) -> Node:
        fresh = next(_node_ids())
        if not old.inputs:
            if not old.dtype.is_float:
                return dataclasses.replace(old, id=fresh)
            value = None if old.value is None else old.value.astype(np.float64)
            if value is not None:
                value.setflags(write=False)
            return dataclasses.replace(old, dtype=float64, value=value, id=fresh)
        attrs = _float64_attrs(old.attrs)
        shape, dtype = registry.get(old.op).shape_rule(inputs, attrs)
        return dataclasses.replace(old, inputs=inputs, attrs=attrs, shape=tuple(shape), dtype=dtype, id=fresh)

    return rebuild(graph, graph.ancestors(roots), [], [], name=f"{graph.name}_f64", replace=replace)


def _copies(graph: Graph, mapping: dict[int, Node], values: Mapping[Any, Any] | None) -> list[tuple[Node, Any]]:
    """(copied node, value) for each of ``values`` (keyed by name or tensor) whose node was copied."""
    nodes = ((interpret.key_node(graph, k), v) for k, v in (values or {}).items())
    return [(mapping[id(node)], v) for node, v in nodes if id(node) in mapping]


def _node_ids():
    from ..ir.node import _ids
    return _ids


def check_grad(loss: Tensor, wrt: Sequence[Tensor], feeds: Mapping[Any, Any] | None = None,
               params: Mapping[Any, Any] | None = None, *, grads: Sequence[Tensor] | None = None,
               eps: float = 1e-4, order: int = 4, rtol: float = 1e-6, atol: float = 1e-4,
               max_entries: int | None = None, seed: int = 0, worst: int = 3) -> GradCheck:
    """Check gradients of scalar ``loss`` against central finite differences, in float64.

    ``wrt`` are inputs or parameters. The numeric derivative is the central difference
    (f(x+eps) - f(x-eps)) / 2eps, with ``order=4`` (the default) refined by Richardson
    extrapolation with steps 2eps (error O(eps^4): keep inputs 2eps away from kinks such as
    relu at 0). The symbolic gradients are those of
    :func:`graphc.grad` unless ``grads`` gives other tensors of the same graph to check (a
    hand-written gradient, say). Each entry's relative error is
    ``|symbolic - numeric| / max(|symbolic|, |numeric|, atol)`` (so entries below ``atol`` are
    compared absolutely); the check passes when every one is below ``rtol``.
    ``max_entries`` checks that many randomly chosen entries per tensor instead of all;
    ``worst`` entries per tensor are kept for the report.

    >>> import graphc, numpy as np
    >>> with graphc.Graph("check") as g:
    ...     w = graphc.param("w", np.array([0.5, -1.5]))
    ...     loss = graphc.sum(graphc.tanh(w) ** 2.0)
    >>> result = graphc.check_grad(loss, [w])
    >>> result.ok, result.max_rel_error < 1e-7
    (True, True)
    """
    from .reverse import _as_tensor_list, grad

    wrt_list, _ = _as_tensor_list(wrt, "check_grad: wrt")
    if order not in (2, 4):
        raise ValueError(f"check_grad: order must be 2 or 4, got {order}")
    graph = loss.graph
    for t in wrt_list:
        if t.op not in ("input", "param"):
            raise GraphcError(f"check_grad: {t!r} is not an input or a parameter; finite differences perturb "
                              f"the values the graph is fed")
    if loss.shape != ():
        raise GraphcError(f"check_grad: the loss must be a scalar, got {loss.node.type_str}")
    if grads is not None:
        grads = list(grads)
        if len(grads) != len(wrt_list):
            raise GraphcError(f"check_grad: {len(grads)} gradients for {len(wrt_list)} tensors")
        for t, g in zip(wrt_list, grads):
            if g.shape != t.shape:
                raise GraphcError(f"check_grad: the gradient of {t.name or t.op!r} is {g.node.type_str}, "
                                  f"the tensor is {t.node.type_str}")
    # Work on a float64 copy: the user's graph gets no new nodes.
    copy, mapping = float64_copy(graph, [loss.node] + [t.node for t in wrt_list] +
                                 ([g.node for g in grads] if grads is not None else []))
    new = lambda t: mapping[id(t.node)]  # noqa: E731
    if grads is None:
        grad_nodes = [g.node for g in grad(Tensor(new(loss), copy), [Tensor(new(t), copy) for t in wrt_list])]
    else:
        grad_nodes = [new(g) for g in grads]
    # Feeds and parameter values the loss does not use are ignored, as graphc.evaluate ignores them
    # (unknown names are still refused); the float64 copy holds only what the loss and wrt need.
    fed = {id(node): np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
           for node, v in _copies(graph, mapping, feeds)}
    state = {id(node): np.asarray(v, np.float64) for node, v in _copies(graph, mapping, params)}
    for t in wrt_list:  # every perturbed tensor gets an explicit float64 value
        node = new(t)
        if node.op == "param" and id(node) not in state:
            state[id(node)] = np.asarray(node.value, np.float64)
        if node.op == "input" and id(node) not in fed:
            raise GraphcError(f"check_grad: input {t.name!r} was not fed")
    by_id = {id(n): n for n in copy.nodes}

    def run(roots: Sequence[Node], override: dict[int, np.ndarray]) -> list[np.ndarray]:
        feeds_now = {by_id[k]: override.get(k, v) for k, v in fed.items()}
        params_now = {by_id[k]: override.get(k, v) for k, v in state.items()}
        values = interpret.run_nodes(copy, roots, feeds_now, params_now)
        return [values[id(r)] for r in roots]

    symbolic = run(grad_nodes, {})
    rng = np.random.default_rng(seed)
    results = []
    for t, sym in zip(wrt_list, symbolic):
        node = new(t)
        base = (fed if node.op == "input" else state)[id(node)].astype(np.float64)
        indices = list(np.ndindex(*t.shape))
        if max_entries is not None and len(indices) > max_entries:
            indices = [indices[k] for k in sorted(rng.choice(len(indices), max_entries, replace=False))]
        entries = []
        for index in indices:
            def loss_at(step: float, base=base, index=index, node=node) -> float:
                x = base.copy()
                x[index] += step
                return float(run([new(loss)], {id(node): x})[0])
            numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
            if order == 4:  # Richardson: cancels the eps^2 error term of the two-point difference
                numeric = (4 * numeric - (loss_at(2 * eps) - loss_at(-2 * eps)) / (4 * eps)) / 3
            a = float(sym[index])
            rel = abs(a - numeric) / max(abs(a), abs(numeric), atol)
            if not np.isfinite(rel):
                rel = np.inf
            entries.append(Entry(tuple(int(i) for i in index), a, numeric, rel))
        entries.sort(key=lambda e: -e.rel_error)
        results.append(TensorCheck(t.name or t.op, t.shape, len(entries),
                                   entries[0].rel_error if entries else 0.0, entries[:worst]))
    max_rel = max((r.max_rel_error for r in results), default=0.0)
    return GradCheck(bool(max_rel < rtol), rtol, max_rel, results)
