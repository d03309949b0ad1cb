"""Convolution and pooling on NCHW tensors.

conv2d weights are [out_channels, in_channels, kh, kw]; conv_transpose2d weights are
[in_channels, out_channels, kh, kw] (PyTorch's layouts). Pooling pads max with -inf and
average with zeros that count in the mean (PyTorch's count_include_pad=True).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Attrs, Node, ShapeError
from .checks import int_pair, located
from .registry import OpDef, float_operands, register
from .tensor import Tensor, apply

#: The smallest value of each geometry attribute: a window, a stride or a dilation is at least 1.
GEOMETRY_LOW = {"kernel": 1, "stride": 1, "dilation": 1, "padding": 0, "output_padding": 0}


def pair(value, what: str) -> tuple[int, int]:
    """An int or a pair of ints >= the attribute's smallest value (GEOMETRY_LOW), as (height, width)."""
    return int_pair(what, value, GEOMETRY_LOW[what])


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_nchw(x: Node, what: str = "input") -> None:
    if x.ndim != 4:
        raise ShapeError(f"{what} must be 4-D NCHW, got {x.type_str}")


def _check_geometry(attrs: Attrs, names=("stride", "padding", "dilation")) -> None:
    for name in names:
        if name in attrs:
            pair(attrs[name], name)


def _check_kernel(w: Node, layout: str) -> None:
    if w.shape[2] < 1 or w.shape[3] < 1:
        raise ShapeError(f"the weight {layout} = {list(w.shape)} has an empty {w.shape[2]}x{w.shape[3]} window")


# -- conv2d --------------------------------------------------------------------------------------------------

def _conv2d_rule(inputs: Sequence[Node], attrs: Attrs):
    x, w = inputs
    _check_nchw(x)
    _check_nchw(w, "weight")
    _check_geometry(attrs)
    _check_kernel(w, "[out, in, kh, kw]")
    if x.shape[1] != w.shape[1]:
        raise ShapeError(f"channel mismatch: the input has {x.shape[1]} channels but the weight "
                         f"[out, in, kh, kw] = {list(w.shape)} expects {w.shape[1]}")
    out_hw = []
    for axis, name in ((2, "height"), (3, "width")):
        k = axis - 2
        size = conv_output_size(x.shape[axis], w.shape[axis], attrs["stride"][k], attrs["padding"][k], attrs["dilation"][k])
        if size < 1:
            raise ShapeError(f"the kernel's {name} {w.shape[axis]} (dilation {attrs['dilation'][k]}) is larger than "
                             f"the padded input's {x.shape[axis] + 2 * attrs['padding'][k]}")
        out_hw.append(size)
    return (x.shape[0], w.shape[0], *out_hw), float_operands(inputs)


