"""The `graphc` command (graphc/cli.py) and the main-job example (examples/mlp_784.py)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import cli
from graphc.ops import all_ops

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command with this tree's graphc first on the path (not some other installed copy)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def builtin_op_names() -> set[str]:
    """Registered ops minus the d<op>_d<x> derivative ops autodiff registers on demand."""
    return {op.name for op in all_ops() if op.derivative_of is None}


# -- --version and --help ------------------------------------------------------------------------------------

def test_version_prints_the_package_version():
    result = run(sys.executable, "-m", "graphc", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"graphc {graphc.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", graphc.__version__)


def test_pyproject_takes_its_version_from_the_package():
    # One place for the version: pyproject and the package root read graphc/_version.py, so they cannot disagree.
    import graphc._version

    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert re.search(r'version\s*=\s*\{\s*attr\s*=\s*"graphc\._version\.__version__"\s*\}', text)
    assert graphc.__version__ == graphc._version.__version__
    assert re.search(r'^graphc = "graphc.cli:main"$', text, re.M)


def test_help_lists_the_ops_command():
    result = run(sys.executable, "-m", "graphc", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: graphc")
    assert re.search(r"^\s+ops\s+the op reference", result.stdout, re.M)


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert capsys.readouterr().out.startswith("usage: graphc")


def test_installed_console_script_runs():
    exe = shutil.which("graphc")
    if exe is None:
        pytest.skip("the graphc console script is not installed here (pip install -e . installs it)")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"graphc {graphc.__version__}"


# -- graphc ops --------------------------------------------------------------------------------------------

def test_ops_lists_every_registered_op_once(capsys):
    assert cli.main(["ops"]) == 0
    out = capsys.readouterr().out
    table, _, footer = out.rpartition("\n\n")
    listed = [line.split()[0] for line in table.splitlines() if line.strip()]
    expected = builtin_op_names()
    assert sorted(listed) == sorted(expected)
    assert f"{len(expected)} ops" in footer
    for line in table.splitlines():  # each line: name, family, then the op's doc
        name, family = line.split()[:2]
        assert family == graphc.ops.get(name).family


def test_ops_leaves_out_derivative_ops(capsys):
    from graphc.ops.elementwise import derivative_op

    dname = derivative_op("tanh", 0)  # registers dtanh_dx, as autodiff does
    assert dname is not None and graphc.ops.is_registered(dname)
    assert cli.main(["ops"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.split("\n\n")[0].splitlines()}
    assert dname not in listed and "tanh" in listed and "dense" in listed


def test_ops_detail_shows_expression_parameters_and_derivative(capsys):
    assert cli.main(["ops", "leaky_relu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("leaky_relu  (elementwise)")
    assert "parameters: alpha=0.01" in out
    assert "expression: Piecewise((x, x > 0), (alpha*x, True))" in out
    assert "d/dx: Piecewise((1, x > 0), (alpha, True))" in out


def test_ops_unknown_name_is_an_error(capsys):
    assert cli.main(["ops", "relu", "no_such_op"]) == 2
    err = capsys.readouterr().err
    assert "unknown op(s) no_such_op" in err


def test_ops_markdown_takes_no_names(capsys):
    assert cli.main(["ops", "--markdown", "relu"]) == 2
    assert "--markdown" in capsys.readouterr().err


def test_python_dash_m_ops_markdown_runs():
    result = run(sys.executable, "-m", "graphc", "ops", "--markdown")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# graphc op reference\n")
    for name in ("relu", "matmul", "conv2d", "softmax_cross_entropy"):
        assert f"\n### `{name}`\n" in result.stdout


# -- the main job: examples/mlp_784.py -------------------------------------------------------------------------

def load_example():
    spec = importlib.util.spec_from_file_location("mlp_784", ROOT / "examples" / "mlp_784.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_prints_the_course_parameter_count():
    result = run(sys.executable, "examples/mlp_784.py")
    assert result.returncode == 0, result.stderr
    # 784-512-256-10 with biases, counted independently: weights + biases of each layer.
    expected = (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)
    assert expected == 535_818
    assert f"parameters: {expected:,} ({expected})" in result.stdout
    assert "= 535,040 weights + 778 biases" in result.stdout
    assert "rows sum to 1:        True" in result.stdout
    assert "output probabilities: shape (8, 10)" in result.stdout
    classes = re.search(r"predicted classes:\s+\[([\d, ]+)\]", result.stdout).group(1)
    assert len(classes.split(",")) == 8
    # the graph's text form: three dense layers, two relus, one softmax
    ops = re.findall(r"^%\d+:\S+ = (\w+)", result.stdout, re.M)
    assert ops.count("dense") == 3 and ops.count("relu") == 2 and ops.count("softmax") == 1


def test_example_network_equals_plain_numpy():
    example = load_example()
    graph, probs = example.build_mlp(batch=5, seed=3)
    params = {p.name: p.value for p in graph.params}
    assert [params[f"W{k}"].shape for k in (1, 2, 3)] == [(784, 512), (512, 256), (256, 10)]
    # Glorot-uniform bound for the first layer: sqrt(6 / (784 + 512))
    assert np.abs(params["W1"]).max() <= np.sqrt(6 / (784 + 512))
    assert np.abs(params["W1"]).max() > 0.9 * np.sqrt(6 / (784 + 512))

    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    got = graphc.evaluate(probs, {"x": x})

    h = x.astype(np.float64)
    for k in (1, 2):
        h = np.maximum(h @ params[f"W{k}"] + params[f"b{k}"], 0.0)
    logits = h @ params["W3"] + params["b3"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
