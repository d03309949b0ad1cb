"""``lower(graph) -> Program``: the layout, then every node's rule in topological order."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ...ir import Graph, GraphcError, Node
from ...ops import registry
from ...passes import plan_buffers
from . import (  # noqa: F401
    rules_collective,
    rules_conv,
    rules_elementwise,
    rules_linalg,
    rules_nn,
    rules_random,
    rules_reduce,
    rules_shape,
)
from .context import Lowering, rule_for
from .ir import Load, Program, Store, aligned, index_var, nest
from .layout import (
    accumulate_updates,
    batched_inputs,
    classify,
    input_args,
    place_outputs,
    place_sources,
    place_workspace,
)


def lower(graph: Graph, inputs: Sequence[Node] | None = None, options: dict[str, Any] | None = None, *,
          plan=None, choose_conv: Callable[..., str] | None = None) -> Program:
    """Lower ``graph`` to a :class:`Program`: its layout and its schedule of kernels.

    ``plan`` is the graph's buffer plan when the caller has one (``passes.plan_buffers``);
    ``choose_conv(node, geometry) -> "im2col" | "direct"`` is the target's choice of convolution.

    >>> import graphc
    >>> with graphc.Graph("double") as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.relu(x * 2.0))
    >>> [k.op for k in lower(g).kernels]
    ['fused[mul, relu]']
    """
    options = dict(options or {})
    inputs = _input_nodes(graph, graph.inputs if inputs is None else inputs)
    lw = Lowering(graph, inputs, options, choose_conv)
    lw.plan = plan if plan is not None else plan_buffers(graph)
    classify(lw)
    accumulate_updates(lw)
    state, state_bytes = place_sources(lw)
    place_workspace(lw)
    outputs, copies = place_outputs(lw)
    _check_input_labels(lw)
    for node in graph.nodes:
        kind = lw.kind[id(node)]
        if kind in ("input", "state", "tview", "alias"):
            continue
        lw.begin(node)
        if node.size or kind == "accumulate":
            rule_for(node.op)(lw, node)
    _copy_outputs(lw, copies)
    updates = _update_parameters(lw)
    options["conv_methods"] = tuple(options.get("conv_methods", ()))
    return Program(
        graph=graph, inputs=inputs, input_args=input_args(lw),
        buffers={lw.number[id(n)]: lw.buffer(n) for n in graph.nodes if lw.kind[id(n)] not in ("tview", "accumulate")},
        plan={lw.number[id(n)]: lw.kind[id(n)] for n in graph.nodes},
        state=state, state_bytes=state_bytes, workspace_bytes=aligned(lw.scratch_high),
        outputs=outputs, updates=updates, checks=lw.checks, kernels=lw.kernels, errors=lw.errors,
        batched=batched_inputs(inputs), options=options)


def _input_nodes(graph: Graph, inputs: Sequence) -> list[Node]:
    """``inputs`` as nodes of ``graph`` (a Tensor stands for its node); anything else is a GraphcError naming it."""
    nodes = [getattr(x, "node", x) for x in inputs]
    members = {id(n) for n in graph.nodes}
    for k, node in enumerate(nodes):
        if id(node) not in members:
            what = f"node %{node.id} {node.op} {node.name!r}" if isinstance(node, Node) else type(node).__name__
            raise GraphcError(f"lower: input {k} ({what}) is not a node of graph {graph.name!r}; pass the graph's "
                              f"input nodes (or their Tensors) in call order")
    return nodes


def _check_input_labels(lw: Lowering) -> None:
    """Labels that come straight from an input are range-checked once, before anything is computed;
    the rules then skip their own check (``lw.labels_checked``)."""
    for node in lw.graph.nodes:
        found = registry.get(node.op).label_operand(node)
        if found is None:
            continue
        operand, classes = found
        src = lw.root[id(node.inputs[operand])]
        if src.op != "input" or (id(src), classes) in lw.checked_labels:
            continue
        lw.checked_labels.add((id(src), classes))
        lw.current = node
        j, y = index_var("j"), lw.var("y")
        body = nest([src.size], ["j"], [lw.load(y, src, j), lw.label_check(node, y, j, classes, src)])
        lw.checks.append(lw.kernel(node, body, "label range", role="labels of"))


def _copy_outputs(lw: Lowering, copies) -> None:
    """Outputs not computed into their own array (inputs, parameters, views): copied before the updates."""
    for buf, o in copies:
        lw.current = o
        j, v = index_var("j"), lw.var("out")
        lw.emit(nest([o.size], ["j"], [lw.load(v, o, j), Store(buf, j, v, exact=True)]), rule="output copy",
                role="output: copy of")


def _update_parameters(lw: Lowering) -> list[tuple[int, int, str]]:
    """Copy updates ``p <- v`` not computed in place. All read the old values: a value that is itself an
    updated parameter is snapshot first."""
    updates: list[tuple[int, int, str]] = []
    targets = {id(p) for p, _ in lw.graph.updates}
    staged: list[tuple[Node, Node, Any]] = []
    lw.scratch_top = lw.scratch_base
    for p, v in lw.graph.updates:
        mode = "inplace" if id(v) in lw.plan.inplace_updates else "copy"
        updates.append((lw.number[id(p)], lw.number[id(v)], mode))
        if mode == "inplace":
            continue
        lw.current = v
        source = lw.buffer(v)
        if id(lw.root[id(v)]) in targets:
            snap = lw.scratch(v.size, v.dtype)
            j, t = index_var("j"), lw.var("snap")
            lw.emit(nest([v.size], ["j"], [lw.load(t, v, j), Store(snap, j, t, exact=True)]), rule="snapshot",
                    role="snapshot of")
            source = snap
        staged.append((p, v, source))
    for p, v, source in staged:
        lw.current = v
        j, t = index_var("j"), lw.var("new")
        lw.emit(nest([p.size], ["j"], [Load(t, source, j), lw.store(p, j, t, exact=True)]), rule="update",
                role=f"update {p.name or lw.number[id(p)]} <-")
    return updates
