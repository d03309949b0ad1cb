"""Runtime helpers the generated modules import: BLAS GEMM on offsets into flat arrays.

``gemm`` is a Numba intrinsic: each call site compiles to one call of Numba's own ``numba_xxgemm``
(SciPy's BLAS, the function ``np.dot`` uses), resolved by symbol name, so the calling code stays
cacheable. It takes flat arrays plus element offsets and leading dimensions, so the generated
code never builds array views (which cost compile time and defeat alias analysis), and it exposes
BLAS's transposes and beta (accumulate into C), which ``np.dot`` hides.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed, impl_ret_new_ref
from numba.extending import intrinsic
from numba.np.arrayobj import _empty_nd_impl
from numba.np.linalg import check_blas_return, ensure_blas, get_blas_kind

from ..llvm import mathf
from ..lowering.library import COL_BLOCK  # the columns conv2d_im2col fills at a time (one fact, both CPU paths)
from . import sharing
from .kernel_cache import cached

_void_p = ir.IntType(8).as_pointer()


@intrinsic
def gemm(typingctx, trans_a, trans_b, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, where op(X) is X or X^T
    (``trans_*`` nonzero), and each matrix starts at element ``*_off`` of its flat array with
    leading dimension ``ld*`` (its stored row length). A, B and C must share a float dtype."""
    ensure_blas()
    for arr in (a, b, c):
        if not isinstance(arr, types.Array) or arr.dtype != c.dtype or arr.dtype not in (types.float32, types.float64):
            raise TypeError(f"gemm: operands must be float32/float64 arrays of one dtype, got {a}, {b}, {c}")
    dtype = c.dtype
    sig = types.void(trans_a, trans_b, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc)

    def codegen(context, builder, signature, args):
        (ta, tb, m_, n_, k_, alpha_, a_, a_off_, lda_, b_, b_off_, ldb_, beta_, c_, c_off_, ldc_) = args
        intp = context.get_value_type(types.intp)

        def cast(value, ty):
            return context.cast(builder, value, ty, types.intp)

        def pointer(arr_val, arr_ty, off_val, off_ty):
            data = context.make_array(arr_ty)(context, builder, arr_val).data
            return builder.bitcast(builder.gep(data, [cast(off_val, off_ty)]), _void_p)

        def slot(value, ty):
            return builder.bitcast(cgutils.alloca_once_value(builder, context.cast(builder, value, ty, dtype)), _void_p)

        def nonzero(flag, ty):
            return builder.icmp_unsigned("!=", cast(flag, ty), ir.Constant(intp, 0))

        res = sharing.call_gemm(builder, get_blas_kind(dtype), nonzero(ta, trans_a), nonzero(tb, trans_b),
                                cast(m_, m), cast(n_, n), cast(k_, k), slot(alpha_, alpha),
                                pointer(a_, a, a_off_, a_off), cast(lda_, lda), pointer(b_, b, b_off_, b_off),
                                cast(ldb_, ldb), slot(beta_, beta), pointer(c_, c, c_off_, c_off), cast(ldc_, ldc))
        check_blas_return(context, builder, res)
        return context.get_dummy_value()

    return sig, codegen


def entry_function(symbol: str):
    """The llvm driver's entry ``symbol`` as a function Numba code calls: the llvm target's entry ABI, pointers
    passed as integers. Linked by name: ``llvm_driver.load_entry`` registered its address."""
    return types.ExternalFunction(symbol, types.int32(*(types.intp,) * 6))


# -- generic kernels for convolution and pooling --------------------------------------------------------------
# Loop nests too deep to inline in every graph's driver at a reasonable compile time: compiled once per
# dtype and kept in Numba's own cache next to this file, so a graph's driver only pays for the calls.
# Every array is flat; ``*o`` arguments are element offsets (image n, a workspace slot); shapes are ints.

_KERNEL = dict(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})


def _kernel(fn):
    """``@njit(**_KERNEL)``, cached wherever a cache can be written (see :func:`kernel_cache.cached`)."""
    return cached(fn, lambda cache: njit(**dict(_KERNEL, cache=cache)))


@_kernel
def im2col(x, xo, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, co):
    """col[(c*kh + i)*kw + j, ho*Wo + wo] = x[c, ho*sh - ph + i*dh, wo*sw - pw + j*dw] (0 outside)."""
    P = Ho * Wo
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = co + ((c * kh + i) * kw + j) * P
                for ho in range(Ho):
                    h = ho * sh - ph + i * dh
                    if h < 0 or h >= H:
                        for wo in range(Wo):
                            col[row + ho * Wo + wo] = 0
                    else:
                        xb = xo + (c * H + h) * W
                        for wo in range(Wo):
                            q = wo * sw - pw + j * dw
                            col[row + ho * Wo + wo] = x[xb + q] if q >= 0 and q < W else 0


