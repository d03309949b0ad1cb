"""Non-finite values: where the first NaN or Inf came from.

Shared by ``compile(check_finite=True)`` (every backend) and ``fit``'s epoch check. When a call
leaves a non-finite output or parameter, the call is replayed on the reference backend from the
graph as the user built it (before optimization: its nodes carry the user's lines and, for backward
nodes, the forward node and rule that made them), starting from the state before the call. The
origin is the first node, in topological order, whose value is non-finite while every input of it
is finite, among the nodes whose non-finite values reach a non-finite output or update (a NaN that
``where`` masks is not reported).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..ir import Graph, GraphcError, InputError, Node
from ..ir.errors import NonFiniteError
from ..ir.printer import node_text
from ..ops import registry
from ..ops.elementwise import numpy_function
from ..ops.interpret import run_nodes
from .executable import param_key

# -- finding bad elements ---------------------------------------------------------------------------------


def first_bad(a: np.ndarray) -> tuple[tuple[int, ...], Any] | None:
    """(index, value) of the first NaN or Inf of a float array in C order; None when all are finite
    or the array is not float."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return None
    flat = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
    index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
    return index, a[index]


def bad_text(a: np.ndarray) -> str:
    """``first at index [2, 1]: nan`` for an array known to hold a NaN or Inf."""
    found = first_bad(a)
    if found is None:
        return "all finite"
    index, value = found
    return f"first at index {list(index)}: {value}"


def all_finite(arrays: Iterable[np.ndarray]) -> bool:
    """Whether every float array is free of NaN and Inf (non-float arrays always are)."""
    return all(a.dtype.kind not in "fc" or np.isfinite(a).all() for a in arrays)


# -- the check around one call of an executable --------------------------------------------------------------


def check_inputs(exe, arrays: Sequence[np.ndarray]) -> None:
    """Before a call with check_finite=True: inputs and parameters must be finite (InputError names which)."""
    for node, a in zip(exe.inputs, arrays):
        if first_bad(a) is not None:
            raise InputError(f"input {node.name!r}: contains NaN or Inf, {bad_text(a)} (compiled with check_finite=True)")
    for name, p in exe.params.items():
        if first_bad(p) is not None:
            raise InputError(f"parameter {name!r}: contains NaN or Inf, {bad_text(p)} (compiled with check_finite=True)")


def snapshot(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of the parameter values (what a failed call restores)."""
    return {k: np.array(v, copy=True) for k, v in params.items()}


def restore(params: Mapping[str, np.ndarray], saved: Mapping[str, np.ndarray]) -> None:
    """Write ``saved`` (a :func:`snapshot`) back into the parameter arrays, in place."""
    for k, v in saved.items():
        params[k][...] = v


def minibatches(perm: np.ndarray, steps: int, batch_size: int, last_batch: str) -> list[np.ndarray]:
    """The row indices of each step of an epoch, in the order a native epoch (``run_epoch``) visits them:
    with "wrap" the last batch is filled from the start of the permutation, with "partial" it is shorter
    (the re-run of a non-finite epoch, one step at a time, must visit the same rows)."""
    order = np.resize(perm, steps * batch_size) if last_batch == "wrap" else perm
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def rows_text(rows: np.ndarray) -> str:
    """``[37, 38, 17, ...]``: the first rows of a minibatch, for messages."""
    shown = ", ".join(str(int(i)) for i in rows[:8])
    return f"[{shown}{', ...' if len(rows) > 8 else ''}]"


def check_outputs(exe, arrays: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  before: Mapping[str, np.ndarray], label: Callable[[Node], str] = lambda n: n.op) -> None:
    """After a call with check_finite=True: when an output or an updated parameter is not finite, put the
    parameters back to ``before`` and raise a NonFiniteError naming the node the NaN or Inf came from.
    ``label`` names an output node of the executable's graph (a backend shows what a fused node stands for)."""
    problem = nonfinite_result(exe, outputs, exe.params, label)
    if problem is None:
        return
    restore(exe.params, before)
    origin = find_origin(exe.source_graph, feeds_by_name(exe.inputs, arrays), before)
    note = "The parameters are left at their values before this call." if before else ""
    raise nonfinite_error(f"{exe.graph.name}: {problem} (compiled with check_finite=True)", origin, note)


def nonfinite_result(exe, outputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray],
                     label: Callable[[Node], str] = lambda n: n.op) -> str | None:
    """What went non-finite in a call's results (its outputs, then its parameters), or None."""
    for k, (o, node) in enumerate(zip(outputs, exe.outputs)):
        if first_bad(o) is not None:
            where = f" at {node.loc}" if node.loc else ""
            return f"output {k} (%{exe.graph.nodes.index(node)} {label(node)}{where}) is not finite: {bad_text(o)}"
    for name, p in params.items():
        if first_bad(p) is not None:
            return f"parameter {name!r} is not finite after the call: {bad_text(p)}"
    return None


