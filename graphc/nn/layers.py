"""Layers: each owns its parameter values (NumPy arrays) and declares its part of the graph.

A layer is built once for an input shape (which creates its initial parameter values, seeded);
calling it on a symbolic tensor adds its nodes to the tensor's graph, with graph parameters
named ``<layer>.<param>`` (e.g. ``dense_1.W``).

A frozen layer (:meth:`Module.freeze`, for transfer learning) declares its parameters as
non-trainable: a training step built from it has no gradient nodes and no update for them.
"""
from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .. import dsl
from ..dsl import Tensor
from ..ir import GraphcError, ShapeError, current_graph, user_location
from ..ir.errors import did_you_mean, line_text
from ..ops import conv, linalg, reduce
from ..ops import elementwise as ew
from ..ops import nn as nn_ops
from ..ops import random as random_ops
from ..ops import shape as shape_ops
from ..ops.checks import int_pair, integer, located, positive_int
from . import init as initializers


@dataclass
class Context:
    """What a forward pass needs besides its input: the mode and where state updates go."""

    training: bool = False
    #: int64 scalar graph input that seeds random ops (dropout); required when training with dropout.
    key: Tensor | None = None
    #: (state parameter, new value) pairs, e.g. batch-norm running statistics; applied with Graph.update.
    updates: list = field(default_factory=list)
    #: When a list, every module called appends (module, its output): the training monitors read the
    #: layers' activations from it (see graphc.train.monitor); None records nothing.
    outputs: list | None = None
    _params: dict = field(default_factory=dict)


class Module:
    """Base class of layers and models."""

    kind = "module"

    def __init__(self, name: str | None = None):
        self.name = name
        #: The user's line that created the layer: its graph nodes point there.
        self.loc = user_location()
        self.values: dict[str, np.ndarray] = {}
        self.trainable: dict[str, bool] = {}
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self._frozen = False

    # -- building ------------------------------------------------------------------------------------------
    def build(self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float32) -> tuple[int, ...]:
        """Create initial parameter values for inputs of shape ``in_shape`` (no batch axis)."""
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(self._build(self.in_shape, rng, np.dtype(dtype)))
        return self.out_shape

    def _build(self, in_shape, rng, dtype) -> tuple[int, ...]:
        return in_shape

    def add_param(self, name: str, value: np.ndarray, dtype, trainable: bool = True) -> None:
        self.values[name] = np.asarray(value, dtype=dtype)
        self.trainable[name] = trainable

    # -- declaring the graph ----------------------------------------------------------------------------------
    def __call__(self, x: Tensor, ctx: Context | None = None) -> Tensor:
        if self.out_shape is None:
            raise ShapeError(f"{self.name or type(self).__name__}: build() the model before calling it")
        ctx = ctx if ctx is not None else Context()
        with dsl.located_at(self.loc):
            out = self.forward(x, ctx)
        if ctx.outputs is not None:
            ctx.outputs.append((self, out))
        return out

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        raise NotImplementedError

    def param(self, ctx: Context, name: str) -> Tensor:
        """The graph parameter for ``name`` in this forward pass (created once per graph).

        A second forward pass in the same graph (training and evaluation outputs side by side, a
        siamese pair) shares it: a graph has one parameter per name (two would be refused when built).
        """
        key = f"{self.name}.{name}"
        if key not in ctx._params:
            in_graphs = self.__dict__.setdefault("_graph_params", weakref.WeakKeyDictionary())
            made = in_graphs.setdefault(current_graph(), {}) if current_graph() is not None else {}
            if key not in made:
                trainable = self.trainable[name] and not self._frozen
                made[key] = dsl.param(key, self.values[name], trainable=trainable)
            ctx._params[key] = made[key]
        return ctx._params[key]

    # -- transfer learning: freezing --------------------------------------------------------------------------
    def freeze(self) -> "Module":
        """Freeze this module and every module inside it: graphs built from now on declare their parameters
        non-trainable, so a training step has no gradient nodes and no update for them (their values stay
        exactly as they are). A frozen BatchNorm normalizes with its running statistics and leaves them
        unchanged. A Trainer whose step was compiled for another frozen set compiles a new one. Returns self."""
        for m in self.modules():
            m._frozen = True
        return self

    def unfreeze(self) -> "Module":
        """Undo :meth:`freeze` for this module and every module inside it. Returns self."""
        for m in self.modules():
            m._frozen = False
        return self

    @property
    def frozen(self) -> bool:
        """Whether this module and every module inside it are frozen (a model with one frozen layer is not)."""
        return all(m._frozen for m in self.modules())

    def frozen_names(self) -> tuple[str, ...]:
        """The graph names (``<layer>.<param>``) of the frozen parameters, in model order."""
        return tuple(f"{m.name}.{k}" for m in self.modules() if m._frozen for k in m.values)

    # -- introspection ----------------------------------------------------------------------------------------
    def modules(self) -> list["Module"]:
        """This module and every module inside it, depth first."""
        return [self]

    def named_values(self) -> dict[str, np.ndarray]:
        """Every parameter value (trainable and state), keyed like the graph parameters."""
        return {f"{m.name}.{k}": v for m in self.modules() for k, v in m.values.items()}

    def load_values(self, values: dict[str, np.ndarray]) -> None:
        """Copy values (e.g. an executable's ``params``) back into the layers."""
        for m in self.modules():
            for k in m.values:
                full = f"{m.name}.{k}"
                if full in values:
                    m.values[k] = np.array(values[full], dtype=m.values[k].dtype)

    def parameter_count(self) -> int:
        return sum(int(v.size) for m in self.modules() for k, v in m.values.items() if m.trainable[k])

    def describe(self) -> str:
        return type(self).__name__


