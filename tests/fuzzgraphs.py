"""The seeded random-graph generator of the fuzz suite (this module holds no tests).

``build_case(seed, index)`` makes case ``index`` of campaign ``seed``: a small graph mixing the
registry's ops (elementwise ops and activations with broadcasting, reductions, reshapes,
transposes and slices, matmul and dense, conv2d and pooling, softmax, log_softmax and
cross-entropy, batch_norm, casts), in float32 or float64, in a dense or a conv family, with
gradients (graphc.grad) and SGD or momentum updates (Graph.update, graphc.optim), and in a
fraction of the cases inputs holding NaN, +-Inf, zeros and -0.0. The same (seed, index) always
makes the same case, so a disagreement is reproduced by ``python bench/fuzz.py --seed S --only K``.

``build_into(seed, index, prefix)`` builds the same case into the graph being built (inputs and
parameters named ``<prefix><name>``), so that several cases can share one compiled module.

The generator reuses the unary and binary choices of the hypothesis property tests
(tests/test_passes_property.py) through :class:`RngDraw`, and adds what those keep out: the
remaining activations, batch_norm, casts, pooling, slices, cross-entropy and non-finite inputs.

``compare`` is the one agreement check: position by position, NaN where NaN, the same infinities,
finite values within a tolerance relative to the output's largest finite magnitude.
"""
from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from test_passes_property import _binary, _broadcasts, _unary

import graphc
from graphc.backends import reference
from graphc.ir import Graph, Node
from graphc.ir.graph import current_graph

#: Fraction of cases whose inputs hold NaN, +-Inf, 0 and -0.0 (in a few positions each).
SPECIAL_FRACTION = 0.25
#: Fraction of conv-family cases.
CONV_FRACTION = 0.3
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])
#: The activations (and IEEE probes) the generator adds to the property tests' unary choices.
ACTIVATIONS = ("elu", "selu", "softsign", "gaussian", "clip", "step", "sign", "leaky_relu", "softplus", "sigmoid",
               "relu", "tanh", "exp", "log_abs", "pow_half", "div_self", "mul_zero", "sub_self", "cast_round_trip",
               "cast_compute")


#: The property tests' unary forms that the ``stabilize`` pass rewrites: log(sigmoid(t)) becomes
#: -softplus(-t), with the gradient sigmoid(-t) * g. They are left out of the cases with NaN/Inf inputs, and
#: so are log(softmax) and -mean(sum(one_hot * log(softmax))) (the dense and conv builders use the
#: log_softmax op there instead): stabilize exists to give the finite answer where the written form overflows
#: (docs/passes.md: "with logits of magnitude 1e4 the hand-written loss and its gradient are nan before and
#: finite after"), so at t = -inf the written form's gradient inf * 0 = NaN is not what the pass promises.
#: With finite inputs (three quarters of the cases) they are generated and must agree.
STABILIZED_FORMS = ("log_sigmoid", "exp_log")


class RngDraw:
    """``draw`` for the property tests' helpers, backed by a NumPy generator instead of hypothesis:
    they only draw from ``st.sampled_from``, whose ``elements`` this picks from (those in ``avoid``
    replaced by the next allowed one, so that the draws stay aligned)."""

    def __init__(self, rng: np.random.Generator, avoid: tuple = ()):
        self.rng, self.avoid = rng, avoid

    def __call__(self, strategy) -> Any:
        elements = list(strategy.elements)
        k = int(self.rng.integers(len(elements)))
        allowed = [e for e in elements[k:] + elements[:k] if e not in self.avoid]
        return allowed[0] if allowed else elements[k]