def _pad_hw(x: np.ndarray, padding, value=0.0) -> np.ndarray:
    (ph, pw) = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _window(xp: np.ndarray, i: int, j: int, out_hw, stride, dilation) -> np.ndarray:
    """The [N, C, Ho, Wo] view of padded input ``xp`` that kernel tap (i, j) multiplies."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]


def conv2d_reference(arrays, attrs):
    """Every output pixel is the dot product of the kernel with the input window under it:
    a (strided, dilated) sliding-window view of the padded input contracted with the kernel."""
    x, w = arrays
    kh, kw = w.shape[2:]
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    xp = _pad_hw(x, attrs["padding"])
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))  # [N, C, H', W', span_h, span_w]
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                            # [N, C, Ho, Wo, kh, kw]
    n, c, ho, wo = windows.shape[:4]
    columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)  # im2col: one row per pixel
    out = columns @ w.reshape(w.shape[0], c * kh * kw).T                                # [N*Ho*Wo, O]
    return out.reshape(n, ho, wo, w.shape[0]).transpose(0, 3, 1, 2)


def conv2d_weight_grad(x: Tensor, gy: Tensor, kernel: tuple[int, int], stride, padding, dilation) -> Tensor:
    """sum over n, ho, wo of gy[n, o, ho, wo] * x_padded[n, c, ho*s + i*d, wo*s + j*d]: [O, C, kh, kw].

    It is itself a conv2d, with batch and channels swapped and stride and dilation exchanged; the
    output can have extra rows (the input rows the strided conv never reached), sliced away.
    """
    from .shape import transpose

    swapped = conv2d(transpose(x, (1, 0, 2, 3)), transpose(gy, (1, 0, 2, 3)), stride=dilation, padding=padding,
                     dilation=stride)
    if swapped.shape[2:] != tuple(kernel):
        swapped = swapped[:, :, :kernel[0], :kernel[1]]
    return transpose(swapped, (1, 0, 2, 3))


def _conv2d_vjp(node, g, inputs):
    x, w = inputs
    stride, padding, dilation = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    # conv_transpose2d is conv2d's adjoint in x; output_padding restores the rows a strided conv skipped.
    extra = tuple((x.shape[2 + k] + 2 * padding[k] - dilation[k] * (w.shape[2 + k] - 1) - 1) % stride[k]
                  for k in range(2))
    dx = conv_transpose2d(g, w, stride=stride, padding=padding, output_padding=extra, dilation=dilation)
    return [dx, conv2d_weight_grad(x, g, w.shape[2:], stride, padding, dilation)]


register(OpDef("conv2d", "conv", "2-D cross-correlation, NCHW input, [O, C, kh, kw] weight", _conv2d_rule,
               conv2d_reference, _conv2d_vjp,
               notes="gradient: conv_transpose2d of the cotangent for the input; for the weight, a conv2d of the "
                     "input with the cotangent (batch and channels swapped, stride and dilation exchanged)"))


def conv2d(x: Tensor, w: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW ``x`` with ``w`` [O, C, kh, kw]."""
    with located("conv2d", [x, w]):
        attrs = {"stride": pair(stride, "stride"), "padding": pair(padding, "padding"),
                 "dilation": pair(dilation, "dilation")}
    return apply("conv2d", [x, w], attrs)


# -- conv_transpose2d -------------------------------------------------------------------------------------------

def _conv_t_rule(inputs: Sequence[Node], attrs: Attrs):
    x, w = inputs
    _check_nchw(x)
    _check_nchw(w, "weight")
    _check_geometry(attrs, ("stride", "padding", "dilation", "output_padding"))
    _check_kernel(w, "[in, out, kh, kw]")
    if x.shape[1] != w.shape[0]:
        raise ShapeError(f"channel mismatch: the input has {x.shape[1]} channels but the weight "
                         f"[in, out, kh, kw] = {list(w.shape)} expects {w.shape[0]}")
    out_hw = []
    for k in range(2):
        s, p, d, op = attrs["stride"][k], attrs["padding"][k], attrs["dilation"][k], attrs["output_padding"][k]
        if op >= max(s, d):
            raise ShapeError(f"output_padding {attrs['output_padding']} must be smaller than stride or dilation")
        size = (x.shape[2 + k] - 1) * s - 2 * p + d * (w.shape[2 + k] - 1) + op + 1
        if size < 1:
            raise ShapeError(f"padding {attrs['padding']} leaves an empty output")
        out_hw.append(size)
    return (x.shape[0], w.shape[1], *out_hw), float_operands(inputs)