def name_children(module: Module, prefix: str) -> None:
    """Give every unnamed module inside ``module`` a name ``<prefix><kind>_<n>`` (dense_1, dense_2, ...)."""
    counts: dict[str, int] = {}
    for child in module.modules()[1:]:
        if child.name is None:
            counts[child.kind] = counts.get(child.kind, 0) + 1
            child.name = f"{prefix}{child.kind}_{counts[child.kind]}"


class UnknownActivationError(GraphcError, ValueError):
    """An activation name graphc.nn does not know (a ValueError too, as before it had its own class)."""


#: The activations a layer accepts by name (``Dense(10, "relu")``); any function of a Tensor works too.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    **{name: getattr(ew, name) for name in ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "softplus",
                                            "softsign", "gaussian", "step", "ramp", "identity")},
    "softmax": nn_ops.softmax,
    "log_softmax": nn_ops.log_softmax,
}


def _activation(act: str | Callable | None) -> Callable[[Tensor], Tensor] | None:
    """The activation function ``act`` names (see :data:`ACTIVATIONS`), or ``act`` itself when it is one."""
    if act is None or callable(act):
        return act
    try:
        return ACTIVATIONS[act]
    except (KeyError, TypeError):
        raise UnknownActivationError(f"unknown activation {act!r}{did_you_mean(act, ACTIVATIONS)}; known: "
                                     f"{sorted(ACTIVATIONS)} (or pass a function){line_text(user_location())}") from None


class Dense(Module):
    """Fully connected layer: act(x @ W + b), W [in, units]."""

    kind = "dense"

    def __init__(self, units: int, activation=None, init="glorot_uniform", bias_init="zeros", name=None):
        super().__init__(name)
        with located("Dense", ()):
            self.units = positive_int("units", units)
        self.activation = _activation(activation)
        self.init, self.bias_init = initializers.get(init), initializers.get(bias_init)

    def _build(self, in_shape, rng, dtype):
        if len(in_shape) != 1:
            raise ShapeError(f"{self.name}: Dense expects flat inputs [features], got {list(in_shape)}; add Flatten()")
        fan_in = in_shape[0]
        self.add_param("W", self.init((fan_in, self.units), fan_in, self.units, rng), dtype)
        self.add_param("b", self.bias_init((self.units,), fan_in, self.units, rng), dtype)
        return (self.units,)

    def forward(self, x, ctx):
        y = linalg.dense(x, self.param(ctx, "W"), self.param(ctx, "b"))
        return self.activation(y) if self.activation else y

    def describe(self):
        return f"Dense({self.units}" + (f", {self.activation.__name__}" if self.activation else "") + ")"