@dataclasses.dataclass
class Case:
    """One random graph: its nodes to compare (outputs, then update values) and its feeds."""

    seed: int
    index: int
    family: str                      # "dense" or "conv"
    dtype: str                       # "float32" or "float64"
    special: bool                    # inputs hold NaN / Inf / zeros / -0.0
    feeds: dict[str, np.ndarray]
    outputs: list[Node]
    updates: list[tuple[Node, Node]]  # (parameter, new value)
    #: Rounding steps a value passes through on its longest path: one per elementwise op, n per
    #: reduction over n elements (sum, mean, matmul's inner dimension, a conv window, softmax).
    rounding_steps: int
    #: The case computes values as the difference of much larger terms by construction: batch-norm gradients
    #: (analytically zero in places), the rounding error of a cast round trip, pow(a, 0.5) - sqrt(a) (and
    #: their gradients).
    cancellation: bool
    rule: str                        # "grad" (gradients out, hand-written SGD), "sgd" or "momentum" (graphc.optim)
    #: Some of its values are computed in float32 (a float32 case, or float32 math inside a float64 one).
    computes_float32: bool
    graph: Graph | None = None       # the case's own graph (None while built into a shared one)

    @property
    def name(self) -> str:
        return f"seed {self.seed} case {self.index}"

    @property
    def roots(self) -> list[Node]:
        return list(self.outputs) + [v for _, v in self.updates]

    def root_names(self) -> list[str]:
        return ([f"output {k}" for k in range(len(self.outputs))]
                + [f"update of {p.name}" for p, _ in self.updates])


