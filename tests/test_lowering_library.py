"""The library calls as kernel-IR loops (graphc/backends/lowering/library.py), for targets with no library.

Oracle: the kernel-IR interpreter's own implementation of each call (lowering/interpret.py, NumPy written
from the calls' definitions). Every call runs twice on the same random operands, once as the Call and once
as its expansion, and the interpreter also checks the expansion's promises (indices inside their buffers,
parallel loops whose iterations are independent, no read of memory nobody wrote). Pooling, col2im and the
gathers must agree bit for bit (NaN, -inf, ties and all-padding windows included); convolutions to
rounding (the interpreter sums with einsum, the loops in (c, i, j) order). Then whole lowered training
steps, with and without expansion, must update the parameters alike.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy

import graphc
from graphc.backends.lowering import Program, lower
from graphc.backends.lowering.interpret import Interpreter, InterpretError, interpret
from graphc.backends.lowering.ir import (
    LIBRARY,
    Buffer,
    Call,
    Gemm,
    Kernel,
    Load,
    Loop,
    Ref,
    Store,
    index_var,
    library_calls,
    scalar_var,
    walk,
)
from graphc.backends.lowering.library import (
    EXPANSIONS,
    LibraryCallError,
    _im2col_split,
    expand_call,
    expand_calls,
    im2col_scratch,
)
from graphc.nn import AvgPool2D, Conv2D, ConvTranspose2D, Dense, Flatten, MaxPool2D, Sequential
from graphc.ops.conv import conv_output_size
from graphc.optim import SGD
from graphc.train.loop import build_train_step

DTYPES = ["float32", "float64"]
#: Where each operand starts inside its (larger) buffer: offsets must be honoured.
OFFSET = 3


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- a harness: one library call on operands fed as inputs -------------------------------------------------

@dataclasses.dataclass
class CallHarness:
    """A Program whose only kernel is ``y = z`` (y's previous contents, fed as the last input z) followed
    by the statements under test; the operands are inputs fed from element OFFSET of their buffers, ``col``
    a workspace scratch (garbage until written)."""

    program: Program
    refs: dict[str, Ref]
    y: Buffer
    z: Buffer

    def run(self, statements: list, feeds: dict[str, np.ndarray]) -> np.ndarray:
        j, v = index_var("copy_j"), scalar_var("copy_z")
        copy = Loop(j, self.y.size, [Load(v, self.z, j), Store(self.y, j, v)])
        kernel = dataclasses.replace(self.program.kernels[-1], body=[copy, *statements])
        arrays = [feeds[n.name].reshape(-1) if n.name == "z" else
                  np.concatenate([np.full(OFFSET, 7, feeds[n.name].dtype), feeds[n.name].reshape(-1)])
                  for n in self.program.inputs]
        (out,), _ = interpret(dataclasses.replace(self.program, kernels=[kernel]), *arrays)
        return out


def harness(dtype: str, operands: dict[str, int], y_size: int, col_size: int = 0,
            dtypes: dict[str, str] | None = None) -> CallHarness:
    """Operands of ``operands`` (name -> number of elements) in ``dtype`` (``dtypes``: the exceptions)."""
    with graphc.Graph("library_call") as g:
        for name, size in operands.items():
            graphc.input(name, (size + OFFSET,), (dtypes or {}).get(name, dtype))
        z = graphc.input("z", (y_size,), dtype)
        g.output(z * 2.0)
    program = lower(g)
    inputs = {b.arg: b for b in program.buffers.values() if b.store == "input"}
    refs = {name: Ref(inputs[k], sympy.Integer(OFFSET)) for k, name in enumerate(operands)}
    if col_size:
        refs["col"] = Ref(Buffer("col", "workspace", 0, col_size, dtype, (col_size,), "im2col scratch"))
        itemsize = np.dtype(dtype).itemsize
        program = dataclasses.replace(program, workspace_bytes=max(program.workspace_bytes, col_size * itemsize))
    return CallHarness(program, refs, program.outputs[0], inputs[len(operands)])


def assert_expansion_matches(h: CallHarness, call: Call, feeds: dict, exact: bool = True, **tol) -> list:
    """The call's result and its expansion's, on the same operands and the same previous y; returns the
    expansion's statements."""
    statements = expand_call(call)
    assert not [s for s in walk(statements) if isinstance(s, Call)]
    want = h.run([call], feeds)
    got = h.run(statements, feeds)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, **tol)
    return statements