class Conv2D(Module):
    """2-D convolution over NCHW input with a per-channel bias: act(conv2d(x, W) + b)."""

    kind = "conv2d"

    def __init__(self, filters: int, kernel, stride=1, padding=0, dilation=1, activation=None, init="he_normal",
                 name=None):
        super().__init__(name)
        with located("Conv2D", ()):
            self.filters = positive_int("filters", filters)
        self.kernel = conv.pair(kernel, "kernel")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation, self.init = _activation(activation), initializers.get(init)

    def _build(self, in_shape, rng, dtype):
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: Conv2D expects [channels, height, width] inputs, got {list(in_shape)}")
        c, kh, kw = in_shape[0], *self.kernel
        fan_in, fan_out = c * kh * kw, self.filters * kh * kw
        self.add_param("W", self.init((self.filters, c, kh, kw), fan_in, fan_out, rng), dtype)
        self.add_param("b", np.zeros(self.filters), dtype)
        (sh, sw), (ph, pw), (dh, dw) = (conv.pair(v, n) for v, n in (
            (self.stride, "stride"), (self.padding, "padding"), (self.dilation, "dilation")))
        h = conv.conv_output_size(in_shape[1], kh, sh, ph, dh)
        w = conv.conv_output_size(in_shape[2], kw, sw, pw, dw)
        if h < 1 or w < 1:
            raise ShapeError(f"{self.name}: kernel {self.kernel} does not fit input {list(in_shape)}")
        return (self.filters, h, w)

    def forward(self, x, ctx):
        y = conv.conv2d(x, self.param(ctx, "W"), self.stride, self.padding, self.dilation)
        y = y + shape_ops.reshape(self.param(ctx, "b"), (1, self.filters, 1, 1))
        return self.activation(y) if self.activation else y

    def describe(self):
        return f"Conv2D({self.filters}, {self.kernel[0]}x{self.kernel[1]}, stride={self.stride}, padding={self.padding})"


