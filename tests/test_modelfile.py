"""Model files (graphc.modelfile): a Python file defining model() and optionally loss, optimizer and data, loaded
without running its script part; the examples are such files and still run as scripts."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.datasets import Splits
from graphc.modelfile import ModelFile, ModelFileError, load_model_file
from graphc.nn import Sequential

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def write(tmp_path: Path, text: str, name: str = "net.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


# -- the examples are model files --------------------------------------------------------------------------------

# name -> (input shape, classes, trainable parameters counted by hand from the architecture, optimizer class, data)
EXAMPLE_MODELS = {
    # 784*512+512 + 512*256+256 + 256*10+10
    "mnist_mlp": ((784,), 10, 535_818, optim.Momentum, "mnist"),
    # conv 6*1*25+6, conv 16*6*25+16, 400*120+120, 120*84+84, 84*10+10
    "mnist_lenet5": ((1, 28, 28), 10, 61_706, optim.Adam, "data"),
    # conv 16*9+16, BN 2*16, block(16): 2 (16*16*9+16) + 2 (2*16), conv 32*16*9+32, BN 2*32,
    # block(32): 2 (32*32*9+32) + 2 (2*32), dense 32*10+10
    "fashion_resnet": ((1, 28, 28), 10, 28_554, optim.Adam, "data"),
    # 64*128+128 + 128*64+64 + 64*10+10
    "digits_mlp": ((64,), 10, 17_226, optim.Momentum, "data"),
    # 2*8+8 + 8*2+2
    "xor": ((2,), 2, 42, optim.SGD, "data"),
    # 64*64+64 + 64*10+10, with a user SymPy activation between
    "custom_activation": ((64,), 10, 4_810, optim.Adam, "data"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_MODELS))
def test_the_examples_are_model_files(name, capsys):
    in_shape, classes, params, optimizer, data = EXAMPLE_MODELS[name]
    mf = load_model_file(str(EXAMPLES / f"{name}.py"))
    assert isinstance(mf, ModelFile) and mf.path == str(EXAMPLES / f"{name}.py")
    assert isinstance(mf.model, Sequential) and (mf.model.in_shape, mf.model.out_shape) == (in_shape, (classes,))
    assert mf.model.parameter_count() == params
    assert type(mf.optimizer) is optimizer
    assert mf.data == data if isinstance(mf.data, str) else mf.data.__name__ == data
    assert mf.loss in (None, "softmax_cross_entropy")
    assert capsys.readouterr().out == ""  # loading declares the model; the script part does not run


def test_a_data_function_gives_the_splits():
    splits = load_model_file(str(EXAMPLES / "xor.py")).splits()
    assert isinstance(splits, Splits) and splits.classes == 2
    x, y = splits.train
    np.testing.assert_array_equal(y, np.logical_xor(x[:, 0], x[:, 1]).astype(np.int64))  # XOR's truth table


def script_env() -> dict:
    package_root = Path(graphc.__file__).resolve().parents[1]  # the graphc under test runs the example
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]))


def test_xor_still_runs_as_a_script_and_learns_xor():
    result = subprocess.run([sys.executable, "examples/xor.py", "--backend", "reference"], cwd=ROOT, env=script_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "learned XOR in 500 epochs" in result.stdout
    for a, b in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert f"  {a} xor {b} -> {a ^ b}\n" in result.stdout, result.stdout


def test_mnist_mlp_still_runs_as_a_script_with_its_options():
    """Regression guard (passes on main too): --hidden and --limit keep working now that the run is in main()."""
    result = subprocess.run([sys.executable, "examples/mnist_mlp.py", "--hidden", "8", "--limit", "200", "--epochs", "1",
                             "--backend", "reference"], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Splits(mnist: train=(200, 784), val=(200, 784), test=(200, 784), classes=10)" in result.stdout
    assert "MNIST MLP 784-8-10 (reference backend): test accuracy" in result.stdout


# -- other model files -----------------------------------------------------------------------------------------

def test_a_model_file_may_build_a_graph_and_import_beside_itself(tmp_path):
    write(tmp_path, "WIDTH = 3\n", name="helper_for_modelfile.py")
    path = write(tmp_path, """
        import numpy as np
        import graphc
        from helper_for_modelfile import WIDTH

        def model():
            with graphc.Graph("affine") as g:
                x = graphc.input("x", (2, WIDTH), "float64")
                g.output(graphc.relu(x @ graphc.param("w", np.eye(WIDTH))))
            return g
        loss = "mse"
        optimizer = graphc.optim.SGD(0.1)
    """)
    before = list(sys.path)
    mf = load_model_file(path)
    assert isinstance(mf.model, graphc.Graph) and mf.model.outputs[0].shape == (2, 3)
    assert (mf.loss, mf.data) == ("mse", None)
    assert sys.path == before  # the file's directory was on sys.path only while it ran


@pytest.mark.parametrize("text, message", [
    ("from graphc.nn import Dense\n\ndef model(:\n    pass\n", r"net.py:3: syntax error: "),
    ("import graphc\nX = 1\n", r"net.py:1: the file defines no model\(\); a model file defines model\(\) -> "),
    ("from graphc.nn import Dense, Sequential\nmodel = Sequential([Dense(2)], input_shape=(3,))\n",
     r"net.py:2: model is a Sequential, not a function; write `def model\(\): return \.\.\.`"),
    ("def model():\n    return 3\n", r"net.py:1: model\(\) returned 3 \(of type int\), not a graphc.nn model or a Graph"),
    ("def model():\n    x = 1\n    return x / 0\n", r"net.py:3: model\(\) raised ZeroDivisionError: division by zero"),
    ("import graphc\nwidth = undefined_name + 1\n", r"net.py:2: running the model file raised NameError: "),
    ("from graphc.nn import Dense, Sequential\ndef model():\n    return Sequential([Dense(2)])\n",
     r"net.py:2: model\(\) returned a Sequential that is not built: give its input shape"),
    ("from graphc.nn import Dense, Sequential\ndef model():\n    return Sequential([Dense(2)], input_shape=(3,))\n"
     "optimizer = 'adam'\n", r"net.py:4: optimizer is a str, not a graphc.optim optimizer"),
    ("from graphc.nn import Dense, Sequential\ndef model():\n    return Sequential([Dense(2)], input_shape=(3,))\n"
     "loss = 'hinge'\n", r"net.py:4: loss: fit: unknown loss='hinge'; the built-in losses are"),
    ("from graphc.nn import Dense, Sequential\ndef model():\n    return Sequential([Dense(2)], input_shape=(3,))\n"
     "data = 7\n", r"net.py:4: data is a int; it must be a dataset name"),
])
def test_a_wrong_model_file_is_refused_with_its_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ModelFileError, match=message) as err:
        load_model_file(path)
    assert str(err.value).startswith(path)


def test_a_data_function_that_returns_something_else_is_refused(tmp_path):
    path = write(tmp_path, """
        from graphc.nn import Dense, Sequential
        def model():
            return Sequential([Dense(2)], input_shape=(3,))

        def data():
            return [1, 2]
    """)
    with pytest.raises(ModelFileError, match=rf"{path}:5: data\(\) returned a list, not graphc.datasets.Splits"):
        load_model_file(path).splits()


def test_a_missing_model_file_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match=rf"{tmp_path / 'none.py'}: no such model file"):
        load_model_file(str(tmp_path / "none.py"))
