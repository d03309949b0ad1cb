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
from numba.extending import intrinsic
from numba.np.linalg import check_blas_return, ensure_blas, get_blas_kind

_char = ir.IntType(8)
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
        fnty = ir.FunctionType(ir.IntType(32), [_char, _char, _char, intp, intp, intp, _void_p, _void_p, intp,
                                                _void_p, intp, _void_p, _void_p, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def cast(value, ty):
            return context.cast(builder, value, ty, types.intp)

        def pointer(arr_val, arr_ty, off_val, off_ty):
            data = context.make_array(arr_ty)(context, builder, arr_val).data
            return builder.bitcast(builder.gep(data, [cast(off_val, off_ty)]), _void_p)

        def slot(value, ty):
            return builder.bitcast(cgutils.alloca_once_value(builder, context.cast(builder, value, ty, dtype)), _void_p)

        def trans_char(flag, ty):
            nonzero = builder.icmp_unsigned("!=", cast(flag, ty), ir.Constant(intp, 0))
            return builder.select(nonzero, ir.Constant(_char, ord("t")), ir.Constant(_char, ord("n")))

        # Column-major BLAS sees a row-major matrix transposed: C^T = op(B)^T op(A)^T.
        res = builder.call(fn, (
            ir.Constant(_char, ord(get_blas_kind(dtype))),
            trans_char(tb, trans_b), trans_char(ta, trans_a),
            cast(n_, n), cast(m_, m), cast(k_, k),
            slot(alpha_, alpha), pointer(b_, b, b_off_, b_off), cast(ldb_, ldb),
            pointer(a_, a, a_off_, a_off), cast(lda_, lda), slot(beta_, beta),
            pointer(c_, c, c_off_, c_off), cast(ldc_, ldc)))
        check_blas_return(context, builder, res)
        return context.get_dummy_value()

    return sig, codegen


# -- generic kernels for convolution and pooling --------------------------------------------------------------
# Loop nests too deep to inline in every graph's driver at a reasonable compile time: compiled once per
# dtype and kept in Numba's own cache next to this file, so a graph's driver only pays for the calls.
# Every array is flat; ``*o`` arguments are element offsets (image n, a workspace slot); shapes are ints.

_KERNEL = dict(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})


@njit(**_KERNEL)
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


@njit(**_KERNEL)
def col2im_add(cols, co, O, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo, out, oo):
    """The adjoint of im2col: out[o, h*sh - ph + i*dh, w*sw - pw + j*dw] += cols[(o*kh + i)*kw + j, h*W + w]."""
    P = H * W
    for o in range(O):
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


@njit(**_KERNEL)
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


@njit(**_KERNEL)
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


@njit(**_KERNEL)
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
            if bh == -1 or val > best or (val != val and best == best):
                best = val
                bh = h
                bw = q
    return bh, bw


@njit(**_KERNEL)
def max_pool_backward(x, xo, g, go, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, out, oo):
    """out (zeroed here) [p, h, w] += g[p, ho, wo] at the first maximum of each window of x."""
    for k in range(planes * H * W):
        out[oo + k] = 0
    for p in range(planes):
        pb = xo + p * H * W
        for ho in range(Ho):
            for wo in range(Wo):
                bh, bw = _first_max(x, pb, H, W, kh, kw, sh, sw, ph, pw, ho, wo)
                if bh >= 0 and bh < H and bw >= 0 and bw < W:
                    out[oo + p * H * W + bh * W + bw] += g[go + (p * Ho + ho) * Wo + wo]


@njit(**_KERNEL)
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
KERNELS = (im2col, col2im_add, max_pool, avg_pool, _first_max, max_pool_backward, max_pool_gather)
