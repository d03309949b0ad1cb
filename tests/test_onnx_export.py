"""graphc.export_onnx: inference graphs as ONNX files, run by onnxruntime (the oracle) against graphc's backends.

The models of examples/mnist_mlp.py, mnist_lenet5.py and fashion_resnet.py (random weights, random batch-norm
statistics) agree with the cpu backend to 1e-5; every elementwise op of the registry, the activation zoo and
user SymPy activations agree with the reference backend; the files pass onnx.checker and import opset 17.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import graphc
from graphc.backends import reference
from graphc.nn import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    Module,
    Residual,
    Sequential,
)
from graphc.ops import registry

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from graphc.onnx_export import EXACT, OPSET, RULES, OnnxExportError  # noqa: E402  (after the skip: main has none)

HERE = os.path.basename(__file__)
DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "onnx.md")


def run_onnx(path: str, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def reference_outputs(graph: graphc.Graph, feeds: dict) -> list[np.ndarray]:
    return reference.evaluate(graph, feeds, graph.outputs)


def op_types(path: str) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


# -- the three models of the examples, against the cpu backend ------------------------------------------------------

def mnist_mlp() -> Sequential:
    """examples/mnist_mlp.py's 784-512-256-10 network."""
    return Sequential([Dense(h, "relu", init="he_normal") for h in (512, 256)] + [Dense(10)], input_shape=(784,))


def lenet5() -> Sequential:
    """examples/mnist_lenet5.py's LeNet-5."""
    return Sequential([
        Conv2D(6, 5, padding=2, activation="relu"), MaxPool2D(2),
        Conv2D(16, 5, activation="relu"), MaxPool2D(2),
        Flatten(), Dense(120, "relu"), Dense(84, "relu"), Dense(10),
    ], input_shape=(1, 28, 28), seed=1)


