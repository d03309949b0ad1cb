"""The import layers (DESIGN.md, "Layout"), and the op facts that let the layers above ask the registry.

Layers: imports only go down the pipeline, with no cycles. pyproject.toml's ``[tool.importlinter]``
contracts say it; these tests run ``lint-imports`` (import-linter, in the ``dev`` extra) on the repository
and show its report when a contract is broken. import-linter reads every import statement, function-level
ones included, so a lazy import that runs backwards breaks it too.

Op facts (issue 11, item 4): passes and backends ask an op's registry entry (source, view, gemm_product,
label_operand, from_output, its scalar expression) instead of keeping lists of op names.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import graphc
from graphc.ir import Attrs, Node, float64
from graphc.ops import all_ops, is_elementwise, node_expression, registry
from graphc.ops.elementwise import define, derivative_op, fused_symbols, numpy_function

#: The repository of the graphc under test (its pyproject.toml holds the contracts).
ROOT = Path(graphc.__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    """``lint-imports`` run from the repository root (the one installed beside this Python, else on PATH)."""
    beside = Path(sys.executable).with_name("lint-imports")
    program = str(beside) if beside.exists() else shutil.which("lint-imports")
    if program is None:
        pytest.fail("lint-imports is not installed: import-linter is in the dev extra (pip install -e '.[dev]')")
    return subprocess.run([program, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def report(result: subprocess.CompletedProcess) -> str:
    return f"lint-imports exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def test_the_import_contracts_hold():
    result = lint_imports()
    assert result.returncode == 0, report(result)
    assert "0 broken" in result.stdout, report(result)


def contracts_ini(contracts: list[dict], extra: dict | None = None) -> str:
    """pyproject's contracts as an ``.importlinter`` INI file, each with ``extra`` options added."""
    def value(v) -> str:
        if isinstance(v, list):
            return "".join(f"\n    {item}" for item in v)
        return str(v)

    lines = ["[importlinter]", "root_package = graphc", ""]
    for k, contract in enumerate(contracts):
        lines.append(f"[importlinter:contract:{k}]")
        for key, v in {**contract, **(extra or {}).get(contract["type"], {})}.items():
            lines.append(f"{key} = {value(v)}")
        lines.append("")
    return "\n".join(lines)


def pyproject_contracts() -> list[dict]:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_the_contracts_name_the_pipeline_in_order():
    contracts = {c["name"]: c for c in pyproject_contracts()}
    stages = next(c for c in contracts.values() if c.get("containers") == ["graphc"])
    assert stages["type"] == "layers" and stages["exhaustive"] is True
    order = [layer.split(" | ") for layer in stages["layers"]]
    flat = [name for layer in order for name in layer]
    # DESIGN.md: ir -> ops -> dsl -> autodiff -> passes -> backends -> nn/optim/train -> cli
    for lower, upper in [("ir", "ops"), ("ops", "dsl"), ("dsl", "autodiff"), ("autodiff", "passes"),
                         ("passes", "backends"), ("backends", "nn"), ("backends", "optim"), ("optim", "train"),
                         ("nn", "train"), ("train", "cli")]:
        assert flat.index(upper) < flat.index(lower), f"{upper} must sit above {lower}: {stages['layers']}"
    assert any(c["type"] == "acyclic_siblings" for c in contracts.values())
    assert any(c.get("containers") == ["graphc.backends"] for c in contracts.values())


def test_the_linter_reports_an_import_that_runs_backwards(tmp_path):
    # The contracts are not vacuous: with dsl put below ops, dsl's imports of graphc.ops break the contract.
    contracts = pyproject_contracts()
    stages = next(c for c in contracts if c.get("containers") == ["graphc"])
    swapped = [("dsl" if layer == "ops" else "ops" if layer == "dsl" else layer) for layer in stages["layers"]]
    config = tmp_path / "swapped.importlinter"
    config.write_text(contracts_ini([dict(stages, layers=swapped)]))
    result = lint_imports(str(config))
    assert result.returncode != 0, report(result)
    assert "graphc.dsl is not allowed to import graphc.ops" in result.stdout, report(result)
    assert "graphc.dsl -> graphc.ops.tensor" in result.stdout, report(result)


