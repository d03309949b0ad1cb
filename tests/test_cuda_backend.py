"""backend="cuda" outside the simulator, on this GPU-less machine: it says what is missing, never a bare
import error or a driver traceback (the kernels themselves are tested in tests/cuda_sim and, compiled to
PTX, in tests/test_cuda_ptx.py)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import graphc
from graphc.backends import numba_cuda
from graphc.backends.numba_cuda import CudaUnavailable


def small_graph():
    with graphc.Graph("double") as g:
        x = graphc.input("x", (4,))
        y = g.output(x * 2.0)
    return y


def test_without_the_extra_it_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    with pytest.raises(CudaUnavailable, match=r"pip install 'graphc\[cuda\]'.*numba-cuda\[cu13\].*nvidia-cuda-nvcc"):
        graphc.compile(small_graph(), backend="cuda")


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="needs the cuda extra")
def test_without_a_gpu_it_points_to_the_simulator_and_offline_ptx(monkeypatch):
    from numba import cuda

    if cuda.is_available():  # pragma: no cover - a machine with a GPU runs the kernels instead
        pytest.skip("a CUDA GPU is present")
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    with pytest.raises(CudaUnavailable, match=r"no CUDA GPU.*NUMBA_ENABLE_CUDASIM=1.*compile_ptx"):
        graphc.compile(small_graph(), backend="cuda")


def test_an_unknown_backend_lists_cuda():
    with pytest.raises(graphc.GraphcError, match=r"unknown backend 'gpu'; available: reference, cpu, cuda"):
        graphc.compile(small_graph(), backend="gpu")


def test_the_cpu_and_reference_backends_still_agree_on_the_graph():
    # A regression guard for the shared native executable (backends/native.py) the cuda backend introduced.
    y = small_graph()
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(graphc.compile(y, backend="cpu")(x), graphc.compile(y)(x))
    assert numba_cuda.has_lowering("relu")


def test_a_library_call_the_device_runtime_lacks_is_refused_before_anything_runs():
    from graphc.backends.numba_cuda import build_program, lower_program

    with graphc.Graph("collective") as g:
        x = graphc.input("x", (4,), "float64")
        g.output(graphc.allreduce(x * 2.0, "mean"))
    with pytest.raises(graphc.GraphcError, match=r"backend='cuda' cannot run the library calls allreduce_mean yet"):
        build_program(lower_program(g))
