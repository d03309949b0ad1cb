"""Graphviz DOT export. Rendering needs the ``dot`` program; without it the .dot file is still written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .printer import comment_text, format_attr

_STYLE = {
    "input": 'shape=box, style=filled, fillcolor="#dbeafe"',
    "param": 'shape=box, style=filled, fillcolor="#fef3c7"',
    "constant": 'shape=box, style=filled, fillcolor="#f3f4f6"',
}

#: The fill of each role but "forward" (see :func:`node_roles`); leaves keep their box shape.
_ROLE_FILL = {"backward": "#fecaca", "update": "#bbf7d0"}
_UPDATE_EDGE = 'style=dashed, color="#15803d", fontcolor="#15803d", label="update", constraint=false'
_LEGEND = "forward: white (inputs blue, parameters yellow);  backward (gradient): red;  update (optimizer): green;  dashed: parameter <- new value"

def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


#: A node's part in a training-step graph.
ROLES = ("forward", "backward", "update")


def node_roles(graph) -> dict[int, str]:
    """Each node's role by ``id``: "backward" for a gradient node (it has provenance), "update" for a node
    only the parameter updates read (the optimizer's arithmetic and state, the learning rate), "forward"
    for every other node."""
    roles = {id(n): "forward" for n in graph.nodes}
    read_by_outputs = {id(n) for n in graph.ancestors(graph.outputs)}
    for n in graph.ancestors([value for _, value in graph.updates]):
        if id(n) not in read_by_outputs:
            roles[id(n)] = "update"
    for n in graph.nodes:
        if n.provenance is not None:
            roles[id(n)] = "backward"
    return roles


def _style(node, role: str, is_output: bool) -> str:
    style = _STYLE.get(node.op, "")
    if role in _ROLE_FILL:
        shape = "shape=box, " if node.op in _STYLE else ""
        style = f'{shape}style=filled, fillcolor="{_ROLE_FILL[role]}"'
    if is_output:
        style = (style + ", " if style else "") + "peripheries=2"
    return style


def graph_dot(graph, nodes=None) -> str:
    """The graph (or only ``nodes`` of it, numbered as in the whole graph) in Graphviz DOT. Gradient nodes
    are red and the optimizer's nodes green (:func:`node_roles`); each parameter update is a dashed
    "update" edge from the new value to the parameter, and such a graph carries a legend."""
    number = {id(n): k for k, n in enumerate(graph.nodes)}
    shown = list(graph.nodes if nodes is None else nodes)
    drawn = {id(n) for n in shown}
    outputs = {id(o) for o in graph.outputs}
    roles = node_roles(graph)
    lines = [f'digraph "{_escape(graph.name)}" {{', "  rankdir=TB;", '  node [shape=ellipse, fontname="monospace", fontsize=10];']
    if any(roles[id(n)] != "forward" for n in shown) or graph.updates:
        lines.append(f'  label="{_LEGEND}";')
    for n in shown:
        attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items())
        head = f"%{number[id(n)]} {n.op}" + (f"[{attrs}]" if attrs else "")
        label = "\\n".join(_escape(part) for part in (head, n.type_str, comment_text(n, number)))
        style = _style(n, roles[id(n)], id(n) in outputs)
        lines.append(f'  n{number[id(n)]} [label="{label}"' + (f", {style}" if style else "") + "];")
    for n in shown:
        for k, i in enumerate(n.inputs):
            if id(i) in drawn:
                lines.append(f"  n{number[id(i)]} -> n{number[id(n)]}" + (f' [label="{k}"]' if len(n.inputs) > 1 else "") + ";")
    for param, value in graph.updates:
        if id(param) in drawn and id(value) in drawn:
            lines.append(f"  n{number[id(value)]} -> n{number[id(param)]} [{_UPDATE_EDGE}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_dot(graph, path: str, format: str = "svg", nodes=None) -> str:
    """Write the DOT file (of ``nodes`` only, when given); render it to ``format`` when Graphviz is
    installed. Returns the file to open."""
    if not path.endswith(".dot"):
        path = path + ".dot"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(graph_dot(graph, nodes))
    os.replace(tmp, path)
    dot = shutil.which("dot")
    if dot is None:
        print(
            f"graphc: wrote {path}; Graphviz 'dot' is not installed, so it was not rendered.\n"
            f"  Install Graphviz (e.g. 'apt-get install graphviz') and run: dot -T{format} {path} -o {path[:-4]}.{format}",
            file=sys.stderr,
        )
        return path
    rendered = f"{path[:-4]}.{format}"
    subprocess.run([dot, f"-T{format}", path, "-o", rendered], check=True)
    return rendered
