"""The numba_cuda runtime (GEMM, library kernels, generator) run in Numba's CUDA simulator, against
NumPy: the interpreter's implementations of ir.LIBRARY (lowering/interpret.py, written from the
definitions), NumPy's matmul and NumPy's legacy RandomState; where the runtime promises the cpu
backend's exact numbers (gathers added in the cpu loop's order), the numba_cpu runtime itself.

Every operand lives at a non-zero offset of one shared store array on the device (as the workspace and
the parameter store do), surrounded by garbage that must come back untouched.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda_sim
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from numba import cuda

from graphc.backends.lowering.interpret import LIBRARY_IMPLEMENTATIONS
from graphc.backends.lowering.ir import Buffer, Ref
from graphc.backends.numba_cuda import runtime as rt

DTYPES = ["float32", "float64"]
GARBAGE = 777.0  # what the store holds outside the operands
TOL = {"float32": dict(rtol=2e-6, atol=2e-6), "float64": dict(rtol=1e-13, atol=1e-13)}


class Store:
    """Operands packed into one flat array with gaps of garbage between them; ``offsets[name]``."""

    def __init__(self, dtype: str, **operands: np.ndarray):
        self.dtype = np.dtype(dtype)
        self.offsets: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        end = 3  # nothing starts at 0
        for name, value in operands.items():
            self.offsets[name], self.shapes[name] = end, np.shape(value)
            end += int(np.size(value)) + 5
        self.host = np.full(end, GARBAGE, self.dtype)
        for name, value in operands.items():
            self.host[self.offsets[name]:self.offsets[name] + np.size(value)] = np.ravel(value)

    def region(self, name: str) -> slice:
        start = self.offsets[name]
        return slice(start, start + int(np.prod(self.shapes[name])))

    def get(self, array: np.ndarray, name: str) -> np.ndarray:
        return array[self.region(name)].reshape(self.shapes[name])

    def ref(self, name: str) -> Ref:
        """The operand as the interpreter's Ref into a buffer named "store"."""
        buf = Buffer("store", "workspace", 0, self.host.size, self.dtype.name, (self.host.size,))
        return Ref(buf, sp.Integer(self.offsets[name]))

    def run_on_device(self, launch) -> np.ndarray:
        """``launch(device_store)``; the store copied back."""
        device = cuda.to_device(self.host)
        launch(device)
        return device.copy_to_host()

    def assert_untouched_but(self, after: np.ndarray, *written: str) -> None:
        """Everything outside the ``written`` operands is as it was."""
        keep = np.ones(self.host.size, bool)
        for name in written:
            keep[self.region(name)] = False
        np.testing.assert_array_equal(after[keep], self.host[keep])


class _InterpreterRun:
    """The part of the interpreter's run a LIBRARY implementation uses, over one flat store."""

    def __init__(self, store: np.ndarray):
        self.store = store

    def index(self, expr, env) -> int:
        return int(expr)

    def read(self, ref: Ref, env, shape) -> np.ndarray:
        start = int(ref.offset)
        return self.store[start:start + int(np.prod(shape))].reshape(shape).copy()

    def write(self, ref: Ref, env, value: np.ndarray) -> None:
        start = int(ref.offset)
        self.store[start:start + value.size] = value.reshape(-1)


def oracle(store: Store, name: str, *args) -> np.ndarray:
    """The store after the interpreter's implementation of library call ``name`` (args: operand names
    as strings for Refs, ints)."""
    host = store.host.copy()
    LIBRARY_IMPLEMENTATIONS[name](_InterpreterRun(host), {}, *(store.ref(a) if isinstance(a, str) else a
                                                               for a in args))
    return host


def device_args(store: Store, device, *args) -> list:
    """The runtime's arguments: each operand name expanded into (device store, offset)."""
    out: list = []
    for a in args:
        out += [device, store.offsets[a]] if isinstance(a, str) else [a]
    return out


# -- launch sizes ------------------------------------------------------------------------------------------

