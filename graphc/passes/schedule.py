"""Scheduling: the order the kernels of a graph run in (values never change, only the order)."""
from __future__ import annotations

from ..ir import Graph, Node
from ..ir.rewrite import rebuild
from ..ops import registry


def sink_update_products(graph: Graph) -> Graph:
    """Move each parameter's gradient product (a matmul read only by that parameter's update) to just
    after the last other reader of the parameter.

    Backpropagation makes a layer's weight gradient before the gradient of its input, which still
    reads the weight. Once every other reader has run, the backend can let the GEMM add the scaled
    product straight into the weight (BLAS's alpha and beta), so the gradient never gets a buffer
    of its own (see ``backends/numba_cpu/codegen._accumulate_updates``).

    >>> import numpy as np, graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (2, 3))
    ...     w = graphc.param("w", np.ones((3, 3)))
    ...     dw = graphc.transpose(x) @ x            # w's 'gradient', made first
    ...     y = g.output(graphc.sum(x @ w))          # ... then a reader of w
    ...     g.update(w, w - 0.1 * dw)
    >>> [(n.op, [i.op for i in n.inputs]) for n in graphc.optimize(g).graph.nodes][2:4]
    [('matmul', ['input', 'param']), ('matmul_epilogue', ['input', 'input'])]
    """
    order = list(graph.nodes)
    consumers = graph.consumers()
    for param, update in graph.updates:
        for product in update.inputs:
            if not registry.get(product.op).gemm_product or list(consumers[id(product)]) != [update]:
                continue
            readers = [r for r in _readers(param, consumers) if r is not update]
            pos = {id(n): k for k, n in enumerate(order)}
            last = max((pos[id(r)] for r in readers), default=-1)
            if pos[id(product)] < last < pos[id(update)]:
                order.remove(product)
                order.insert(last, product)  # `last` shifted down by one: this is just after it
    if order == list(graph.nodes):
        return graph
    return rebuild(graph, order, graph.outputs, graph.updates)[0]


def _may_be_read_by_its_readers(node: Node) -> bool:
    """Whether ``node``'s input may be read only when ``node``'s readers run: a view (reshape: the same
    memory), or a transpose, which a backend need not compute where it stands (a GEMM reads a transposed
    operand in place with BLAS's transpose flag). Either way the parameter is read by their readers."""
    return registry.is_view(node) or node.op == "transpose"


def _readers(param: Node, consumers) -> list[Node]:
    """Nodes that read ``param``'s storage, directly or through reshapes and transposes of it."""
    readers, views = [], [param]
    while views:
        for c in consumers[id(views.pop())]:
            (views if _may_be_read_by_its_readers(c) else readers).append(c)
    return readers