def conv_transpose2d_reference(arrays, attrs):
    x, w = arrays
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = attrs["stride"], attrs["padding"], attrs["dilation"], attrs["output_padding"]
    n, _, h, wd = x.shape
    kh, kw = w.shape[2:]
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, w.shape[1], full_h, full_w), np.result_type(x, w))
    # Every input pixel times the whole kernel (one GEMM), then each tap's products added to the
    # output pixels it lands on (col2im).
    products = (x.transpose(0, 2, 3, 1).reshape(n * h * wd, -1) @ w.reshape(w.shape[0], -1))
    products = products.reshape(n, h, wd, w.shape[1], kh, kw)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i * dh: i * dh + sh * (h - 1) + 1: sh, j * dw: j * dw + sw * (wd - 1) + 1: sw] += \
                products[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return full[:, :, ph: full_h - ph, pw: full_w - pw]


def _conv_transpose2d_vjp(node, g, inputs):
    x, w = inputs
    stride, padding, dilation = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    # The adjoint of the adjoint: conv2d; it may produce extra rows where output_padding >= stride.
    dx = conv2d(g, w, stride=stride, padding=padding, dilation=dilation)
    if dx.shape != x.shape:
        dx = dx[:, :, :x.shape[2], :x.shape[3]]
    return [dx, conv2d_weight_grad(g, x, w.shape[2:], stride, padding, dilation)]


register(OpDef("conv_transpose2d", "conv",
               "transposed 2-D convolution (the adjoint of conv2d; upsampling), [C, O, kh, kw] weight",
               _conv_t_rule, conv_transpose2d_reference, _conv_transpose2d_vjp,
               notes="gradient: conv2d of the cotangent for the input, a weight-gradient conv2d for the weight"))


def conv_transpose2d(x: Tensor, w: Tensor, stride=1, padding=0, output_padding=0, dilation=1) -> Tensor:
    """Transposed convolution (PyTorch's ConvTranspose2d) of NCHW ``x`` with ``w`` [C, O, kh, kw]."""
    with located("conv_transpose2d", [x, w]):
        attrs = {"stride": pair(stride, "stride"), "padding": pair(padding, "padding"),
                 "output_padding": pair(output_padding, "output_padding"), "dilation": pair(dilation, "dilation")}
    return apply("conv_transpose2d", [x, w], attrs)


# -- pooling -------------------------------------------------------------------------------------------------------

def _pool_rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    _check_nchw(x)
    _check_geometry(attrs, ("kernel", "stride", "padding"))
    out_hw = []
    for k, name in enumerate(("height", "width")):
        kernel, s, p = attrs["kernel"][k], attrs["stride"][k], attrs["padding"][k]
        if 2 * p > kernel:
            raise ShapeError(f"padding {attrs['padding']} must be at most half the window {attrs['kernel']}")
        if kernel > x.shape[2 + k] + 2 * p:
            raise ShapeError(f"the pooling window's {name} {kernel} is larger than the input's "
                             f"{x.shape[2 + k]} (padding {p})")
        out_hw.append(conv_output_size(x.shape[2 + k], kernel, s, p))
    return (x.shape[0], x.shape[1], *out_hw), float_operands(inputs)


def _pool_windows(x: np.ndarray, attrs: Attrs, pad_value: float):
    (kh, kw) = attrs["kernel"]
    ho = conv_output_size(x.shape[2], kh, attrs["stride"][0], attrs["padding"][0])
    wo = conv_output_size(x.shape[3], kw, attrs["stride"][1], attrs["padding"][1])
    xp = _pad_hw(x, attrs["padding"], pad_value)
    return [_window(xp, i, j, (ho, wo), attrs["stride"], (1, 1)) for i in range(kh) for j in range(kw)]


def max_pool2d_reference(arrays, attrs):
    return np.max(np.stack(_pool_windows(arrays[0], attrs, -np.inf)), axis=0)


def avg_pool2d_reference(arrays, attrs):
    return np.mean(np.stack(_pool_windows(arrays[0], attrs, 0.0)), axis=0)


def _first_max(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    """For each window, the tap (i * kw + j) of its first maximum: [N, C, Ho, Wo] integers."""
    return np.argmax(np.stack(_pool_windows(x, attrs, -np.inf)), axis=0)


def max_pool2d_gather_reference(arrays, attrs):
    x, v = arrays
    taps = _first_max(x, attrs)
    windows = np.stack(_pool_windows(v, attrs, 0.0))
    return np.take_along_axis(windows, taps[None], axis=0)[0]


def max_pool2d_backward_reference(arrays, attrs):
    x, g = arrays
    taps = _first_max(x, attrs)
    (kh, kw), (ph, pw) = attrs["kernel"], attrs["padding"]
    padded = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), np.result_type(x, g))
    for i in range(kh):
        for j in range(kw):
            _window(padded, i, j, g.shape[2:], attrs["stride"], (1, 1))[...] += np.where(taps == i * kw + j, g, 0)
    return padded[:, :, ph: ph + x.shape[2], pw: pw + x.shape[3]]


def _pool_backward_rule(inputs: Sequence[Node], attrs: Attrs):
    x, g = inputs
    pooled, dtype = _pool_rule([x], attrs)
    if g.shape != pooled:
        raise ShapeError(f"the cotangent must have the pooled shape {list(pooled)} of {x.type_str}, got {g.type_str}")
    return x.shape, float_operands([x, g])


