"""ONNX export of inference graphs: :func:`export_onnx` writes a model or a graph as an ONNX file.

The exporter is one more target of the pipeline's last stage: it walks a forward graph in
topological order and emits ONNX nodes, one rule per graphc op (``RULES``, keyed by op name, as
every backend keeps its lowering table). Elementwise ops map to the exact ONNX op where ONNX has one
(``EXACT``: Relu, Sigmoid, Tanh, Elu, Selu, Softplus, LeakyRelu, ...); every other elementwise op
(sigmoid_zxy, step, ramp, gaussian, a user's SymPy activation, a ``fused`` node of the passes) is
decomposed into ONNX elementwise ops by walking its SymPy expression (:class:`_ExpressionWriter`).

The file uses the default ONNX domain at opset ``OPSET`` (17) only, and passes ``onnx.checker``
(full check, with shape inference) before it is written, atomically. The batch axis is the one the
graph was built with, except that a Module's batch axis is dynamic (``N``) unless a ``batch_size`` is given:
the model is built for two batch sizes, and the dimensions that differ are the ones the file leaves free.

onnx is an optional dependency (``pip install 'graphc[onnx]'``): it is imported inside the functions
that need it, never when graphc is imported.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ._version import __version__
from .ir import DType, Graph, GraphcError, Node, as_dtype, float64, promote
from .ir.errors import at_op
from .ir.source import user_location
from .ops import registry
from .ops.elementwise import CAST_FUNCTIONS, IsNaN, fused_symbols, is_elementwise, node_expression

#: The ONNX opset of the default domain every exported file imports (ONNX Runtime >= 1.12 runs it).
OPSET = 17


class OnnxExportError(GraphcError, ValueError):
    """A graph that cannot be written as ONNX (a training op, an expression without ONNX equivalent)."""


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxExportError("export_onnx needs the onnx package: pip install 'graphc[onnx]' "
                              "(onnx, and onnxruntime to run the exported file)") from None
    return onnx


# -- the public entry points -----------------------------------------------------------------------------------------

#: The batch sizes a Module's graph is built at to tell the batch-dependent dimensions from the others.
_PROBE_BATCHES = (2, 3)
#: The name of the batch dimension in the exported file's input and output shapes.
BATCH_DIM = "N"


def export_onnx(model_or_graph: Any, path: str | os.PathLike, input_shape: Sequence[int] | None = None,
                batch_size: int | None = None) -> str:
    """Write the inference graph of ``model_or_graph`` to ``path`` as an ONNX model; returns the path.

    ``model_or_graph``: a graphc.nn Module (its evaluation-mode graph: batch norm with its running
    statistics, dropout and augmentation as the identity, the parameters' current values baked in as
    initializers) or a forward Graph (inputs, parameters, constants, outputs; no in-place updates),
    whose shapes are exported as they are.
    ``input_shape``: the input's shape without the batch axis, needed only for a model not built yet
    (built with it, as ``Sequential(..., input_shape=...)`` would).
    ``batch_size``: a Module's input ``x`` has a dynamic batch axis ``N`` by default; an int fixes it.
    The file imports the default ONNX domain at opset ``OPSET`` and is checked with ``onnx.checker``
    (full check) before it is written, atomically.
    """
    onnx = _require_onnx()
    graph, batch_dims = exported_graph(model_or_graph, input_shape, batch_size)
    proto = to_onnx(graph, batch_dims)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:  # a rule of this module is wrong: say which graph it refused
        raise OnnxExportError(f"export_onnx: onnx.checker refused the export of graph {graph.name!r} (a graphc "
                              f"bug, please report it): {err}") from None
    path = os.fspath(path)
    _write_atomically(path, proto.SerializeToString())
    return path


BatchDims = dict[int, tuple[bool, ...]]


def exported_graph(model_or_graph: Any, input_shape: Sequence[int] | None = None,
                   batch_size: int | None = None) -> tuple[Graph, BatchDims | None]:
    """The forward graph ``export_onnx`` writes, and which dimensions of each node (by id) follow the batch
    size (None: every shape is static). A Graph is taken as it is; a Module gives its evaluation graph."""
    from .nn.layers import Module

    if isinstance(model_or_graph, Graph):
        _check_graph_input_shape(model_or_graph, input_shape)
        return model_or_graph, None
    if isinstance(model_or_graph, Module):
        return _module_graph(model_or_graph, input_shape, batch_size)
    raise OnnxExportError(f"export_onnx: expected a graphc.nn Module or a graphc.Graph, got "
                          f"{type(model_or_graph).__name__}{_user_line()}")


def to_onnx(graph: Graph, batch_dims: BatchDims | None = None):
    """``graph`` (a forward graph) as an ``onnx.ModelProto`` at opset ``OPSET`` (not yet checked);
    ``batch_dims``: the batch-dependent dimensions of its nodes (see :func:`exported_graph`)."""
    onnx = _require_onnx()
    _check_inference(graph)
    writer = _Writer(onnx, graph, batch_dims or {})
    # every input, first: each keeps its name (the feeds' keys), even one the outputs do not need
    needed = graph.inputs + [n for n in graph.ancestors(graph.outputs) if n.op != "input"]
    for node in needed:
        writer.write(node)
    return writer.model()


def _user_line() -> str:
    loc = user_location()
    return f"\n  at {loc}" if loc is not None else ""


def _module_graph(model, input_shape, batch_size: int | None) -> tuple[Graph, BatchDims | None]:
    from .ops.checks import dims, positive_int
    from .train.loop import build_eval

    try:
        batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
        shape = None if input_shape is None else dims("input_shape", input_shape, low=1)
    except GraphcError as err:
        raise OnnxExportError(f"export_onnx: {err}{_user_line()}") from None
    if model.in_shape is None:
        if shape is None:
            raise OnnxExportError(f"export_onnx: model {model.name!r} is not built yet; give input_shape (the input's "
                                  f"shape without the batch axis){_user_line()}")
        model.build(shape, np.random.default_rng(getattr(model, "seed", 0)), getattr(model, "dtype", np.float32))
    elif shape is not None and tuple(shape) != tuple(model.in_shape):
        raise OnnxExportError(f"export_onnx: input_shape {list(shape)} differs from the shape {list(model.in_shape)} "
                              f"model {model.name!r} was built for{_user_line()}")
    name = model.name or "model"
    if batch_size is not None:
        return build_eval(model, batch_size, name=name), None
    base, probe = (build_eval(model, b, name=name) for b in _PROBE_BATCHES)
    batch_dims = _batch_dims(base, probe)
    if batch_dims is None:
        raise OnnxExportError(f"export_onnx: model {model.name!r} builds different graphs for batch sizes "
                              f"{_PROBE_BATCHES[0]} and {_PROBE_BATCHES[1]}, so its batch axis cannot be left "
                              f"dynamic; give batch_size= to export it for a fixed batch{_user_line()}")
    return base, batch_dims


def _batch_dims(base: Graph, probe: Graph) -> BatchDims | None:
    """For each node of ``base``, which of its dimensions differ in ``probe`` (the same model built for
    another batch size): those follow the batch size. None when the two graphs differ in structure."""
    if len(base.nodes) != len(probe.nodes):
        return None
    where = [{id(n): k for k, n in enumerate(g.nodes)} for g in (base, probe)]
    found: BatchDims = {}
    for a, b in zip(base.nodes, probe.nodes):
        same_inputs = [where[0][id(i)] for i in a.inputs] == [where[1][id(i)] for i in b.inputs]
        if a.op != b.op or not same_inputs or a.ndim != b.ndim:
            return None
        found[id(a)] = tuple(x != y for x, y in zip(a.shape, b.shape))
    return found


def _check_graph_input_shape(graph: Graph, input_shape) -> None:
    if input_shape is None:
        return
    inputs = graph.inputs
    if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != tuple(input_shape):
        shown = ", ".join(f"{n.name} {n.type_str}" for n in inputs)
        raise OnnxExportError(f"export_onnx: a Graph's input shapes are fixed when it is built ({shown}); "
                              f"input_shape {list(input_shape)} does not match them{_user_line()}")


def _check_inference(graph: Graph) -> None:
    if not graph.outputs:
        raise OnnxExportError(f"export_onnx: graph {graph.name!r} has no outputs (mark them with g.output(...))"
                              f"{_user_line()}")
    if graph.updates:
        param = graph.updates[0][0]
        raise OnnxExportError(f"export_onnx: graph {graph.name!r} updates parameter {param.name!r} in place (a training "
                              f"step); ONNX export takes an inference graph: export the model itself, or its "
                              f"evaluation graph graphc.train.loop.build_eval(model, batch_size){_user_line()}")


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".graphc-onnx-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- the writer: graphc nodes -> ONNX nodes ---------------------------------------------------------------------------

class _Writer:
    """Builds one ONNX graph: a value name per graphc node, initializers for parameters and constants."""

    def __init__(self, onnx, graph: Graph, batch_dims: BatchDims):
        self.onnx, self.graph, self.batch_dims = onnx, graph, batch_dims
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.names: dict[int, str] = {}
        self._used: set[str] = set()
        self._constants: dict[tuple, str] = {}

    # -- names and constants ------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A value name not used yet, from ``hint`` (a parameter's name, an op's)."""
        base = "".join(c if c.isalnum() or c in "._" else "_" for c in hint) or "v"
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def value(self, node: Node) -> str:
        return self.names[id(node)]

    def batched(self, node: Node) -> tuple[bool, ...]:
        """Which dimensions of ``node`` follow the batch size (none in a graph exported with static shapes)."""
        return self.batch_dims.get(id(node), (False,) * node.ndim)

    def shape_operand(self, node: Node, shape: Sequence[int], free: Sequence[bool], free_value: int,
                      what: str) -> str:
        """``shape`` as an int64 initializer, the batch-dependent dimensions (``free``) written as
        ``free_value`` (-1 for Reshape, 1 for Expand); at most one of them for Reshape's -1."""
        if free_value == -1 and sum(free) > 1:
            raise unsupported(node, f"its {what} {list(shape)} has {sum(free)} dimensions that follow the batch size, "
                                    f"which one ONNX Reshape cannot infer; give export_onnx a fixed batch_size=")
        return self.ints([free_value if f else d for d, f in zip(shape, free)])

    def initializer(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def constant(self, value: Any, dtype: np.dtype) -> str:
        """A (shared) initializer holding ``value`` as an array of ``dtype``."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(array, "const")
        return self._constants[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.constant(np.asarray(values, np.int64).reshape(-1), np.int64)

    # -- emitting ------------------------------------------------------------------------------------------------------
    def emit(self, op_type: str, inputs: Sequence[str], hint: str, node: Node | None = None, **attrs: Any) -> str:
        """Append ONNX node ``op_type``; returns its output's name. ``node``: the graphc node it computes, whose
        op and user line the ONNX node's doc string records."""
        out = self.fresh(hint)
        onnx_node = self.onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attrs)
        if node is not None:
            onnx_node.doc_string = f"graphc {node.op}" + (f" at {node.loc}" if node.loc is not None else "")
        self.nodes.append(onnx_node)
        return out

    def cast(self, name: str, source: DType, target: DType) -> str:
        if source == target:
            return name
        return self.emit("Cast", [name], f"{name}_{target.name}", to=self.tensor_type(target))

    def tensor_type(self, dtype: DType) -> int:
        return self.onnx.helper.np_dtype_to_tensor_dtype(dtype.np)

    def operands(self, node: Node, dtype: DType) -> list[str]:
        """``node``'s inputs converted to ``dtype`` (ONNX ops take operands of one type)."""
        return [self.cast(self.value(i), i.dtype, dtype) for i in node.inputs]

    # -- nodes ---------------------------------------------------------------------------------------------------------
    def write(self, node: Node) -> None:
        if node.op == "input":
            name = self.fresh(node.name or "x")
            self.inputs.append(self.value_info(name, node))
        elif node.op in ("param", "constant"):
            if any(self.batched(node)):
                raise unsupported(node, "its value's shape follows the batch size, which an initializer cannot; give "
                                        "export_onnx a fixed batch_size=")
            name = self.initializer(node.value.astype(node.dtype.np, copy=False).reshape(node.shape),
                                    node.name or node.op)
        else:
            name = self.rule_of(node)(self, node)
        self.names[id(node)] = name

    def rule_of(self, node: Node) -> Callable[["_Writer", Node], str]:
        if node.op in RULES:
            return RULES[node.op]
        if node.op in EXACT and not (node.dtype == float64 and node.op in FLOAT32_ONLY):
            return _exact_elementwise
        if is_elementwise(node):
            return _decomposed_elementwise
        raise unsupported(node, "ONNX export handles inference graphs: " + _SUPPORTED)

    def value_info(self, name: str, node: Node):
        batch = self.graph.inputs[0].shape[0] if self.graph.inputs and self.graph.inputs[0].ndim else None
        # a batch-dependent dimension is N where it is the batch size itself, unnamed (free) otherwise
        dims = [(BATCH_DIM if d == batch else None) if free else d for d, free in zip(node.shape, self.batched(node))]
        return self.onnx.helper.make_tensor_value_info(name, self.tensor_type(node.dtype), dims)

    def model(self):
        helper = self.onnx.helper
        outputs = []
        for k, node in enumerate(self.graph.outputs):
            name = self.fresh(node.name or ("output" if len(self.graph.outputs) == 1 else f"output_{k}"))
            self.nodes.append(helper.make_node("Identity", [self.value(node)], [name], name=name))
            outputs.append(self.value_info(name, node))
        onnx_graph = helper.make_graph(self.nodes, self.graph.name, self.inputs, outputs, self.initializers)
        opset = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(onnx_graph, opset_imports=opset, producer_name="graphc",
                                  producer_version=__version__,
                                  ir_version=helper.find_min_ir_version_for(opset))
        model.doc_string = f"graphc graph {self.graph.name!r}, exported by graphc.export_onnx"
        return model


