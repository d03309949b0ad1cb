"""The symbolic Tensor that op builders take and return, and :func:`apply`, which adds one node of a
registered op to the graph being built (its shape rule checked now, not at run time).

A Tensor's operators (``a + b``, ``a @ b``, ``a[1:]``, ``a.sum()``) are the builders of the op modules
beside this one, which they import when first called (those modules build on this one). The user-facing
DSL (:mod:`graphc.dsl`: inputs, parameters, tracing) sits above the ops and re-exports these names.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..ir import Attrs, DType, Graph, GraphcError, Node, ShapeError, as_dtype, current_graph, float32, to_float
from ..ir.errors import at_op, line_text
from ..ir.node import current_provenance
from ..ir.source import current_location
from . import registry
from .checks import dims


class Tensor:
    """A symbolic tensor: a handle on one graph node, with operators that add nodes."""

    __slots__ = ("node", "graph")
    __array_priority__ = 1000  # numpy_array + tensor calls Tensor.__radd__, not NumPy's loop

    def __init__(self, node: Node, graph: Graph):
        self.node = node
        self.graph = graph

    # -- static type ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> DType:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    @property
    def size(self) -> int:
        return self.node.size

    @property
    def name(self) -> str | None:
        return self.node.name

    @property
    def op(self) -> str:
        return self.node.op

    def __repr__(self) -> str:
        name = f" {self.node.name!r}" if self.node.name else ""
        return f"Tensor({self.node.op}{name}: {self.node.type_str})"

    def __bool__(self) -> bool:
        raise TypeError(
            "a symbolic graphc Tensor has no truth value; use graphc.where(cond, a, b) for data-dependent choices"
        )

    __hash__ = object.__hash__

    # -- arithmetic --------------------------------------------------------------------------------
    def __add__(self, other): return _ew().add(self, other)
    def __radd__(self, other): return _ew().add(other, self)
    def __sub__(self, other): return _ew().sub(self, other)
    def __rsub__(self, other): return _ew().sub(other, self)
    def __mul__(self, other): return _ew().mul(self, other)
    def __rmul__(self, other): return _ew().mul(other, self)
    def __truediv__(self, other): return _ew().div(self, other)
    def __rtruediv__(self, other): return _ew().div(other, self)
    def __pow__(self, other): return _ew().pow(self, other)
    def __rpow__(self, other): return _ew().pow(other, self)
    def __neg__(self): return _ew().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ew().abs(self)
    def __lt__(self, other): return _ew().less(self, other)
    def __le__(self, other): return _ew().less_equal(self, other)
    def __gt__(self, other): return _ew().greater(self, other)
    def __ge__(self, other): return _ew().greater_equal(self, other)
    def __eq__(self, other): return _ew().equal(self, other)  # type: ignore[override]
    def __ne__(self, other): return _ew().not_equal(self, other)  # type: ignore[override]

    def __matmul__(self, other):
        from . import linalg
        return linalg.matmul(self, other)

    def __rmatmul__(self, other):
        from . import linalg
        return linalg.matmul(other, self)

    # -- shape and reductions ------------------------------------------------------------------------
    def __getitem__(self, index):
        from . import shape
        return shape.getitem(self, index)

    def reshape(self, *shape):
        from . import shape as shape_ops
        return shape_ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def transpose(self, *perm):
        from . import shape as shape_ops
        return shape_ops.transpose(self, perm[0] if len(perm) == 1 and isinstance(perm[0], (tuple, list)) else (perm or None))

    @property
    def T(self):
        return self.transpose()

    def astype(self, dtype):
        return _ew().cast(self, dtype)

    def sum(self, axis=None, keepdims=False):
        from . import reduce
        return reduce.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        from . import reduce
        return reduce.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        from . import reduce
        return reduce.max(self, axis, keepdims)

    def min(self, axis=None, keepdims=False):
        from . import reduce
        return reduce.min(self, axis, keepdims)

    def argmax(self, axis=None, keepdims=False):
        from . import reduce
        return reduce.argmax(self, axis, keepdims)


def _ew():
    from . import elementwise
    return elementwise


# -- building nodes -----------------------------------------------------------------------------------

def _graph_of(values: Sequence[Any]) -> Graph:
    graphs = {id(v.graph): v.graph for v in values if isinstance(v, Tensor)}
    if len(graphs) > 1:
        names = ", ".join(repr(g.name) for g in graphs.values())
        raise GraphcError(f"tensors from different graphs ({names}) cannot be combined")
    if graphs:
        return next(iter(graphs.values()))
    g = current_graph()
    if g is None:
        raise GraphcError("no graph is being built: use `with graphc.Graph() as g:` or graphc.trace(fn, ...)")
    return g


def _weak_dtype(value: Any, like: DType | None) -> DType:
    """The dtype of a Python scalar next to a tensor of dtype ``like`` (weak typing, as in JAX)."""
    if isinstance(value, (bool, np.bool_)):
        return like if like is not None else as_dtype("bool")
    if isinstance(value, (int, np.integer)):
        return like if like is not None and like.kind in "fi" else as_dtype("int64")
    return to_float(like) if like is not None else float32


def _as_node(value: Any, graph: Graph, like: DType | None) -> Node:
    if isinstance(value, Tensor):
        return value.node
    if isinstance(value, np.ndarray):
        return constant(value, graph=graph).node
    if isinstance(value, (int, float, bool, np.number, np.bool_)):
        return constant(np.asarray(value, dtype=_weak_dtype(value, like).np), graph=graph).node
    raise TypeError(f"cannot use {type(value).__name__} {value!r} in a graphc graph")


def apply(op: str, inputs: Sequence[Any], attrs: Mapping[str, Any] | None = None, name: str | None = None) -> Tensor:
    """Add one node of registered op ``op``; check its shapes and dtypes now, not at run time.

    Python scalars and NumPy arrays among ``inputs`` become constants.
    """
    opdef = registry.get(op)
    graph = _graph_of(inputs)
    # Python scalars take the dtype of the data operands, not of a boolean mask (where(mask, 0.0, x)).
    dtypes = [v.dtype for v in inputs if isinstance(v, Tensor)]
    like = next((d for d in dtypes if d.kind != "b"), dtypes[0] if dtypes else None)
    nodes = tuple(_as_node(v, graph, like) for v in inputs)
    frozen = Attrs(attrs)
    prov = current_provenance()
    loc = prov.forward.loc if prov is not None else current_location()
    try:
        shape, dtype = opdef.shape_rule(nodes, frozen)
    except GraphcError as err:
        raise at_op(err, op, ", ".join(n.type_str for n in nodes), loc) from None
    node = Node(op, nodes, frozen, tuple(int(d) for d in shape), dtype, name=name, loc=loc, provenance=prov)
    return Tensor(graph.add(node), graph)


def add_source(op: str, shape, dtype: DType, name: str | None, value: np.ndarray | None, graph: Graph | None,
               attrs: Mapping[str, Any] | None = None) -> Tensor:
    """Add a source node (``input``, ``param``, ``constant``) to ``graph`` (default: the one being built)."""
    graph = graph if graph is not None else _graph_of([])
    try:
        shape = dims("shape", shape)
    except ShapeError as err:
        raise ShapeError(f"{op} {name!r}: {err}{line_text(current_location())}") from None
    node = Node(op, (), Attrs(attrs), shape, dtype, name=name, loc=current_location(), value=value,
                provenance=current_provenance())
    return Tensor(graph.add(node), graph)


def constant(value: Any, dtype: Any = None, name: str | None = None, graph: Graph | None = None) -> Tensor:
    """A constant baked into the graph."""
    arr = np.array(value, dtype=as_dtype(dtype).np if dtype is not None else None, copy=True)
    if dtype is None and arr.dtype == np.float64 and not isinstance(value, np.ndarray):
        arr = arr.astype(np.float32)  # Python floats default to float32, as in JAX
    dt = as_dtype(arr.dtype)
    arr.setflags(write=False)
    return add_source("constant", arr.shape, dt, name, arr, graph)