@_kernel
def conv2d_direct(x, xo, w, wo_, N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, out, oo):
    """The direct loop nest: out[n, o, ho, wo] = sum over c, i, j of w[o, c, i, j] *
    x[n, c, ho*sh - ph + i*dh, wo*sw - pw + j*dw]. Each (c, i, j) adds one weight times a shifted input
    row to every output row; the output plane stays in L1, the inner loop runs along the row (SIMD)."""
    P = Ho * Wo
    for n in range(N):
        for o in range(Co):
            ob = oo + (n * Co + o) * P
            for q in range(P):
                out[ob + q] = 0
            for c in range(C):
                xb = xo + (n * C + c) * H * W
                for i in range(kh):
                    for j in range(kw):
                        wv = w[wo_ + ((o * C + c) * kh + i) * kw + j]
                        shift = j * dw - pw
                        # output columns whose input column v*sw + shift lies in [0, W)
                        lo = max(0, -((shift) // sw)) if shift < 0 else 0
                        hi = min(Wo, (W - 1 - shift) // sw + 1) if W - 1 - shift >= 0 else 0
                        for ho in range(Ho):
                            h = ho * sh - ph + i * dh
                            if h < 0 or h >= H:
                                continue
                            rb = xb + h * W + shift
                            orow = ob + ho * Wo
                            for v in range(lo, hi):
                                out[orow + v] += wv * x[rb + v * sw]


@_kernel
def conv2d_im2col(x, xo, w, wo_, N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, co, out, oo):
    """im2col + one GEMM per image: out[n] [Co, Ho*Wo] = w [Co, C*kh*kw] @ col [C*kh*kw, Ho*Wo], with
    ``col`` a scratch of C*kh*kw*Ho*Wo elements from element ``co``."""
    K, P = C * kh * kw, Ho * Wo
    # Channels per block of columns: a block of at most COL_BLOCK elements stays in L2 between im2col writing
    # it and the GEMM reading it. Only a big kernel over many channels needs more than one block: the
    # weight gradient's convolution (a LeNet conv1's: 64 "channels" of 28x28 windows, a 5 MB column matrix).
    cb = min(C, max(1, COL_BLOCK // (kh * kw * P)))
    for n in range(N):
        for c0 in range(0, C, cb):
            c1 = min(C, c0 + cb)
            im2col(x, xo + (n * C + c0) * H * W, c1 - c0, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, co)
            gemm(0, 0, Co, P, (c1 - c0) * kh * kw, 1.0, w, wo_ + c0 * kh * kw, K, col, co, P,
                 0.0 if c0 == 0 else 1.0, out, oo + n * Co * P, P)


@_kernel
def col2im_add(cols, co, Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo, out, oo):
    """The adjoint of im2col: out[o, h*sh - ph + i*dh, w*sw - pw + j*dw] += cols[(o*kh + i)*kw + j, h*W + w]."""
    P = H * W
    for o in range(Co):
        for i in range(kh):
            for j in range(kw):
                row = co + ((o * kh + i) * kw + j) * P
                for h in range(H):
                    oh = h * sh - ph + i * dh
                    if oh >= 0 and oh < Ho:
                        ob = oo + (o * Ho + oh) * Wo
                        for q in range(W):
                            ow = q * sw - pw + j * dw
                            if ow >= 0 and ow < Wo:
                                out[ob + ow] += cols[row + h * W + q]


@_kernel
def max_pool(x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, out, oo):
    """Max over each window (padding is -inf); NaN propagates, as in NumPy."""
    for p in range(planes):
        pb = xo + p * H * W
        for ho in range(Ho):
            for wo in range(Wo):
                acc = -np.inf
                for i in range(kh):
                    h = ho * sh - ph + i
                    if h >= 0 and h < H:
                        for j in range(kw):
                            q = wo * sw - pw + j
                            if q >= 0 and q < W:
                                val = x[pb + h * W + q]
                                if val > acc or val != val:
                                    acc = val
                out[oo + (p * Ho + ho) * Wo + wo] = acc


@_kernel
def avg_pool(x, xo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, out, oo):
    """Mean over each window; zero padding counts in the mean (PyTorch's count_include_pad)."""
    for p in range(planes):
        pb = xo + p * H * W
        for ho in range(Ho):
            for wo in range(Wo):
                acc = 0.0
                for i in range(kh):
                    h = ho * sh - ph + i
                    if h >= 0 and h < H:
                        for j in range(kw):
                            q = wo * sw - pw + j
                            if q >= 0 and q < W:
                                acc += x[pb + h * W + q]
                out[oo + (p * Ho + ho) * Wo + wo] = acc / (kh * kw)


@_kernel
def _first_max(x, pb, H, W, kh, kw, sh, sw, ph, pw, ho, wo):
    """(h, w) of the first maximum of window (ho, wo), padding counting as -inf (may be outside)."""
    best = -np.inf
    bh = -1
    bw = -1
    for i in range(kh):
        h = ho * sh - ph + i
        for j in range(kw):
            q = wo * sw - pw + j
            val = x[pb + h * W + q] if h >= 0 and h < H and q >= 0 and q < W else -np.inf
            # the window's first element is taken whatever it is: bh == -1 cannot say "none yet" (-1 is a padding row)
            if (i == 0 and j == 0) or val > best or (val != val and best == best):
                best = val
                bh = h
                bw = q
    return bh, bw


#: The size from which max_pool_backward writes tiled windows in one pass: 1 MiB of float32, a core's L2.
TILED_POOL_MIN = 262144


@_kernel
def max_pool_backward(x, xo, g, go, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, out, oo):
    """out (zeroed here) [p, h, w] += g[p, ho, wo] at the first maximum of each window of x."""
    tiled = sh == kh and sw == kw and ph == 0 and pw == 0 and Ho * kh == H and Wo * kw == W
    if tiled and planes * H * W >= TILED_POOL_MIN:
        # The windows tile the plane (LeNet's 2x2, stride 2): each element is in one window and is written
        # once, g or 0; no zeroing pass, no read-modify-write. The comparisons use & and | (no branch: on
        # random data a branch per element mispredicts half the time); the first maximum wins, and the first
        # NaN, as in _first_max. Below TILED_POOL_MIN elements the general way below is faster (its passes
        # over y stay in L2: LeNet's 1024 10x10 planes 0.06 ms against 0.27).
        for p in range(planes):
            for ho in range(Ho):
                for wo in range(Wo):
                    wb = xo + p * H * W + ho * kh * W + wo * kw
                    best = x[wb]
                    at = 0
                    for i in range(kh):
                        for j in range(kw):
                            val = x[wb + i * W + j]
                            take = (val > best) | ((val != val) & (best == best))
                            best = val if take else best
                            at = i * kw + j if take else at
                    gv = g[go + (p * Ho + ho) * Wo + wo]
                    for i in range(kh):
                        for j in range(kw):
                            out[oo + (wb - xo) + i * W + j] = gv if i * kw + j == at else 0
        return
    for k in range(planes * H * W):
        out[oo + k] = 0
    for p in range(planes):
        pb = xo + p * H * W
        for ho in range(Ho):
            for wo in range(Wo):
                bh, bw = _first_max(x, pb, H, W, kh, kw, sh, sw, ph, pw, ho, wo)
                if bh >= 0 and bh < H and bw >= 0 and bw < W:
                    out[oo + p * H * W + bh * W + bw] += g[go + (p * Ho + ho) * Wo + wo]


@_kernel
def max_pool_gather(x, xo, v, vo, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, out, oo):
    """out[p, ho, wo] = v[p, h, w] at the first maximum (h, w) of window (ho, wo) of x (0 if padding)."""
    for p in range(planes):
        pb = xo + p * H * W
        for ho in range(Ho):
            for wo in range(Wo):
                bh, bw = _first_max(x, pb, H, W, kh, kw, sh, sw, ph, pw, ho, wo)
                inside = bh >= 0 and bh < H and bw >= 0 and bw < W
                out[oo + (p * Ho + ho) * Wo + wo] = v[vo + p * H * W + bh * W + bw] if inside else 0


#: The generic kernels a generated module may import (graphc flushes their Numba cache if it fails to load).
KERNELS = (im2col, conv2d_direct, conv2d_im2col, col2im_add, max_pool, avg_pool, _first_max, max_pool_backward,
           max_pool_gather)


# -- vectorizable float32 math: inline IR (llvm/mathf.py), shared with the llvm target --------------------------

@intrinsic
def tanh_f32(typingctx, x):
    """tanh of a float32, as an inline rational approximation (NaN stays NaN, +-inf gives +-1)."""
    if x != types.float32:
        raise TypeError(f"tanh_f32 takes a float32, got {x}")

    def codegen(context, builder, signature, args):
        return mathf.tanh_f32(builder, args[0])

    return types.float32(types.float32), codegen


@intrinsic
def exp_f32(typingctx, x):
    """exp of a float32, inline (overflow gives inf, underflow 0 or a subnormal, NaN stays NaN)."""
    if x != types.float32:
        raise TypeError(f"exp_f32 takes a float32, got {x}")

    def codegen(context, builder, signature, args):
        return mathf.exp_f32(builder, args[0])

    return types.float32(types.float32), codegen


# -- the driver's arrays, without NumPy's generic array methods ----------------------------------------------------
# ``state.view(f32)``, ``x.reshape(n)``, ``np.empty(n, f32)`` and ``out.reshape(shape)`` each make Numba compile
# a generic implementation (a compatibility check, a shape computation, the np.empty overload) the first time
# a process compiles a driver: 0.2 s for the views and 0.2 s for reshaping the outputs of the MLP step (of
# ~1.6 s; bench/compile_time.py). The driver knows every size when it is rendered, so these intrinsics only
# fill in an array header: no checks, no code to compile. Each result shares (and holds a reference to)
# the memory of its argument.

def _dtype_of(value_type, what: str):
    dtype = getattr(value_type, "dtype", None)
    if not isinstance(value_type, (types.NumberClass, types.DType)) or dtype is None:
        raise TypeError(f"{what}: expected a NumPy scalar type (np.float32, ...), got {value_type}")
    return dtype


def _array_header(context, builder, source_type, source, result_type, shape):
    """The array of ``result_type`` (C order) over ``source``'s memory with the given shape (LLVM values)."""
    intp = context.get_value_type(types.intp)
    ary = context.make_array(source_type)(context, builder, source)
    out = context.make_array(result_type)(context, builder)
    itemsize = context.get_abi_sizeof(context.get_data_type(result_type.dtype))
    strides, stride = [], ir.Constant(intp, itemsize)
    for extent in reversed(shape):
        strides.insert(0, stride)
        stride = builder.mul(stride, extent)
    context.populate_array(out, data=builder.bitcast(ary.data, out.data.type),
                           shape=cgutils.pack_array(builder, list(shape), ty=intp),
                           strides=cgutils.pack_array(builder, strides, ty=intp),
                           itemsize=ir.Constant(intp, itemsize), meminfo=ary.meminfo, parent=ary.parent)
    return impl_ret_borrowed(context, builder, result_type, out._getvalue())


@intrinsic
def view_as(typingctx, arr, dtype):
    """``arr`` (a contiguous array, e.g. the parameter store's bytes) as a flat array of ``dtype``: as many
    whole elements as its bytes hold. Like ``arr.view(dtype)`` on a 1-D array, without its checks."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        raise TypeError(f"view_as: expected a C-contiguous array, got {arr}")
    result = types.Array(_dtype_of(dtype, "view_as"), 1, "C")

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        nbytes = builder.mul(ary.nitems, ary.itemsize)
        itemsize = context.get_abi_sizeof(context.get_data_type(result.dtype))
        count = builder.udiv(nbytes, ir.Constant(intp, itemsize))
        return _array_header(context, builder, signature.args[0], args[0], result, [count])

    return result(arr, dtype), codegen


@intrinsic
def as_shape(typingctx, arr, shape):
    """``arr`` (C-contiguous) seen with ``shape`` (a tuple of ints, possibly empty), which must hold as many
    elements: the renderer's flat inputs and shaped outputs. Like ``arr.reshape(shape)``, without its checks."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        raise TypeError(f"as_shape: expected a C-contiguous array, got {arr}")
    if not isinstance(shape, types.BaseTuple) or not all(isinstance(t, types.Integer) for t in shape):
        raise TypeError(f"as_shape: expected a tuple of ints, got {shape}")
    result = types.Array(arr.dtype, len(shape), "C")

    def codegen(context, builder, signature, args):
        extents = [context.cast(builder, builder.extract_value(args[1], k), t, types.intp)
                   for k, t in enumerate(signature.args[1])]
        return _array_header(context, builder, signature.args[0], args[0], result, extents)

    return result(arr, shape), codegen


@intrinsic
def empty_flat(typingctx, n, dtype):
    """A new flat array of ``n`` elements of ``dtype`` (``np.empty(n, dtype)`` without its overload)."""
    if not isinstance(n, types.Integer):
        raise TypeError(f"empty_flat: expected an int size, got {n}")
    result = types.Array(_dtype_of(dtype, "empty_flat"), 1, "C")

    def codegen(context, builder, signature, args):
        size = context.cast(builder, args[0], signature.args[0], types.intp)
        out = _empty_nd_impl(context, builder, result, [size])
        return impl_ret_new_ref(context, builder, result, out._getvalue())

    return result(n, dtype), codegen
