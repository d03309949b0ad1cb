"""Helpers shared by the tests of graphc.passes (this module holds no tests).

* ``values(graph, feeds)``: every output and update value, by the NumPy reference backend;
* ``run_with_plan(graph, plan, feeds)``: the graph executed in the memory a BufferPlan assigns,
  checking at every read that the value read is still the one stored there;
* ``training_steps``: the bench's MLP and LeNet-5 training-step builders.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from graphc.backends import reference
from graphc.ir import Graph, Node
from graphc.ops import registry

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    """bench/passes.py as a module (it builds the training steps the bench measures)."""
    spec = importlib.util.spec_from_file_location("bench_passes", ROOT / "bench" / "passes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def roots(graph: Graph) -> list[Node]:
    return list(graph.outputs) + [v for _, v in graph.updates]


def values(graph: Graph, feeds: dict) -> list[np.ndarray]:
    """Outputs then update values (in the order of graph.updates), evaluated by the reference backend.

    Feeds for inputs the graph no longer has (an optimization may drop one: x - x) are left out."""
    names = {n.name for n in graph.inputs}
    with np.errstate(all="ignore"):
        return reference.evaluate(graph, {k: v for k, v in feeds.items() if k in names}, roots(graph))


def assert_close(got: list, want: list, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.shape(a) == np.shape(b)
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True)


class PlanViolation(AssertionError):
    pass


def run_with_plan(graph: Graph, plan, feeds: dict) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Execute ``graph`` writing every value into the storage ``plan`` gives it.

    Slots start filled with NaN bytes. Each read checks that the storage still holds the value
    being read (not one written later into the same slot or parameter); a plan that lets two
    live values share memory fails here even when the numbers happen to agree. Returns the
    outputs and the parameters after the updates.
    """
    slots = [np.full(n, 0xFF, np.uint8) for n in plan.slot_bytes]
    params = {id(p): np.array(p.value, copy=True) for p in graph.params}
    holder: dict[tuple, int] = {}  # storage key -> id(node) whose value it holds

    def key_of(node: Node):
        kind, where = plan.storage(node)
        return (kind, where if kind == "slot" else id(where))

    def array_of(node: Node) -> np.ndarray:
        base = plan.base(node)
        kind, where = plan.storage(node)
        if kind == "slot":
            nbytes = base.size * base.dtype.np.itemsize
            assert nbytes <= plan.slot_bytes[where], f"{base.op} needs {nbytes} bytes, slot {where} has fewer"
            arr = slots[where][:nbytes].view(base.dtype.np).reshape(base.shape)
        elif kind == "param":
            arr = params[id(where)]
        elif kind == "input":
            arr = np.asarray(feeds[where.name], base.dtype.np)
        else:
            arr = where.value
        return arr.reshape(node.shape)

    for p in graph.params:
        holder[("param", id(p))] = id(p)
    for node in graph.nodes:
        if node.op in ("input", "param", "constant", "reshape"):
            continue
        args = []
        for i in node.inputs:
            base = plan.base(i)
            if base.op not in ("input", "constant"):
                owner = holder.get(key_of(i))
                if owner != id(base):
                    raise PlanViolation(f"{node.op} reads {base.op} {base.type_str} but its storage {key_of(i)} "
                                        f"now holds another value")
            args.append(np.array(array_of(i), copy=True))
        with np.errstate(all="ignore"):
            result = registry.get(node.op).reference(args, node.attrs)
        out = array_of(node)
        out[...] = np.broadcast_to(np.asarray(result, node.dtype.np), node.shape)
        holder[key_of(node)] = id(node)
    outputs = []
    for o in graph.outputs:
        base = plan.base(o)
        if base.op not in ("input", "constant") and holder.get(key_of(o)) != id(base):
            raise PlanViolation(f"output {o.op} was overwritten before the end")
        outputs.append(np.array(array_of(o), copy=True))
    for p, v in graph.updates:
        if plan.storage(v) == ("param", p):
            continue  # computed in place
        base = plan.base(v)
        if base.op not in ("input", "constant") and holder.get(key_of(v)) != id(base):
            raise PlanViolation(f"update value of {p.name} was overwritten before the end")
        params[id(p)] = np.array(array_of(v), copy=True).reshape(p.shape)
    return outputs, {p.name: params[id(p)] for p in graph.params}
