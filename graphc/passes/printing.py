"""Text that says where the pieces of rewritten nodes came from (the dumps and golden files use it)."""
from __future__ import annotations

from ..ir import Graph, Node


def _origin(node: Node) -> str:
    """``relu@mlp.py:31`` for a user's node; ``mul@mlp.py:31[relu-vjp]`` for a backward node."""
    loc = node.provenance.forward.loc if node.provenance is not None and node.provenance.forward.loc else node.loc
    where = f"@{loc.short}" if loc is not None else ""
    rule = f"[{node.provenance.rule}]" if node.provenance is not None else ""
    return f"{node.op}{where}{rule}"


def fused_provenance(graph: Graph) -> str:
    """One line per node that absorbed others: the absorbed ops, each with its source line
    (and, for backward nodes, the VJP rule that built it).

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.exp(x) * 2.0)
    >>> print(fused_provenance(graphc.optimize(g).graph))  # doctest: +ELLIPSIS
    %1 fused <- exp@...:3, mul@...:3
    """
    number = {id(n): k for k, n in enumerate(graph.nodes)}
    lines = []
    for n in graph.nodes:
        if n.absorbed:
            lines.append(f"%{number[id(n)]} {n.op} <- " + ", ".join(_origin(a) for a in n.absorbed))
    return "\n".join(lines)


def annotated_text(graph: Graph) -> str:
    """The graph's text form followed by :func:`fused_provenance` (when something was absorbed)."""
    text = graph.text()
    origins = fused_provenance(graph)
    if origins:
        text += "# where the fused nodes' pieces came from:\n" + "\n".join(
            "# " + line for line in origins.splitlines()) + "\n"
    return text
