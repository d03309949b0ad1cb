"""The course's training steps compiled offline for the GPU: every kernel of the MNIST MLP, LeNet-5 and
residual CNN steps (bench/cuda_resources.py's networks, as in examples/) to PTX for sm_80 and sm_90, then
assembled by ptxas, which reports registers, shared memory, stack and spills (docs/backends.md, "CUDA:
per-kernel resources").

The compilation runs once, as ``bench/cuda_resources.py --jobs 2`` in a subprocess (Numba's compiler
holds the GIL; two processes halve the ~2 minutes of CPU of ~500 kernels x 2 capabilities); the kernels it
must cover are found here independently, from each rendered module's source and the runtime's.

Skipped (with the reason) where numba-cuda's compiler or ptxas is missing, and under Numba's CUDA
simulator, where ``compile_ptx`` is unavailable.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("NUMBA_ENABLE_CUDASIM=1: compile_ptx is unavailable in Numba's CUDA simulator",
                allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install 'numba-cuda[cu13]')")

from numba.cuda.dispatcher import CUDADispatcher  # noqa: E402

import graphc  # noqa: E402
from graphc.backends.numba_cuda import module_of, ptx  # noqa: E402
from graphc.backends.numba_cuda import runtime as rt  # noqa: E402
from graphc.ir import GraphcError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "cuda_resources.py"
NETWORKS = ["mlp", "lenet5", "resnet"]
ARCHS = ["sm_80", "sm_90"]
KINDS = {"grid", "swapped", "reduce", "gemm", "serial", "runtime"}


def load_bench():
    """bench/cuda_resources.py as a module (it defines the networks as the examples do)."""
    spec = importlib.util.spec_from_file_location("bench_cuda_resources", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toolchain():
    try:
        ptx.find_ptxas()
    except ptx.PtxasNotFound as err:
        pytest.skip(str(err))
    try:
        ptx.compile_ptx(rt.gemm_kernel, rt.PTX_SIGNATURES("float32")["gemm_kernel"][1], (8, 0))
    except Exception as err:  # no NVVM / NVRTC: nothing here can compile
        pytest.skip(f"numba.cuda.compile_ptx is unavailable: {type(err).__name__}: {err}")


@pytest.fixture(scope="module")
def resources(toolchain, tmp_path_factory) -> dict:
    """The JSON of one run of bench/cuda_resources.py over the three networks, sm_80 and sm_90."""
    tmp = tmp_path_factory.mktemp("cuda-resources")
    out = tmp / "resources.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "2", "--table", "summary", "--json", str(out),
                           "--cache-dir", str(tmp / "cache")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    print(done.stdout)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def modules(toolchain, tmp_path_factory) -> dict:
    """Each network's rendered module source (lowered here, in this process)."""
    bench = load_bench()
    cache = str(tmp_path_factory.mktemp("cuda-modules"))
    return {n: module_of(bench.train_step_program(n), cache)[1] for n in NETWORKS}


def generated_kernels(source: str) -> set[str]:
    """The ``@cuda.jit`` kernels a rendered module defines, each checked to be launched by ``step``."""
    defined = set(re.findall(r"^@cuda\.jit\(\*\*JIT\)\ndef (\w+)\(", source, re.M))
    step = source.split("\ndef step(", 1)[1]
    launched = set(re.findall(r"^\s+(\w+)\[", step, re.M))
    assert defined == launched, (defined ^ launched)
    return defined


def runtime_kernels(source: str) -> set[str]:
    """The runtime kernels ``step`` launches: the runtime's functions it calls, followed through the
    runtime's own source (a launcher calling another, e.g. conv2d_im2col -> gemm) to ``@cuda.jit`` kernels."""
    step = source.split("\ndef step(", 1)[1]
    names = {name for name in vars(rt) if not name.startswith("_")}
    todo = list(set(re.findall(r"^\s+(\w+)\(", step, re.M)) & names)
    seen, kernels = set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        obj = getattr(rt, name)
        if isinstance(obj, CUDADispatcher):
            if not obj.targetoptions.get("device"):
                kernels.add(name)
            continue
        if inspect.isfunction(obj):
            todo += [callee for callee in re.findall(r"\b(\w+)\s*[\[(]", inspect.getsource(obj)) if callee in names]
    return kernels


