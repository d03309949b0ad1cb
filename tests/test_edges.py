"""Issue 14's rough edges a newcomer hit: "did you mean" for misspelt names, graphc.__all__, log_softmax as an
activation, the early-stopping message, reaching a fit's executable and its source, History.plot's figure, and the
help texts that still said training arrives later."""
from __future__ import annotations

import inspect
import types
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.nn import Activation, Dense, Sequential

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).name


def this_line() -> int:
    """The caller's line number, for asserting that an error names it."""
    return inspect.currentframe().f_back.f_lineno


# -- "did you mean" ---------------------------------------------------------------------------------------------

def test_misspelt_op_name_suggests_the_registered_one_and_names_the_line():
    with graphc.Graph("typo"):
        x = graphc.input("x", (2, 3))
        with pytest.raises(graphc.UnknownOpError, match=r"unknown op 'reluu' \(did you mean 'relu'") as err:
            line = this_line() + 1
            graphc.apply("reluu", [x])
    assert f"{HERE}:{line}" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, graphc.GraphcError)


def test_misspelt_op_name_in_the_registry_lookup_suggests_close_names():
    with pytest.raises(KeyError, match=r"unknown op 'softmax_cross_entropi' \(did you mean "
                                       r"'softmax_cross_entropy'"):
        graphc.registry.get("softmax_cross_entropi")


def test_an_op_name_close_to_nothing_gets_no_suggestion():
    with pytest.raises(graphc.UnknownOpError, match="unknown op 'zzzzqqq'; `graphc ops` lists") as err:
        graphc.registry.get("zzzzqqq")
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("typo, meant", [("rleu", "relu"), ("sigmod", "sigmoid"), ("log_sofmax", "log_softmax"),
                                         ("leaky-relu", "leaky_relu")])
def test_misspelt_activation_name_suggests_the_known_one(typo, meant):
    with pytest.raises(graphc.nn.UnknownActivationError,
                       match=rf"unknown activation '{typo}' \(did you mean '{meant}'") as err:
        line = this_line() + 1
        Dense(3, typo)
    assert f"{HERE}:{line}" in str(err.value)
    assert isinstance(err.value, ValueError)  # as before it had a class of its own
    with pytest.raises(graphc.nn.UnknownActivationError, match=rf"did you mean '{meant}'"):
        Activation(typo)


# -- graphc.__all__ ---------------------------------------------------------------------------------------------

def test_graphc_all_holds_only_graphcs_own_names():
    for leaked in ("Any", "Mapping", "Sequence", "np", "annotations"):
        assert leaked not in graphc.__all__
    for name in graphc.__all__:
        obj = getattr(graphc, name)
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        assert module.split(".")[0] == "graphc", f"graphc.__all__ has {name!r}, from {module!r}"
    # the public API is all still there
    for name in ("fit", "compile", "grad", "Graph", "input", "param", "relu", "float32", "evaluate", "optim", "nn",
                 "train", "UnknownOpError"):
        assert name in graphc.__all__
    namespace: dict = {}
    exec("from graphc import *", namespace)
    assert "Any" not in namespace and "Sequence" not in namespace and "relu" in namespace


# -- log_softmax as an activation name ----------------------------------------------------------------------------

def test_dense_log_softmax_activation_matches_numpy():
    model = Sequential([Dense(5, "log_softmax")], input_shape=(3,), seed=0)
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    out = graphc.train.predict_outputs(model, x, backend="reference")
    values = model.named_values()
    z = x.astype(np.float64) @ values["dense_1.W"] + values["dense_1.b"]
    expected = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # independent: the definition
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)
    assert "log_softmax" in graphc.nn.layers.ACTIVATIONS
    assert "Dense(5, log_softmax)" in model.summary()


# -- the help texts ------------------------------------------------------------------------------------------------

def test_graphc_help_and_mlp_784_no_longer_say_training_arrives_later():
    from graphc.cli import build_parser

    help_text = build_parser().format_help()
    assert "later issue" not in help_text
    assert "examples/mnist_mlp.py trains" in help_text
    example = (ROOT / "examples" / "mlp_784.py").read_text()
    assert "later issue" not in example and "until training exists" not in example
    assert "examples/mnist_mlp.py" in example