def _pool_gather_rule(inputs: Sequence[Node], attrs: Attrs):
    x, v = inputs
    if v.shape != x.shape:
        raise ShapeError(f"the gathered tensor must be shaped like the pooled input {x.type_str}, got {v.type_str}")
    pooled, _ = _pool_rule([x], attrs)
    return pooled, float_operands([x, v])


def _max_pool2d_vjp(node, g, inputs):
    (x,) = inputs
    return [apply("max_pool2d_backward", [x, g], dict(node.attrs))]


def _max_pool2d_backward_vjp(node, g, inputs):
    # Linear in the cotangent; in x only through the argmax, which is piecewise constant.
    x, _ = inputs
    return [None, apply("max_pool2d_gather", [x, g], dict(node.attrs))]


def _max_pool2d_gather_vjp(node, g, inputs):
    x, _ = inputs
    return [None, apply("max_pool2d_backward", [x, g], dict(node.attrs))]


_ARGMAX_NOTE = "the first maximum of each window (row-major within the window) takes the gradient; the argmax " \
               "is piecewise constant, so the derivative through x is 0"
register(OpDef("max_pool2d", "conv", "max over kh x kw windows (padding with -inf)", _pool_rule,
               max_pool2d_reference, _max_pool2d_vjp, notes="the gradient goes to the first maximum of each window "
               "(max_pool2d_backward)"))
register(OpDef("max_pool2d_backward", "conv",
               "max_pool2d's gradient: g[n, c, ho, wo] added at the first maximum of window (ho, wo) of x",
               _pool_backward_rule, max_pool2d_backward_reference, _max_pool2d_backward_vjp, notes=_ARGMAX_NOTE))
register(OpDef("max_pool2d_gather", "conv",
               "v read at the first maximum of each max_pool2d window of x (max_pool2d(x) is gather(x, x))",
               _pool_gather_rule, max_pool2d_gather_reference, _max_pool2d_gather_vjp, notes=_ARGMAX_NOTE))


def _avg_pool2d_vjp(node, g, inputs):
    # Average pooling is a conv2d of each channel with a uniform kh x kw kernel: its input gradient is the
    # conv_transpose2d of that kernel, applied to every (n, c) plane as a batch of one-channel images.
    from .shape import reshape
    from .tensor import constant

    (x,) = inputs
    (kh, kw), stride, padding = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    n, c = x.shape[:2]
    uniform = constant(np.full((1, 1, kh, kw), 1.0 / (kh * kw), g.dtype.np), graph=g.graph)
    extra = tuple((x.shape[2 + k] + 2 * padding[k] - (kh, kw)[k]) % stride[k] for k in range(2))
    planes = reshape(g, (n * c, 1) + g.shape[2:])
    dx = conv_transpose2d(planes, uniform, stride=stride, padding=padding, output_padding=extra)
    return [reshape(dx, x.shape)]


register(OpDef("avg_pool2d", "conv", "mean over kh x kw windows (zero padding counts in the mean)", _pool_rule,
               avg_pool2d_reference, _avg_pool2d_vjp,
               notes="gradient: every input of a window gets g / (kh kw) (a conv_transpose2d with a uniform kernel)"))


def _pool_attrs(kernel, stride, padding):
    kernel = pair(kernel, "kernel")
    return {"kernel": kernel, "stride": pair(stride if stride is not None else kernel, "stride"),
            "padding": pair(padding, "padding")}


def max_pool2d(x: Tensor, kernel=2, stride=None, padding=0) -> Tensor:
    """Max pooling over NCHW ``x``; ``stride`` defaults to the kernel size."""
    with located("max_pool2d", [x]):
        attrs = _pool_attrs(kernel, stride, padding)
    return apply("max_pool2d", [x], attrs)


def avg_pool2d(x: Tensor, kernel=2, stride=None, padding=0) -> Tensor:
    """Average pooling over NCHW ``x``; ``stride`` defaults to the kernel size."""
    with located("avg_pool2d", [x]):
        attrs = _pool_attrs(kernel, stride, padding)
    return apply("avg_pool2d", [x], attrs)