def unsupported(node: Node, why: str) -> OnnxExportError:
    operands = ", ".join(i.type_str for i in node.inputs)
    return at_op(OnnxExportError(f"export_onnx: cannot write {node.op} ({node.type_str}) as ONNX: {why}"),
                 node.op, operands, node.loc)


_SUPPORTED = ("dense, matmul, conv2d, conv_transpose2d, max/avg pooling, inference-form batch norm, reshape, "
              "transpose, slice, concatenate, broadcast_to, reductions, softmax, log_softmax and elementwise ops; "
              "training ops (losses, batch statistics, random numbers, gradients of pooling) are not exported")


# -- rules: one per op ---------------------------------------------------------------------------------------------------

def _dense(w: _Writer, node: Node) -> str:
    x, weight, bias = w.operands(node, node.dtype)
    if node.inputs[0].ndim == 2:
        return w.emit("Gemm", [x, weight, bias], "dense", node)
    return w.emit("Add", [w.emit("MatMul", [x, weight], "matmul", node), bias], "dense", node)


def _matmul(w: _Writer, node: Node) -> str:
    return w.emit("MatMul", w.operands(node, node.dtype), "matmul", node)


def _swap_last(w: _Writer, name: str, ndim: int, node: Node) -> str:
    perm = list(range(ndim - 2)) + [ndim - 1, ndim - 2]
    return w.emit("Transpose", [name], f"{name}_T", node, perm=perm)