class ConvTranspose2D(Module):
    """Transposed 2-D convolution over NCHW input with a per-channel bias (learned upsampling, deck 002):
    act(conv_transpose2d(x, W) + b), W [in_channels, filters, kh, kw]. The output is
    (H - 1) stride - 2 padding + dilation (kh - 1) + output_padding + 1 rows (PyTorch's ConvTranspose2d)."""

    kind = "conv_transpose2d"

    def __init__(self, filters: int, kernel, stride=1, padding=0, output_padding=0, dilation=1, activation=None,
                 init="he_normal", name=None):
        super().__init__(name)
        with located("ConvTranspose2D", ()):
            self.filters = positive_int("filters", filters)
            self.kernel = conv.pair(kernel, "kernel")
            self.stride, self.padding, self.dilation, self.output_padding = (
                conv.pair(v, n) for v, n in ((stride, "stride"), (padding, "padding"), (dilation, "dilation"),
                                             (output_padding, "output_padding")))
        self.activation, self.init = _activation(activation), initializers.get(init)

    def _build(self, in_shape, rng, dtype):
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: ConvTranspose2D expects [channels, height, width] inputs, "
                             f"got {list(in_shape)}{line_text(self.loc)}")
        c, kh, kw = in_shape[0], *self.kernel
        # Each output pixel sums about c kh kw / (sh sw) products: the fan-in the initialization scales by.
        fan_in = max(1, c * kh * kw // (self.stride[0] * self.stride[1]))
        self.add_param("W", self.init((c, self.filters, kh, kw), fan_in, self.filters * kh * kw, rng), dtype)
        self.add_param("b", np.zeros(self.filters), dtype)
        out_hw = [(in_shape[1 + k] - 1) * self.stride[k] - 2 * self.padding[k] + self.dilation[k] * (self.kernel[k] - 1)
                  + self.output_padding[k] + 1 for k in range(2)]
        if min(out_hw) < 1:
            raise ShapeError(f"{self.name}: padding {self.padding} leaves an empty output for input {list(in_shape)}"
                             f"{line_text(self.loc)}")
        return (self.filters, *out_hw)

    def forward(self, x, ctx):
        y = conv.conv_transpose2d(x, self.param(ctx, "W"), self.stride, self.padding, self.output_padding,
                                  self.dilation)
        y = y + shape_ops.reshape(self.param(ctx, "b"), (1, self.filters, 1, 1))
        return self.activation(y) if self.activation else y

    def describe(self):
        square = [v[0] if v[0] == v[1] else v for v in (self.stride, self.padding)]  # as the user wrote them
        return f"ConvTranspose2D({self.filters}, {self.kernel[0]}x{self.kernel[1]}, stride={square[0]}, padding={square[1]})"


class Upsample(Module):
    """Nearest-neighbour upsampling of NCHW input by integer factors (deck 002's "unpooling"): every pixel
    becomes a factor_h x factor_w block of copies. No parameters; over reshape and broadcast_to, so its
    gradient sums each block back onto its pixel."""

    kind = "upsample"

    def __init__(self, factor=2, name=None):
        super().__init__(name)
        with located("Upsample", ()):
            self.factor = int_pair("factor", factor, 1)

    def _build(self, in_shape, rng, dtype):
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: Upsample expects [channels, height, width] inputs, got {list(in_shape)}"
                             f"{line_text(self.loc)}")
        c, h, w = in_shape
        return (c, h * self.factor[0], w * self.factor[1])

    def forward(self, x, ctx):
        n, c, h, w = x.shape
        fh, fw = self.factor
        blocks = reduce.broadcast_to(shape_ops.reshape(x, (n, c, h, 1, w, 1)), (n, c, h, fh, w, fw))
        return shape_ops.reshape(blocks, (n, c, h * fh, w * fw))

    def describe(self):
        return f"Upsample({self.factor[0]}x{self.factor[1]})"


class _Pool(Module):
    def __init__(self, kernel=2, stride=None, padding=0, name=None):
        super().__init__(name)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def _build(self, in_shape, rng, dtype):
        (kh, kw) = conv.pair(self.kernel, "kernel")
        (sh, sw) = conv.pair(self.stride if self.stride is not None else self.kernel, "stride")
        (ph, pw) = conv.pair(self.padding, "padding")
        return (in_shape[0], conv.conv_output_size(in_shape[1], kh, sh, ph), conv.conv_output_size(in_shape[2], kw, sw, pw))

    def describe(self):
        return f"{type(self).__name__}({self.kernel})"


class MaxPool2D(_Pool):
    kind = "maxpool"

    def forward(self, x, ctx):
        return conv.max_pool2d(x, self.kernel, self.stride, self.padding)


class AvgPool2D(_Pool):
    kind = "avgpool"

    def forward(self, x, ctx):
        return conv.avg_pool2d(x, self.kernel, self.stride, self.padding)


class Flatten(Module):
    kind = "flatten"

    def _build(self, in_shape, rng, dtype):
        return (int(np.prod(in_shape)),)

    def forward(self, x, ctx):
        return shape_ops.reshape(x, (x.shape[0], -1))


class Activation(Module):
    kind = "activation"

    def __init__(self, fn, name=None):
        super().__init__(name)
        self.fn = _activation(fn)

    def forward(self, x, ctx):
        return self.fn(x)

    def describe(self):
        return f"Activation({self.fn.__name__})"


class RandomLayer(Module):
    """A layer that draws random numbers in training (dropout, augmentation) from the step's key."""

    @property
    def salt(self) -> int:
        # From the layer's name (unique in its model), not a process-wide counter: the same model built
        # in another process, or rebuilt to resume from a checkpoint, draws the same numbers for a key.
        return zlib.crc32((self.name or self.kind).encode()) & 0x3FFFFFFF

    @property
    def active(self) -> bool:
        """Whether the layer draws anything in training (Dropout(0) does not)."""
        return True

    def key(self, ctx: Context) -> Tensor:
        if ctx.key is None:
            raise ShapeError(f"{self.name}: training with {type(self).__name__} needs a random key input in the Context")
        return ctx.key


