"""The layout: where every value lives, decided before any kernel is built.

Storage classes (``Program.plan``): ``input``; ``state`` (parameters and constants, in the parameter
store); ``alias`` (a reshape: its source's memory); ``tview`` (a 2-D transpose read only by GEMMs,
which read its source with the transpose flag); ``inplace`` (an update computed into its parameter,
as the buffer plan decided); ``accumulate`` (a product that only feeds an SGD-like update: its GEMM
adds it straight into the parameter); ``out`` (a graph output, a fresh array); ``ws`` (a slot of the
buffer plan in the workspace).
"""
from __future__ import annotations

import sympy as sp

from ...ir import Node
from ...ops import registry
from ...ops.elementwise import fused_symbols
from ...ops.registry import is_source, is_view
from ..executable import param_key
from .context import Accumulation, Lowering, identifier
from .ir import Buffer, Slot, aligned


def classify(lw: Lowering) -> None:
    graph, plan = lw.graph, lw.plan
    consumers = graph.consumers()
    outputs = {id(o) for o in graph.outputs}
    for node in graph.nodes:
        if node.op == "input":
            lw.kind[id(node)] = "input"
        elif is_source(node):
            lw.kind[id(node)] = "state"
        elif is_view(node):
            lw.kind[id(node)] = "alias"
        elif transposed_operand(lw, node, consumers.get(id(node), []), outputs):
            lw.kind[id(node)] = "tview"
        elif id(node) in plan.inplace_updates:
            lw.kind[id(node)] = "inplace"
            lw.inplace_target[id(node)] = plan.inplace_updates[id(node)]
        elif id(node) in outputs:
            lw.kind[id(node)] = "out"
        else:
            lw.kind[id(node)] = "ws"
    for node in graph.nodes:
        r = node
        while lw.kind[id(r)] in ("alias", "tview"):
            r = r.inputs[0]
        lw.root[id(node)] = r


def transposed_operand(lw: Lowering, node: Node, readers: list[Node], outputs: set[int]) -> bool:
    """A 2-D transpose read only as a matmul/dense weight operand: BLAS reads its source transposed.
    The source must stay alive (in the buffer plan) until the last of those readers."""
    if node.op != "transpose" or node.attrs["perm"] != (1, 0) or id(node) in outputs or not readers:
        return False
    plan, pos = lw.plan, lw.number
    if id(node) in plan.inplace_updates:
        return False
    for r in readers:
        if r.dtype != node.dtype:  # a converted copy is needed anyway: materialize the transpose
            return False
        if r.op == "matmul" and r.inputs[0] is not r.inputs[1]:
            continue
        if r.op == "dense" and r.inputs[1] is node and r.inputs[0] is not node:
            continue
        return False
    src = plan.base(node.inputs[0])
    last_reader = max(pos[id(r)] for r in readers)
    if is_source(src):
        overwrites = [pos[id(v)] for v in lw.graph.nodes if plan.inplace_updates.get(id(v)) is src]
        return not overwrites or last_reader <= min(overwrites)
    if id(src) in plan.inplace_updates:
        return False
    return plan.lifetime.get(id(src), (0, -1))[1] >= last_reader


def accumulate_updates(lw: Lowering) -> None:
    """SGD-like updates ``p <- beta * p + alpha * (A @ B)`` of a 2-D product computed for nothing else,
    where alpha and beta are numbers or depend only on one-element operands (a learning-rate input,
    weight decay): the GEMM computes the update in place, so the gradient is never written out and
    read back. Safe when the update runs in place, nothing else reads p from the product's step on,
    p is not an operand of the product, and the scalars are computed before it."""
    graph, pos = lw.graph, lw.number
    consumers = graph.consumers()
    by_id = {id(n): n for n in graph.nodes}
    for v, p in list(lw.inplace_target.items()):
        node = by_id[v]
        if node.op != "fused" or node.dtype != p.dtype:
            continue
        symbols = fused_symbols(len(node.inputs))
        k_p = next((k for k, i in enumerate(node.inputs) if i is p), None)
        big = [k for k, i in enumerate(node.inputs) if i.size != 1]
        if k_p is None or len(big) != 2 or k_p not in big:
            continue
        k_g = big[1 - big.index(k_p)]
        g = node.inputs[k_g]
        if not registry.get(g.op).gemm_product or g.ndim != 2 or g.shape != p.shape or g.dtype != p.dtype:
            continue
        if g.op == "matmul_epilogue" and (len(g.inputs) != 2 or g.attrs["expr"] != fused_symbols(1)[0]):
            continue
        if lw.kind[id(g)] != "ws" or list(consumers[id(g)]) != [node]:
            continue
        if any(lw.root[id(o)] is p for o in g.inputs[:2]) or any(i.dtype != p.dtype for i in g.inputs[:2]):
            continue
        scalars = {symbols[k]: i for k, i in enumerate(node.inputs) if k not in (k_p, k_g)}
        if any(pos[id(i)] >= pos[id(g)] for i in scalars.values() if not is_source(i)):
            continue
        s_p, s_g = symbols[k_p], symbols[k_g]
        expr = sp.expand(node.attrs["expr"])
        alpha, beta = expr.coeff(s_g), expr.coeff(s_p)
        if {s_p, s_g} & (alpha.free_symbols | beta.free_symbols) or sp.expand(expr - beta * s_p - alpha * s_g) != 0:
            continue
        readers = [c for c in graph.nodes if any(lw.root[id(i)] is p for i in c.inputs) and c is not node]
        if any(pos[id(r)] >= pos[id(g)] for r in readers):
            continue
        used = alpha.free_symbols | beta.free_symbols
        lw.accumulate[id(g)] = Accumulation(p, alpha, beta, {s: i for s, i in scalars.items() if s in used}, node)
        lw.accumulated_updates[v] = g
        lw.kind[id(g)] = "accumulate"