def _matmul_epilogue(w: _Writer, node: Node) -> str:
    a, b = (w.cast(w.value(i), i.dtype, node.dtype) for i in node.inputs[:2])
    if node.attrs["transpose_a"]:
        a = _swap_last(w, a, node.inputs[0].ndim, node)
    if node.attrs["transpose_b"]:
        b = _swap_last(w, b, node.inputs[1].ndim, node)
    product = w.emit("MatMul", [a, b], "matmul", node)
    return _epilogue(w, node, product)


def _conv_attrs(node: Node) -> dict:
    (ph, pw) = node.attrs["padding"]
    return {"strides": list(node.attrs["stride"]), "pads": [ph, pw, ph, pw], "dilations": list(node.attrs["dilation"])}


def _conv2d(w: _Writer, node: Node) -> str:
    x, weight = (w.cast(w.value(i), i.dtype, node.dtype) for i in node.inputs[:2])
    kernel = list(node.inputs[1].shape[2:])
    return w.emit("Conv", [x, weight], "conv2d", node, kernel_shape=kernel, **_conv_attrs(node))


def _conv2d_epilogue(w: _Writer, node: Node) -> str:
    return _epilogue(w, node, _conv2d(w, node))


def _epilogue(w: _Writer, node: Node, product: str) -> str:
    """An epilogue op's expression over x0 = the product and x1.. = its extra inputs (see graphc.ops.fused)."""
    extras = [w.cast(w.value(i), i.dtype, node.dtype) for i in node.inputs[2:]]
    symbols = fused_symbols(1 + len(extras))
    return _ExpressionWriter(w, node, node.dtype).write(node.attrs["expr"], dict(zip(symbols, [product, *extras])))


