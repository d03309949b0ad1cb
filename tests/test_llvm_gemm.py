"""The LLVM target's GEMM (graphc.backends.llvm.gemm): compiled for real, called through ctypes, checked
against NumPy float64 products."""
from __future__ import annotations

import ctypes
import glob
import mmap
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from graphc.backends.llvm.gemm import (
    DTYPES,
    GemmError,
    default_blocking,
    define_gemm,
    gemm_argtypes,
    gemm_symbol,
    gemm_type,
)
from graphc.backends.llvm.target import link_shared, optimize, target_machine
from graphc.ir.errors import DTypeError

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to link the object")

#: relative to sum |alpha * a * b| + |beta * c| per element
RTOL = {"float32": 1e-5, "float64": 1e-12}


# ---- compiling --------------------------------------------------------------------------------------------

def gemm_module(blas: str = "generated") -> ir.Module:
    module = ir.Module(name="gemm_test")
    module.triple = llvm.get_process_triple()
    for dtype in DTYPES:
        define_gemm(module, dtype, blas=blas)
    return module


class Gemm:
    """graphc_sgemm and graphc_dgemm of one compiled shared library."""

    def __init__(self, so: Path, obj: Path):
        self.lib = ctypes.CDLL(str(so))
        self.object = obj
        self.fns = {}
        for dtype in DTYPES:
            fn = getattr(self.lib, gemm_symbol(dtype))
            fn.argtypes, fn.restype = gemm_argtypes(dtype), None
            self.fns[dtype] = fn

    def __call__(self, dtype, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        self.fns[dtype](ta, tb, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta, c.ctypes.data, ldc)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, Gemm]:
    directory = tmp_path_factory.mktemp("llvm_gemm")
    out = {}
    for target in ("native", "generic"):
        so = link_shared(gemm_module(), directory, f"gemm_{target}", target)
        out[target] = Gemm(so, so.with_name(f"gemm_{target}.o"))
    return out


# ---- operands: strided views into bigger, misaligned buffers ----------------------------------------------

def strided(rng, rows: int, cols: int, pad: int, dtype: str, fill=None):
    """(flat buffer view starting at element 0 of the matrix, leading dimension, the [rows, cols] view):
    the matrix starts 1..7 elements into a NumPy buffer (not 64-byte aligned) with ``pad`` spare columns
    per row and guard elements after it."""
    ld = cols + pad
    offset = int(rng.integers(1, 8))
    buf = rng.standard_normal(offset + rows * ld + 8).astype(dtype) if fill is None else np.full(offset + rows * ld + 8, fill, dtype)
    flat = buf[offset:]
    view = flat[: rows * ld].reshape(rows, ld)[:, :cols] if rows else np.zeros((0, cols), dtype)
    return buf, flat, ld, view