# graphc/backends/numba_cpu is another engineer's (issue 11's renderer). Its one remaining break:
# numba_cpu/cache.py imports the package root for graphc.__version__ (graphc._version is the place to read
# it); the package root imports every stage, so the backend depends on nn, optim, train, datasets and the
# reference backend. Everything else must keep the contracts already.
NUMBA_CPU_EXCEPTIONS = {
    "layers": {"ignore_imports": ["graphc.backends.numba_cpu.* -> graphc"], "unmatched_ignore_imports_alerting": "none"},
}


def test_the_contracts_hold_outside_the_numba_cpu_backend(tmp_path):
    config = tmp_path / "outside_numba_cpu.importlinter"
    config.write_text(contracts_ini(pyproject_contracts(), NUMBA_CPU_EXCEPTIONS))
    result = lint_imports(str(config))
    assert result.returncode == 0, report(result) + "\nconfig:\n" + config.read_text()


# -- op facts on the registry entry ------------------------------------------------------------------------

def test_sources_views_and_gemm_products_are_facts_of_their_entries():
    # The sets the issue names: sources exist before the first kernel runs; only a C-order reshape shares
    # its input's memory; matmul and matmul_epilogue are one GEMM each (alpha/beta can absorb an update).
    assert {op.name for op in all_ops() if op.source} == {"input", "param", "constant"}
    assert {op.name for op in all_ops() if op.view} == {"reshape"}
    assert {op.name for op in all_ops() if op.gemm_product} == {"matmul", "matmul_epilogue"}
    with graphc.Graph():
        x = graphc.input("x", (2, 3))
        w = graphc.param("w", np.ones((3, 3), np.float32))
        nodes = {"input": x, "param": w, "constant": graphc.constant(1.0), "reshape": graphc.reshape(x, (3, 2)),
                 "transpose": graphc.transpose(x), "matmul": x @ w}
    assert [k for k, t in nodes.items() if registry.is_source(t.node)] == ["input", "param", "constant"]
    assert [k for k, t in nodes.items() if registry.is_view(t.node)] == ["reshape"]
    assert [k for k, t in nodes.items() if graphc.passes.is_kernel(t.node)] == ["transpose", "matmul"]


def test_label_operand_names_the_integer_labels_and_the_class_count():
    with graphc.Graph():
        logits = graphc.input("logits", (4, 7))
        labels = graphc.input("labels", (4,), "int64")
        rows = graphc.input("rows", (4, 7))
        one_hot = graphc.one_hot(labels, 7)
        sparse = graphc.softmax_cross_entropy(logits, labels)
        dense = graphc.softmax_cross_entropy(logits, rows)   # one-hot rows: floats, no index to check
        relu = graphc.relu(logits)
    label_operand = {name: registry.get(t.op).label_operand(t.node)
                     for name, t in [("one_hot", one_hot), ("sparse", sparse), ("dense", dense), ("relu", relu)]}
    assert label_operand == {"one_hot": (0, 7), "sparse": (1, 7), "dense": None, "relu": None}
    assert sparse.node.inputs[1] is labels.node and one_hot.node.inputs[0] is labels.node


@pytest.mark.parametrize("name", sorted(op.name for op in all_ops() if op.from_output is not None))
def test_from_output_is_the_derivative_as_a_function_of_the_output(name):
    # Oracle: float64 central differences of the op's NumPy reference, away from kinks (relu at 0, ...).
    op = registry.get(name)
    attrs = Attrs({p: 0.2 for p in op.params})  # alpha = 0.2 for leaky_relu and elu
    x = np.array([-2.5, -1.0, -0.3, 0.4, 1.0, 2.5])
    h = 1e-6
    f = lambda v: op.reference([v], attrs)  # noqa: E731
    numeric = (f(x + h) - f(x - h)) / (2 * h)
    y = sp.Symbol("y", real=True)
    d = numpy_function([y], sp.sympify(op.from_output(y, *[attrs[p] for p in op.params])))
    got = np.broadcast_to(np.asarray(d(f(x)), np.float64), x.shape)
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