def _conv_transpose2d(w: _Writer, node: Node) -> str:
    x, weight = w.operands(node, node.dtype)
    kernel = list(node.inputs[1].shape[2:])
    return w.emit("ConvTranspose", [x, weight], "conv_transpose2d", node, kernel_shape=kernel,
                  output_padding=list(node.attrs["output_padding"]), **_conv_attrs(node))


def _pool(onnx_op: str, **extra: Any) -> Callable[[_Writer, Node], str]:
    def rule(w: _Writer, node: Node) -> str:
        (ph, pw) = node.attrs["padding"]
        return w.emit(onnx_op, w.operands(node, node.dtype), node.op, node, kernel_shape=list(node.attrs["kernel"]),
                      strides=list(node.attrs["stride"]), pads=[ph, pw, ph, pw], **extra)
    return rule


def _reshape(w: _Writer, node: Node) -> str:
    shape = w.shape_operand(node, node.shape, w.batched(node), -1, "shape")
    # a 0 in ONNX's shape copies the input's dimension unless allowzero: graphc's 0 is an empty axis
    return w.emit("Reshape", [w.value(node.inputs[0]), shape], "reshape", node, allowzero=int(0 in node.shape))


def _transpose(w: _Writer, node: Node) -> str:
    return w.emit("Transpose", [w.value(node.inputs[0])], "transpose", node, perm=list(node.attrs["perm"]))