def input_args(lw: Lowering) -> list[str]:
    """The step's argument names: ``in_<input name>``, made unique."""
    used: set[str] = {"state", "ws", "status"}
    names = []
    for node in lw.inputs:
        arg = "in_" + identifier(node.name, f"input{lw.number[id(node)]}")
        while arg in used:
            arg += "_"
        used.add(arg)
        names.append(arg)
    return names


def place_sources(lw: Lowering) -> tuple[dict[int, Slot], int]:
    """Inputs as argument buffers; parameters and constants packed into the parameter store."""
    state: dict[int, Slot] = {}
    top = 0
    keys = {id(p): param_key(p, k) for k, p in enumerate(lw.graph.params)}
    arg_of = {id(n): k for k, n in enumerate(lw.inputs)}
    for node in lw.graph.nodes:
        k = lw.number[id(node)]
        if node.op == "input":
            lw.buffers[id(node)] = Buffer(f"v{k}", "input", 0, node.size, node.dtype.name, node.shape,
                                          f"%{k} input {node.name} {node.type_str}", arg_of.get(id(node), -1))
        elif lw.kind[id(node)] == "state":
            nbytes = node.size * node.dtype.np.itemsize
            state[id(node)] = Slot(top, nbytes, node.dtype.name, node.shape)
            what = f"param {keys[id(node)]}" if node.op == "param" else "constant"
            name = f"P{k}" if node.op == "param" else f"C{k}"
            lw.buffers[id(node)] = Buffer(name, "state", top // node.dtype.np.itemsize, node.size, node.dtype.name,
                                          node.shape, f"%{k} {what} {node.type_str}")
            top += aligned(nbytes)
    return state, aligned(top)


def place_workspace(lw: Lowering) -> None:
    """Workspace offsets of the buffer plan's slots; per-kernel scratch goes after the last slot."""
    offsets = [0]
    for size in lw.plan.slot_bytes:
        offsets.append(offsets[-1] + aligned(size))
    lw.slot_offset = offsets[:-1]
    lw.scratch_base = lw.scratch_top = lw.scratch_high = offsets[-1]
    for k, node in enumerate(lw.graph.nodes):
        if lw.kind[id(node)] != "ws":
            continue
        slot = lw.plan.slot_of[id(node)]
        reused = lw.plan.in_place.get(id(node))
        note = f" (slot {slot}" + (f", over %{lw.number[id(reused)]})" if reused is not None else ")")
        lw.buffers[id(node)] = Buffer(f"V{k}", "workspace", lw.slot_offset[slot] // node.dtype.np.itemsize,
                                      node.size, node.dtype.name, node.shape,
                                      f"%{k} {node.op} {node.type_str}{note}")


def place_outputs(lw: Lowering) -> tuple[list[Buffer], list[tuple[Buffer, Node]]]:
    """Output buffers (fresh arrays); an output computed here is written straight into its array,
    the others (inputs, parameters, views, repeated outputs) are copied at the end."""
    outputs, copies = [], []
    seen: set[int] = set()
    for k, o in enumerate(lw.graph.outputs):
        direct = lw.kind[id(o)] == "out" and id(o) not in seen
        what = "" if direct else "a copy of "
        buf = Buffer(f"o{k}", "output", 0, o.size, o.dtype.name, o.shape,
                     f"output {k}: {what}%{lw.number[id(o)]} {o.op} {o.type_str}", k)
        outputs.append(buf)
        if direct:
            seen.add(id(o))
            lw.buffers[id(o)] = buf
        else:
            copies.append((buf, o))
    return outputs, copies


def batched_inputs(inputs: list[Node]) -> list[bool]:
    """Which inputs an epoch feeds by minibatch: those whose leading axis is the first input's (the batch
    size); the others (a learning rate, a random key) get one value per step."""
    if not inputs or inputs[0].ndim == 0:
        return [False] * len(inputs)
    batch = inputs[0].shape[0]
    return [n.ndim >= 1 and n.shape[0] == batch for n in inputs]