@pytest.mark.skipif(not rt.SIMULATOR, reason="the simulator's launch sizes (GRAPHC_CUDA_TESTS=device runs on a GPU)")
def test_simulator_launch_sizes_are_tiny_and_blocks_for_clamps():
    assert (rt.SIMULATOR, rt.THREADS, rt.MAX_BLOCKS, rt.TILE) == (True, 8, 2, 4)
    assert [rt.blocks_for(n) for n in (0, 1, 8, 9, 16, 17, 10**9)] == [1, 1, 1, 2, 2, 2, 2]
    assert rt.gemm_launch(5, 7) == ((2, 2), (4, 4))
    assert rt.gemm_launch(4, 9) == ((3, 1), (4, 4))


# -- GEMM --------------------------------------------------------------------------------------------------

def _gemm_operands(rng, dtype: str, ta: int, tb: int, beta: float):
    m, n, k = 5, 7, 3
    lda = (m if ta else k) + 2   # leading dimensions longer than the rows
    ldb = (k if tb else n) + 1
    ldc = n + 3
    a = rng.standard_normal((k if ta else m, lda))
    b = rng.standard_normal((n if tb else k, ldb))
    c = rng.standard_normal((m, ldc)) if beta else np.full((m, ldc), np.nan)  # beta 0: C is not read
    store = Store(dtype, a=a, b=b, c=c)
    op_a = (store.get(store.host, "a")[:, :m].T if ta else store.get(store.host, "a")[:, :k]).astype(np.float64)
    op_b = (store.get(store.host, "b")[:, :k].T if tb else store.get(store.host, "b")[:, :n]).astype(np.float64)
    return (m, n, k, lda, ldb, ldc), store, op_a, op_b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_matches_numpy_for_every_transpose_and_beta(dtype, ta, tb, beta):
    rng = np.random.default_rng(10 * ta + tb)
    (m, n, k, lda, ldb, ldc), store, op_a, op_b = _gemm_operands(rng, dtype, ta, tb, beta)
    alpha = 0.75
    c0 = store.get(store.host, "c").astype(np.float64)
    after = store.run_on_device(lambda d: rt.gemm(ta, tb, m, n, k, alpha, *device_args(store, d, "a"), lda,
                                                  *device_args(store, d, "b"), ldb, beta,
                                                  *device_args(store, d, "c"), ldc))
    c = store.get(after, "c")
    expected = alpha * op_a @ op_b + (beta * c0[:, :n] if beta else 0)
    np.testing.assert_allclose(c[:, :n], expected, **TOL[dtype])
    # the columns between n and ldc, and everything outside C, are not written
    np.testing.assert_array_equal(c[:, n:], store.get(store.host, "c")[:, n:])
    store.assert_untouched_but(after, "c")


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_gemm_with_empty_k_scales_c_and_with_empty_c_writes_nothing(beta):
    c = np.arange(6.0).reshape(2, 3)
    store = Store("float64", a=np.full(4, np.nan), b=np.full(4, np.nan), c=c)
    after = store.run_on_device(lambda d: (rt.gemm(0, 0, 2, 3, 0, 1.5, d, store.offsets["a"], 1, d, store.offsets["b"], 3,
                                                   beta, d, store.offsets["c"], 3),
                                           rt.gemm(1, 1, 0, 3, 2, 1.0, d, 0, 1, d, 0, 1, 0.0, d, 0, 3),
                                           rt.gemm(0, 0, 2, 0, 2, 1.0, d, 0, 1, d, 0, 1, 0.0, d, 0, 3)))
    np.testing.assert_array_equal(store.get(after, "c"), beta * c)  # BLAS: C = beta * C (0 when beta is 0)
    store.assert_untouched_but(after, "c")


