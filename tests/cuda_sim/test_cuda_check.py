"""bench/cuda_check.py, the prepared GPU check, run with ``--tiny`` in Numba's simulator: the same code
paths as on a GPU (op suite, fit with backend="cuda", the step and epoch timings) at tiny sizes.

Oracles: the op suite compares every case with the reference backend (tests/test_numba_cpu.py's graphs
and tolerances); the training numbers it reports are checked here against the same fit on the reference
backend (same seed, permutation and schedule).
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_check():
    spec = importlib.util.spec_from_file_location("bench_cuda_check", ROOT / "bench" / "cuda_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    """The script's module and the JSON of one ``--tiny`` run (its exit status must be 0: every op case passed)."""
    bench = load_check()
    out = tmp_path_factory.mktemp("cuda-check") / "check.json"
    status = bench.main(["--tiny", "--json", str(out)])
    return bench, status, json.loads(out.read_text())


def test_tiny_check_runs_the_op_suite_and_every_case_passes(check):
    _bench, status, result = check
    ops = result["ops"]
    assert [c["case"] for c in ops["cases"]] == ["elementwise-float64", "elementwise-float32", "nn-float64",
                                                 "nn-float32"]
    assert [c["error"] for c in ops["cases"] if not c["passed"]] == []
    assert (ops["passed"], ops["total"], status) == (4, 4, 0)
    # The comparison is real: float64 agrees to rounding, float32 to its tolerance, and not trivially (all 0).
    errors = {c["case"]: c["max_abs_err"] for c in ops["cases"]}
    assert 0 < errors["elementwise-float64"] < 1e-9 and 0 < errors["elementwise-float32"] < 1e-3


def test_tiny_check_trains_as_the_reference_backend_does(check):
    bench, _status, result = check
    t = result["training"]
    assert (t["network"], t["rows"], t["epochs"], t["batch_size"], t["data"]) == ("16-8-4", 64, 1, 32,
                                                                                   "64 random rows")
    cfg = dict(bench.TINY)
    train_data, test_data, _ = bench.load_data(cfg, True, None)
    want = bench.train(cfg, train_data, test_data, backend="reference")
    np.testing.assert_allclose(t["loss"], want["loss"], rtol=1e-4)
    assert t["acc"] == want["acc"]
    np.testing.assert_allclose(t["test_loss"], want["test_loss"], rtol=1e-4)
    assert t["test_accuracy"] == want["test_accuracy"]


def test_tiny_check_writes_the_timing_fields(check):
    _bench, _status, result = check
    assert result["mode"] == "tiny"
    assert ("simulator" in result["env"]["device"]) is result["env"]["simulator"]
    timing = result["timing"]
    assert (timing["batch_size"], timing["steps_per_epoch"]) == (32, 2)
    g = timing["graphc"]
    assert g["step_ms"] > 0 and g["epoch_s"] > 0 and math.isfinite(g["compile_s"])
    if timing["torch"] is None:  # no PyTorch CUDA here: the script says so instead of timing it
        assert timing["ratio"] is None and "no PyTorch timings" in timing["torch_note"]
    else:
        assert timing["ratio"]["step_ms"] == pytest.approx(g["step_ms"] / timing["torch"]["step_ms"])


def test_lower_for_is_the_program_compile_builds_for_cuda(tmp_path):
    """graphc.backends.lower_for, which the offline PTX tests and bench/cuda_resources.py use to get a step's
    Program without a GPU, gives the Program that compile(..., backend="cuda") builds and runs."""
    import graphc
    from graphc import optim
    from graphc.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential
    from graphc.train.loop import build_train_step

    model = Sequential([Conv2D(2, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten(), Dense(3)],
                       input_shape=(1, 4, 4), seed=0)
    graph = build_train_step(model, 2, optim.Adam(1e-3))
    program = graphc.backends.lower_for(graph, backend="cuda")
    exe = graphc.compile(graph, backend="cuda", cache_dir=str(tmp_path))
    assert str(program) == str(exe.program)
    assert "conv2d_im2col" in exe.source  # conv as im2col + GEMM, as the resource table assumes