def check_gemm(gemm: Gemm, dtype: str, ta: int, tb: int, m: int, n: int, k: int, rng, alpha=1.0, beta=0.0,
               pad=(0, 0, 0), nan_in=()):
    """Run one GEMM on padded, misaligned operands and compare with NumPy in float64, guards included."""
    a_buf, a, lda, a_view = strided(rng, k if ta else m, m if ta else k, pad[0], dtype)
    b_buf, b, ldb, b_view = strided(rng, n if tb else k, k if tb else n, pad[1], dtype)
    c_buf, c, ldc, c_view = strided(rng, m, n, pad[2], dtype, fill=np.nan if beta == 0 else None)
    if "a" in nan_in:
        a_view[...] = np.nan
    if "b" in nan_in:
        b_view[...] = np.nan
    op_a = (a_view.T if ta else a_view).astype(np.float64)
    op_b = (b_view.T if tb else b_view).astype(np.float64)
    c0 = c_view.astype(np.float64)
    c_before = c_buf.copy()
    gemm(dtype, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    # the oracle: BLAS's contract; alpha == 0 reads neither A nor B, beta == 0 does not read C
    product = alpha * (op_a @ op_b) if alpha != 0 else np.zeros((m, n))
    scale = abs(alpha) * (np.abs(op_a) @ np.abs(op_b)) if alpha != 0 else np.zeros((m, n))
    if beta != 0:
        product += beta * c0
        scale += abs(beta) * np.abs(c0)
    got = c_view.astype(np.float64)
    where = f"{dtype} trans_a={ta} trans_b={tb} m={m} n={n} k={k} alpha={alpha} beta={beta} pad={pad}"
    assert np.all(np.isfinite(got)), f"{where}: non-finite result"
    err = np.abs(got - product)
    bound = RTOL[dtype] * scale + np.finfo(dtype).tiny
    assert np.all(err <= bound), f"{where}: max error {err.max()} > {bound.ravel()[np.argmax(err - bound)]}"
    written = np.zeros(c_buf.shape, bool)
    start = len(c_buf) - len(c)
    for i in range(m):
        written[start + i * ldc: start + i * ldc + n] = True
    np.testing.assert_array_equal(c_buf[~written], c_before[~written], err_msg=f"{where}: wrote outside C")


# block edges of the default blocking: MR rows, NR columns (in vectors of LANES), KC deep
EDGES_M = sorted({1, 2, 3, 5, 6, 7, 11, 12, 13, 17, 33, 65, 130})
EDGES_N = sorted({1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 65, 130, 257})
EDGES_K = (1, 2, 3, 17, 255, 256, 257, 513, 1000)
#: wider than the one-row path's accumulator (KC * NR elements), so n is cut into chunks there
ROW_CHUNKS_N = 8300


def test_blocking_edges_are_covered():
    """The size lists straddle every block edge of the default blocking (guards the other tests' reach)."""
    for dtype in DTYPES:
        blk = default_blocking(dtype)
        assert {blk.mr - 1, blk.mr, blk.mr + 1, 2 * blk.mr + 1} <= set(EDGES_M)
        assert {blk.lanes - 1, blk.lanes, blk.lanes + 1, blk.nr - 1, blk.nr, blk.nr + 1} <= set(EDGES_N)
        assert {blk.kc - 1, blk.kc, blk.kc + 1, 2 * blk.kc + 1} <= set(EDGES_K)
        assert blk.kc * blk.nr < ROW_CHUNKS_N


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_every_transpose_and_edge_matches_numpy(libraries, dtype, ta, tb):
    rng = np.random.default_rng(ta * 2 + tb)
    for m in EDGES_M:
        for n in EDGES_N:
            check_gemm(libraries["native"], dtype, ta, tb, m, n, int(rng.choice((1, 5, 37, 64))), rng,
                       pad=tuple(int(x) for x in rng.integers(0, 3, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_k_blocks_and_leading_dimensions(libraries, dtype, ta, tb):
    """k across the KC block edges up to 1000, with leading dimensions longer than the rows; one-row products
    wider than the one-row accumulator."""
    rng = np.random.default_rng(10 + ta * 2 + tb)
    for k in EDGES_K:
        for m, n in ((1, 33), (1, 257), (1, ROW_CHUNKS_N), (5, 31), (7, 48), (13, 65), (65, 17)):
            check_gemm(libraries["native"], dtype, ta, tb, m, n, k, rng, pad=(3, 5, 7))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.0, -0.5, 0.0])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3])