@cuda.jit
def _sgd_gemm_kernel(lr, a, ao, b, bo, w, wo, m, n, k):
    """W -= lr * A @ B^T: alpha computed on the device, as a generated kernel does for an update."""
    gemm_alpha = -lr[0]
    rt.gemm_tile(0, 1, m, n, k, gemm_alpha, a, ao, k, b, bo, k, 1.0, w, wo, n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_tile_called_from_another_kernel_with_a_device_alpha(dtype):
    rng = np.random.default_rng(3)
    m, n, k = 6, 5, 9  # k spans three tiles, the last one partial
    store = Store(dtype, a=rng.standard_normal((m, k)), b=rng.standard_normal((n, k)), w=rng.standard_normal((m, n)))
    lr = np.array([0.1], dtype)
    grid, block = rt.gemm_launch(m, n)
    after = store.run_on_device(lambda d: _sgd_gemm_kernel[grid, block](
        cuda.to_device(lr), *device_args(store, d, "a", "b", "w"), m, n, k))
    host = {name: store.get(store.host, name).astype(np.float64) for name in ("a", "b", "w")}
    np.testing.assert_allclose(store.get(after, "w"), host["w"] - lr[0].astype(np.float64) * host["a"] @ host["b"].T,
                               **TOL[dtype])
    store.assert_untouched_but(after, "w")


# -- convolution -------------------------------------------------------------------------------------------

def _out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


CONV_CASES = [(1, 0, 1), (1, 1, 1), (2, 0, 1), (2, 1, 1), (1, 1, 2)]  # (stride, padding, dilation)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,pad,dil", CONV_CASES)
@pytest.mark.parametrize("kind", ["conv2d_im2col", "conv2d_direct"])
def test_convolution_matches_the_interpreter(dtype, stride, pad, dil, kind):
    N, C, H, W, Co, kh, kw = 2, 2, 5, 5, 3, 3, 3
    Ho, Wo = _out(H, kh, stride, pad, dil), _out(W, kw, stride, pad, dil)
    rng = np.random.default_rng(stride * 7 + pad)
    operands = dict(x=rng.standard_normal((N, C, H, W)), w=rng.standard_normal((Co, C, kh, kw)))
    if kind == "conv2d_im2col":
        operands["col"] = np.full(C * kh * kw * Ho * Wo, np.nan)
    operands["y"] = np.full((N, Co, Ho, Wo), np.nan)  # overwritten, never read
    store = Store(dtype, **operands)
    sizes = (N, C, H, W, Co, kh, kw, stride, stride, pad, pad, dil, dil, Ho, Wo)
    refs_after = ("col", "y") if kind == "conv2d_im2col" else ("y",)
    expected = oracle(store, kind, "x", "w", *sizes, *refs_after)
    after = store.run_on_device(lambda d: getattr(rt, kind)(*device_args(store, d, "x", "w", *sizes, *refs_after)))
    np.testing.assert_allclose(store.get(after, "y"), store.get(expected, "y"), **TOL[dtype])
    if kind == "conv2d_im2col":  # the scratch holds the last image's columns, copied exactly
        np.testing.assert_array_equal(store.get(after, "col"), store.get(expected, "col"))
    store.assert_untouched_but(after, *refs_after)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,pad,dil", CONV_CASES)
def test_col2im_add_gathers_what_the_interpreter_scatters(dtype, stride, pad, dil):
    Co, kh, kw, Hi, Wi = 3, 3, 3, 5, 5           # the image y [Co, Hi, Wi] the columns are added into
    H, W = _out(Hi, kh, stride, pad, dil), _out(Wi, kw, stride, pad, dil)  # the columns' grid
    rng = np.random.default_rng(11 + stride + pad)
    store = Store(dtype, cols=rng.standard_normal((Co * kh * kw, H * W)), y=rng.standard_normal((Co, Hi, Wi)))
    args = ("cols", Co, kh, kw, H, W, stride, stride, pad, pad, dil, dil, Hi, Wi, "y")
    expected = oracle(store, "col2im_add", *args)
    after = store.run_on_device(lambda d: rt.col2im_add(*device_args(store, d, *args)))
    np.testing.assert_allclose(store.get(after, "y"), store.get(expected, "y"), **TOL[dtype])
    store.assert_untouched_but(after, "y")


# -- pooling -----------------------------------------------------------------------------------------------

POOL_CASES = [(2, 2, 0), (3, 2, 1)]  # (window, stride, padding)


def _pool_input(rng, planes: int, H: int, W: int) -> np.ndarray:
    """Small integers (ties in every window), NaNs after a larger value, and a plane whose top-left 2 x 2
    is -inf, so that a padded window's first maximum is its padding."""
    x = rng.integers(0, 3, (planes, H, W)).astype(np.float64)
    x[1, 0, 1] = 5.0
    x[1, 1, 1] = np.nan   # a NaN behind a larger value in its window: the NaN wins
    x[2, 3, 3] = np.nan
    x[3, :2, :2] = -np.inf
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", POOL_CASES)
@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
def test_pooling_matches_the_interpreter(dtype, k, s, p, kind):
    planes, H, W = 4, 5, 5
    Ho, Wo = _out(H, k, s, p), _out(W, k, s, p)
    rng = np.random.default_rng(k + s + p)
    x = _pool_input(rng, planes, H, W) if kind == "max_pool" else rng.standard_normal((planes, H, W))
    store = Store(dtype, x=x, y=np.full((planes, Ho, Wo), np.nan))
    args = ("x", planes, H, W, k, k, s, s, p, p, Ho, Wo, "y")
    expected = oracle(store, kind, *args)
    after = store.run_on_device(lambda d: getattr(rt, kind)(*device_args(store, d, *args)))
    if kind == "max_pool":  # a max is one of the values: exact, NaN where the window has one
        assert np.isnan(store.get(after, "y")).any()
        np.testing.assert_array_equal(store.get(after, "y"), store.get(expected, "y"))
    else:
        np.testing.assert_allclose(store.get(after, "y"), store.get(expected, "y"), **TOL[dtype])
    store.assert_untouched_but(after, "y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_max_pool_backward_routes_to_the_first_maximum_like_the_interpreter(dtype, k, s, p):
    planes, H, W = 4, 5, 5
    Ho, Wo = _out(H, k, s, p), _out(W, k, s, p)
    rng = np.random.default_rng(5 + k)
    store = Store(dtype, x=_pool_input(rng, planes, H, W), g=rng.standard_normal((planes, Ho, Wo)),
                  y=np.full((planes, H, W), np.nan))  # zeroed by the call
    args = ("x", "g", planes, H, W, k, k, s, s, p, p, Ho, Wo, "y")
    expected = oracle(store, "max_pool_backward", *args)
    after = store.run_on_device(lambda d: rt.max_pool_backward(*device_args(store, d, *args)))
    # the same terms added in the same (ho, wo) order: exact
    np.testing.assert_array_equal(store.get(after, "y"), store.get(expected, "y"))
    assert (store.get(after, "y") == 0).sum() > planes * H * W // 2  # most inputs are no window's maximum
    store.assert_untouched_but(after, "y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_max_pool_gather_reads_the_first_maximum_like_the_interpreter(dtype, k, s, p):
    planes, H, W = 4, 5, 5
    Ho, Wo = _out(H, k, s, p), _out(W, k, s, p)
    rng = np.random.default_rng(9 + k)
    store = Store(dtype, x=_pool_input(rng, planes, H, W), v=rng.standard_normal((planes, H, W)),
                  y=np.full((planes, Ho, Wo), np.nan))
    args = ("x", "v", planes, H, W, k, k, s, s, p, p, Ho, Wo, "y")
    expected = oracle(store, "max_pool_gather", *args)
    after = store.run_on_device(lambda d: rt.max_pool_gather(*device_args(store, d, *args)))
    np.testing.assert_array_equal(store.get(after, "y"), store.get(expected, "y"))
    if p:  # plane 3's first window peaks in its padding: 0
        assert store.get(after, "y")[3, 0, 0] == 0
    store.assert_untouched_but(after, "y")


@pytest.mark.parametrize("kind", ["max_pool_backward", "max_pool_gather"])
def test_a_window_whose_padding_row_comes_first_keeps_its_padding_as_the_first_maximum(kind):
    # Padding above (ph = 1) but not beside (pw = 0): a top window's first two elements are padding in row -1.
    # With x's first row all -inf, the window's first maximum is that padding, so nothing is routed. (The
    # kernels once marked "none yet" with row -1, took the first inside -inf as the maximum and routed g there.)
    planes, H, W, k, s = 2, 4, 4, 2, 2
    Ho, Wo = _out(H, k, s, 1), _out(W, k, s, 0)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((planes, H, W))
    x[:, 0, :] = -np.inf
    other = rng.standard_normal((planes, Ho, Wo) if kind == "max_pool_backward" else (planes, H, W))
    y_shape = (planes, H, W) if kind == "max_pool_backward" else (planes, Ho, Wo)
    store = Store("float64", x=x, g=other, y=np.full(y_shape, np.nan))
    args = ("x", "g", planes, H, W, k, k, s, s, 1, 0, Ho, Wo, "y")
    expected = oracle(store, kind, *args)
    after = store.run_on_device(lambda d: getattr(rt, kind)(*device_args(store, d, *args)))
    np.testing.assert_array_equal(store.get(after, "y"), store.get(expected, "y"))
    if kind == "max_pool_backward":
        assert (store.get(after, "y")[:, 0, :] == 0).all()  # nothing reaches the -inf row
    else:
        assert (store.get(after, "y")[:, 0, :] == 0).all()  # the top windows read their padding: 0


# -- the cpu backend's exact numbers -----------------------------------------------------------------------

def test_gathers_equal_the_cpu_runtime_bit_for_bit():
    """col2im_add, max_pool_backward and avg_pool add each element's terms in the cpu kernels' order (avg in
    float64, as there), so float32 results are the cpu backend's to the last bit."""
    from graphc.backends.numba_cpu import runtime as cpu

    rng = np.random.default_rng(21)
    Co, kh, kw, Hi, Wi, s, p, d = 2, 3, 3, 5, 5, 2, 1, 1
    H, W = _out(Hi, kh, s, p, d), _out(Wi, kw, s, p, d)
    planes, Ho, Wo = 3, _out(5, 3, 2, 1), _out(5, 3, 2, 1)
    store = Store("float32", cols=rng.standard_normal((Co * kh * kw, H * W)), y=rng.standard_normal((Co, Hi, Wi)),
                  x=_pool_input(rng, 4, 5, 5)[:planes], g=rng.standard_normal((planes, Ho, Wo)),
                  gx=np.zeros((planes, 5, 5)), xa=rng.standard_normal((planes, 5, 5)),
                  avg=np.zeros((planes, Ho, Wo)))
    calls = [("col2im_add", ("cols", Co, kh, kw, H, W, s, s, p, p, d, d, Hi, Wi, "y")),
             ("max_pool_backward", ("x", "g", planes, 5, 5, 3, 3, 2, 2, 1, 1, Ho, Wo, "gx")),
             ("avg_pool", ("xa", planes, 5, 5, 3, 3, 2, 2, 1, 1, Ho, Wo, "avg"))]
    on_cpu = store.host.copy()
    for name, args in calls:
        getattr(cpu, name)(*device_args(store, on_cpu, *args))

    def launch(device):
        for name, args in calls:
            getattr(rt, name)(*device_args(store, device, *args))

    after = store.run_on_device(launch)
    for name in ("y", "gx", "avg"):
        np.testing.assert_array_equal(store.get(after, name), store.get(on_cpu, name))


# -- the random generator ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_mt19937_draws_numpys_legacy_numbers(seed):
    out = cuda.to_device(np.full(2000, np.nan))
    rt.mt_samples(seed, out)
    np.testing.assert_array_equal(out.copy_to_host(), np.random.RandomState(seed).random_sample(2000))


MT_WORDS = rt.MT_WORDS  # a global name, as generated kernels bind it: a GPU compiler needs a constant size


@cuda.jit
def _reseed_kernel(out):
    """As a generated kernel: its own state, seeded twice (a Seed statement restarts the stream)."""
    mt = cuda.local.array(MT_WORDS, np.uint32)
    rt.mt_seed(mt, 7)
    for i in range(3):
        out[i] = rt.mt_random_sample(mt)
    rt.mt_seed(mt, 8)
    for i in range(3, 6):
        out[i] = rt.mt_random_sample(mt)


def test_mt_seed_restarts_the_stream():
    out = cuda.to_device(np.full(6, np.nan))
    _reseed_kernel[1, 1](out)
    expected = np.concatenate([np.random.RandomState(7).random_sample(3), np.random.RandomState(8).random_sample(3)])
    np.testing.assert_array_equal(out.copy_to_host(), expected)