def pooling_input(r: np.random.Generator, shape, dtype: str, specials: bool = True) -> np.ndarray:
    """Small integers (ties everywhere), with NaNs and -inf when ``specials`` (a whole -inf row too)."""
    x = r.integers(-3, 3, shape).astype(dtype)
    if specials:
        flat = x.reshape(-1)
        flat[r.choice(flat.size, max(1, flat.size // 12), replace=False)] = np.nan
        flat[r.choice(flat.size, max(1, flat.size // 8), replace=False)] = -np.inf
        x[0, 0, 0, :] = -np.inf  # windows on the top edge whose first tap is padding and the rest -inf
    return x


# -- pooling -----------------------------------------------------------------------------------------------

#: (planes, H, W, kh, kw, sh, sw, ph, pw): 1x1..3x3 windows, stride below the window (overlaps), odd sizes,
#: padding up to half the window, and windows entirely in the padding (padding >= window, which only the
#: library's contract allows).
POOLS = [
    (3, 5, 7, 2, 2, 1, 1, 0, 0),
    (4, 7, 6, 3, 3, 2, 2, 1, 1),
    (2, 6, 5, 3, 2, 1, 2, 1, 1),
    (3, 6, 6, 2, 2, 2, 2, 1, 0),
    (2, 5, 5, 1, 1, 1, 1, 0, 0),
    (2, 9, 7, 3, 3, 3, 2, 0, 1),
    (2, 5, 5, 1, 2, 2, 1, 1, 1),
    (2, 4, 5, 2, 2, 1, 1, 2, 2),
]


def pool_geometry(planes, H, W, kh, kw, sh, sw, ph, pw) -> tuple:
    return planes, H, W, kh, kw, sh, sw, ph, pw, conv_output_size(H, kh, sh, ph), conv_output_size(W, kw, sw, pw)


def pool_id(case) -> str:
    planes, H, W, kh, kw, sh, sw, ph, pw = case
    return f"{planes}x{H}x{W}_k{kh}{kw}_s{sh}{sw}_p{ph}{pw}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOLS, ids=pool_id)
def test_max_pool_expansion_takes_the_same_maximum_nan_first(case, dtype):
    geometry = pool_geometry(*case)
    planes, H, W, *_, Ho, Wo = geometry
    h = harness(dtype, {"x": planes * H * W}, planes * Ho * Wo)
    r = rng(1)
    feeds = {"x": pooling_input(r, (1, planes, H, W), dtype), "z": r.standard_normal(planes * Ho * Wo).astype(dtype)}
    assert_expansion_matches(h, Call("max_pool", (h.refs["x"], *geometry, Ref(h.y))), feeds)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOLS, ids=pool_id)
def test_avg_pool_expansion_divides_by_the_whole_window(case, dtype):
    # Quarter-integers add up exactly in any order: the result is exactly the interpreter's, the divisor
    # kh*kw whatever the padding. Random normals agree to the rounding of the summation order.
    geometry = pool_geometry(*case)
    planes, H, W, kh, kw, *_, Ho, Wo = geometry
    h = harness(dtype, {"x": planes * H * W}, planes * Ho * Wo)
    r = rng(2)
    call = Call("avg_pool", (h.refs["x"], *geometry, Ref(h.y)))
    z = r.standard_normal(planes * Ho * Wo).astype(dtype)
    dyadic = (r.integers(-40, 40, planes * H * W) / 4).astype(dtype)
    assert_expansion_matches(h, call, {"x": dyadic, "z": z})
    tol = dict(rtol=3e-7, atol=3e-7) if dtype == "float32" else dict(rtol=1e-15, atol=1e-15)
    assert_expansion_matches(h, call, {"x": r.standard_normal(planes * H * W).astype(dtype), "z": z}, False, **tol)
    # The divisor is the window's size also where the padding covers part of it (count_include_pad).
    ones = h.run(expand_call(call), {"x": np.ones(planes * H * W, dtype), "z": z}).reshape(planes, Ho, Wo)
    inside = [[sum(0 <= a * case[5] - case[7] + i < H for i in range(kh)) *
               sum(0 <= b * case[6] - case[8] + j < W for j in range(kw)) for b in range(Wo)] for a in range(Ho)]
    np.testing.assert_array_equal(ones, np.broadcast_to(np.array(inside, dtype) / np.array(kh * kw, dtype), ones.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["max_pool_backward", "max_pool_gather"])
@pytest.mark.parametrize("case", POOLS, ids=pool_id)
def test_max_pool_gradient_expansions_route_to_the_first_maximum(case, kernel, dtype):
    # y zeroed (fed as NaN garbage before the call), gradients summed at each window's first maximum in
    # window order; windows whose maximum is padding add nothing. x in float64 under float32 g: the
    # maxima are found in x's own dtype.
    geometry = pool_geometry(*case)
    planes, H, W, *_, Ho, Wo = geometry
    g_size, y_size = (planes * Ho * Wo, planes * H * W) if kernel == "max_pool_backward" else \
        (planes * H * W, planes * Ho * Wo)
    r = rng(3)
    for x_dtype in sorted({"float64", dtype}):
        h = harness(dtype, {"x": planes * H * W, "g": g_size}, y_size, dtypes={"x": x_dtype})
        feeds = {"x": pooling_input(r, (1, planes, H, W), x_dtype),
                 "g": r.standard_normal(g_size).astype(dtype), "z": np.full(y_size, np.nan, dtype)}
        assert_expansion_matches(h, Call(kernel, (h.refs["x"], h.refs["g"], *geometry, Ref(h.y))), feeds)


def test_a_window_that_never_reaches_the_padding_loads_unguarded():
    """Bounds the loop ranges prove are left out of a Load's guard (so that a target can vectorize the window
    loops); a padded dimension keeps its two. The values are the call's (the pooling tests above)."""
    h = harness("float32", {"x": 2 * 28 * 28, "g": 2 * 14 * 14}, 2 * 28 * 28)
    tiled = expand_call(Call("max_pool_backward", (h.refs["x"], h.refs["g"], *pool_geometry(2, 28, 28, 2, 2, 2, 2, 0, 0),
                                                   Ref(h.y))))
    assert [s.guard for s in walk(tiled) if isinstance(s, Load)] == [None, None]
    padded = expand_call(Call("max_pool", (h.refs["x"], *pool_geometry(2, 28, 28, 3, 3, 1, 1, 1, 0), Ref(h.y))))
    (load,) = [s for s in walk(padded) if isinstance(s, Load)]
    assert load.guard is not None and "lib_i" in str(load.guard) and "lib_j" not in str(load.guard)


def test_max_pool_backward_runs_windows_in_parallel_only_when_they_cannot_share_an_element():
    # Overlapping windows (3x3, stride 2) can pick one element: their loops are sequential, and marked
    # parallel the interpreter catches the race. Disjoint windows (2x2, stride 2) run in parallel.
    def window_loops(statements) -> tuple[Loop, Loop]:
        planes_loop = statements[-1]
        assert isinstance(planes_loop, Loop) and planes_loop.parallel
        return planes_loop.body[0], planes_loop.body[0].body[0]

    h = harness("float64", {"x": 2 * 49, "g": 2 * 16}, 2 * 49)
    overlapping = pool_geometry(2, 7, 7, 3, 3, 2, 2, 1, 1)
    statements = expand_call(Call("max_pool_backward", (h.refs["x"], h.refs["g"], *overlapping, Ref(h.y))))
    rows, columns = window_loops(statements)
    assert not rows.parallel and not columns.parallel
    x = np.zeros((2, 7, 7))
    x[:, 1, 1] = 5.0  # the first maximum of the four windows around (1, 1)
    feeds = {"x": x, "g": np.ones(2 * 16), "z": np.zeros(2 * 49)}
    assert h.run(statements, feeds).reshape(2, 7, 7)[0, 1, 1] == 4.0
    racy = dataclasses.replace(rows, parallel=True, body=[dataclasses.replace(columns, parallel=True)])
    with pytest.raises(InterpretError, match="not independent|write the same element"):
        h.run(statements[:-1] + [dataclasses.replace(statements[-1], body=[racy])], feeds)
    disjoint = pool_geometry(2, 7, 7, 2, 2, 2, 2, 1, 1)
    rows, columns = window_loops(expand_call(Call("max_pool_backward",
                                                  (h.refs["x"], h.refs["g"], *disjoint, Ref(h.y)))))
    assert rows.parallel and columns.parallel


# -- convolution -------------------------------------------------------------------------------------------

#: (N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw)
CONVS = [
    (2, 3, 7, 6, 4, 3, 3, 1, 1, 0, 0, 1, 1),
    (2, 2, 7, 7, 3, 3, 3, 2, 2, 1, 1, 1, 1),
    (1, 3, 8, 7, 2, 3, 2, 2, 1, 2, 2, 2, 2),
    (3, 1, 5, 6, 2, 1, 1, 2, 2, 1, 0, 1, 1),
    (2, 2, 6, 5, 3, 2, 3, 1, 2, 1, 2, 2, 1),
    (4, 1, 6, 6, 2, 3, 3, 1, 1, 1, 1, 1, 1),
    (1, 4, 60, 60, 2, 3, 3, 1, 1, 1, 1, 1, 1),
]


def conv_id(case) -> str:
    N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw = case
    return f"{N}x{C}x{H}x{W}_o{Co}_k{kh}{kw}_s{sh}{sw}_p{ph}{pw}_d{dh}{dw}"


def conv_operands(case) -> tuple:
    N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw = case
    Ho, Wo = conv_output_size(H, kh, sh, ph, dh), conv_output_size(W, kw, sw, pw, dw)
    return N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo


TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def conv_call(case, kernel: str, dtype: str, seed: int) -> tuple[CallHarness, Call, dict, int]:
    """A convolution call of ``case`` on random x and w (y starts as NaN garbage): the harness, the call, the
    feeds and the size of its column scratch (0 for conv2d_direct)."""
    geometry = conv_operands(case)
    N, C, H, W, Co, kh, kw, *_, Ho, Wo = geometry
    col = im2col_scratch(*geometry) if kernel == "conv2d_im2col" else 0
    h = harness(dtype, {"x": N * C * H * W, "w": Co * C * kh * kw}, N * Co * Ho * Wo, col)
    r = rng(seed)
    feeds = {"x": r.standard_normal(N * C * H * W).astype(dtype), "w": r.standard_normal(Co * C * kh * kw).astype(dtype),
             "z": np.full(N * Co * Ho * Wo, np.nan, dtype)}
    scratch = (h.refs["col"],) if col else ()
    return h, Call(kernel, (h.refs["x"], h.refs["w"], *geometry, *scratch, Ref(h.y))), feeds, col


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["conv2d_direct", "conv2d_im2col"])
@pytest.mark.parametrize("case", CONVS, ids=conv_id)
def test_conv2d_expansions_equal_the_library_call(case, kernel, dtype):
    h, call, feeds, col = conv_call(case, kernel, dtype, seed=4)
    _, C, _, _, Co, kh, kw, *_, Ho, Wo = conv_operands(case)
    statements = assert_expansion_matches(h, call, feeds, exact=False, **TOL[dtype])
    if col:  # the products are GEMMs over the call's own scratch, so a target's GEMM does them
        N = case[0]
        split, chunks = _im2col_split(N, C, kh, kw, Ho * Wo)
        chunk_loop = statements[0]
        assert isinstance(chunk_loop, Loop)
        gemms = [s for s in walk(statements) if isinstance(s, Gemm)]
        assert {id(g.b.buffer) for g in gemms} == {id(h.refs["col"].buffer)} and gemms[0].m == Co
        # The chunks run in parallel, each on its own block of the scratch; inside a chunk the images (and blocks)
        # share that block, so their loops are sequential (the interpreter runs a loop around a GEMM one iteration
        # at a time and would not see the race).
        assert chunk_loop.parallel == (chunks > 1) and chunk_loop.extent == (chunks if chunks > 1 else N)
        assert not any(s.parallel for s in walk(chunk_loop.body) if isinstance(s, Loop) and
                       any(isinstance(g, Gemm) for g in walk(s.body)))
        assert split == ("images" if N % 2 == 0 else "channels" if case == CONVS[-1] else "none")
        if split == "channels":  # then the partial outputs summed into y, every element in parallel
            assert statements[1].parallel and statements[1].extent == N * Co * Ho * Wo


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVS, ids=conv_id)
def test_col2im_add_expansion_adds_exactly_what_the_library_call_adds(case, dtype):
    # cols [Co*kh*kw, H*W] scattered into y [Co, Ho, Wo] (its previous values kept): the grid H x W is the
    # one whose windows tile the target, as in a transposed convolution.
    h, call, feeds = col2im_call(case, dtype, seed=5)
    assert_expansion_matches(h, call, feeds)


def col2im_call(case, dtype: str, seed: int) -> tuple[CallHarness, Call, dict]:
    """A col2im_add call of ``case`` (y starts as random values, which it adds to): harness, call and feeds."""
    _, _, Hy, Wy, Co, kh, kw, sh, sw, ph, pw, dh, dw, H, W = conv_operands(case)
    h = harness(dtype, {"cols": Co * kh * kw * H * W}, Co * Hy * Wy)
    r = rng(seed)
    feeds = {"cols": r.standard_normal(Co * kh * kw * H * W).astype(dtype),
             "z": r.standard_normal(Co * Hy * Wy).astype(dtype)}
    return h, Call("col2im_add", (h.refs["cols"], Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Hy, Wy, Ref(h.y))), feeds


# -- the cpu backend's runtime kernels against the same calls ------------------------------------------------

#: CONVS and geometries whose rows lie partly or wholly outside the padded input (the kernels' inside ranges).
#: The last two fill more than runtime.COL_BLOCK column elements: conv2d_im2col takes their channels in blocks.
RUNTIME_CONVS = CONVS + [(1, 2, 3, 4, 2, 5, 5, 3, 2, 3, 3, 2, 2), (2, 1, 4, 3, 2, 3, 4, 1, 3, 2, 3, 1, 1),
                         (1, 1, 5, 5, 1, 5, 5, 1, 1, 2, 2, 1, 1), (2, 40, 14, 14, 3, 5, 5, 1, 1, 1, 1, 1, 1),
                         (1, 7, 24, 24, 2, 20, 20, 1, 1, 2, 2, 1, 1)]


def cpu_runtime_call(kernel: str, operands: dict[str, np.ndarray], scalars: tuple, y: np.ndarray,
                     col_size: int = 0) -> np.ndarray:
    """numba_cpu's runtime ``kernel`` on the operands (each from element OFFSET of its flat array, as the
    harness feeds them), writing a copy of ``y``; its scratch (if any) starts as garbage."""
    from graphc.backends.numba_cpu import runtime

    def at_offset(a):
        return np.concatenate([np.full(OFFSET, 7, a.dtype), a.reshape(-1)]), OFFSET

    args = [v for a in operands.values() for v in at_offset(a)] + list(scalars)
    if col_size:
        args += [np.full(col_size, np.nan, y.dtype), 0]
    out = y.copy()
    getattr(runtime, kernel)(*args, out, 0)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["conv2d_direct", "conv2d_im2col"])
@pytest.mark.parametrize("case", RUNTIME_CONVS, ids=conv_id)
def test_cpu_runtime_convolutions_equal_the_library_call(case, kernel, dtype):
    h, call, feeds, col = conv_call(case, kernel, dtype, seed=6)
    geometry = conv_operands(case)
    _, C, _, _, _, kh, kw, *_ = geometry
    if case in RUNTIME_CONVS[-2:] and col:
        from graphc.backends.numba_cpu import runtime

        assert col > runtime.COL_BLOCK  # the case is what it says
    want = h.run([call], feeds)
    got = cpu_runtime_call(kernel, {"x": feeds["x"], "w": feeds["w"]}, geometry, feeds["z"], col)
    # Sums of C*kh*kw products of normal numbers, added in another order (blocks of channels): a rounding
    # error of about that many ulps of the products (~8 at most); a wrong index errs by O(1).
    bound = C * kh * kw * 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"], atol=max(TOL[dtype]["atol"], bound))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", RUNTIME_CONVS, ids=conv_id)
def test_cpu_runtime_col2im_add_equals_the_library_call(case, dtype):
    h, call, feeds = col2im_call(case, dtype, seed=7)
    want = h.run([call], feeds)
    got = cpu_runtime_call("col2im_add", {"cols": feeds["cols"]}, call.args[1:-1], feeds["z"])
    np.testing.assert_allclose(got, want, **TOL[dtype])


#: POOLS and windows that tile the plane (stride = window, no padding), the last large enough
#: (runtime.TILED_POOL_MIN elements) for max_pool_backward's one-pass way.
RUNTIME_POOLS = POOLS + [(4, 6, 8, 2, 2, 2, 2, 0, 0), (2, 9, 6, 3, 3, 3, 3, 0, 0), (3, 4, 6, 2, 3, 2, 3, 0, 0),
                         (4, 256, 258, 2, 3, 2, 3, 0, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["max_pool_backward", "max_pool_gather", "max_pool", "avg_pool"])
@pytest.mark.parametrize("case", RUNTIME_POOLS, ids=pool_id)
def test_cpu_runtime_pooling_equals_the_library_call(case, kernel, dtype):
    # Ties, NaNs and -inf in x (pooling_input): the first maximum of each window, the first NaN, as the
    # interpreter's NumPy does; y starts as NaN garbage, which every kernel overwrites.
    geometry = pool_geometry(*case)
    planes, H, W, *_, Ho, Wo = geometry
    if case == RUNTIME_POOLS[-1]:
        from graphc.backends.numba_cpu import runtime

        assert planes * H * W >= runtime.TILED_POOL_MIN  # the case is what it says
    backward = kernel == "max_pool_backward"
    y_size = planes * H * W if backward else planes * Ho * Wo
    operands = {"x": planes * H * W} if kernel in ("max_pool", "avg_pool") else \
        {"x": planes * H * W, "g": planes * Ho * Wo if backward else planes * H * W}
    h = harness(dtype, operands, y_size)
    r = rng(8)
    feeds = {"x": pooling_input(r, (1, planes, H, W), dtype, specials=kernel != "avg_pool"),
             "z": np.full(y_size, np.nan, dtype)}
    if "g" in operands:
        feeds["g"] = r.standard_normal(operands["g"]).astype(dtype)
    want = h.run([Call(kernel, (*(h.refs[k] for k in operands), *geometry, Ref(h.y)))], feeds)
    got = cpu_runtime_call(kernel, {k: feeds[k] for k in operands}, geometry, feeds["z"])
    np.testing.assert_allclose(got, want, **TOL[dtype])


# -- whole programs ----------------------------------------------------------------------------------------

def lenet_like(dtype) -> Sequential:
    return Sequential([Conv2D(3, 3, padding=1, activation="relu"), MaxPool2D(2),
                       Conv2D(4, 3, activation="relu"), MaxPool2D(3, stride=2, padding=1),
                       Flatten(), Dense(5, "relu"), Dense(3)], input_shape=(1, 9, 9), seed=3, dtype=dtype)


def strided_net(dtype) -> Sequential:
    return Sequential([Conv2D(3, 3, stride=2, padding=2, dilation=2, activation="relu"), AvgPool2D(3, stride=2, padding=1),
                       ConvTranspose2D(2, 3, stride=2, padding=1), Conv2D(2, 2, stride=2, padding=1, activation="tanh"),
                       Flatten(), Dense(3)], input_shape=(2, 9, 8), seed=4, dtype=dtype)


NETS = {"lenet_like": lenet_like, "strided_net": strided_net}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["im2col", "direct"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_expanded_training_steps_update_the_parameters_alike(net, method, dtype):
    model = NETS[net](np.dtype(dtype).type)
    graph = build_train_step(model, 2, SGD(), name=f"{net}_step")
    program = lower(graph, choose_conv=lambda node, geometry: method)
    expanded = expand_calls(program)
    made = {c.name for c in library_calls(program)}
    assert made >= {"max_pool" if net == "lenet_like" else "avg_pool", "col2im_add", f"conv2d_{method}"}
    assert library_calls(expanded) == []
    assert [k.title for k in expanded.kernels] == [k.title for k in program.kernels]
    assert {c.name for c in library_calls(program)} == made  # the original is left as it was
    plain, loops = Interpreter(program), Interpreter(expanded)
    r = rng(6)
    tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for _ in range(2):
        x = r.standard_normal((2,) + model.in_shape).astype(dtype)
        feeds = (x, r.integers(0, 3, 2), np.array(0.1, dtype))
        for got, want in zip(loops(*feeds), plain(*feeds)):
            np.testing.assert_allclose(got, want, **tol)
    for name, value in plain.params.items():
        np.testing.assert_allclose(loops.params[name], value, **tol, err_msg=name)
    assert any(not np.array_equal(v, p.value) for v, p in zip(plain.params.values(), graph.params))


# -- what cannot be expanded -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["allreduce_sum", "allreduce_mean"])
def test_allreduce_is_refused_as_a_collective(name):
    h = harness("float32", {"x": 4}, 4)
    with pytest.raises(LibraryCallError, match=f"library call '{name}' cannot be expanded.*collective over the MPI"):
        expand_call(Call(name, (h.refs["x"], Ref(h.y), 4)))


def test_expand_calls_keeps_allreduce_calls_for_the_target_to_refuse():
    with graphc.Graph("allreduce") as g:
        x = graphc.input("x", (2, 1, 4, 4))
        g.output(graphc.allreduce(graphc.max_pool2d(x, 2), "sum"))
    program = lower(g)
    assert [c.name for c in library_calls(expand_calls(program))] == ["allreduce_sum"]


def test_unknown_calls_and_wrong_operands_are_clear_errors():
    h = harness("float32", {"x": 16}, 4)
    with pytest.raises(LibraryCallError, match="unknown library call 'fft2d': the library calls loops can compute "
                                               "are avg_pool, col2im_add"):
        expand_call(Call("fft2d", (h.refs["x"], Ref(h.y))))
    with pytest.raises(LibraryCallError, match=r"'max_pool' takes 13 operands \(\*x, planes, H, W.*got 12"):
        expand_call(Call("max_pool", (h.refs["x"], 1, 4, 4, 2, 2, 2, 2, 0, 0, 2, Ref(h.y))))
    with pytest.raises(LibraryCallError, match="'max_pool': operand kh must be an integer constant, got n"):
        expand_call(Call("max_pool", (h.refs["x"], 1, 4, 4, index_var("n"), 2, 2, 2, 0, 0, 2, 2, Ref(h.y))))
    with pytest.raises(LibraryCallError, match="'max_pool': operand y must be a Ref, got 7"):
        expand_call(Call("max_pool", (h.refs["x"], 1, 4, 4, 2, 2, 2, 2, 0, 0, 2, 2, 7)))
    kernel = Kernel(5, "mystery", "test", "model.py:12", [Loop(index_var("t"), 2, [Call("fft2d", ())], False)])
    with pytest.raises(LibraryCallError, match=r"%5 mystery  model.py:12: unknown library call 'fft2d'"):
        expand_calls(dataclasses.replace(h.program, kernels=[kernel]))


def test_every_library_kernel_is_expanded_or_a_collective():
    assert set(EXPANSIONS) | {"allreduce_sum", "allreduce_mean"} == set(LIBRARY)