def test_an_op_registered_with_from_output_gets_its_derivative_from_its_output(scratch_registry):
    # A new activation (2^x, whose derivative is log(2) * 2^x = log(2) * y) declares the fact on its entry;
    # the activations pass finds it there, as it does for relu or sigmoid.
    define("exp2_for_test", lambda x: 2 ** x, from_output=lambda y: sp.log(2) * y)
    d_name = derivative_op("exp2_for_test", 0)
    with graphc.Graph() as g:
        z = graphc.input("z", (5,), "float64")
        h = graphc.apply("exp2_for_test", [z])
        d = graphc.apply(d_name, [z])
        g.output(h, d)
    out = graphc.passes.derivatives_from_outputs(g)
    fused = [n for n in out.nodes if n.op == "fused"]
    assert len(fused) == 1 and fused[0].inputs[0].op == "exp2_for_test"
    zv = np.array([-3.0, -0.5, 0.0, 1.5, 4.0])
    _, got = graphc.ops.interpret.evaluate(out, {"z": zv})
    np.testing.assert_allclose(got, np.log(2) * 2 ** zv, rtol=1e-13)


def test_node_expression_substitutes_attributes_and_defaults():
    x = Node("input", (), Attrs(), (3,), float64, name="x")
    with_alpha = Node("leaky_relu", (x,), Attrs({"alpha": 0.25}), (3,), float64)
    default_alpha = Node("leaky_relu", (x,), Attrs(), (3,), float64)   # no attribute: leaky_relu's 0.01
    points = np.array([-2.0, 0.0, 3.0])
    for node, alpha in [(with_alpha, 0.25), (default_alpha, 0.01)]:
        expr, symbols = node_expression(node)
        assert len(symbols) == 1
        np.testing.assert_allclose(numpy_function(symbols, expr)(points), np.where(points > 0, points, alpha * points))
    # A fused node's expression is over one symbol per input, even an input its expression does not use.
    x0, x1 = fused_symbols(2)
    fused = Node("fused", (x, x), Attrs({"expr": 3 * x0, "dtype": "float64"}), (3,), float64)
    assert node_expression(fused) == (3 * x0, (x0, x1))


def test_is_elementwise_is_fused_nodes_and_ops_with_an_expression():
    with graphc.Graph():
        x = graphc.input("x", (2, 2))
        kinds = {"relu": graphc.relu(x), "leaky_relu": graphc.leaky_relu(x, alpha=0.3), "matmul": x @ x,
                 "sum": graphc.sum(x), "input": x, "fused": graphc.ops.elementwise.fused(fused_symbols(1)[0] * 2, [x],
                                                                                       "float32"),
                 "derivative": graphc.apply(derivative_op("tanh", 0), [x])}
    assert [k for k, t in kinds.items() if is_elementwise(t.node)] == ["relu", "leaky_relu", "fused", "derivative"]


def test_a_gradient_product_waits_for_a_reader_of_its_parameter_through_a_transpose():
    # Regression guard (passes before this change too): reconciling "is a view" to reshape alone must keep
    # schedule.py's reading of transposes, which a backend may not compute where they stand (a GEMM reads
    # a transposed operand in place), so w is read when x @ w.T runs, and the product that will be
    # accumulated into w (BLAS beta) must come after it, not just after the transpose node.
    from graphc.passes.schedule import sink_update_products

    with graphc.Graph() as g:
        x = graphc.input("x", (2, 3))
        w = graphc.param("w", np.ones((3, 3), np.float32))
        dw = graphc.transpose(x) @ x                   # w's gradient product, built first
        g.output(graphc.sum(x @ graphc.transpose(w)))
        g.update(w, w - dw)
    order = [(n.op, [i.op for i in n.inputs], [j.op for i in n.inputs for j in i.inputs]) for n in sink_update_products(g).nodes]
    product = order.index(("matmul", ["transpose", "input"], ["input"]))
    reader = order.index(("matmul", ["input", "transpose"], ["param"]))
    assert order[product - 1:product + 1] == [order[reader], order[product]]  # just after the reader