@pytest.mark.parametrize("network", NETWORKS)
def test_every_kernel_of_the_training_step_compiles_for_sm80_and_sm90(modules, resources, network):
    rows = [r for r in resources["rows"] if r["network"] == network]
    expected = generated_kernels(modules[network]) | {f"runtime.{k}[float32]" for k in runtime_kernels(modules[network])}
    assert {r["kernel"] for r in rows} == expected
    assert len(rows) == len(expected)
    assert all(set(ARCHS) <= set(r) for r in rows), [r["kernel"] for r in rows if not set(ARCHS) <= set(r)]
    assert {r["kind"] for r in rows} <= KINDS
    # The generated kernels are the phases of each IR kernel (one kind each); the runtime's are named so.
    assert all((r["kind"] == "runtime") == r["kernel"].startswith("runtime.") for r in rows)


def test_the_networks_launch_what_they_contain(modules):
    """The coverage above is not vacuous: the convolutional steps launch im2col + GEMM, col2im and the
    pooling kernels; the MLP launches no runtime kernel; the residual CNN's reductions (batch norm) are
    block reductions and its dropout draws on the device."""
    assert runtime_kernels(modules["mlp"]) == set()
    assert {"im2col_kernel", "gemm_kernel", "col2im_add_kernel", "max_pool_kernel",
            "max_pool_backward_kernel"} <= runtime_kernels(modules["lenet5"])
    assert {"avg_pool_kernel", "im2col_kernel"} <= runtime_kernels(modules["resnet"])
    assert "(reduce)" in modules["resnet"] and "mt_seed(" in modules["resnet"]
    assert len(generated_kernels(modules["mlp"])) < len(generated_kernels(modules["lenet5"])) < \
        len(generated_kernels(modules["resnet"]))


def test_no_kernel_spills_and_every_kernel_fits_a_block_of_256_threads(resources):
    spilling = [(r["network"], r["kernel"], a) for r in resources["rows"] for a in ARCHS
                if r[a]["spill_stores"] or r[a]["spill_loads"]]
    assert spilling == []
    over = [(r["network"], r["kernel"], a, r[a]["registers"]) for r in resources["rows"] for a in ARCHS
            if not 0 < r[a]["registers"] <= 255]
    assert over == []  # 255 x 256 threads fits the 64K registers of an SM: every launch can start
    # Static shared memory: the GEMM's two 16x16 tiles or a block reduction's 256 partial sums, no more.
    assert max(r[a]["smem"] for r in resources["rows"] for a in ARCHS) <= 256 * 8


def test_resources_json_names_the_toolchain(resources):
    assert resources["meta"]["dtype"] == "float32" and "Cuda compilation tools" in resources["meta"]["ptxas"]
    assert set(resources["compile_seconds"]) == {f"{n} {a}" for n in NETWORKS for a in ARCHS}


# -- lower_for: the Program graphc.compile would build --------------------------------------------------------

def _tiny_step():
    from graphc import optim
    from graphc.nn import Dense, Sequential
    from graphc.train.loop import build_train_step

    model = Sequential([Dense(4, "relu"), Dense(3)], input_shape=(5,), seed=0)
    return build_train_step(model, 8, optim.SGD(0.1))


def test_lower_for_is_the_program_compile_builds(tmp_path):
    graph = _tiny_step()
    program = graphc.backends.lower_for(graph, backend="cpu", conv="im2col")
    exe = graphc.compile([graphc.Tensor(o, graph) for o in graph.outputs], backend="cpu", conv="im2col",
                         cache_dir=str(tmp_path))
    assert str(program) == str(exe.program)
    assert [n.name for n in program.inputs] == ["x", "y", "lr"]


def test_lower_for_takes_only_backends_that_lower():
    with pytest.raises(GraphcError, match=r"lower_for: backend 'reference' does not run a lowered Program; "
                                          r"use one of cpu, cuda"):
        graphc.backends.lower_for(_tiny_step(), backend="reference")


# -- bench/cuda_check.py where it cannot run ------------------------------------------------------------------

def test_cuda_check_without_a_gpu_or_the_simulator_says_what_to_do(tmp_path):
    from numba import cuda

    if cuda.is_available():
        pytest.skip("a CUDA GPU is usable here: bench/cuda_check.py would run the check")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_check.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("cuda_check: backend='cuda': no CUDA GPU is usable here")
    assert "NUMBA_ENABLE_CUDASIM=1" in done.stderr and "compile_ptx" in done.stderr
    assert not out.exists()