def _slice(w: _Writer, node: Node) -> str:
    (source,) = node.inputs
    a = node.attrs
    stops = list(a["stops"])
    for axis, free in enumerate(w.batched(source)):
        if not free:
            continue
        if (a["starts"][axis], a["stops"][axis], a["steps"][axis]) != (0, source.shape[axis], 1):
            raise unsupported(node, f"it slices axis {axis}, whose size follows the batch size; give export_onnx a "
                                    f"fixed batch_size=")
        stops[axis] = _TO_THE_END
    axes = list(range(len(stops)))
    return w.emit("Slice", [w.value(source), w.ints(a["starts"]), w.ints(stops), w.ints(axes), w.ints(a["steps"])],
                  "slice", node)


#: A Slice end past any axis: the whole axis, whatever its size.
_TO_THE_END = np.iinfo(np.int64).max


def _concatenate(w: _Writer, node: Node) -> str:
    return w.emit("Concat", w.operands(node, node.dtype), "concatenate", node, axis=node.attrs["axis"])


def _broadcast_to(w: _Writer, node: Node) -> str:
    (source,) = node.inputs
    free = w.batched(node)
    # Expand broadcasts both ways: a 1 keeps the input's (batch-sized) dimension, if the input has it
    aligned = (False,) * (node.ndim - source.ndim) + w.batched(source)
    if any(f and not s for f, s in zip(free, aligned)):
        raise unsupported(node, "it broadcasts a dimension of size 1 to the batch size; give export_onnx a fixed "
                                "batch_size=")
    return w.emit("Expand", [w.value(source), w.shape_operand(node, node.shape, free, 1, "shape")],
                  "broadcast_to", node)


def _axis_op(onnx_op: str) -> Callable[[_Writer, Node], str]:
    def rule(w: _Writer, node: Node) -> str:
        return w.emit(onnx_op, [w.value(node.inputs[0])], node.op, node, axis=node.attrs["axis"])
    return rule


def _reduction(onnx_op: str) -> Callable[[_Writer, Node], str]:
    def rule(w: _Writer, node: Node) -> str:
        axes, keepdims = list(node.attrs["axes"]), int(node.attrs["keepdims"])
        (x,) = w.operands(node, node.dtype)
        if not axes:  # a reduction over no axis is the identity (ONNX would reduce over every axis)
            return w.emit("Identity", [x], node.op, node)
        if onnx_op == "ReduceSum":  # opset 13 made ReduceSum's axes an input; the others follow at opset 18
            return w.emit(onnx_op, [x, w.ints(axes)], node.op, node, keepdims=keepdims)
        return w.emit(onnx_op, [x], node.op, node, axes=axes, keepdims=keepdims)
    return rule


def _argmax(w: _Writer, node: Node) -> str:
    (source,) = node.inputs
    axes, keepdims = node.attrs["axes"], int(node.attrs["keepdims"])
    x = w.value(source)
    if len(axes) == 1:
        return w.emit("ArgMax", [x], "argmax", node, axis=axes[0], keepdims=keepdims)
    # every axis (numpy.argmax with axis=None): the index into the flattened tensor
    flat = w.emit("Reshape", [x, w.ints([-1])], "flat", node)
    index = w.emit("ArgMax", [flat], "argmax", node, axis=0, keepdims=0)
    return w.emit("Reshape", [index, w.ints(node.shape)], "argmax", node)


def _cast(w: _Writer, node: Node) -> str:
    (source,) = node.inputs
    return w.emit("Cast", [w.value(source)], "cast", node, to=w.tensor_type(node.dtype))


def _clip(w: _Writer, node: Node) -> str:
    (x,) = w.operands(node, node.dtype)
    lo, hi = (w.constant(node.attrs.get(k, registry.get("clip").params[k]), node.dtype.np) for k in ("lo", "hi"))
    return w.emit("Clip", [x, lo, hi], "clip", node)