def test_alpha_beta(libraries, dtype, alpha, beta):
    """C = alpha * op(A) @ op(B) + beta * C on every path (one row, a few rows read in place, packed panels);
    beta == 0 with NaN in C gives finite results (C is not read); alpha == 0 with NaN in A and B gives
    beta * C (A and B are not read), as BLAS does."""
    rng = np.random.default_rng(20)
    nan_in = ("a", "b") if alpha == 0 else ()
    for ta, tb in ((0, 0), (0, 1), (1, 0), (1, 1)):
        for m, n, k in ((1, 40, 300), (1, 5, 3), (4, 64, 257), (33, 130, 70), (130, 7, 513)):
            check_gemm(libraries["native"], dtype, ta, tb, m, n, k, rng, alpha=alpha, beta=beta, pad=(1, 2, 3),
                       nan_in=nan_in)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_products(libraries, dtype):
    """k == 0 gives beta * C (alpha * an empty sum); m == 0 or n == 0 touch nothing."""
    rng = np.random.default_rng(30)
    for m, n, k in ((5, 7, 0), (0, 7, 5), (5, 0, 5), (1, 3, 0)):
        for beta in (0.0, 0.3):
            check_gemm(libraries["native"], dtype, 0, 0, m, n, k, rng, beta=beta, pad=(1, 1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_summation_order_ignores_layout(libraries, dtype):
    """The documented order of the blocked path depends on k's blocking only: the same op(A) @ op(B) gives
    bitwise the same C whatever the transposes, leading dimensions, or how many rows and columns around
    it are computed."""
    rng = np.random.default_rng(45)
    m, n, k = 13, 37, 600
    op_a = rng.standard_normal((m, k)).astype(dtype)
    op_b = rng.standard_normal((k, n)).astype(dtype)
    gemm = libraries["native"]
    results = []
    for ta, tb in ((0, 0), (0, 1), (1, 0), (1, 1)):
        a = np.zeros((k, m + 3) if ta else (m, k + 3), dtype)
        b = np.zeros((n, k + 5) if tb else (k, n + 5), dtype)
        (a[:, :m] if ta else a[:, :k])[...] = op_a.T if ta else op_a
        (b[:, :k] if tb else b[:, :n])[...] = op_b.T if tb else op_b
        c = np.full((m, n + 2), np.nan, dtype)
        gemm(dtype, ta, tb, m, n, k, 1.0, a, a.shape[1], b, b.shape[1], 0.0, c, n + 2)
        results.append(c[:, :n])
    c = np.full((7, 20), np.nan, dtype)  # a corner: other row and column edges than the whole product's
    gemm(dtype, 0, 0, 7, 20, k, 1.0, op_a, k, op_b, n, 0.0, c, 20)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    np.testing.assert_array_equal(c, results[0][:7, :20])


PAGE = 4096


class GuardedArray:
    """A [rows, cols] C-contiguous array whose last element ends right before an inaccessible page, so a
    read or write past it crashes the process instead of passing unnoticed."""

    def __init__(self, rows: int, cols: int, dtype: str, values: np.ndarray):
        nbytes = rows * cols * np.dtype(dtype).itemsize
        size = -(-nbytes // PAGE) * PAGE + PAGE
        self.map = mmap.mmap(-1, size)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(base + size - PAGE, PAGE, 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")
        self.array = np.frombuffer(self.map, dtype, count=rows * cols, offset=size - PAGE - nbytes).reshape(rows, cols)
        self.array[...] = values


@pytest.mark.parametrize("dtype", DTYPES)
def test_nothing_read_or_written_past_the_operands(libraries, dtype):
    """A, B and C each end at an inaccessible page (leading dimension = row length): edge tiles, packed
    panels and the one-row paths stay inside the operands (an overrun crashes the test process). Values
    are checked against NumPy too."""
    rng = np.random.default_rng(35)
    for ta, tb in ((0, 0), (0, 1), (1, 0), (1, 1)):
        for m, n, k in ((1, 17, 5), (1, 33, 257), (2, 17, 3), (7, 31, 9), (13, 33, 257), (6, 1, 1), (65, 130, 17)):
            a_shape = (k, m) if ta else (m, k)
            b_shape = (n, k) if tb else (k, n)
            a = GuardedArray(*a_shape, dtype, rng.standard_normal(a_shape))
            b = GuardedArray(*b_shape, dtype, rng.standard_normal(b_shape))
            c = GuardedArray(m, n, dtype, rng.standard_normal((m, n)))
            op_a = (a.array.T if ta else a.array).astype(np.float64)
            op_b = (b.array.T if tb else b.array).astype(np.float64)
            expected = 0.5 * op_a @ op_b + 0.3 * c.array.astype(np.float64)
            scale = 0.5 * np.abs(op_a) @ np.abs(op_b) + 0.3 * np.abs(c.array.astype(np.float64))
            libraries["native"](dtype, ta, tb, m, n, k, 0.5, a.array, a_shape[1], b.array, b_shape[1], 0.3, c.array, n)
            assert np.all(np.abs(c.array - expected) <= RTOL[dtype] * scale), (ta, tb, m, n, k)
            del a, b, c


@pytest.mark.parametrize("dtype", DTYPES)
def test_generic_target_gives_the_same_results(libraries, dtype):
    """The baseline x86-64 build passes the same oracle, and agrees with the native build to rounding
    (native fuses the multiply-adds, generic cannot: not bitwise)."""
    rng = np.random.default_rng(40)
    for ta, tb in ((0, 0), (0, 1), (1, 0), (1, 1)):
        for m, n, k in ((1, 257, 300), (1, 10, 1000), (6, 33, 257), (65, 130, 513), (128, 10, 256)):
            check_gemm(libraries["generic"], dtype, ta, tb, m, n, k, rng, alpha=-0.5, beta=0.3, pad=(2, 1, 3))
    a = rng.standard_normal((65, 513)).astype(dtype)
    b = rng.standard_normal((513, 130)).astype(dtype)
    results = {}
    for target, gemm in libraries.items():
        c = np.full((65, 130), np.nan, dtype)
        gemm(dtype, 0, 0, 65, 130, 513, 1.0, a, 513, b, 130, 0.0, c, 130)
        results[target] = c.astype(np.float64)
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert np.all(np.abs(results["native"] - results["generic"]) <= 2 * RTOL[dtype] * scale)


def _disassembly(obj: Path) -> str:
    return subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_generic_object_has_no_avx512(libraries):
    text = _disassembly(libraries["generic"].object)
    assert "graphc_sgemm" in text
    assert not re.search(r"%zmm\d|%ymm\d|%k[0-7]\b", text), "generic build uses AVX/AVX-512 registers"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
@pytest.mark.skipif("avx512f" not in llvm.get_host_cpu_features().flatten(), reason="host has no AVX-512")
def test_native_object_uses_avx512(libraries):
    assert re.search(r"%zmm\d", _disassembly(libraries["native"].object))


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_object_needs_only_libc(libraries):
    """The generated GEMM calls nothing but (at most) the C library's memory primitives."""
    for gemm in libraries.values():
        undefined = subprocess.run(["nm", "-u", str(gemm.object)], capture_output=True, text=True, check=True).stdout
        names = {line.split()[-1] for line in undefined.splitlines() if line.strip()}
        assert names <= {"memset", "memcpy", "memmove"}, names


def test_two_threads_at_once(libraries):
    """No global state: two threads calling the same GEMM at the same time (ctypes drops the GIL) each get
    their own, correct, result."""
    gemm = libraries["native"]
    rng = np.random.default_rng(50)
    problems = []
    for m, n, k in ((130, 257, 513), (65, 33, 1000)):
        a = rng.standard_normal((m, k)).astype("float32")
        b = rng.standard_normal((k, n)).astype("float32")
        problems.append((a, b, a.astype(np.float64) @ b.astype(np.float64),
                         np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))))
    failures = []
    start = threading.Barrier(2)

    def work(a, b, expected, scale):
        m, k = a.shape
        n = b.shape[1]
        start.wait()
        for _ in range(30):
            c = np.full((m, n), np.nan, "float32")
            gemm("float32", 0, 0, m, n, k, 1.0, a, k, b, n, 0.0, c, n)
            if not np.all(np.abs(c - expected) <= 1e-5 * scale):
                failures.append((m, n, k))

    threads = [threading.Thread(target=work, args=p) for p in problems]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_defined_once_per_module_with_the_c_signature():
    module = ir.Module(name="once")
    first = define_gemm(module, "float32")
    assert define_gemm(module, "float32") is first
    double = define_gemm(module, "float64")
    assert (first.name, double.name) == ("graphc_sgemm", "graphc_dgemm")
    assert str(first.function_type) == str(gemm_type("float32"))
    assert str(first.function_type) == "void (i32, i32, i64, i64, i64, float, float*, i64, float*, i64, float, float*, i64)"
    assert str(double.function_type) == ("void (i32, i32, i64, i64, i64, double, double*, i64, double*, i64, double, "
                                         "double*, i64)")
    llvm.parse_assembly(str(module)).verify()


def test_external_declares_the_c_signature_for_the_loader_to_supply():
    module = ir.Module(name="external")
    fn = define_gemm(module, "float32", blas="external")
    assert fn.is_declaration and fn.name == "graphc_sgemm" and str(fn.function_type) == str(gemm_type("float32"))
    llvm.parse_assembly(str(module)).verify()


def test_bad_dtype_and_blas_are_refused():
    with pytest.raises(DTypeError, match=r"define_gemm: dtype must be float32 or float64, got 'float16'"):
        define_gemm(ir.Module(), "float16")
    with pytest.raises(GemmError, match=r"define_gemm: blas must be one of \('generated', 'system', 'external'\), got 'mkl'"):
        define_gemm(ir.Module(), "float32", blas="mkl")


def _scipy_cblas() -> ctypes.CDLL | None:
    """SciPy's bundled OpenBLAS (LP64, symbols prefixed ``scipy_``), the only CBLAS on this machine."""
    try:
        import scipy
    except ImportError:
        return None
    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs", "libscipy_openblas-*.so"))
    if not libs:
        return None
    lib = ctypes.CDLL(libs[0])
    return lib if hasattr(lib, "scipy_cblas_sgemm") else None


@pytest.mark.skipif(_scipy_cblas() is None, reason="no CBLAS to bind (scipy's bundled OpenBLAS)")
def test_system_blas_wrapper_calls_cblas():
    """blas="system": graphc_?gemm forwards to cblas_?gemm with CblasRowMajor and the transposes; bound
    here (JIT) to SciPy's bundled OpenBLAS, whose symbols carry a ``scipy_`` prefix."""
    cblas = _scipy_cblas()
    for letter in ("s", "d"):
        llvm.add_symbol(f"cblas_{letter}gemm", ctypes.cast(getattr(cblas, f"scipy_cblas_{letter}gemm"), ctypes.c_void_p).value)
    machine = target_machine("native")
    engine = llvm.create_mcjit_compiler(optimize(gemm_module("system"), "native"), machine)
    engine.finalize_object()

    class Jitted(Gemm):
        def __init__(self):
            self.fns = {}
            for dtype in DTYPES:
                scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
                i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
                proto = ctypes.CFUNCTYPE(None, i32, i32, i64, i64, i64, scalar, ptr, i64, ptr, i64, scalar, ptr, i64)
                self.fns[dtype] = proto(engine.get_function_address(gemm_symbol(dtype)))

    gemm = Jitted()
    rng = np.random.default_rng(60)
    for dtype in DTYPES:
        for ta, tb in ((0, 0), (0, 1), (1, 0), (1, 1)):
            check_gemm(gemm, dtype, ta, tb, 13, 17, 33, rng, alpha=-0.5, beta=0.3, pad=(1, 2, 3))
            check_gemm(gemm, dtype, ta, tb, 7, 5, 3, rng, beta=0.0)