def feeds_by_name(inputs: Sequence[Node], arrays: Sequence[Any]) -> dict[str, Any]:
    return {n.name: a for n, a in zip(inputs, arrays)}


# -- replaying on the reference backend ----------------------------------------------------------------------


@dataclass
class Origin:
    """The first node whose value went non-finite from finite inputs, in the replayed graph."""

    graph: Graph
    node: Node
    index: tuple[int, ...]
    value: Any
    #: The node's inputs at ``index`` (scalars), for elementwise nodes; empty otherwise.
    operands: tuple[Any, ...] = ()


def replay(graph: Graph, feeds: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> Origin | None:
    """Evaluate ``graph`` (outputs and updates) with NumPy, node by node, as the reference backend does,
    from ``feeds`` and ``params`` (by name); return where the first NaN or Inf that reaches a result came
    from, or None when the replay stays finite."""
    roots = list(graph.outputs) + [v for _, v in graph.updates]
    by_name = {n.name: n for n in graph.inputs}
    fed = {by_name[k]: v for k, v in feeds.items() if k in by_name}
    keys = {param_key(p, k): p for k, p in enumerate(graph.params)}
    overrides = {keys[k]: v for k, v in params.items() if k in keys}
    with np.errstate(all="ignore"):
        values = run_nodes(graph, roots, fed, overrides)
    bad = {k for k, v in values.items() if first_bad(v) is not None}
    reaching = _reaching_results(roots, bad)
    for node in graph.ancestors(roots):
        if id(node) in reaching and not any(id(i) in bad for i in node.inputs):
            index, value = first_bad(values[id(node)])
            return Origin(graph, node, index, value, _operands_at(node, values, index))
    return None


def find_origin(graph: Graph, feeds: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> Origin | str | None:
    """:func:`replay`, or why it could not run (a graphc error while replaying, e.g. an input the passes
    removed from the compiled graph and so was never fed): the text goes into the NonFiniteError."""
    try:
        return replay(graph, feeds, params)
    except GraphcError as err:
        return f"the replay on the reference backend failed: {err}"


def _reaching_results(roots: Sequence[Node], bad: set[int]) -> set[int]:
    """ids of the non-finite nodes from which a path of non-finite nodes reaches a non-finite root."""
    reached: set[int] = set()
    stack = [r for r in roots if id(r) in bad]
    while stack:
        node = stack.pop()
        if id(node) not in reached:
            reached.add(id(node))
            stack.extend(i for i in node.inputs if id(i) in bad)
    return reached


def _operands_at(node: Node, values: Mapping[int, np.ndarray], index: tuple[int, ...]) -> tuple[Any, ...]:
    """An elementwise node's scalar inputs at ``index`` (broadcasting applied); () for other ops."""
    if not registry.is_registered(node.op) or registry.get(node.op).expr is None:
        return ()
    return tuple(np.broadcast_to(values[id(i)], node.shape)[index] for i in node.inputs)


# -- the message --------------------------------------------------------------------------------------------------


def nonfinite_error(problem: str, origin: Origin | str | None, state_note: str, **fields: Any) -> NonFiniteError:
    """A NonFiniteError: ``problem`` (what went non-finite), where it came from (an Origin, or why the replay
    could not tell), and where the state is left."""
    if not isinstance(origin, Origin):
        where = "  " + (origin or "the replay on the reference backend stayed finite: the difference comes from "
                        "the compiled code (its optimized graph), not from the graph as built")
        return NonFiniteError(f"{problem}\n{where}" + _note(state_note), **fields)
    return NonFiniteError(f"{problem}\n{origin_text(origin)}" + _note(state_note), node=origin.node,
                          index=origin.index, value=origin.value, **fields)


def _note(text: str) -> str:
    return f"\n  {text}" if text else ""


def origin_text(origin: Origin) -> str:
    """Lines naming the origin node, its op, the value, the rule that made it and the user's line."""
    node, graph = origin.node, origin.graph
    number = {id(n): k for k, n in enumerate(graph.nodes)}
    lines = ["  first non-finite value, replayed on the reference backend from the graph as built:",
             "    " + node_text(node, number).rstrip()]
    value = f"{origin.value} at index {list(origin.index)}"
    if node.op == "input":
        lines.append(f"  input {node.name!r} itself holds {value}")
    elif node.op == "param":
        lines.append(f"  parameter {node.name!r} already held {value} when the replayed call started")
    elif node.op == "constant":
        lines.append(f"  the constant holds {value}")
    else:
        inputs = ", ".join(f"%{number[id(i)]}" for i in node.inputs)
        operands = f" ({_operand_text(node, origin.operands)})" if origin.operands else ""
        lines.append(f"  op {node.op} gave {value} from finite inputs {inputs}{operands}")
        lines += _expression_lines(node, origin.operands)
    p = node.provenance
    if p is not None:
        fwd = f"%{number[id(p.forward)]} {p.forward.op}" if id(p.forward) in number else p.forward.op
        vjp = ", the VJP (vector-Jacobian product)" if p.rule.endswith("-vjp") else ""
        lines.append(f"  rule: {p.rule}{vjp} of forward node {fwd}{_gradient_of(graph, node)}")
        loc = p.forward.loc
    else:
        loc = node.loc
    lines.append(f"  user's line: {loc}" if loc is not None else "  (no source line recorded)")
    return "\n".join(lines)


def _gradient_of(graph: Graph, node: Node) -> str:
    """``, in the gradient of 'w'``: the finished gradients (Node.provenance.wrt) that ``node`` feeds."""
    reached = {id(node)}
    targets: list[str] = []
    for n in graph.nodes:
        if id(n) in reached or any(id(i) in reached for i in n.inputs):
            reached.add(id(n))
            wrt = n.provenance.wrt if n.provenance is not None else None
            if wrt is not None and (wrt.name or wrt.op) not in targets:
                targets.append(wrt.name or wrt.op)
    return f", in the gradient of {', '.join(repr(t) for t in targets)}" if targets else ""


def _operand_text(node: Node, operands: tuple[Any, ...]) -> str:
    symbols = registry.get(node.op).symbols
    return ", ".join(f"{s}={v}" for s, v in zip(symbols, operands))


def _expression_lines(node: Node, operands: tuple[Any, ...]) -> list[str]:
    """For an elementwise op: its SymPy expression and the innermost part of it that went non-finite."""
    opdef = registry.get(node.op)
    if opdef.expr is None or not operands:
        return []
    if str(opdef.expr) == f"{node.op}({', '.join(map(str, opdef.symbols))})":
        return []  # log = log(x) says nothing
    derived = f" ({opdef.notes})" if opdef.notes.startswith("derivative of") else ""
    lines = [f"  {node.op} = {opdef.expr}{derived}"]
    culprit = _culprit(opdef, dict(node.attrs), operands)
    if culprit is not None and culprit[0] != opdef.expr:
        lines.append(f"  the non-finite part: {culprit[0]} = {culprit[1]}")
    return lines


def _culprit(opdef, attrs: dict, operands: tuple[Any, ...]):
    """(sub-expression, value): the innermost non-finite part of an elementwise op's expression at one element,
    descending from the whole expression into its first non-finite argument (a Piecewise into its chosen branch)."""
    import sympy as sp

    symbols = list(opdef.symbols) + [sp.Symbol(p, real=True) for p in opdef.params]
    values = list(operands) + [attrs[p] for p in opdef.params]

    def value(e):
        with np.errstate(all="ignore"):
            return np.asarray(numpy_function(symbols, e)(*values)).reshape(())[()]

    expr = opdef.expr
    try:
        if np.isfinite(value(expr)):
            return None
        while True:
            if isinstance(expr, sp.Piecewise):
                chosen = next((c.expr for c in expr.args if bool(value(c.cond))), None)
                if chosen is None:
                    return expr, value(expr)
                expr = chosen
                continue
            bad = [a for a in expr.args if a.free_symbols and not np.isfinite(value(a))]
            if not bad:
                return expr, value(expr)
            expr = bad[0]
    except (TypeError, ValueError, GraphcError):  # an expression NumPy cannot evaluate alone: say nothing
        return None