def _where(w: _Writer, node: Node) -> str:
    cond, x, y = node.inputs
    truth = w.emit("Cast", [w.value(cond)], "cond", node, to=w.tensor_type(as_dtype("bool")))
    return w.emit("Where", [truth, w.cast(w.value(x), x.dtype, node.dtype), w.cast(w.value(y), y.dtype, node.dtype)],
                  "where", node)


def _square(w: _Writer, node: Node) -> str:
    (x,) = w.operands(node, node.dtype)
    return w.emit("Mul", [x, x], "square", node)


def _not_equal(w: _Writer, node: Node) -> str:
    operands = w.operands(node, promote(*(i.dtype for i in node.inputs)))
    return w.emit("Not", [w.emit("Equal", operands, "equal", node)], "not_equal", node)


def _exact_elementwise(w: _Writer, node: Node) -> str:
    """An elementwise op with an ONNX op of the same meaning (``EXACT``): operands in one dtype."""
    onnx_op, attrs_of = EXACT[node.op]
    comparison = node.dtype == as_dtype("bool")
    dtype = promote(*(i.dtype for i in node.inputs)) if comparison else node.dtype
    return w.emit(onnx_op, w.operands(node, dtype), node.op, node, **attrs_of(node))


def _decomposed_elementwise(w: _Writer, node: Node) -> str:
    """An elementwise op without an ONNX equivalent: its SymPy expression as ONNX elementwise ops."""
    expr, symbols = node_expression(node)
    dtype = node.dtype if node.dtype.is_float else float64  # integers and booleans computed in float64, then cast
    operands = w.operands(node, dtype)
    result = _ExpressionWriter(w, node, dtype).write(expr, dict(zip(symbols, operands)))
    return w.cast(result, dtype, node.dtype)


def _param(name: str, node: Node) -> float:
    return float(node.attrs[name]) if name in node.attrs else float(registry.get(node.op).params[name])


def _no_attrs(node: Node) -> dict:
    return {}


#: Elementwise ops with an ONNX op of the same meaning: op name -> (ONNX op, its attributes from the node).
#: Selu gets graphc's constants (ONNX's defaults are their float32 roundings).
EXACT: dict[str, tuple[str, Callable[[Node], dict]]] = {
    "neg": ("Neg", _no_attrs), "add": ("Add", _no_attrs), "sub": ("Sub", _no_attrs), "mul": ("Mul", _no_attrs),
    "div": ("Div", _no_attrs), "exp": ("Exp", _no_attrs), "log": ("Log", _no_attrs), "sqrt": ("Sqrt", _no_attrs),
    "abs": ("Abs", _no_attrs), "sign": ("Sign", _no_attrs), "maximum": ("Max", _no_attrs),
    "minimum": ("Min", _no_attrs), "identity": ("Identity", _no_attrs),
    "less": ("Less", _no_attrs), "less_equal": ("LessOrEqual", _no_attrs), "greater": ("Greater", _no_attrs),
    "greater_equal": ("GreaterOrEqual", _no_attrs), "equal": ("Equal", _no_attrs),
    "sigmoid": ("Sigmoid", _no_attrs), "tanh": ("Tanh", _no_attrs), "relu": ("Relu", _no_attrs),
    "leaky_relu": ("LeakyRelu", lambda n: {"alpha": _param("alpha", n)}),
    "elu": ("Elu", lambda n: {"alpha": _param("alpha", n)}),
    "selu": ("Selu", lambda n: {"alpha": 1.6732632423543772848170429916717, "gamma": 1.0507009873554804934193349852946}),
    "softplus": ("Softplus", _no_attrs), "softsign": ("Softsign", _no_attrs),
}

#: Exact in float32 only: their ONNX attributes are float32 (alpha=0.2 would lose float64 precision) and ONNX
#: Runtime has no float64 kernels for Elu, Selu, Softplus and Softsign; a float64 node is decomposed instead.
FLOAT32_ONLY = frozenset({"leaky_relu", "elu", "selu", "softplus", "softsign"})

#: Every other op the exporter writes: op name -> rule (writer, node) -> the ONNX value computing it.
RULES: dict[str, Callable[[_Writer, Node], str]] = {
    "dense": _dense, "matmul": _matmul, "matmul_epilogue": _matmul_epilogue,
    "conv2d": _conv2d, "conv2d_epilogue": _conv2d_epilogue, "conv_transpose2d": _conv_transpose2d,
    "max_pool2d": _pool("MaxPool"), "avg_pool2d": _pool("AveragePool", count_include_pad=1),
    "reshape": _reshape, "transpose": _transpose, "slice": _slice, "concatenate": _concatenate,
    "broadcast_to": _broadcast_to,
    "softmax": _axis_op("Softmax"), "log_softmax": _axis_op("LogSoftmax"),
    "sum": _reduction("ReduceSum"), "mean": _reduction("ReduceMean"), "max": _reduction("ReduceMax"),
    "min": _reduction("ReduceMin"), "argmax": _argmax,
    "cast": _cast, "clip": _clip, "where": _where, "square": _square, "not_equal": _not_equal,
}


