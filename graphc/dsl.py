"""The Python DSL: symbolic tensors that build graph nodes, with NumPy-style operators.

Build a graph under a context::

    with graphc.Graph("perceptron") as g:
        x = graphc.input("x", (4,), "f64")
        w = graphc.param("w", np.array([0.1, 0.5, 2.5, 0.2]))
        y = g.output(graphc.sigmoid(x @ w + 3.0))

or by tracing a function over symbolic inputs (:func:`trace`); both give the same IR.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import numpy as np

from .ir import Graph, as_dtype
from .ir.node import provenance
from .ir.source import current_location, located_at
from .ops.checks import dims
from .ops.tensor import Tensor, add_source, apply, constant

#: The DSL's building blocks live below it (graphc.ops.tensor, graphc.ir); graphc.dsl is where users find them.
__all__ = ["Tensor", "TensorSpec", "apply", "constant", "current_location", "input", "located_at", "param",
           "provenance", "trace"]


def input(name: str, shape: Sequence[int], dtype: Any = "float32") -> Tensor:
    """A placeholder fed at run time.

    >>> import graphc
    >>> with graphc.Graph():
    ...     graphc.input("x", (128, 784)).shape
    (128, 784)
    """
    return add_source("input", shape, as_dtype(dtype), name, None, None)


def param(name: str, value: Any, dtype: Any = None, trainable: bool = True) -> Tensor:
    """A named parameter with its initial value (its shape and dtype come from the value).

    ``trainable=False`` marks state that is not learned by gradient descent (optimizer moments,
    batch-norm running statistics): it is updated with ``Graph.update`` and not counted by
    ``Graph.parameter_count``.

    >>> import graphc, numpy as np
    >>> with graphc.Graph():
    ...     graphc.param("b", np.zeros(10, np.float32)).dtype
    graphc.float32
    """
    arr = np.array(value, dtype=as_dtype(dtype).np if dtype is not None else None, copy=True)
    dt = as_dtype(arr.dtype)
    arr.setflags(write=False)
    return add_source("param", arr.shape, dt, name, arr, None, None if trainable else {"trainable": False})


class TensorSpec:
    """The shape and dtype of a traced function's input."""

    def __init__(self, shape: Sequence[int], dtype: Any = "float32"):
        self.shape = dims("TensorSpec shape", shape)
        self.dtype = as_dtype(dtype)

    def __repr__(self) -> str:
        return f"TensorSpec({self.shape}, {self.dtype.name})"


def _as_spec(spec: Any) -> TensorSpec:
    if isinstance(spec, TensorSpec):
        return spec
    if isinstance(spec, np.ndarray):
        return TensorSpec(spec.shape, spec.dtype)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], (tuple, list)):
        return TensorSpec(spec[0], spec[1])
    if isinstance(spec, (tuple, list)):
        return TensorSpec(spec)
    raise TypeError(f"a traced input needs a TensorSpec, (shape, dtype), a shape or an array; got {spec!r}")


def trace(fn: Callable | None = None, *specs: Any, name: str | None = None, **named_specs: Any):
    """Trace ``fn`` over symbolic inputs into a :class:`Graph`; its return value(s) become outputs.

    Inputs are named after ``fn``'s parameters. Use as a call or as a decorator::

        g = graphc.trace(lambda x: graphc.relu(x), ((4, 3), "f32"))

        @graphc.trace(x=((4, 3), "f32"))
        def layer(x):
            return graphc.relu(x)          # `layer` is now a Graph
    """
    if fn is None or not callable(fn):
        if fn is not None:
            specs = (fn,) + specs
        return lambda f: trace(f, *specs, name=name, **named_specs)
    arg_names = list(inspect.signature(fn).parameters)
    bound = dict(zip(arg_names, specs)) | named_specs
    missing = [a for a in arg_names if a not in bound]
    if missing:
        raise TypeError(f"trace({fn.__name__}): no spec for argument(s) {', '.join(missing)}")
    with Graph(name or getattr(fn, "__name__", "graph")) as g:
        args = [input(a, _as_spec(bound[a]).shape, _as_spec(bound[a]).dtype) for a in arg_names]
        result = fn(*args)
        outs = result if isinstance(result, (tuple, list)) else (result,)
        g.output(*outs)
    return g
