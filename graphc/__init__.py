"""graphc: a symbolic computational-graph compiler for neural networks.

>>> import graphc, numpy as np
>>> with graphc.Graph("perceptron") as g:
...     x = graphc.input("x", (4,), "float64")
...     w = graphc.param("w", np.array([0.1, 0.5, 2.5, 0.2]))
...     out = g.output(graphc.sigmoid(x @ w + 3.0))
>>> round(float(graphc.evaluate(out, {"x": np.array([2.0, 3.0, -1.0, 5.0])})), 4)
0.9608
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from . import autodiff, datasets, nn, optim, train  # noqa: E402  (layers and training sit on top of the ops)
from ._version import __version__
from .autodiff import check_grad, grad, hvp, jvp
from .backends import Executable, compile
from .dsl import Tensor, TensorSpec, apply, constant, input, param, trace
from .export import ExportError, export
from .ir import (
    DType,
    DTypeError,
    Graph,
    GraphcError,
    InputError,
    Node,
    ShapeError,
    bool_,
    float32,
    float64,
    int32,
    int64,
)
from .ir.errors import NonFiniteError
from .ir.graph import DuplicateNameError
from .onnx_export import OnnxExportError, export_onnx
from .ops import registry
from .ops.collective import allreduce
from .ops.conv import avg_pool2d, conv2d, conv_transpose2d, max_pool2d
from .ops.elementwise import (
    UndefinedDerivativeError,
    abs,
    add,
    cast,
    clip,
    div,
    elementwise,
    elu,
    equal,
    exp,
    gaussian,
    greater,
    greater_equal,
    identity,
    leaky_relu,
    less,
    less_equal,
    log,
    maximum,
    minimum,
    mul,
    neg,
    not_equal,
    pow,
    ramp,
    relu,
    selu,
    sigmoid,
    sigmoid_zxy,
    sign,
    softplus,
    softsign,
    sqrt,
    square,
    step,
    sub,
    sympy_sigmoid,
    sympy_softplus,
    tanh,
    where,
)
from .ops.linalg import dense, matmul
from .ops.nn import (
    batch_norm,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    l2_penalty,
    log_softmax,
    maxout,
    mse,
    one_hot,
    softmax,
    softmax_cross_entropy,
)
from .ops.random import random_uniform
from .ops.reduce import argmax, broadcast_to, max, mean, min, sum
from .ops.registry import UnknownOpError
from .ops.shape import concatenate, reshape, transpose
from .optim.hyperparams import HyperparameterError
from .passes import OptimizeResult, optimize
from .saved import SavedModelError, load, save
from .train import fit
from .train.checkpoint import CheckpointError


def evaluate(outputs: Tensor | Sequence[Tensor], feeds: Mapping[Any, Any] | None = None,
             params: Mapping[Any, Any] | None = None):
    """Evaluate tensors with the NumPy reference backend.

    ``feeds`` maps inputs (by name or tensor) to arrays; ``params`` optionally overrides
    parameter values. Returns one array, or a list for a list of outputs.
    """
    from .backends import reference

    single = isinstance(outputs, Tensor)
    tensors = [outputs] if single else list(outputs)
    if not tensors:
        return []
    graph = tensors[0].graph
    result = reference.evaluate(graph, feeds, [t.node for t in tensors], params)
    return result[0] if single else result


def _is_graphcs(obj: Any) -> bool:
    """Whether ``obj`` is graphc's own (a graphc module, or defined in one), not a name imported for its use
    (``np``, ``Any``, ``annotations``)."""
    module = obj.__name__ if isinstance(obj, type(np)) else getattr(obj, "__module__", None) or ""
    return module == "graphc" or module.startswith("graphc.")


__all__ = sorted(name for name, obj in list(globals().items()) if not name.startswith("_") and _is_graphcs(obj))
