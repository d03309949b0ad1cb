"""The CUDA runtime the generated modules import: launch sizes, the tiled GEMM, the library kernels
(ir.LIBRARY) and the legacy Mersenne Twister, as ``@cuda.jit`` kernels and their host launchers.

The numba_cpu runtime (numba_cpu/runtime.py) is the semantic model: same operands in the same order,
same results (float32 data accumulates in float32 in GEMM and convolution, as BLAS and the cpu loops do;
pooling averages accumulate in float64, as the cpu kernel does). Every array is a flat 1-D array, a
view of one store (the parameter store, the workspace, an input or an output); each Ref operand of an
ir.Call is passed as two arguments, the array and an element offset into it (``x, xo``).

Every library kernel is written so that no two threads write one element: each thread owns output
elements and *gathers* what they need (col2im_add and max_pool_backward included), so the results do
not depend on the schedule and need no atomics; the order in which each element's terms are added is
the cpu runtime's, so those two agree with the cpu backend bit for bit.

Host launchers take Python ints and floats; the flags of GEMM (``ta``, ``tb``) are ints (0 or 1).
"""
from __future__ import annotations

import math

import numba.cuda
import numpy as np
from numba import cuda

#: True when Numba's CUDA simulator runs the kernels (one Python thread per CUDA thread): then the
#: launch sizes are tiny, so that a test still crosses block and grid-stride boundaries cheaply.
SIMULATOR: bool = bool(numba.config.ENABLE_CUDASIM)

#: Threads per block of the 1-D grid-stride kernels.
THREADS: int = 8 if SIMULATOR else 256
#: The most blocks a 1-D grid-stride launch uses (each thread then loops over several elements).
MAX_BLOCKS: int = 2 if SIMULATOR else 1024
#: The GEMM tile edge: a block of TILE x TILE threads computes a TILE x TILE tile of C.
TILE: int = 4 if SIMULATOR else 16

#: Words of a generator state: 624 state words, then the position of the next word in mt[624].
MT_WORDS: int = 625
_MT_N = 624
_MT_M = 397