# -- SymPy expressions as ONNX elementwise ops ------------------------------------------------------------------------

#: SymPy functions of one argument with an ONNX op of the same name and meaning.
_UNARY: dict[type, str] = {
    sp.exp: "Exp", sp.log: "Log", sp.Abs: "Abs", sp.sign: "Sign", sp.floor: "Floor", sp.ceiling: "Ceil",
    sp.sin: "Sin", sp.cos: "Cos", sp.tan: "Tan", sp.asin: "Asin", sp.acos: "Acos", sp.atan: "Atan",
    sp.sinh: "Sinh", sp.cosh: "Cosh", sp.tanh: "Tanh", sp.asinh: "Asinh", sp.acosh: "Acosh", sp.atanh: "Atanh",
    sp.erf: "Erf",
}
_RELATIONS: dict[type, str] = {
    sp.StrictLessThan: "Less", sp.LessThan: "LessOrEqual", sp.StrictGreaterThan: "Greater",
    sp.GreaterThan: "GreaterOrEqual", sp.Eq: "Equal",
}
_LOGIC: dict[type, str] = {sp.And: "And", sp.Or: "Or", sp.Xor: "Xor"}


class _ExpressionWriter:
    """Writes one SymPy expression as ONNX elementwise ops in ``dtype`` (booleans for conditions).

    Piecewise becomes nested Where (every branch evaluated, as numpy.select does), Max/Min the n-ary
    Max/Min, x**-1 a division, x**(1/2) Sqrt, Mod and frac their floor forms; a subexpression used twice
    (exp(x) in both branches of the sigmoid) is written once.
    """

    def __init__(self, writer: _Writer, node: Node, dtype: DType):
        self.w, self.node, self.dtype = writer, node, dtype
        self.done: dict[sp.Basic, str] = {}

    def write(self, expr: sp.Basic, symbols: dict[sp.Symbol, str]) -> str:
        self.done.update(symbols)
        return self.value(expr)

    def value(self, e: sp.Basic) -> str:
        if e not in self.done:
            self.done[e] = self._write(e)
        return self.done[e]

    def number(self, value: float) -> str:
        return self.w.constant(value, self.dtype.np)

    def emit(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.w.emit(op_type, inputs, self.node.op, self.node, **attrs)

    def fold(self, op_type: str, args: Sequence[sp.Basic]) -> str:
        names = [self.value(a) for a in args]
        if op_type in ("Max", "Min"):
            return self.emit(op_type, names)
        result = names[0]
        for name in names[1:]:
            result = self.emit(op_type, [result, name])
        return result

    def _write(self, e: sp.Basic) -> str:
        if e is sp.true or e is sp.false:
            return self.w.constant(bool(e), np.bool_)
        if e.is_Symbol:
            raise unsupported(self.node, f"its expression uses symbol {e}, which is neither an input nor a parameter")
        if e.is_number and isinstance(e, sp.Expr) and not isinstance(e, sp.Piecewise):
            return self.number(np.nan if e is sp.zoo else float(e))
        if e.is_Add:
            return self.fold("Add", e.args)
        if e.is_Mul:
            return self._mul(e)
        if e.is_Pow:
            return self._pow(e.base, e.exp)
        if isinstance(e, sp.Piecewise):
            return self._piecewise(e.args)
        if isinstance(e, sp.ITE):
            return self.emit("Where", [self.value(a) for a in e.args])
        if isinstance(e, (sp.Max, sp.Min)):
            return self.fold(type(e).__name__, e.args)
        if isinstance(e, sp.Ne):
            return self.emit("Not", [self.emit("Equal", [self.value(e.lhs), self.value(e.rhs)])])
        if type(e) in _RELATIONS:
            return self.emit(_RELATIONS[type(e)], [self.value(e.lhs), self.value(e.rhs)])
        if type(e) in _LOGIC:
            return self.fold(_LOGIC[type(e)], e.args)
        if isinstance(e, sp.Not):
            return self.emit("Not", [self.value(e.args[0])])
        if isinstance(e, IsNaN):
            return self.emit("IsNaN", [self.value(e.args[0])])
        if type(e) in _UNARY:
            return self.emit(_UNARY[type(e)], [self.value(e.args[0])])
        if isinstance(e, sp.log) and len(e.args) == 2:
            return self.emit("Div", [self.value(sp.log(e.args[0])), self.value(sp.log(e.args[1]))])
        if isinstance(e, sp.frac):
            (u,) = e.args
            return self.value(u - sp.floor(u))
        if isinstance(e, sp.Mod):
            a, b = e.args
            return self.value(a - b * sp.floor(a / b))
        cast_to = next((name for name, fn in CAST_FUNCTIONS.items() if isinstance(e, fn)), None)
        if cast_to is not None:  # rounding to float32 is a value: round, then compute on in the node's dtype
            rounded = self.w.emit("Cast", [self.value(e.args[0])], cast_to, self.node,
                                  to=self.w.tensor_type(as_dtype(cast_to)))
            return self.w.cast(rounded, as_dtype(cast_to), self.dtype)
        raise unsupported(self.node, f"its expression {_short(self.node)} uses {type(e).__name__} ({e}), for which the "
                                     f"exporter knows no ONNX ops (it writes +, *, powers, exp, log, trigonometric and "
                                     f"hyperbolic functions, erf, abs, sign, floor, ceiling, Mod, Max, Min, Piecewise "
                                     f"and comparisons)")

    def _mul(self, e: sp.Mul) -> str:
        # a * b / (c * d): the factors with a negative exponent form one denominator (1/(1 + exp(-x)) is a Div)
        numerator, denominator = [], []
        for factor in e.args:
            if factor.is_Pow and factor.exp.is_number and factor.exp.is_negative:
                denominator.append(factor.base ** -factor.exp)
            elif factor.is_Rational and factor.q != 1:  # x/2 is Mul(1/2, x)
                numerator.append(sp.Integer(factor.p))
                denominator.append(sp.Integer(factor.q))
            else:
                numerator.append(factor)
        negate = sp.Integer(-1) in numerator
        numerator = [f for f in numerator if f != 1 and f != -1]
        top = self.fold("Mul", numerator) if numerator else self.number(1.0)
        if denominator:
            top = self.emit("Div", [top, self.fold("Mul", denominator)])
        return self.emit("Neg", [top]) if negate else top

    def _pow(self, base: sp.Basic, exponent: sp.Basic) -> str:
        if exponent == sp.Rational(1, 2):
            return self.emit("Sqrt", [self.value(base)])
        if exponent.is_number and exponent.is_negative:
            return self.emit("Div", [self.number(1.0), self.value(base ** -exponent)])
        if exponent == 2:
            b = self.value(base)
            return self.emit("Mul", [b, b])
        if exponent == 1:
            return self.value(base)
        return self._general_pow(base, exponent)

    def _general_pow(self, base: sp.Basic, exponent: sp.Basic) -> str:
        """graphc's pow (graphc.ops.elementwise.numpy_power): NaN for a negative base, -inf included, with a
        finite non-integer exponent; C's pow elsewhere, which is ONNX's Pow (it gives pow(-inf, 0.5) = +inf)."""
        b, e = self.value(base), self.value(exponent)
        power = self.emit("Pow", [b, e])
        if exponent.is_number:
            if exponent.is_integer or not exponent.is_finite:
                return power
            fractional = self.w.constant(True, np.bool_)
        else:
            not_whole = self.emit("Not", [self.emit("Equal", [self.emit("Floor", [e]), e])])
            infinite = self.emit("Or", [self.emit("IsInf", [e]), self.emit("IsNaN", [e])])
            fractional = self.emit("And", [not_whole, self.emit("Not", [infinite])])
        undefined = self.emit("And", [self.emit("Less", [b, self.number(0.0)]), fractional])
        return self.emit("Where", [undefined, self.number(np.nan), power])

    def _piecewise(self, pieces: Sequence[tuple[sp.Basic, sp.Basic]]) -> str:
        # numpy.select's meaning: the first true condition's value; NaN where none holds
        value, cond = pieces[-1]
        result = self.value(value) if cond is sp.true else self.emit(
            "Where", [self.value(cond), self.value(value), self.number(np.nan)])
        for value, cond in reversed(pieces[:-1]):
            result = self.emit("Where", [self.value(cond), self.value(value), result])
        return result


def _short(node: Node) -> str:
    """The scalar expression an elementwise or epilogue node computes, cut to one line of a message."""
    text = str(node.attrs["expr"] if "expr" in node.attrs else node_expression(node)[0])
    return text if len(text) < 120 else text[:117] + "..."