def fashion_resnet() -> Sequential:
    """examples/fashion_resnet.py's residual CNN, its batch norms given random running statistics."""
    def block(channels):
        return Residual([Conv2D(channels, 3, padding=1), BatchNorm(), Activation("relu"),
                         Conv2D(channels, 3, padding=1), BatchNorm()], activation="relu")

    model = Sequential([
        Conv2D(16, 3, padding=1), BatchNorm(), Activation("relu"),
        block(16), MaxPool2D(2),
        Conv2D(32, 3, padding=1), BatchNorm(), Activation("relu"),
        block(32), MaxPool2D(2),
        AvgPool2D(7), Flatten(), Dropout(0.2), Dense(10),
    ], input_shape=(1, 28, 28), seed=2)
    rng = np.random.default_rng(3)
    for m in model.modules():
        if isinstance(m, BatchNorm):  # inference uses the running statistics: make them matter
            c = m.values["gamma"].shape
            m.values["gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            m.values["beta"] = rng.normal(0, 0.2, c).astype(np.float32)
            m.values["running_mean"] = rng.normal(0, 0.3, c).astype(np.float32)
            m.values["running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return model


@pytest.mark.parametrize("build", [mnist_mlp, lenet5, fashion_resnet], ids=["mlp_784", "lenet5", "fashion_resnet"])
def test_example_models_agree_with_the_cpu_backend(build, tmp_path):
    model = build()
    x = np.random.default_rng(0).uniform(0, 1, (8,) + model.in_shape).astype(np.float32)
    expected = graphc.train.predict_outputs(model, x, batch_size=8, backend="cpu")
    path = graphc.export_onnx(model, tmp_path / "model.onnx")
    assert path == str(tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    np.testing.assert_allclose(run_onnx(path, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    # the batch axis is free: any number of rows (rows are independent in inference)
    for rows in (1, 3):
        np.testing.assert_allclose(run_onnx(path, {"x": x[:rows]})[0], expected[:rows], rtol=1e-5, atol=1e-5)


def test_batch_norm_is_exported_in_inference_form(tmp_path):
    """The file normalizes with the running statistics, not the batch's: one row gives the same as eight."""
    model = fashion_resnet()
    path = graphc.export_onnx(model, tmp_path / "bn.onnx")
    assert not {"BatchNormalization", "ReduceMean"} & op_types(path)
    x = np.random.default_rng(1).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    g = graphc.train.loop.build_eval(model, 1)
    np.testing.assert_allclose(run_onnx(path, {"x": x})[0], reference_outputs(g, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_export_file_imports_the_documented_opset_and_names_its_dimensions(tmp_path):
    path = graphc.export_onnx(mnist_mlp(), tmp_path / "mlp.onnx")
    model = onnx.load(path)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)] and OPSET == 17
    assert model.producer_name == "graphc"
    (x,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    assert (x.name, dims) == ("x", ["N", 784])
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == ["N", 10]
    assert {i.name for i in model.graph.initializer} >= {"dense_1.W", "dense_1.b", "dense_3.W"}
    assert "Gemm" in op_types(path) and "Relu" in op_types(path)
    with open(DOCS) as f:
        assert f"opset {OPSET}" in f.read()


def test_fixed_batch_size(tmp_path):
    model = Sequential([Dense(3, "tanh")], input_shape=(4,))
    path = graphc.export_onnx(model, tmp_path / "b4.onnx", batch_size=4)
    x = onnx.load(path).graph.input[0]
    assert [d.dim_value for d in x.type.tensor_type.shape.dim] == [4, 4]


def test_unbuilt_model_is_built_with_input_shape(tmp_path):
    model = Sequential([Dense(3, "sigmoid")])
    path = graphc.export_onnx(model, tmp_path / "m.onnx", input_shape=(5,))
    x = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    g = graphc.train.loop.build_eval(model, 2)
    np.testing.assert_allclose(run_onnx(path, {"x": x})[0], reference_outputs(g, {"x": x})[0], rtol=1e-6)


def test_float64_model_keeps_float64_precision(tmp_path):
    model = Sequential([Dense(16, "elu"), Dense(8, "softplus"), Dense(3, "softmax")], input_shape=(5,), dtype=np.float64)
    path = graphc.export_onnx(model, tmp_path / "f64.onnx")
    x = np.random.default_rng(6).normal(0, 2, (4, 5))
    g = graphc.train.loop.build_eval(model, 4)
    got = run_onnx(path, {"x": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference_outputs(g, {"x": x})[0], rtol=1e-12, atol=1e-15)


# -- every elementwise op and the activation zoo, against the reference backend -------------------------------------

#: Inputs in each op's domain: large magnitudes (the overflow-free branches), the breakpoints of the
#: piecewise activations (0, 1), and points in between.
WIDE = np.array([-200, -88, -30, -3, -1, -0.5, -1e-3, 0, 1e-3, 0.5, 1, 2, 3, 30, 88, 200], np.float32)
POSITIVE = np.array([1e-3, 0.1, 0.5, 1, 2, 3, 10, 30, 100], np.float32)


def _operands(op: registry.OpDef) -> list[np.ndarray]:
    if op.name in ("log", "sqrt"):
        return [POSITIVE]
    if op.name == "pow":
        return [np.repeat(POSITIVE, 3), np.tile(np.array([-1.5, 0.5, 2.0], np.float32), len(POSITIVE))]
    if op.name == "div":
        return [WIDE, WIDE[::-1] + np.float32(0.25)]
    if op.name == "where":
        return [(WIDE > 0).astype(np.float32), WIDE, WIDE[::-1]]
    if op.name == "gaussian":
        return [np.clip(WIDE, -10, 10)]
    others = [WIDE[::-1], np.roll(WIDE, 3)]
    return [WIDE] + others[:len(op.symbols) - 1]


ELEMENTWISE = sorted(op.name for op in registry.all_ops()
                     if op.is_elementwise and op.derivative_of is None and op.name not in ("cast", "fused"))


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_elementwise_op_agrees_with_the_reference(name, tmp_path):
    op = registry.get(name)
    arrays = _operands(op)
    with graphc.Graph(name) as g:
        inputs = [graphc.input(f"x{k}", a.shape, "float32") for k, a in enumerate(arrays)]
        g.output(graphc.apply(name, inputs, dict(op.params)))
    feeds = {f"x{k}": a for k, a in enumerate(arrays)}
    path = graphc.export_onnx(g, tmp_path / f"{name}.onnx")
    got, expected = run_onnx(path, feeds)[0], reference_outputs(g, feeds)[0]
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if name in EXACT:  # exact ONNX ops where they exist
        assert EXACT[name][0] in op_types(path)


#: NaN, the infinities, zero and one, in every pairing of the operands.
NONFINITE = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0, 0.5, -2.5], np.float32)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_nan_and_infinities_come_out_as_in_the_reference(name, tmp_path):
    """Exact ops and decompositions keep graphc's IEEE semantics (relu(NaN) = NaN, sigmoid(-inf) = 0, and
    graphc's pow: (-inf) ** 0.5 is NaN where C's pow gives +inf)."""
    op = registry.get(name)
    grids = np.meshgrid(*[NONFINITE] * len(op.symbols), indexing="ij")
    arrays = [a.reshape(-1) for a in grids]
    if name == "where":
        arrays[0] = np.isfinite(arrays[0]).astype(np.float32)  # a condition: nonzero is true
    with graphc.Graph(name) as g:
        inputs = [graphc.input(f"x{k}", a.shape, "float32") for k, a in enumerate(arrays)]
        g.output(graphc.apply(name, inputs, dict(op.params)))
    feeds = {f"x{k}": a for k, a in enumerate(arrays)}
    path = graphc.export_onnx(g, tmp_path / f"{name}.onnx")
    got, expected = run_onnx(path, feeds)[0], reference_outputs(g, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0, equal_nan=True)


#: The activation zoo with non-default parameters (the node's attributes reach the ONNX op or expression).
ZOO = [
    ("relu", {}), ("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"alpha": 0.2}), ("elu", {"alpha": 0.5}),
    ("selu", {}), ("softplus", {}), ("softsign", {}), ("gaussian", {"mu": 0.5, "sigma": 2.0}),
    ("step", {"a": -1.0, "b": 2.0, "c": 0.5}), ("ramp", {"a": -1.0, "b": 3.0, "c": -0.5, "d": 2.0}),
    ("identity", {}), ("sigmoid_zxy", {"z": 0.5, "x": 2.0, "y": -1.0}),
]


@pytest.mark.parametrize("name,params", ZOO, ids=[n for n, _ in ZOO])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_zoo_with_parameters(name, params, dtype, tmp_path):
    x = np.concatenate([WIDE, np.array([-0.5, 0.5, 2.0])]).astype(dtype)  # step's and ramp's breakpoints
    with graphc.Graph(name) as g:
        g.output(getattr(graphc, name)(graphc.input("x", x.shape, dtype), **params))
    path = graphc.export_onnx(g, tmp_path / "act.onnx")
    got, expected = run_onnx(path, {"x": x})[0], reference_outputs(g, {"x": x})[0]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-7)


def test_dense_layer_activations_by_name(tmp_path):
    """The names Dense(..., activation=) accepts, softmax included, through a model."""
    for act in ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "softplus", "softsign", "gaussian", "step",
                "ramp", "identity", "softmax"):
        model = Sequential([Dense(6, act)], input_shape=(4,), seed=5)
        path = graphc.export_onnx(model, tmp_path / f"{act}.onnx")
        x = np.random.default_rng(2).normal(0, 3, (5, 4)).astype(np.float32)
        g = graphc.train.loop.build_eval(model, 5)
        np.testing.assert_allclose(run_onnx(path, {"x": x})[0], reference_outputs(g, {"x": x})[0], rtol=1e-5,
                                   atol=1e-6, err_msg=act)


def test_user_sympy_activations_are_decomposed(tmp_path):
    swish = graphc.elementwise("onnx_swish", lambda x: x * graphc.sympy_sigmoid(x))
    wild = graphc.elementwise(
        "onnx_wild", lambda x, a: (a * sp.Max(x, 0) ** sp.Rational(3, 2) + sp.Min(x, -1) * sp.exp(-sp.Abs(x))
                                   + sp.log(1 + x ** 2) / 3 - sp.sqrt(x ** 2 + 1) ** -1
                                   + sp.Piecewise((sp.sin(x), x < -1), (sp.cos(x) * sp.atan(x), x < 1), (x ** -2, True))
                                   + sp.Mod(x, 2) + sp.floor(x / 3) - sp.sign(x) * sp.tanh(x)),
        params={"a": 0.5})
    mix = graphc.elementwise("onnx_mix", lambda x, y: sp.Piecewise((x * y, (x > 0) & (y > 0)), (x - y, x > y),
                                                                   (sp.nan, sp.Eq(x, y)), (x / (1 + y ** 2), True)), 2)
    x = np.concatenate([WIDE, np.linspace(-5, 5, 41, dtype=np.float32)])
    y = np.roll(x, 5)
    y[-3:] = x[-3:]  # x == y: the NaN branch
    with graphc.Graph("user") as g:
        xi, yi = graphc.input("x", x.shape, "float32"), graphc.input("y", y.shape, "float32")
        g.output(swish(xi), wild(xi, a=1.5), mix(xi, yi))
    path = graphc.export_onnx(g, tmp_path / "user.onnx")
    types = op_types(path)
    assert {"Where", "Max", "Min", "Floor"} <= types
    for got, expected in zip(run_onnx(path, {"x": x, "y": y}), reference_outputs(g, {"x": x, "y": y})):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


# -- the ops of inference graphs, with their geometry -----------------------------------------------------------------

def test_graph_inputs_keep_their_names_and_outputs_are_numbered(tmp_path):
    """Inputs are fed by name: each keeps its own (one the outputs do not need too), whatever the constants'."""
    with graphc.Graph("names") as g:
        a = graphc.input("const", (2, 3), "float32")
        graphc.input("unused", (4,), "float32")
        b = graphc.input("x", (2, 3), "float64")
        g.output(a * 2.0 + 1.0, graphc.exp(b) - a)
    path = graphc.export_onnx(g, tmp_path / "names.onnx")
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["const", "unused", "x"]
    assert [o.name for o in model.graph.output] == ["output_0", "output_1"]
    feeds = {"const": np.arange(6, dtype=np.float32).reshape(2, 3), "unused": np.zeros(4, np.float32),
             "x": np.linspace(-1, 1, 6).reshape(2, 3)}
    for got, expected in zip(run_onnx(path, feeds), reference_outputs(g, feeds)):
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_graph_with_conv_geometry_pooling_and_shape_ops(tmp_path):
    rng = np.random.default_rng(4)
    xv = rng.normal(size=(2, 3, 11, 9)).astype(np.float32)
    with graphc.Graph("ops") as g:
        x = graphc.input("x", xv.shape, "float32")
        w = graphc.param("w", rng.normal(size=(4, 3, 3, 2)).astype(np.float32))
        wt = graphc.param("wt", rng.normal(size=(4, 2, 3, 3)).astype(np.float32))
        c = graphc.conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(2, 1))
        m = graphc.max_pool2d(c, kernel=3, stride=2, padding=1)
        a = graphc.avg_pool2d(c, kernel=(2, 3), stride=(1, 2), padding=(1, 1))
        t = graphc.conv_transpose2d(m, wt, stride=2, padding=1, output_padding=1)
        flat = graphc.reshape(graphc.transpose(a, (0, 2, 3, 1)), (2, -1))
        joined = graphc.concatenate([flat, graphc.reshape(t, (2, -1))], axis=1)
        part = joined[:, 10:200:3]
        s = graphc.softmax(part, axis=1) + graphc.log_softmax(part, axis=0)
        stats = graphc.mean(c, (2, 3), keepdims=True) - graphc.max(c, axis=1, keepdims=True) + graphc.sum(c, 0)
        b = graphc.broadcast_to(graphc.reshape(graphc.min(flat, 1), (2, 1)), (2, 5))
        pick = graphc.where(graphc.greater(part, 0.0), part, graphc.clip(part, -0.5, 0.5))
        g.output(s, stats, b, pick, graphc.argmax(joined, 1), graphc.matmul(flat, graphc.transpose(flat)))
    path = graphc.export_onnx(g, tmp_path / "ops.onnx")
    assert {"Conv", "MaxPool", "AveragePool", "ConvTranspose", "Concat", "Slice", "Expand", "ArgMax"} <= op_types(path)
    for got, expected in zip(run_onnx(path, {"x": xv}), reference_outputs(g, {"x": xv})):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_optimized_graph_with_fused_and_epilogue_nodes(tmp_path):
    rng = np.random.default_rng(5)
    xv = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    with graphc.Graph("fusable") as g:
        x = graphc.input("x", xv.shape, "float32")
        w = graphc.param("w", rng.normal(size=(4, 2, 3, 3)).astype(np.float32))
        b = graphc.param("b", rng.normal(size=(1, 4, 1, 1)).astype(np.float32))
        h = graphc.elu(graphc.conv2d(x, w, padding=1) + b, alpha=0.3)
        flat = graphc.reshape(h, (3, -1))
        wd = graphc.param("wd", rng.normal(size=(144, 5)).astype(np.float32) * 0.1)
        g.output(graphc.softplus(graphc.matmul(flat, wd) * 2.0 + 1.0))
    optimized = graphc.optimize(g, level=2).graph
    assert {"conv2d_epilogue", "matmul_epilogue"} & {n.op for n in optimized.nodes}
    path = graphc.export_onnx(optimized, tmp_path / "fused.onnx")
    np.testing.assert_allclose(run_onnx(path, {"x": xv})[0], reference_outputs(g, {"x": xv})[0], rtol=1e-5, atol=1e-5)


def test_docs_table_lists_every_exported_op():
    with open(DOCS) as f:
        text = f.read()
    missing = [name for name in sorted(set(RULES) | set(EXACT)) if f"`{name}`" not in text]
    assert not missing, f"docs/onnx.md does not list {missing}"


# -- errors --------------------------------------------------------------------------------------------------------

def test_training_op_is_refused_naming_the_op_and_line(tmp_path):
    with graphc.Graph("loss") as g:
        logits = graphc.input("logits", (4, 3), "float32")
        labels = graphc.input("labels", (4,), "int64")
        line = sys._getframe().f_lineno + 1
        g.output(graphc.softmax_cross_entropy(logits, labels))
    with pytest.raises(OnnxExportError, match=rf"(?s)softmax_cross_entropy.*inference graphs.*{HERE}:{line}"):
        graphc.export_onnx(g, tmp_path / "loss.onnx")
    assert not os.path.exists(tmp_path / "loss.onnx")


def test_training_step_is_refused(tmp_path):
    model = Sequential([Dense(2)], input_shape=(3,))
    step = graphc.train.loop.build_train_step(model, 4, graphc.optim.SGD(0.1))
    line = sys._getframe().f_lineno + 3
    with pytest.raises(OnnxExportError, match=rf"(?s)graph 'train_step' updates parameter 'dense_1\.W' in place "
                                              rf"\(a training step\).*build_eval.*{HERE}:{line}"):
        graphc.export_onnx(step, tmp_path / "step.onnx")


def test_expression_without_onnx_ops_names_function_op_and_line(tmp_path, scratch_registry):
    # scratch_registry: gamma has no scalar code on the llvm target and the reference backend cannot apply it to
    # arrays; left registered, it would join the tests that walk every registered op (tests/test_export.py, ...)
    # whenever those run after this one in the same process (as they do under pytest-xdist).
    gamma_act = graphc.elementwise("onnx_gamma_act", lambda x: sp.gamma(x + 3))
    with graphc.Graph("g") as g:
        x = graphc.input("x", (3,), "float32")
        line = sys._getframe().f_lineno + 1
        g.output(gamma_act(x))
    with pytest.raises(OnnxExportError, match=rf"(?s)onnx_gamma_act.*uses gamma.*no ONNX ops.*{HERE}:{line}"):
        graphc.export_onnx(g, tmp_path / "gamma.onnx")


def test_model_argument_errors(tmp_path):
    with pytest.raises(OnnxExportError, match=rf"expected a graphc.nn Module or a graphc.Graph, got int\n  at .*{HERE}"):
        graphc.export_onnx(42, tmp_path / "x.onnx")
    with pytest.raises(OnnxExportError, match=r"model 'model' is not built yet; give input_shape"):
        graphc.export_onnx(Sequential([Dense(2)]), tmp_path / "x.onnx")
    with pytest.raises(OnnxExportError, match=r"input_shape \[5\] differs from the shape \[3\]"):
        graphc.export_onnx(Sequential([Dense(2)], input_shape=(3,)), tmp_path / "x.onnx", input_shape=(5,))
    with pytest.raises(OnnxExportError, match=r"batch_size must be >= 1, got 0"):
        graphc.export_onnx(Sequential([Dense(2)], input_shape=(3,)), tmp_path / "x.onnx", batch_size=0)


class _Tiled(Module):
    """Adds a learned row broadcast to the batch size: its graph holds a batch-sized broadcast_to."""

    kind = "tiled"

    def _build(self, in_shape, rng, dtype):
        self.add_param("row", rng.normal(size=(1,) + tuple(in_shape)), dtype)
        return in_shape

    def forward(self, x, ctx):
        return x + graphc.broadcast_to(self.param(ctx, "row"), x.shape)


def test_batch_dependent_broadcast_needs_a_fixed_batch(tmp_path):
    model = Sequential([_Tiled(), Dense(2)], input_shape=(3,))
    with pytest.raises(OnnxExportError, match=r"(?s)broadcast_to.*size 1 to the batch size; give export_onnx a fixed "
                                              r"batch_size="):
        graphc.export_onnx(model, tmp_path / "t.onnx")
    path = graphc.export_onnx(model, tmp_path / "t.onnx", batch_size=2)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = graphc.train.loop.build_eval(model, 2)
    np.testing.assert_allclose(run_onnx(path, {"x": x})[0], reference_outputs(g, {"x": x})[0], rtol=1e-6)


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(OnnxExportError, match=re.escape("pip install 'graphc[onnx]'")):
        graphc.export_onnx(mnist_mlp(), tmp_path / "m.onnx")


def test_importing_graphc_does_not_import_onnx():
    code = "import sys, graphc; assert callable(graphc.export_onnx); print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