class _Builder:
    """Builds one case into the graph under construction, tracking each tensor's rounding steps."""

    def __init__(self, rng: np.random.Generator, prefix: str, dtype: str, special: bool):
        self.rng, self.prefix, self.dtype, self.special = rng, prefix, dtype, special
        self.draw = RngDraw(rng, STABILIZED_FORMS if special else ())
        self.feeds: dict[str, np.ndarray] = {}
        self.steps: dict[int, int] = {}
        self.cancellation = False
        self.computes_float32 = dtype == "float32"
        self._labels: graphc.Tensor | None = None

    # -- leaves ------------------------------------------------------------------------------------
    def data(self, shape) -> np.ndarray:
        """Standard normal values; in special cases a few positions replaced by NaN/Inf/0/-0.0."""
        values = self.rng.standard_normal(shape)
        if self.special and values.size:
            count = int(self.rng.integers(1, max(2, values.size // 4) + 1))
            flat = values.reshape(-1)
            positions = self.rng.choice(values.size, size=min(count, values.size), replace=False)
            flat[positions] = self.rng.choice(SPECIALS, size=len(positions))
        return values.astype(self.dtype)

    def input(self, name: str, shape) -> graphc.Tensor:
        self.feeds[self.prefix + name] = self.data(shape)
        return self.track(graphc.input(self.prefix + name, shape, self.dtype), 0)

    def param(self, name: str, shape, scale: float) -> graphc.Tensor:
        value = (self.rng.standard_normal(shape) * scale).astype(self.dtype)
        return self.track(graphc.param(self.prefix + name, value), 0)

    def labels(self, n: int, classes: int) -> graphc.Tensor:
        """The case's one int64 label input (input names are unique)."""
        if self._labels is None:
            self.feeds[self.prefix + "labels"] = self.rng.integers(0, classes, n).astype(np.int64)
            self._labels = graphc.input(self.prefix + "labels", (n,), "int64")
        return self._labels

    # -- rounding steps ----------------------------------------------------------------------------
    def track(self, t: graphc.Tensor, extra: int, *sources: graphc.Tensor) -> graphc.Tensor:
        """Record that t took ``extra`` rounding steps beyond the most any of ``sources`` took."""
        before = max((self.steps.get(id(s.node), 0) for s in sources), default=0)
        self.steps.setdefault(id(t.node), before + extra)
        return t

    def pick(self, pool: list) -> graphc.Tensor:
        return pool[int(self.rng.integers(len(pool)))]

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    # -- ops the property tests' helpers leave out ---------------------------------------------------
    def activation(self, t: graphc.Tensor) -> graphc.Tensor:
        kind = self.choice(ACTIVATIONS)
        other = "float32" if self.dtype == "float64" else "float64"
        if kind == "clip":  # a window that cuts O(1) values on both sides
            return graphc.clip(t, -0.5, 1.5)
        if kind == "gaussian":
            return graphc.gaussian(t, mu=0.3, sigma=1.5)
        if kind == "step":
            return graphc.step(t, a=-1.0, b=2.0, c=0.1)
        if kind == "leaky_relu":
            return graphc.leaky_relu(t, alpha=0.2)
        if kind == "exp":
            return graphc.exp(graphc.tanh(t) * 2.0)
        if kind == "log_abs":
            return graphc.log(graphc.abs(t) + 0.5)
        if kind == "pow_half":  # zero, as the difference of two equal values (and so is its gradient)
            self.cancellation = True
            return graphc.pow(graphc.abs(t) + 0.25, 0.5) - graphc.sqrt(graphc.abs(t) + 0.25)
        if kind == "div_self":
            return t / t + t          # 1 + t for finite nonzero t; NaN for 0, Inf, NaN (IEEE)
        if kind == "mul_zero":
            return t * 0.0 + t        # t for finite t; NaN for Inf (IEEE)
        if kind == "sub_self":
            return (t - t) * 3.0 + t  # t for finite t; NaN for Inf (IEEE)
        if kind == "cast_round_trip":
            self.cancellation = True
            return graphc.cast(graphc.cast(t, other), self.dtype) - t  # the rounding error (0 in float32)
        if kind == "cast_compute":  # float32 math inside a float64 case: the case gets float32's tolerance
            self.computes_float32 = True
            return graphc.cast(graphc.tanh(graphc.cast(t, other)) * 1.5, self.dtype)
        return getattr(graphc, kind)(t)

    def unary(self, t: graphc.Tensor) -> graphc.Tensor:
        if self.rng.random() < 0.5:
            return self.track(_unary(self.draw, t), 2, t)
        return self.track(self.activation(t), 3, t)

    def binary(self, t: graphc.Tensor, pool: list) -> graphc.Tensor:
        other = self.pick([p for p in pool if _broadcasts(p.shape, t.shape) and p.dtype == t.dtype])
        return self.track(_binary(self.draw, t, other), 2, t, other)

    def reduce(self, t: graphc.Tensor) -> graphc.Tensor:
        if t.ndim == 0:
            return self.track(t * 2.0, 1, t)
        axis = int(self.rng.integers(t.ndim))
        op = self.choice([graphc.sum, graphc.mean, graphc.max, graphc.min])
        return self.track(op(t, axis=axis, keepdims=bool(self.rng.integers(2))), t.shape[axis] + 1, t)

    def reshape(self, t: graphc.Tensor) -> graphc.Tensor:
        if t.ndim == 2:
            kind = self.choice(["transpose", "flatten", "slice"])
            if kind == "transpose":
                return self.track(graphc.transpose(graphc.transpose(t) * 2.0), 1, t)
            if kind == "slice" and t.shape[1] >= 2:
                return self.track(graphc.concatenate([t[:, 1:], t[:, :1] * -1.0], axis=1), 1, t)
        if t.ndim == 0:
            return self.track(t + 1.0, 1, t)
        return self.track(graphc.reshape(graphc.reshape(t, (-1,)) + 1.0, t.shape), 1, t)


def _dense(b: _Builder, g: Graph) -> tuple[list, list, graphc.Tensor]:
    """Random ops over [B, F] data with broadcasting inputs, params, reductions, matmuls, softmax,
    batch norm; a loss from some of them. Returns the tensors to output, the params and the loss."""
    rng = b.rng
    B, F, H = int(rng.integers(2, 5)), int(rng.integers(2, 5)), int(rng.integers(1, 4))
    x = b.input("x", (B, F))
    pool = [x]
    for name, shape in (("row", (F,)), ("col", (B, 1)), ("s", ())):
        if rng.random() < 0.5:
            pool.append(b.input(name, shape))
    W, bias, V = b.param("W", (F, H), 0.5), b.param("b", (H,), 0.1), b.param("V", (H, F), 0.5)
    params = [W, bias, V]
    for _ in range(int(rng.integers(2, 6))):
        kind = b.choice(["unary", "activation", "activation", "binary", "binary", "reduce", "dense", "softmax",
                         "shape", "batch_norm"])
        t = b.pick(pool)
        full = t if t.shape == (B, F) else x
        if kind == "unary":
            pool.append(b.unary(t))
        elif kind == "activation":
            pool.append(b.track(b.activation(t), 3, t))
        elif kind == "binary":
            pool.append(b.binary(t, pool))
        elif kind == "reduce":
            pool.append(b.reduce(t))
        elif kind == "shape":
            pool.append(b.reshape(t))
        elif kind == "dense":
            h = graphc.dense(full, W, bias) if rng.random() < 0.5 else graphc.matmul(full, W)
            act = b.choice([graphc.relu, graphc.tanh, graphc.sigmoid, graphc.elu])
            pool.append(b.track(graphc.matmul(act(h), V), F + H + 3, full))
        elif kind == "softmax":
            form = b.choice(["softmax", "log_softmax", "log_of_softmax", "cross_entropy"])
            if form == "cross_entropy":
                labels = b.labels(B, F)
                pool.append(b.track(graphc.softmax_cross_entropy(full, labels), 3 * F + B, full))
            elif form == "log_of_softmax" and not b.special:
                pool.append(b.track(graphc.log(graphc.softmax(full, axis=1)), 3 * F + 2, full))
            else:
                form = "log_softmax" if form == "log_of_softmax" else form  # see STABILIZED_FORMS
                pool.append(b.track(getattr(graphc, form)(full, axis=1), 3 * F + 1, full))
        else:
            if all(p.name != b.prefix + "gamma" for p in params):  # one batch norm per case (names are unique)
                gamma, beta = b.param("gamma", (F,), 1.0), b.param("beta", (F,), 0.5)
                params += [gamma, beta]
                b.cancellation = True
                pool.append(b.track(graphc.batch_norm(full, gamma, beta), 3 * B + 4, full))
    count = min(len(pool) - 1, int(rng.integers(1, 4)))
    picked = [pool[int(k)] for k in rng.choice(np.arange(1, len(pool)), size=count, replace=False)] \
        if len(pool) > 1 else [x]
    loss = None
    for t in picked:
        form = b.choice(["sum_squares", "mean_tanh", "mse", "bce_logits", "l2"])
        if form == "sum_squares":
            term = graphc.sum(t * t)
        elif form == "mse":
            term = graphc.mse(t, graphc.constant(np.full(t.shape, 0.5, t.dtype.np)))
        elif form == "bce_logits":
            term = graphc.binary_cross_entropy_with_logits(t, graphc.constant(np.full(t.shape, 0.25, t.dtype.np)))
        elif form == "l2":
            term = graphc.mean(graphc.tanh(t)) + graphc.l2_penalty([W, V], 0.01)
        else:
            term = graphc.mean(graphc.tanh(t))
        term = graphc.cast(term, b.dtype)
        loss = term if loss is None else loss + term
    b.track(loss, max(t.size for t in picked) + len(picked), *picked)
    return picked[:2] + [x], params, loss


def _conv(b: _Builder, g: Graph) -> tuple[list, list, graphc.Tensor]:
    """conv2d (+ bias, activation, batch norm, pooling), a dense head and a cross-entropy or
    squared loss."""
    rng = b.rng
    n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    k, pad, stride = int(rng.integers(1, 4)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
    size = int(rng.integers(k + 1, 7))
    dilation = 2 if rng.random() < 0.25 and size + 2 * pad >= 2 * k - 1 else 1
    x = b.input("x", (n, c, size, size))
    w, bias = b.param("w", (o, c, k, k), 0.5), b.param("bc", (o,), 0.1)
    params = [w, bias]
    h = graphc.conv2d(x, w, stride=stride, padding=pad, dilation=dilation) + graphc.reshape(bias, (1, o, 1, 1))
    b.track(h, c * k * k + 2, x)
    if rng.random() < 0.3 and n * h.shape[2] * h.shape[3] > 1:
        gamma, beta = b.param("gamma", (o,), 1.0), b.param("beta", (o,), 0.5)
        params += [gamma, beta]
        b.cancellation = True
        h = b.track(graphc.batch_norm(h, gamma, beta), 3 * n * h.shape[2] * h.shape[3] + 4, h)
    h = b.unary(h) if rng.random() < 0.3 else b.track(b.activation(h), 3, h)
    if rng.random() < 0.6 and h.shape[2] >= 2 and h.shape[3] >= 2:
        pool_pad = int(rng.integers(0, 2))
        if rng.random() < 0.5:
            h = b.track(graphc.max_pool2d(h, 2, padding=pool_pad), 1, h)
        else:
            h = b.track(graphc.avg_pool2d(h, 2, padding=pool_pad), 5, h)
    flat = graphc.reshape(h, (n, -1))
    V = b.param("V", (flat.shape[1], 3), 0.3)
    params.append(V)
    z = b.track(graphc.matmul(flat, V), flat.shape[1] + 1, h)
    form = b.choice(["cross_entropy", "log_softmax", "squared"])
    if form == "cross_entropy":
        loss = graphc.softmax_cross_entropy(z, b.labels(n, 3))
    elif form == "log_softmax":  # written by hand (the stabilize pass's pattern) unless the inputs are NaN/Inf
        y = graphc.one_hot(b.labels(n, 3), 3, b.dtype)
        log_p = graphc.log_softmax(z, axis=1) if b.special else graphc.log(graphc.softmax(z, axis=1))
        loss = -graphc.mean(graphc.sum(y * log_p, axis=1))
    else:
        loss = graphc.mean(graphc.square(z - 0.5))
    b.track(loss, 3 * 3 + n + 2, z)
    return [z], params, loss


def build_into(seed: int, index: int, prefix: str = "") -> Case:
    """Build case ``index`` of campaign ``seed`` into the graph under construction (inside
    ``with graphc.Graph(...)``), its inputs and parameters named ``<prefix><name>``."""
    graph = current_graph()
    if graph is None:
        raise RuntimeError("build_into must be called inside `with graphc.Graph(...)`")
    rng = np.random.default_rng([seed, index])
    family = "conv" if rng.random() < CONV_FRACTION else "dense"
    dtype = "float32" if rng.random() < 0.5 else "float64"
    b = _Builder(rng, prefix, dtype, special=bool(rng.random() < SPECIAL_FRACTION))
    shown, params, loss = (_conv if family == "conv" else _dense)(b, graph)
    outputs = [loss] + shown
    first_update = len(graph.updates)
    rule = b.choice(["grad", "sgd", "momentum"])
    if rule == "grad":  # gradients as outputs (the data's too, in the dense family), a hand-written SGD step
        data = [shown[-1]] if shown[-1].node.op == "input" else []
        grads = graphc.grad(loss, params + data)
        outputs += grads
        for p, d in zip(params, grads):
            graph.update(p, p - d * 0.1)
    else:  # graphc.optim's rules (momentum adds velocity parameters, updated too)
        optimizer = graphc.optim.SGD(lr=0.05) if rule == "sgd" else graphc.optim.Momentum(lr=0.05, momentum=0.9)
        outputs += optimizer.minimize(loss, params)[:2]
    graph.output(*outputs)
    steps = 2 * max(b.steps.values(), default=1) + 4  # the backward pass retraces the forward path
    return Case(seed, index, family, dtype, b.special, b.feeds, [o.node for o in outputs],
                list(graph.updates[first_update:]), steps, b.cancellation, rule, b.computes_float32)


def build_case(seed: int, index: int) -> Case:
    """Case ``index`` of campaign ``seed`` in a graph of its own (``case.graph``)."""
    with graphc.Graph(f"fuzz_{seed}_{index}") as g:
        case = build_into(seed, index)
    case.graph = g
    return case


# -- agreement -------------------------------------------------------------------------------------------------

#: Unit roundoff of float32 (2**-24) and float64.
EPS = {"float32": float(np.finfo(np.float32).eps) / 2, "float64": float(np.finfo(np.float64).eps) / 2}
#: float64 cases agree to this relative tolerance (the issue's 1e-9).
RTOL64 = 1e-9


def tolerance(case: Case) -> float:
    """The relative tolerance for ``case``.

    float64: 1e-9. float32 (and float64 cases that compute some values in float32, where one float32 rounding
    NumPy makes in its float32 tanh may differ by an ulp from the generated code's): each rounding step of a float32 computation adds a relative error of
    at most u = 2**-24 (the unit roundoff); a value that went through ``case.rounding_steps`` of
    them (one per elementwise op, n per n-term sum: the worst-case bound of recursive summation,
    the backward pass counted as the forward path once more) carries at most steps * u of error
    in either evaluation, so two correct evaluations (NumPy's and the generated code, which sum in
    different orders and may contract to FMA) differ by at most 2 * steps * u, times the condition
    number of the ops along the path. The ops' conditions here are bounded by a small constant
    (inputs are O(1), exp only of tanh-bounded arguments, log only of arguments >= 0.5): we allow
    8, so the tolerance is 16 * steps * u, and never tighter than float64's.
    """
    if not case.computes_float32:
        return RTOL64
    return max(RTOL64, 16 * case.rounding_steps * EPS["float32"])


@dataclasses.dataclass
class Disagreement:
    what: str           # "output 2" / "update of W"
    index: tuple        # the first differing element
    got: float
    want: float
    detail: str

    def __str__(self) -> str:
        if self.what == "crash":
            return f"crash: {self.detail}"
        return f"{self.what}: first difference at {self.index}: got {self.got!r}, want {self.want!r} ({self.detail})"


def compare(got: np.ndarray, want: np.ndarray, rtol: float, floor: float = 0.0) -> tuple | None:
    """None if ``got`` agrees with ``want``; else (index, got, want, detail) of the first difference.

    NaN must be NaN and +-Inf the same infinity position by position (equal_nan); a finite value
    agrees within ``rtol`` of the larger of its own magnitude and the output's largest finite
    magnitude (a norm-wise test: rounding in a sum is relative to its terms, not to its result),
    or within the absolute ``floor``."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return (), None, None, f"shape {got.shape} vs {want.shape}"
    if want.dtype.kind not in "fc":
        bad = got != want
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            return idx, got[idx].item(), want[idx].item(), "integer values differ"
        return None
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w64)
    scale = float(np.max(np.abs(w64[finite]))) if finite.any() else 0.0
    with np.errstate(invalid="ignore"):
        close = np.abs(g64 - w64) <= np.maximum(rtol * np.maximum(np.abs(w64), scale), floor)
    same_special = (np.isnan(g64) & np.isnan(w64)) | ((g64 == w64) & ~finite)
    ok = np.where(finite, close & np.isfinite(g64), same_special)
    if ok.all():
        return None
    idx = tuple(int(i) for i in np.argwhere(~ok)[0])
    return idx, g64[idx].item(), w64[idx].item(), f"rtol {rtol:.3g} of scale {scale:.3g}, floor {floor:.3g}"


# -- running a case ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Finding:
    """A disagreement of one case with the reference, where it happened."""

    case: Case
    where: str          # "optimize level 2" / "cpu (optimize level 2)"
    disagreement: Disagreement

    def report(self) -> str:
        """Seed, where, the first differing element, the graph's text and the reproducer."""
        c = self.case
        text = str(build_case(c.seed, c.index).graph)
        return (f"{c.name} ({c.family}, {c.dtype}{', NaN/Inf/zero inputs' if c.special else ''}) disagrees with the "
                f"reference at {self.where}:\n  {self.disagreement}\n"
                f"reproduce: python bench/fuzz.py --seed {c.seed} --only {c.index}\n{text}")


def crash(err: Exception) -> Disagreement:
    """An exception where a value was expected, with the line that raised it."""
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return Disagreement("crash", (), None, None, f"{type(err).__name__}: {err}{at}")


def expected(case: Case, graph: Graph) -> tuple[list[np.ndarray], float]:
    """The reference values of the case's roots in ``graph`` (the unoptimized graph), and the largest
    finite magnitude of any value the case computes on the way (the scale of its absolute floor)."""
    with np.errstate(all="ignore"):
        values = reference.run_nodes(graph, case.roots, case.feeds, None)
    largest = 0.0
    for v in values.values():
        if v.dtype.kind == "f" and v.size:
            finite = np.abs(v[np.isfinite(v)])
            if finite.size:
                largest = max(largest, float(finite.max()))
    return [values[id(r)] for r in case.roots], largest


def floor(case: Case, largest: float) -> float:
    """The absolute floor of a case that computes values by cancellation: batch-norm gradients are
    analytically zero in places (the bias feeding a batch norm; any weight when the normalized output
    cannot move); the rounding error of a cast round trip, cast(cast(t, f32), f64) - t, is ~1e-8 of the
    terms that cancel, pow(a, 0.5) - sqrt(a) is zero, and so are their gradients. What a correct
    evaluation computes there is the rounding noise of terms as large as the case's largest intermediate
    value (any change of 1 ulp in such a term, e.g. from summing in another order, changes the result by that much), so values agree within
    tolerance * (that magnitude). Cases without such cancellations get no floor."""
    return tolerance(case) * largest if case.cancellation else 0.0


def disagreements(case: Case, got: list, want: list, largest: float, where: str) -> list[Finding]:
    """The first disagreement of ``got`` with ``want`` (outputs, then updated parameters), if any."""
    rtol, names = tolerance(case), case.root_names()
    for name, a, b in zip(names, got, want):
        diff = compare(a, b, rtol, floor(case, largest))
        if diff is not None:
            return [Finding(case, where, Disagreement(name, *diff))]
    return []


def check_optimize(case: Case, levels=(0, 1, 2, 3)) -> list[Finding]:
    """``graphc.optimize`` at each level, evaluated by the reference backend, against the case's graph
    evaluated by the reference backend."""
    want, largest = expected(case, case.graph)
    found = []
    for level in levels:
        try:
            optimized = graphc.optimize(case.graph, level=level).graph
            feeds = {n.name: case.feeds[n.name] for n in optimized.inputs}
            roots = list(optimized.outputs) + [v for _, v in optimized.updates]
            with np.errstate(all="ignore"):
                got = reference.evaluate(optimized, feeds, roots)
        except Exception as err:  # a crash is a finding too
            found.append(Finding(case, f"optimize level {level}", crash(err)))
            continue
        found += disagreements(case, got, want, largest, f"optimize level {level}")
    return found


def cpu_reports(seed: int, index: int, level: int, cache_dir: str | None = None) -> list[str]:
    """:func:`check_cpu` of one case as plain data, for a worker process: the report of each finding."""
    return [f.report() for f in check_cpu(seed, [index], level=level, cache_dir=cache_dir)[1]]


def build_batch(seed: int, indices) -> tuple[Graph, list[Case]]:
    """Cases ``indices`` of campaign ``seed`` as disjoint subgraphs of one graph (one compiled module)."""
    with graphc.Graph(f"fuzz_{seed}_{indices[0]}_{indices[-1]}") as g:
        cases = [build_into(seed, k, prefix=f"c{k}_") for k in indices]
    return g, cases


def check_cpu(seed: int, indices, level: int = 2, **options) -> tuple[list[Case], list[Finding]]:
    """Cases ``indices`` compiled together by the cpu backend (optimize ``level``), run once (outputs and
    in-place parameter updates), each case compared on its own with its reference values."""
    g, cases = build_batch(seed, indices)
    outputs = [graphc.Tensor(o, g) for c in cases for o in c.outputs]
    where = f"cpu (optimize level {level})"
    feeds = {k: v for c in cases for k, v in c.feeds.items()}
    try:
        exe = graphc.compile(outputs, backend="cpu", optimize=level, **options)
        with np.errstate(all="ignore"):
            got = list(exe(**{name: feeds[name] for name in exe.input_names}))
    except Exception as err:  # a crash is a finding too (reported for every case of the module)
        return cases, [Finding(c, where, crash(err)) for c in cases]
    found, start = [], 0
    for c in cases:
        want, largest = expected(c, g)
        mine = got[start:start + len(c.outputs)] + [exe.params[p.name] for p, _ in c.updates]
        start += len(c.outputs)
        found += disagreements(c, mine, want, largest, where)
    return cases, found


# -- the record the suite's summary prints -------------------------------------------------------------------------

#: Graphs checked in this process and how many disagreed, per part ("optimize", "cpu"); the fuzz tests
#: add to it and tests/conftest.py prints it at the end of the run.
RECORD: dict[str, dict[str, int]] = {"optimize": {"graphs": 0, "disagreements": 0},
                                     "cpu": {"graphs": 0, "disagreements": 0}}


def record(part: str, graphs: int, disagreeing: int) -> None:
    """Count ``graphs`` as checked by ``part``, ``disagreeing`` of them with a finding."""
    RECORD[part]["graphs"] += graphs
    RECORD[part]["disagreements"] += disagreeing


def summary_line() -> str | None:
    """``fuzz: 1000 graphs through optimize levels 0-3, 0 disagreements; 60 graphs through cpu, 0 disagreements``
    (only the parts that ran); None if no fuzz test ran."""
    parts = []
    if RECORD["optimize"]["graphs"]:
        parts.append(f"{RECORD['optimize']['graphs']} graphs through optimize levels 0-3, "
                     f"{RECORD['optimize']['disagreements']} disagreements")
    if RECORD["cpu"]["graphs"]:
        parts.append(f"{RECORD['cpu']['graphs']} graphs through cpu, {RECORD['cpu']['disagreements']} disagreements")
    return "fuzz: " + "; ".join(parts) if parts else None


def report(findings: list[Finding], shown: int = 3) -> str:
    """The full report of the first ``shown`` findings, then the others by name."""
    text = "\n\n".join(f.report() for f in findings[:shown])
    rest = findings[shown:]
    if rest:
        text += "\n\nand also: " + "; ".join(f"{f.case.name} at {f.where}: {f.disagreement}" for f in rest)
    return text