class Dropout(RandomLayer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and scale the rest by
    1/(1 - rate); in evaluation, the identity."""

    kind = "dropout"

    def __init__(self, rate: float, name=None):
        super().__init__(name)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    @property
    def active(self) -> bool:
        return self.rate > 0

    def forward(self, x, ctx):
        if not ctx.training or not self.active:
            return x
        u = random_ops.random_uniform(self.key(ctx), x.shape, self.salt, x.dtype)
        return ew.where(ew.greater_equal(u, self.rate), x * (1.0 / (1.0 - self.rate)), 0.0)

    def describe(self):
        return f"Dropout({self.rate})"


class RandomShift(RandomLayer):
    """Augmentation: in training, shift each image by up to ``max_shift`` pixels (zero filled);
    in evaluation, the identity. It runs inside the compiled training step."""

    kind = "random_shift"

    def __init__(self, max_shift: int = 2, name=None):
        super().__init__(name)
        with located("RandomShift", ()):
            self.max_shift = integer("max_shift", max_shift, 0)

    def forward(self, x, ctx):
        return random_ops.random_shift2d(x, self.key(ctx), self.max_shift, self.salt) if ctx.training else x

    def describe(self):
        return f"RandomShift({self.max_shift})"


class RandomFlip(RandomLayer):
    """Augmentation: in training, flip each image left-right with probability 1/2; in evaluation,
    the identity (for data with left-right symmetry, such as Fashion-MNIST; not for digits)."""

    kind = "random_flip"

    def forward(self, x, ctx):
        return random_ops.random_flip2d(x, self.key(ctx), self.salt) if ctx.training else x

    def describe(self):
        return "RandomFlip()"


class BatchNorm(Module):
    """Batch normalization over channels (axis 1). Training uses batch statistics and updates the running
    ones (running = momentum * running + (1 - momentum) * batch, unbiased variance as in PyTorch);
    evaluation uses the running statistics."""

    kind = "batchnorm"

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5, name=None):
        super().__init__(name)
        self.momentum, self.eps = float(momentum), float(eps)

    def _build(self, in_shape, rng, dtype):
        c = in_shape[0]
        self.add_param("gamma", np.ones(c), dtype)
        self.add_param("beta", np.zeros(c), dtype)
        self.add_param("running_mean", np.zeros(c), dtype, trainable=False)
        self.add_param("running_var", np.ones(c), dtype, trainable=False)
        return in_shape

    def forward(self, x, ctx):
        gamma, beta = self.param(ctx, "gamma"), self.param(ctx, "beta")
        rm, rv = self.param(ctx, "running_mean"), self.param(ctx, "running_var")
        if not ctx.training or self._frozen:  # frozen: as in evaluation (Keras' rule), the statistics untouched
            return nn_ops.batch_norm(x, gamma, beta, rm, rv, self.eps, training=False)
        axes = (0,) + tuple(range(2, x.ndim))
        n = int(np.prod([x.shape[a] for a in axes]))
        mu = reduce.mean(x, axes)
        var = reduce.mean(ew.square(x - reduce.mean(x, axes, keepdims=True)), axes) * (n / max(n - 1, 1))
        m = self.momentum
        ctx.updates.append((rm, rm * m + mu * (1.0 - m)))
        ctx.updates.append((rv, rv * m + var * (1.0 - m)))
        return nn_ops.batch_norm(x, gamma, beta, eps=self.eps, training=True)

    def describe(self):
        return "BatchNorm()"


class Sequential(Module):
    """Layers applied in order.

    >>> import graphc
    >>> from graphc.nn import Sequential, Dense
    >>> model = Sequential([Dense(512, "relu"), Dense(256, "relu"), Dense(10)], input_shape=(784,))
    >>> model.parameter_count()
    535818
    """

    kind = "sequential"

    def __init__(self, layers: Sequence[Module], input_shape: Sequence[int] | None = None, seed: int = 0,
                 dtype=np.float32, name: str | None = None):
        super().__init__(name or "model")
        self.layers = list(layers)
        self.seed = seed
        self.dtype = np.dtype(dtype)
        if input_shape is not None:
            self.build(tuple(input_shape), np.random.default_rng(seed), dtype)

    def _build(self, in_shape, rng, dtype):
        name_children(self, prefix="")
        shape = in_shape
        for layer in self.layers:
            shape = layer.build(shape, rng, dtype)
        return shape

    def forward(self, x, ctx):
        for layer in self.layers:
            x = layer(x, ctx)
        return x

    def modules(self):
        return [self] + [m for layer in self.layers for m in layer.modules()]

    def summary(self) -> str:
        """Each layer's output shape and parameter count, like Keras' model.summary()."""
        rows = [("layer", "output shape", "params")]
        for layer in self.layers:
            frozen = " (frozen)" if layer.frozen and layer.named_values() else ""
            rows.append((f"{layer.name} {layer.describe()}{frozen}", str(list(layer.out_shape)), f"{layer.parameter_count():,}"))
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = ["  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))) for r in rows]
        rule = "-" * len(lines[0])
        total = [f"total trainable parameters: {self.parameter_count():,}"]
        frozen = sum(int(v.size) for m in self.modules() if m._frozen for k, v in m.values.items() if m.trainable[k])
        if frozen:
            total.append(f"of which frozen: {frozen:,}")
        return "\n".join([lines[0], rule, *lines[1:], rule, *total])


class Residual(Module):
    """A skip connection: act(body(x) + shortcut(x)); the shortcut is the identity unless given
    (e.g. a 1x1 strided Conv2D when the body changes the shape)."""

    kind = "residual"

    def __init__(self, body: Sequence[Module], shortcut: Sequence[Module] | None = None, activation=None, name=None):
        super().__init__(name)
        self.body = list(body)
        self.shortcut = list(shortcut or [])
        self.activation = _activation(activation)

    def modules(self):
        return [self] + [m for layer in self.body + self.shortcut for m in layer.modules()]

    def _build(self, in_shape, rng, dtype):
        name_children(self, prefix=f"{self.name}.")
        shape = in_shape
        for layer in self.body:
            shape = layer.build(shape, rng, dtype)
        skip = in_shape
        for layer in self.shortcut:
            skip = layer.build(skip, rng, dtype)
        if shape != skip:
            raise ShapeError(f"{self.name}: the body gives {list(shape)} but the shortcut {list(skip)}; "
                             f"give a shortcut that matches (e.g. a 1x1 Conv2D with the body's stride)")
        return shape

    def forward(self, x, ctx):
        y, skip = x, x
        for layer in self.body:
            y = layer(y, ctx)
        for layer in self.shortcut:
            skip = layer(skip, ctx)
        out = y + skip
        return self.activation(out) if self.activation else out

    def describe(self):
        return f"Residual({len(self.body)} layers" + (", projection" if self.shortcut else "") + ")"


class Maxout(Module):
    """Maxout unit: max over ``pieces`` affine maps, max_k (x @ W[k] + b[k])."""

    kind = "maxout"

    def __init__(self, units: int, pieces: int = 2, init="glorot_uniform", name=None):
        super().__init__(name)
        with located("Maxout", ()):
            self.units, self.pieces = positive_int("units", units), positive_int("pieces", pieces)
        self.init = initializers.get(init)

    def _build(self, in_shape, rng, dtype):
        fan_in = in_shape[0]
        self.add_param("W", self.init((self.pieces, fan_in, self.units), fan_in, self.units, rng), dtype)
        self.add_param("b", np.zeros((self.pieces, self.units)), dtype)
        return (self.units,)

    def forward(self, x, ctx):
        return nn_ops.maxout(x, self.param(ctx, "W"), self.param(ctx, "b"))

    def describe(self):
        return f"Maxout({self.units}, pieces={self.pieces})"

