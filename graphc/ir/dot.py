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


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def graph_dot(graph) -> str:
    number = {id(n): k for k, n in enumerate(graph.nodes)}
    outputs = {id(o) for o in graph.outputs}
    lines = [f'digraph "{_escape(graph.name)}" {{', "  rankdir=TB;", '  node [shape=ellipse, fontname="monospace", fontsize=10];']
    for n in graph.nodes:
        attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items())
        head = f"%{number[id(n)]} {n.op}" + (f"[{attrs}]" if attrs else "")
        label = "\\n".join(_escape(part) for part in (head, n.type_str, comment_text(n, number)))
        style = _STYLE.get(n.op, "")
        if id(n) in outputs:
            style = (style + ", " if style else "") + "peripheries=2"
        lines.append(f'  n{number[id(n)]} [label="{label}"' + (f", {style}" if style else "") + "];")
    for n in graph.nodes:
        for k, i in enumerate(n.inputs):
            lines.append(f"  n{number[id(i)]} -> n{number[id(n)]}" + (f' [label="{k}"]' if len(n.inputs) > 1 else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_dot(graph, path: str, format: str = "svg") -> str:
    """Write the DOT file; render it to ``format`` when Graphviz is installed. Returns the file to open."""
    if not path.endswith(".dot"):
        path = path + ".dot"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(graph_dot(graph))
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