def blocks_for(n: int) -> int:
    """The grid size of a 1-D grid-stride launch over ``n`` elements: enough blocks of THREADS for one
    element per thread, at least 1, at most MAX_BLOCKS."""
    return max(1, min(MAX_BLOCKS, (int(n) + THREADS - 1) // THREADS))


# -- GEMM -----------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def gemm_tile(ta, tb, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc):
    """The tile of ``c = alpha * op(a) @ op(b) + beta * c`` at (blockIdx.y, blockIdx.x), thread
    (threadIdx.y, threadIdx.x) computing element (row, col) of it. Row-major with leading dimensions,
    from element offsets ``ao``, ``bo``, ``co``; ``ta``: a is stored [k, m], ``tb``: b is stored [n, k].
    With ``beta == 0`` c is not read. Every thread of the (TILE, TILE) block must call it: the ones
    outside C still load their share of the tiles and meet at every syncthreads."""
    sa = cuda.shared.array((TILE, TILE), a.dtype)
    sb = cuda.shared.array((TILE, TILE), a.dtype)
    # The data's dtype for the accumulator and the scalars (float32 data: float32 arithmetic, as sgemm).
    scalars = cuda.local.array(3, a.dtype)
    scalars[0] = 0
    scalars[1] = alpha
    scalars[2] = beta
    acc = scalars[0]
    ty = cuda.threadIdx.y
    tx = cuda.threadIdx.x
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    for k0 in range(0, k, TILE):
        # Out-of-range elements load as 0, so the partial last tile adds exact zeros (0 * 0).
        ka = k0 + tx
        if row < m and ka < k:
            sa[ty, tx] = a[ao + ka * lda + row] if ta else a[ao + row * lda + ka]
        else:
            sa[ty, tx] = scalars[0]
        kb = k0 + ty
        if kb < k and col < n:
            sb[ty, tx] = b[bo + col * ldb + kb] if tb else b[bo + kb * ldb + col]
        else:
            sb[ty, tx] = scalars[0]
        cuda.syncthreads()
        for q in range(TILE):
            acc += sa[ty, q] * sb[q, tx]
        cuda.syncthreads()
    if row < m and col < n:
        out = scalars[1] * acc
        if beta != 0:
            out += scalars[2] * c[co + row * ldc + col]
        c[co + row * ldc + col] = out


@cuda.jit
def gemm_kernel(ta, tb, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc):
    """One launch of :func:`gemm_tile` over the grid of :func:`gemm_launch`."""
    gemm_tile(ta, tb, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc)


def gemm_launch(m: int, n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(grid, block) of a GEMM launch for C [m, n]: grid (ceil(n/TILE), ceil(m/TILE)), block (TILE, TILE)."""
    return ((max(1, (int(n) + TILE - 1) // TILE), max(1, (int(m) + TILE - 1) // TILE)), (TILE, TILE))


def gemm(ta, tb, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc) -> None:
    """Launch ``c = alpha * op(a) @ op(b) + beta * c`` (see :func:`gemm_tile`); nothing when C is empty."""
    if m <= 0 or n <= 0:
        return
    grid, block = gemm_launch(m, n)
    gemm_kernel[grid, block](int(bool(ta)), int(bool(tb)), int(m), int(n), int(k), float(alpha), a, int(ao),
                             int(lda), b, int(bo), int(ldb), float(beta), c, int(co), int(ldc))


# -- convolution ----------------------------------------------------------------------------------------
# Grid-stride kernels: element ``e`` of the output is decoded into its coordinates (row-major).

@cuda.jit
def im2col_kernel(x, xo, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, co):
    """col[(c*kh + i)*kw + j, ho*Wo + wo] = x[c, ho*sh - ph + i*dh, wo*sw - pw + j*dw] (0 outside x),
    one image (x from element ``xo``), one thread per element of col."""
    total = C * kh * kw * Ho * Wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        wo = e % Wo
        t = e // Wo
        ho = t % Ho
        t = t // Ho
        j = t % kw
        t = t // kw
        i = t % kh
        c = t // kh
        h = ho * sh - ph + i * dh
        q = wo * sw - pw + j * dw
        if h >= 0 and h < H and q >= 0 and q < W:
            col[co + e] = x[xo + (c * H + h) * W + q]
        else:
            col[co + e] = 0


def conv2d_im2col(x, xo, w, wo_, N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, co, y, yo) -> None:
    """y[n] [Co, Ho*Wo] = w [Co, C*kh*kw] @ im2col(x[n]) per image: an im2col launch into the scratch ``col``
    (C*kh*kw*Ho*Wo elements from ``co``; it holds the last image's columns afterwards), then a GEMM."""
    K, P = C * kh * kw, Ho * Wo
    for n in range(N):
        if K * P > 0:
            im2col_kernel[blocks_for(K * P), THREADS](x, xo + n * C * H * W, C, H, W, kh, kw, sh, sw, ph, pw,
                                                      dh, dw, Ho, Wo, col, co)
        gemm(0, 0, Co, P, K, 1.0, w, wo_, K, col, co, P, 0.0, y, yo + n * Co * P, P)


@cuda.jit
def conv2d_direct_kernel(x, xo, w, wo_, N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, y, yo):
    """y[n, o, ho, wo] = sum over c, i, j (in that order, as the cpu loop) of w[o, c, i, j] *
    x[n, c, ho*sh - ph + i*dh, wo*sw - pw + j*dw]; one thread per output element."""
    zero = cuda.local.array(1, y.dtype)
    zero[0] = 0
    total = N * Co * Ho * Wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        wo = e % Wo
        t = e // Wo
        ho = t % Ho
        t = t // Ho
        o = t % Co
        n = t // Co
        acc = zero[0]
        for c in range(C):
            xb = xo + (n * C + c) * H * W
            wb = wo_ + (o * C + c) * kh * kw
            for i in range(kh):
                h = ho * sh - ph + i * dh
                if h >= 0 and h < H:
                    for j in range(kw):
                        q = wo * sw - pw + j * dw
                        if q >= 0 and q < W:
                            acc += w[wb + i * kw + j] * x[xb + h * W + q]
        y[yo + e] = acc


def conv2d_direct(x, xo, w, wo_, N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, y, yo) -> None:
    """The direct convolution (see :func:`conv2d_direct_kernel`), one launch."""
    total = N * Co * Ho * Wo
    if total > 0:
        conv2d_direct_kernel[blocks_for(total), THREADS](x, xo, w, wo_, N, C, H, W, Co, kh, kw, sh, sw, ph, pw,
                                                         dh, dw, Ho, Wo, y, yo)


@cuda.jit
def col2im_add_kernel(cols, co, Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo, y, yo):
    """y[o, h*sh - ph + i*dh, q*sw - pw + j*dw] += cols[(o*kh + i)*kw + j, h*W + q] (one image), as a
    gather: the thread of y[o, r, s] adds, in (i, j) order as the cpu loop does, the one column element
    (if any) of each (i, j) whose target it is. No two threads write one element."""
    P = H * W
    total = Co * Ho * Wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        s = e % Wo
        t = e // Wo
        r = t % Ho
        o = t // Ho
        acc = y[yo + e]
        for i in range(kh):
            # h*sh = r + ph - i*dh must hold for an h in [0, H)
            u = r + ph - i * dh
            if u >= 0 and u % sh == 0 and u // sh < H:
                h = u // sh
                for j in range(kw):
                    v = s + pw - j * dw
                    if v >= 0 and v % sw == 0 and v // sw < W:
                        acc += cols[co + ((o * kh + i) * kw + j) * P + h * W + v // sw]
        y[yo + e] = acc


def col2im_add(cols, co, Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo, y, yo) -> None:
    """Add the columns ``cols`` [Co*kh*kw, H*W] into the image y [Co, Ho, Wo] (the adjoint of im2col), one launch."""
    total = Co * Ho * Wo
    if total > 0:
        col2im_add_kernel[blocks_for(total), THREADS](cols, co, Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo,
                                                      y, yo)


# -- pooling --------------------------------------------------------------------------------------------
# Planes [planes, H, W] from element ``xo``; windows kh x kw with stride (sh, sw) and padding (ph, pw).

@cuda.jit
def max_pool_kernel(x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo):
    """y[p, ho, wo] = the max of window (ho, wo), padding -inf (an empty window gives -inf); a NaN in the
    window makes it NaN (the cpu kernel's rule)."""
    total = planes * Ho * Wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        wo = e % Wo
        t = e // Wo
        ho = t % Ho
        p = t // Ho
        pb = xo + p * H * W
        acc = -math.inf
        for i in range(kh):
            h = ho * sh - ph + i
            if h >= 0 and h < H:
                for j in range(kw):
                    q = wo * sw - pw + j
                    if q >= 0 and q < W:
                        val = x[pb + h * W + q]
                        if val > acc or val != val:
                            acc = val
        y[yo + e] = acc


def max_pool(x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo) -> None:
    """Max pooling (see :func:`max_pool_kernel`), one launch."""
    total = planes * Ho * Wo
    if total > 0:
        max_pool_kernel[blocks_for(total), THREADS](x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo)


@cuda.jit
def avg_pool_kernel(x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo):
    """y[p, ho, wo] = the sum of window (ho, wo) / (kh*kw): the padding counts as zeros in the mean
    (PyTorch's count_include_pad). The sum is float64, as in the cpu kernel (same order, same result)."""
    total = planes * Ho * Wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        wo = e % Wo
        t = e // Wo
        ho = t % Ho
        p = t // Ho
        pb = xo + p * H * W
        acc = np.float64(0.0)  # explicitly float64: the simulator's NumPy would sum 0.0 + float32 in float32
        for i in range(kh):
            h = ho * sh - ph + i
            if h >= 0 and h < H:
                for j in range(kw):
                    q = wo * sw - pw + j
                    if q >= 0 and q < W:
                        acc += x[pb + h * W + q]
        y[yo + e] = acc / (kh * kw)


def avg_pool(x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo) -> None:
    """Average pooling (see :func:`avg_pool_kernel`), one launch."""
    total = planes * Ho * Wo
    if total > 0:
        avg_pool_kernel[blocks_for(total), THREADS](x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo)


@cuda.jit(device=True)
def first_max(x, pb, H, W, kh, kw, sh, sw, ph, pw, ho, wo):
    """(h, w) of the first maximum of window (ho, wo) of the plane at ``pb``, in row-major window order,
    padding counting as -inf and the first NaN winning (NumPy's argmax); it may lie in the padding."""
    best = -math.inf
    bh = -1
    bw = -1
    for i in range(kh):
        h = ho * sh - ph + i
        for j in range(kw):
            q = wo * sw - pw + j
            val = x[pb + h * W + q] if h >= 0 and h < H and q >= 0 and q < W else -math.inf
            # the window's first element is taken whatever it is: bh == -1 cannot say "none yet" (-1 is a padding row)
            if (i == 0 and j == 0) or val > best or (val != val and best == best):
                best = val
                bh = h
                bw = q
    return bh, bw


@cuda.jit
def max_pool_backward_kernel(x, xo, g, go, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo):
    """y[p, h, w] = the sum of g[p, ho, wo] over the windows (ho, wo) whose first maximum is (h, w),
    in (ho, wo) order as the cpu loop adds them: one thread per element of y, gathering over the windows
    that contain it (so y needs no zeroing launch and no atomics)."""
    zero = cuda.local.array(1, y.dtype)
    zero[0] = 0
    total = planes * H * W
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = e % W
        t = e // W
        h = t % H
        p = t // H
        pb = xo + p * H * W
        # windows ho with ho*sh - ph <= h < ho*sh - ph + kh (ceil of (h + ph - kh + 1) / sh, floor of (h + ph) / sh)
        ho_lo = max(0, (h + ph - kh + sh) // sh)
        ho_hi = min(Ho - 1, (h + ph) // sh)
        wo_lo = max(0, (w + pw - kw + sw) // sw)
        wo_hi = min(Wo - 1, (w + pw) // sw)
        acc = zero[0]
        for ho in range(ho_lo, ho_hi + 1):
            for wo in range(wo_lo, wo_hi + 1):
                bh, bw = first_max(x, pb, H, W, kh, kw, sh, sw, ph, pw, ho, wo)
                if bh == h and bw == w:
                    acc += g[go + (p * Ho + ho) * Wo + wo]
        y[yo + e] = acc


def max_pool_backward(x, xo, g, go, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo) -> None:
    """The gradient of max pooling: y [planes, H, W] (overwritten) routes each g[p, ho, wo] to the
    first maximum of its window (see :func:`max_pool_backward_kernel`), one launch."""
    total = planes * H * W
    if total > 0:
        max_pool_backward_kernel[blocks_for(total), THREADS](x, xo, g, go, planes, H, W, kh, kw, sh, sw, ph, pw,
                                                             Ho, Wo, y, yo)


@cuda.jit
def max_pool_gather_kernel(x, xo, v, vo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo):
    """y[p, ho, wo] = v[p, h, w] at the first maximum (h, w) of window (ho, wo) of x; 0 where it is padding."""
    total = planes * Ho * Wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        wo = e % Wo
        t = e // Wo
        ho = t % Ho
        p = t // Ho
        bh, bw = first_max(x, xo + p * H * W, H, W, kh, kw, sh, sw, ph, pw, ho, wo)
        if bh >= 0 and bh < H and bw >= 0 and bw < W:
            y[yo + e] = v[vo + (p * H + bh) * W + bw]
        else:
            y[yo + e] = 0


def max_pool_gather(x, xo, v, vo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, yo) -> None:
    """v read at each window's first maximum of x (see :func:`max_pool_gather_kernel`), one launch."""
    total = planes * Ho * Wo
    if total > 0:
        max_pool_gather_kernel[blocks_for(total), THREADS](x, xo, v, vo, planes, H, W, kh, kw, sh, sw, ph, pw,
                                                           Ho, Wo, y, yo)


# -- the random generator -------------------------------------------------------------------------------
# The legacy MT19937 of NumPy's RandomState and of Numba's np.random, so that the cuda backend draws the
# numbers the cpu backend draws. The state is a cuda.local.array(MT_WORDS, np.uint32): words 0..623, then
# the index of the next word to temper in mt[624] (624: regenerate first). Arithmetic is on int64 values
# below 2**32 masked explicitly (Numba would widen uint32 operands anyway, and mixing uint64 with int64
# literals would give float64).

@cuda.jit(device=True)
def mt_seed(mt, seed):
    """Seed the state ``mt`` with ``seed`` in [0, 2**32): init_genrand, as ``np.random.seed(seed)`` does."""
    s = np.int64(seed) & 0xFFFFFFFF
    for i in range(_MT_N):
        mt[i] = s
        s = (1812433253 * (s ^ (s >> 30)) + i + 1) & 0xFFFFFFFF
    mt[_MT_N] = _MT_N


@cuda.jit(device=True)
def _mt_twist(mt, i, i1, im):
    """Word i of the next block from words i, i1 = i+1 and im = i+397 (mod 624), in place, as mt19937_gen."""
    y = (np.int64(mt[i]) & 0x80000000) | (np.int64(mt[i1]) & 0x7FFFFFFF)
    word = np.int64(mt[im]) ^ (y >> 1)
    if y & 1:
        word ^= 0x9908B0DF
    mt[i] = word


@cuda.jit(device=True)
def _mt_regenerate(mt):
    """The next 624 words (the reference's three loops, so that each reads the words it reads there)."""
    for i in range(_MT_N - _MT_M):
        _mt_twist(mt, i, i + 1, i + _MT_M)
    for i in range(_MT_N - _MT_M, _MT_N - 1):
        _mt_twist(mt, i, i + 1, i + _MT_M - _MT_N)
    _mt_twist(mt, _MT_N - 1, 0, _MT_M - 1)


@cuda.jit(device=True)
def mt_next_u32(mt):
    """The next tempered 32-bit word (genrand_int32), as an int64 in [0, 2**32)."""
    pos = np.int64(mt[_MT_N])
    if pos >= _MT_N:
        _mt_regenerate(mt)
        pos = 0
    y = np.int64(mt[pos])
    mt[_MT_N] = pos + 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    y ^= y >> 18
    return y


@cuda.jit(device=True)
def mt_random_sample(mt):
    """A float64 uniform in [0, 1) from two words (genrand_res53, as ``np.random.random_sample``)."""
    a = mt_next_u32(mt) >> 5
    b = mt_next_u32(mt) >> 6
    return (a * 67108864.0 + b) / 9007199254740992.0


@cuda.jit
def mt_sample_kernel(seed, out):
    """out[:] = the first out.size draws of ``np.random.RandomState(seed).random_sample``, by thread 0
    (the generator is sequential; this kernel exists to test and inspect the device functions)."""
    if cuda.grid(1) == 0:
        mt = cuda.local.array(MT_WORDS, np.uint32)
        mt_seed(mt, seed)
        for i in range(out.size):
            out[i] = mt_random_sample(mt)


def mt_samples(seed: int, out) -> None:
    """Fill ``out`` (float64) with the first draws after seeding with ``seed`` (one thread)."""
    mt_sample_kernel[1, 1](int(seed), out)


# -- offline compilation --------------------------------------------------------------------------------
# Argument kinds per kernel: "A" a 1-D contiguous array of the data dtype, "i" an int64, "f" a float64,
# "R" a float64 array (the generator's output).
_KERNEL_ARGS: dict[str, str] = {
    "gemm_kernel": "iiiiif" + "Aii" * 2 + "f" + "Aii",
    "im2col_kernel": "Ai" + "i" * 13 + "Ai",
    "conv2d_direct_kernel": "AiAi" + "i" * 15 + "Ai",
    "col2im_add_kernel": "Ai" + "i" * 13 + "Ai",
    "max_pool_kernel": "Ai" + "i" * 11 + "Ai",
    "avg_pool_kernel": "Ai" + "i" * 11 + "Ai",
    "max_pool_backward_kernel": "AiAi" + "i" * 11 + "Ai",
    "max_pool_gather_kernel": "AiAi" + "i" * 11 + "Ai",
    "mt_sample_kernel": "iR",
}


def PTX_SIGNATURES(dtype: str) -> dict[str, tuple]:
    """For each ``@cuda.jit`` kernel of this module, ``(dispatcher, signature)`` with ``dtype`` data
    ("float32" or "float64"), to compile without a GPU: ``numba.cuda.compile_ptx(dispatcher.py_func,
    signature, cc=(8, 0))`` (see ptx.py's compile_ptx, which also handles the device functions)."""
    if dtype not in ("float32", "float64"):
        from ...ir.errors import DTypeError
        raise DTypeError(f"the cuda runtime kernels take float32 or float64 data, not {dtype!r}")
    kinds = {"A": f"{dtype}[::1]", "i": "int64", "f": "float64", "R": "float64[::1]"}
    kernels = globals()
    return {name: (kernels[name], f"void({', '.join(kinds[kind] for kind in args)})")
            for name, args in _KERNEL_ARGS.items()}
