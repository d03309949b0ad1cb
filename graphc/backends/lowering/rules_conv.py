"""Convolution and pooling: library calls (``ir.LIBRARY``) and GEMMs, with the target's choice of
convolution method (``lw.conv_method``: im2col + GEMM or the direct loop nest)."""
from __future__ import annotations

import sympy as sp

from ...ir import Node
from .context import Lowering, Operand, rule
from .geometry import ConvGeometry
from .ir import Call, Ref, index_var, nest
from .library import chunk_count, im2col_scratch
from .rules_linalg import epilogue, flagged, gemm


def conv_geometry(node: Node, x: Node, w: Node) -> ConvGeometry:
    N, C, H, W = x.shape
    Co, _, kh, kw = w.shape
    _, _, Ho, Wo = node.shape
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    return ConvGeometry(N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


def conv2d_product(lw: Lowering, node: Node, x: Node, w: Node) -> list:
    """A pointwise conv is one GEMM per image: out[n] [O, H*W] = W [O, C] @ x[n] [C, H*W]; otherwise
    the library kernel the target chose: im2col + one GEMM per image (a scratch column matrix of at
    least C*kh*kw x Ho*Wo: see library.im2col_scratch), or the direct loop nest."""
    Xc, Wc = lw.converted(x, node.dtype), lw.converted(w, node.dtype)
    g = conv_geometry(node, x, w)
    method = lw.conv_method(node, g)  # recorded even for a pointwise conv, as the compile options are
    y = Ref(lw.buffer(node))
    if g.is_pointwise:
        n = index_var("n")
        K, P = g.C, g.H * g.W
        return nest([g.N], ["n"], [gemm(Wc, Xc, lw.operand(node), g.Co, P, K, b_plus=n * (K * P),
                                        c_plus=n * (g.Co * P))])
    if method == "direct":
        return [Call("conv2d_direct", (Xc.ref(), Wc.ref(), *g, y))]
    col = lw.scratch(im2col_scratch(*g), node.dtype)
    return [Call("conv2d_im2col", (Xc.ref(), Wc.ref(), *g, Ref(col), y))]


@rule("conv2d")
def lower_conv2d(lw: Lowering, node: Node) -> None:
    lw.emit(conv2d_product(lw, node, *node.inputs[:2]))


@rule("conv2d_epilogue")
def lower_conv2d_epilogue(lw: Lowering, node: Node) -> None:
    """The convolution into the output, then the epilogue expression over it in place."""
    lw.emit(conv2d_product(lw, node, *node.inputs[:2]) + epilogue(lw, node))


@rule("conv_transpose2d")
def lower_conv_transpose2d(lw: Lowering, node: Node) -> None:
    """GEMM + col2im per image: cols [O*kh*kw, H*W] = W^T @ x[n]; cols scatter-added into the zeroed
    output. The images run in a parallel loop over chunks of them (library.chunk_count), each chunk's
    images in sequence over a cols scratch of its own."""
    x, w = node.inputs
    N, C, H, W = x.shape
    _, Co, kh, kw = w.shape
    _, _, Ho, Wo = node.shape
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    K, P = Co * kh * kw, H * W
    chunks = chunk_count(N)
    per = N // chunks
    Xc, Wc = lw.converted(x, node.dtype), lw.converted(w, node.dtype)
    scratch = lw.scratch(chunks * K * P, node.dtype)
    t, m = index_var("t"), index_var("m")
    n = t * per + m
    cols = Ref(scratch, t * (K * P))
    # W is stored [C, O*kh*kw]: the GEMM reads it transposed.
    body = [gemm(flagged(Wc, True), Xc, Operand(scratch), K, P, C, b_plus=n * (C * P), c_plus=cols.offset),
            Call("col2im_add", (cols, Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo,
                                Ref(lw.buffer(node), n * (Co * Ho * Wo))))]
    lw.emit(lw.fill(node, 0) + nest([chunks], ["t"], nest([per], ["m"], body, parallel=False)))


def pool_geometry(node: Node, x: Node) -> tuple[int, ...]:
    """The pooling kernels' integer operands: planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo."""
    from ...ops.conv import conv_output_size

    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    Ho, Wo = conv_output_size(H, kh, sh, ph), conv_output_size(W, kw, sw, pw)
    return N * C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo


def pool_chunks(lw: Lowering, node: Node, kernel: str, x: Node, refs: list[Ref], sizes: str) -> None:
    """The pooling call ``kernel`` over ``x``'s planes into ``node``, as a parallel loop over chunks of planes
    (library.chunk_count), each a call on its planes (the planes are independent). ``sizes`` has a letter for
    each operand of ``refs`` and then one for the output: "i" when its planes are H x W, "o" when Ho x Wo."""
    planes, H, W, *window, Ho, Wo = pool_geometry(node, x)
    chunks = chunk_count(planes)
    per, t = planes // chunks, index_var("t")
    first = t * per if chunks > 1 else sp.Integer(0)
    plane = {"i": H * W, "o": Ho * Wo}
    at = [Ref(r.buffer, r.offset + first * plane[s]) for r, s in zip([*refs, Ref(lw.buffer(node))], sizes)]
    call = Call(kernel, (*at[:-1], per, H, W, *window, Ho, Wo, at[-1]))
    lw.emit(nest([chunks], ["t"], [call]) if chunks > 1 else [call])


@rule("max_pool2d", "avg_pool2d")
def lower_pool(lw: Lowering, node: Node) -> None:
    (x,) = node.inputs
    X = lw.converted(x, node.dtype)
    pool_chunks(lw, node, "max_pool" if node.op == "max_pool2d" else "avg_pool", x, [X.ref()], "io")


@rule("max_pool2d_backward", "max_pool2d_gather")
def lower_max_pool2d_backward(lw: Lowering, node: Node) -> None:
    """Windows' first maxima found in x (as it is), values taken from g (in the node's dtype): the gradient
    routed back into x's planes, or gathered from g (x's shape) into the windows' (ir.LIBRARY)."""
    x, g = node.inputs
    X, G = lw.operand(x), lw.converted(g, node.dtype)
    if node.op == "max_pool2d_backward":
        pool_chunks(lw, node, "max_pool_backward", x, [X.ref(), G.ref()], "ioi")
    else:
        pool_chunks(lw, node, "max_pool_gather", x, [X.ref(), G.ref()], "iio")
