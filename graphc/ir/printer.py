"""The stable text form of a graph, one node per line, like a jaxpr:

    %7:f32[128,512] = relu %6                        # mlp.py:12 dense_1
"""
from __future__ import annotations

from typing import Sequence

from .node import Node

COMMENT_COLUMN = 48


def format_attr(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        # (1,) keeps its comma: "(1)" would read as a plain number
        return "(" + ",".join(format_attr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _constant_text(node: Node) -> str:
    value = node.value
    if value is not None and value.size == 1:
        return " " + str(value.reshape(())[()])  # NumPy's shortest repr: 0.1, not 0.10000000149011612
    return ""


def node_text(node: Node, number: dict[int, int], provenance: bool = True) -> str:
    """One line: ``%k:type = op[attrs] %a, %b    # file:line name``."""
    attrs = ""
    if node.attrs:
        attrs = "[" + ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items()) + "]"
    args = ", ".join(f"%{number[id(i)]}" for i in node.inputs)
    rhs = f"{node.op}{attrs}" + (f" {args}" if args else "") + (_constant_text(node) if node.op == "constant" else "")
    code = f"%{number[id(node)]}:{node.type_str} = {rhs}"
    return code.ljust(COMMENT_COLUMN - 1) + " # " + comment_text(node, number, provenance)


def comment_text(node: Node, number: dict[int, int], provenance: bool = True) -> str:
    """The trailing comment: the user's line and name, or for a backward node what it came from."""
    p = node.provenance
    if provenance and p is not None:
        target = f"dL/d{p.wrt.name or '%' + str(number.get(id(p.wrt), '?'))} " if p.wrt is not None else ""
        fwd = number.get(id(p.forward), "?")
        loc = f" ({p.forward.loc.short})" if p.forward.loc else ""
        return f"{target}via {p.rule} of %{fwd}{loc}".rstrip()
    parts = [node.loc.short if node.loc else "-"]
    if node.name:
        parts.append(node.name)
    return " ".join(parts)


def graph_text(graph, nodes: Sequence[Node] | None = None, provenance: bool = True) -> str:
    """The whole graph (or the given subset of its nodes), numbered by position in the graph."""
    number = {id(n): k for k, n in enumerate(graph.nodes)}
    shown = graph.nodes if nodes is None else nodes
    n_params = graph.parameter_count()
    lines = [f"graph {graph.name}  # {len(graph.nodes)} nodes, {n_params} parameters"]
    lines += [node_text(n, number, provenance) for n in shown]
    if graph.outputs:
        lines.append("return " + ", ".join(f"%{number[id(o)]}" for o in graph.outputs))
    for p, v in graph.updates:
        lines.append(f"update %{number[id(p)]} <- %{number[id(v)]}".ljust(COMMENT_COLUMN - 1) + f" # {p.name or ''}".rstrip())
    return "\n".join(lines) + "\n"
