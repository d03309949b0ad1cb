"""The numba_cuda runtime compiled offline, with no GPU: every kernel to PTX for sm_80 and sm_90 and
assembled by the nvidia-cuda-nvcc wheel's ptxas, which reports registers, shared memory and spills.

Skipped (with the reason) where numba-cuda's compiler or ptxas is missing, and under Numba's CUDA
simulator, where ``compile_ptx`` is unavailable (tests/cuda_sim runs the kernels there instead).
"""
from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("NUMBA_ENABLE_CUDASIM=1: compile_ptx is unavailable in Numba's CUDA simulator",
                allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install 'numba-cuda[cu13]')")

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402
from numba.cuda.dispatcher import CUDADispatcher  # noqa: E402

from graphc.backends.numba_cuda import ptx  # noqa: E402
from graphc.backends.numba_cuda import runtime as rt  # noqa: E402
from graphc.backends.numba_cuda.runtime import MT_WORDS  # noqa: E402
from graphc.ir.errors import DTypeError  # noqa: E402

CCS = [(8, 0), (9, 0)]
DTYPES = ["float32", "float64"]

# What ptxas -v printed for a kernel with one device function (CUDA 13.5), trimmed.
PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6kernelB2v1E' for 'sm_80'
ptxas info    : Function properties for _ZN6kernelB2v1E
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 45 registers, used 1 barriers, 2048 bytes smem, 484 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN5otherB2v2E' for 'sm_80'
ptxas info    : Function properties for _ZN5otherB2v2E
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]
"""


def test_parse_ptxas_verbose_reads_each_entry_function():
    assert ptx.parse_ptxas_verbose(PTXAS_SAMPLE) == [
        ptx.Resources("_ZN6kernelB2v1E", "sm_80", registers=45, smem=2048, stack=8, spill_stores=4, spill_loads=12),
        ptx.Resources("_ZN5otherB2v2E", "sm_80", registers=12, smem=0, stack=0, spill_stores=0, spill_loads=0)]


def test_real_launch_sizes_outside_the_simulator():
    assert (rt.SIMULATOR, rt.THREADS, rt.MAX_BLOCKS, rt.TILE) == (False, 256, 1024, 16)
    assert [rt.blocks_for(n) for n in (0, 1, 256, 257, 10**9)] == [1, 1, 1, 2, 1024]
    assert rt.gemm_launch(100, 17) == ((2, 7), (16, 16))


def test_ptx_signatures_list_every_kernel_and_only_float_data():
    kernels = {name for name, value in vars(rt).items()
               if isinstance(value, CUDADispatcher) and not value.targetoptions.get("device")}
    for dtype in DTYPES:
        signatures = rt.PTX_SIGNATURES(dtype)
        assert set(signatures) == kernels
        assert all(signatures[name][0] is getattr(rt, name) for name in kernels)
        assert f"{dtype}[::1]" in signatures["gemm_kernel"][1]
    with pytest.raises(DTypeError, match=r"float32 or float64 data, not 'int32'"):
        rt.PTX_SIGNATURES("int32")


@pytest.fixture(scope="module")
def ptxas():
    try:
        path = ptx.find_ptxas()
    except ptx.PtxasNotFound as err:
        pytest.skip(str(err))
    try:
        ptx.compile_ptx(rt.gemm_kernel, rt.PTX_SIGNATURES("float32")["gemm_kernel"][1], (8, 0))
    except Exception as err:  # no NVVM / NVRTC: nothing here can compile
        pytest.skip(f"numba.cuda.compile_ptx is unavailable: {type(err).__name__}: {err}")
    return path


def test_find_ptxas_finds_a_working_assembler(ptxas):
    import subprocess

    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, check=True).stdout
    assert "Cuda compilation tools" in version


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_runtime_kernel_compiles_and_assembles_without_spills(ptxas, dtype, cc):
    itemsize = {"float32": 4, "float64": 8}[dtype]
    table = {}
    for name, (kernel, signature) in rt.PTX_SIGNATURES(dtype).items():
        (res,) = ptx.assemble(ptx.compile_ptx(kernel, signature, cc), cc, ptxas)
        assert res.arch == f"sm_{cc[0]}{cc[1]}" and res.name == name
        table[name] = res
        print(f"{name:<26} {dtype} sm_{cc[0]}{cc[1]}: {res.registers:3d} registers, smem {res.smem:5d} B, "
              f"stack {res.stack:5d} B, spills {res.spill_stores}/{res.spill_loads} B")
    assert all(r.spill_stores == 0 and r.spill_loads == 0 for r in table.values()), table
    assert all(r.registers <= 128 for r in table.values()), table  # 256 threads per block stay resident
    assert table["gemm_kernel"].smem == 2 * rt.TILE * rt.TILE * itemsize  # the two tiles, nothing else
    assert all(r.smem == 0 for name, r in table.items() if name != "gemm_kernel")
    assert table["mt_sample_kernel"].stack >= rt.MT_WORDS * 4  # the generator's state is thread-local


@cuda.jit
def _update_kernel(lr, seeds, a, b, w, out):
    """A generated kernel's use of the runtime: a GEMM whose alpha is computed on the device (an SGD
    update, in the data's dtype) and the generator seeded per thread from a loaded key."""
    rt.gemm_tile(0, 1, 6, 5, 9, -lr[0], a, 3, 9, b, 0, 9, 1.0, w, 2, 5)
    mt = cuda.local.array(MT_WORDS, np.uint32)  # a global: rt.MT_WORDS would not type as a constant shape
    t = cuda.grid(1)
    while t < out.size:
        rt.mt_seed(mt, seeds[t] + t)
        out[t] = rt.mt_random_sample(mt)
        t += cuda.gridsize(1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_functions_compile_inside_another_kernel(ptxas, dtype):
    arr = f"{dtype}[::1]"
    signature = f"void({arr}, int64[::1], {arr}, {arr}, {arr}, float64[::1])"
    for cc in CCS:
        (res,) = ptx.assemble(ptx.compile_ptx(_update_kernel, signature, cc), cc, ptxas)
        assert res.name == "_update_kernel" and res.spill_stores == 0
        assert res.smem == 2 * rt.TILE * rt.TILE * {"float32": 4, "float64": 8}[dtype]


def test_demangled_names_are_the_python_names():
    mangled = "_ZN6graphc8backends10numba_cuda7runtime11gemm_kernelB2v1B92cw51cXTLSUwv1sDUaKthoaNgoKmjgOR3E5Array"
    assert ptx.demangled(mangled) == "gemm_kernel"
    assert ptx.demangled("plain_name") == "plain_name"
    assert ptx.parse_ptxas_verbose(PTXAS_SAMPLE)[0].name == "kernel"
