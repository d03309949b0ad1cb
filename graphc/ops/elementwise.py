"""Elementwise ops. Each is one SymPy expression of its scalar inputs; from it graphc derives

* the reference implementation (``sympy.lambdify`` to NumPy),
* the derivative (``sympy.diff``, simplified, cached per op) used by autodiff,
* and, in the backends, the scalar code inside fused kernels.

A user activation defined by an expression (:func:`elementwise`) is exactly like a built-in.
Non-differentiable points: the Piecewise conditions decide; relu'(0) = 0, step' = 0, |x|'(0) = 0.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp
from sympy.logic.boolalg import BooleanFunction
from sympy.printing.numpy import NumPyPrinter

from ..ir import Attrs, DType, GraphcError, Node, ShapeError, as_dtype, bool_, promote, to_float
from ..ir.errors import at_op
from .registry import OpDef, get, is_registered, register
from .tensor import Tensor, apply

# -- shapes ---------------------------------------------------------------------------------------------


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting, with a ShapeError that shows the shapes instead of NumPy's message."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(dims) > 1:
            shown = " and ".join(str(list(s)) for s in shapes)
            raise ShapeError(f"cannot broadcast shapes {shown}: dimension {axis} has sizes {sorted(dims)}")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


# -- dtype rules ---------------------------------------------------------------------------------------

def dtype_float(dtypes: Sequence[DType], attrs: Attrs) -> DType:
    return to_float(promote(*dtypes))


def dtype_promote(dtypes: Sequence[DType], attrs: Attrs) -> DType:
    return promote(*dtypes)


def dtype_bool(dtypes: Sequence[DType], attrs: Attrs) -> DType:
    return bool_


def dtype_where(dtypes: Sequence[DType], attrs: Attrs) -> DType:
    return promote(*dtypes[1:])


def dtype_cast(dtypes: Sequence[DType], attrs: Attrs) -> DType:
    return as_dtype(attrs["dtype"])


# -- definition ---------------------------------------------------------------------------------------

_INPUT_NAMES = {1: ("x",), 2: ("x", "y"), 3: ("x", "y", "z")}


def _symbols(arity: int, names: Sequence[str] | None = None) -> tuple[sp.Symbol, ...]:
    return tuple(sp.Symbol(n, real=True) for n in (names or _INPUT_NAMES[arity]))


def _make_shape_rule(dtype_rule: Callable):
    def shape_rule(inputs: Sequence[Node], attrs: Attrs):
        return broadcast_shapes(*(i.shape for i in inputs)), dtype_rule([i.dtype for i in inputs], attrs)
    return shape_rule


def _make_reference(op_name: str):
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        op = get(op_name)
        fn = _lambdified(op_name)
        # Broadcast first: a compound Piecewise condition (x > 0) & (y > 0) is built with
        # logical_and.reduce over a tuple, which needs equal shapes.
        args = list(np.broadcast_arrays(*arrays)) + [attrs[p] for p in op.params]
        with np.errstate(all="ignore"):  # Piecewise evaluates every branch; the unused ones may overflow
            result = np.asarray(fn(*args))
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        # numpy.select (Piecewise) turns 0-d inputs into shape (1,); constants come back as scalars.
        return result.reshape(shape) if result.size == int(np.prod(shape)) else np.broadcast_to(result, shape)
    return reference


@functools.lru_cache(maxsize=None)
def _lambdified(op_name: str):
    op = get(op_name)
    param_syms = [sp.Symbol(p, real=True) for p in op.params]
    return numpy_function(list(op.symbols) + param_syms, op.expr)


# -- the scalar semantics every backend shares ----------------------------------------------------------
# SymPy expressions are printed as NumPy code (the reference backend, constant folding) and as scalar code
# (the cpu backend). Where NumPy itself is not one function, graphc fixes the meaning here, once.

class IsNaN(BooleanFunction):
    """``isnan(x)`` as a Piecewise condition: how an activation sends a NaN input through.

    The op symbols are real, so SymPy drops a branch that only NaN could reach (after ``x > 0`` it
    proves ``x <= 0``); an explicit ``isnan`` condition it cannot prove false keeps NaN's branch.
    """

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_number:
            return sp.true if arg is sp.nan else sp.false
        return None

    def _eval_as_set(self):
        # The set of reals where x is NaN would be empty, which would let SymPy drop the branch.
        raise NotImplementedError("isnan(x) is not a set of real numbers")

    def _numpycode(self, printer) -> str:
        return f"{printer._module_format('numpy.isnan')}({printer._print(self.args[0])})"


class _Cast(sp.Function):
    """A conversion to a float dtype inside an expression: a value (the rounding of float64 to float32,
    the precision later operations compute in), never dropped. Its derivative is 1, like the cast op's."""

    nargs = 1
    dtype_name = ""

    @classmethod
    def eval(cls, arg):
        if arg.is_Number and arg.is_finite:
            return sp.Float(repr(float(np.dtype(cls.dtype_name).type(float(arg)))), 17)
        if arg.is_Number:  # inf, -inf, nan convert to themselves
            return arg
        return None

    def fdiff(self, argindex: int = 1):
        return sp.S.One

    def _numpycode(self, printer) -> str:
        return f"{printer._module_format('numpy.' + self.dtype_name)}({printer._print(self.args[0])})"


#: dtype name -> the SymPy function converting to it (``float32(x0)`` in a fused expression).
CAST_FUNCTIONS: dict[str, type] = {d: type(d, (_Cast,), {"dtype_name": d}) for d in ("float32", "float64")}


def numpy_power(x, y):
    """``x ** y`` with one meaning whatever the layout: NumPy computes a scalar exponent 0.5 as sqrt
    (pow(-inf, 0.5) = nan) but an array of 0.5 with C's pow (+inf). graphc's pow: a negative base
    (-inf included) with a finite non-integer exponent is NaN, as sqrt(-inf) is; otherwise C's pow."""
    with np.errstate(all="ignore"):
        result = np.power(x, y)
        undefined = (np.asarray(x) < 0) & (np.mod(y, 1) != 0) & np.isfinite(y)
    if not np.any(undefined):
        return result
    return np.where(undefined, np.nan, result).astype(np.result_type(result), copy=False)


class _NumPyPrinter(NumPyPrinter):
    """SymPy's NumPy printer with graphc's pow (:func:`numpy_power`) for non-integer exponents and
    IEEE-faithful ``ITE`` conditions."""

    def _print_Pow(self, expr, rational=False):
        exponent = expr.exp
        if exponent.is_Integer or exponent == sp.Rational(1, 2) or exponent == -sp.Rational(1, 2):
            return super()._print_Pow(expr, rational=rational)
        return f"graphc_power({self._print(expr.base)}, {self._print(exponent)})"

    def _print_Piecewise(self, expr):
        # SymPy's version runs simplify_logic on a condition holding an ITE, which treats the relations
        # as independent of NaN (``ITE(x <= 0, isnan(x) | (x >= 0), True)`` printed as ``True``).
        conds = ", ".join(self._print(arg.cond) for arg in expr.args)
        values = ", ".join(self._print(arg.expr) for arg in expr.args)
        return f"{self._module_format('numpy.select')}([{conds}], [{values}], default={self._print(sp.nan)})"

    def _print_ITE(self, expr):
        cond, then, otherwise = (self._print(arg) for arg in expr.args)
        return f"{self._module_format('numpy.where')}({cond}, {then}, {otherwise})"


def numpy_function(symbols: Sequence[sp.Symbol], expr: sp.Expr) -> Callable:
    """``expr`` as a NumPy function of ``symbols`` with graphc's scalar semantics (the oracle's code)."""
    return sp.lambdify(list(symbols), expr, modules=[{"graphc_power": numpy_power}, "numpy"],
                       printer=_NumPyPrinter({"fully_qualified_modules": False, "inline": True,
                                              "allow_unknown_functions": True, "user_functions": {}}))


def define(name: str, expr_fn: Callable[..., sp.Expr], arity: int = 1, params: dict[str, Any] | None = None,
           dtype_rule: Callable = dtype_float, doc: str = "", notes: str = "",
           from_output: Callable[..., sp.Expr] | None = None, input_names: Sequence[str] | None = None,
           derivative_of: tuple[str, int] | None = None) -> OpDef:
    """Register an elementwise op from a function of SymPy symbols (inputs, then parameters);
    ``from_output``: its derivative as a function of its output and parameters (see OpDef.from_output);
    ``input_names``: the input symbols' names when x, y, z are taken by parameters (default x, y, z)."""
    params = dict(params or {})
    syms = _symbols(arity, input_names)
    if {str(s) for s in syms} & set(params):
        raise ValueError(f"op {name!r}: parameters {sorted(params)} reuse input names {[str(s) for s in syms]}")
    param_syms = [sp.Symbol(p, real=True) for p in params]
    expr = sp.sympify(expr_fn(*syms, *param_syms))
    op = OpDef(
        name=name, family="elementwise", doc=doc or f"{name}: {expr}", shape_rule=_make_shape_rule(dtype_rule),
        reference=_make_reference(name), vjp=elementwise_vjp, expr=expr, symbols=syms, params=params, notes=notes,
        from_output=from_output, derivative_of=derivative_of,
    )
    op.dtype_rule = dtype_rule
    return register(op)


def _builder(name: str):
    op = get(name)

    def build(*args: Any, name_: str | None = None, **kwargs: Any) -> Tensor:
        if len(args) != len(op.symbols):
            raise TypeError(f"{name} takes {len(op.symbols)} tensor argument(s), got {len(args)}")
        unknown = set(kwargs) - set(op.params)
        if unknown:
            raise TypeError(f"{name} has no parameter(s) {', '.join(sorted(unknown))}; it takes {list(op.params)}")
        attrs = {p: float(kwargs.get(p, default)) for p, default in op.params.items()}
        return apply(name, args, attrs, name=name_)

    build.__name__ = name
    build.__doc__ = f"Elementwise ``{op.expr}`` (over {', '.join(map(str, op.symbols))})." + (
        f" Parameters: {op.params}." if op.params else ""
    )
    return build


def elementwise(name: str, expr_fn: Callable[..., sp.Expr], arity: int = 1, params: dict[str, Any] | None = None,
                doc: str = "") -> Callable[..., Tensor]:
    """Define an activation from a SymPy expression; it gets its reference, gradient and codegen for free.

    The gradient is SymPy's derivative (:func:`differentiate`): step functions (floor, ceiling, frac,
    Mod, sign, Heaviside) are differentiated almost everywhere, their jumps taking the derivative on
    either side; an expression SymPy leaves unevaluated raises UndefinedDerivativeError when ``grad``
    needs it, naming the op and the line that applied it.

    >>> import graphc, sympy
    >>> swish = graphc.elementwise("swish_doc", lambda x: x * graphc.sympy_sigmoid(x))
    >>> with graphc.Graph():
    ...     swish(graphc.input("x", (3,))).op
    'swish_doc'
    """
    if is_registered(name):
        existing = get(name)
        syms = _symbols(arity)
        psyms = [sp.Symbol(p, real=True) for p in (params or {})]
        if existing.expr is None or sp.simplify(existing.expr - sp.sympify(expr_fn(*syms, *psyms))) != 0:
            raise ValueError(f"op {name!r} is already registered with a different definition")
        return _builder(name)
    define(name, expr_fn, arity, params, doc=doc)
    return _builder(name)


# -- derivatives ----------------------------------------------------------------------------------------

def derivative_name(op_name: str, i: int) -> str:
    return f"d{op_name}_d{get(op_name).symbols[i]}"


def derivative_op(op_name: str, i: int) -> str | None:
    """The elementwise op computing d(op)/d(input i), registered on first use; None when it is 0."""
    op = get(op_name)
    d = _derivative_expr(op_name, i)
    if d == 0:
        return None
    name = derivative_name(op_name, i)
    if not is_registered(name):
        # define() rebuilds the same symbols (same names and assumptions), so `d` is used as it is.
        define(name, lambda *_: d, arity=len(op.symbols), params=op.params, dtype_rule=dtype_float,
               input_names=[str(s) for s in op.symbols],
               doc=f"d{op_name}/d{op.symbols[i]} = {d}", notes=f"derivative of {op_name}, derived by SymPy",
               derivative_of=(op_name, i))
    return name


@functools.lru_cache(maxsize=None)
def _derivative_expr(op_name: str, i: int) -> sp.Expr:
    op = get(op_name)
    param_values = {sp.Symbol(p, real=True): v for p, v in op.params.items()}
    return simplify_derivative(differentiate(op.expr, op.symbols[i]), op.symbols, param_values)


class UndefinedDerivativeError(GraphcError, ValueError):
    """An elementwise expression SymPy cannot differentiate (it leaves an unevaluated Derivative)."""


#: Integer-valued step functions: their derivative is 0 wherever it exists (everywhere but at the
#: jumps), the convention of step and sign. SymPy leaves it as an unevaluated Derivative (or a Subs of
#: one, for floor(u) of an expression u); graphc maps it to 0.
PIECEWISE_CONSTANT = (sp.floor, sp.ceiling)


def _in_floors(expr: sp.Expr) -> sp.Expr:
    """frac and Mod rewritten with floor (frac(u) = u - floor(u), Mod(a, b) = a - b floor(a/b)), so that
    their derivatives follow from floor's: 1 almost everywhere for frac, 1 and -floor(a/b) for Mod."""
    expr = expr.replace(sp.frac, lambda u: u - sp.floor(u))
    return expr.replace(sp.Mod, lambda a, b: a - b * sp.floor(a / b))


def differentiate(expr: sp.Expr, symbol: sp.Symbol) -> sp.Expr:
    """d expr / d symbol with graphc's conventions where it jumps (:func:`derivative_conventions`).

    Differentiable almost everywhere, with the derivative at the jumps defined as the one on either
    side: floor, ceiling, frac, Mod (0, 0, 1, and 1 / -floor(a/b)); sign, Heaviside, Abs, Max, Min and
    Piecewise (see :func:`derivative_conventions`). Anything SymPy still leaves unevaluated (an undefined
    function, a function without a derivative rule) raises :class:`UndefinedDerivativeError`.
    """
    d = derivative_conventions(sp.diff(_in_floors(expr), symbol))
    left = sorted(d.atoms(sp.Derivative, sp.Subs), key=str)
    if left:
        raise UndefinedDerivativeError(
            f"cannot differentiate {expr} with respect to {symbol}: SymPy leaves {left[0]} unevaluated (graphc "
            f"defines the derivatives of floor, ceiling, frac, Mod, sign, Heaviside, Abs, Max, Min and Piecewise "
            f"almost everywhere; write the expression with those, or keep the op out of the differentiated path)")
    return d


def simplify_derivative(d: sp.Expr, symbols: Sequence[sp.Symbol], param_values: dict | None = None) -> sp.Expr:
    """A derivative in a short form that is as stable in float64 as the raw one.

    Conventions at non-differentiable points: DiracDelta (from sign, step) is 0 and Heaviside(u)
    (from Max/Min) is 1 where u > 0 else 0, so relu'(0) = 0. Each Piecewise branch is simplified on
    its own (never merged: sigmoid's and softplus's two branches exist to avoid overflow), and a
    shorter candidate is kept only when it stays finite and equal on a grid of test points,
    +-1000 included, wherever the raw form is finite.
    """
    d = derivative_conventions(d)
    if d.is_number or not isinstance(d, sp.Piecewise):
        return _shortest_stable(d, d, d, symbols, param_values or {})
    branches = list(d.args)
    for k, (expr, cond) in enumerate(branches):
        def whole(e, k=k, cond=cond):
            return sp.Piecewise(*(branches[:k] + [(e, cond)] + branches[k + 1:]))
        best = _shortest_stable(expr, d, whole, symbols, param_values or {})
        branches[k] = (best, cond)
    return sp.piecewise_fold(sp.Piecewise(*branches))


def derivative_conventions(d: sp.Expr) -> sp.Expr:
    """DiracDelta -> 0, Heaviside(u) -> (1 if u > 0 else 0), the derivative of floor/ceiling -> 0,
    Piecewise folded: NumPy can evaluate the result."""
    d = d.replace(sp.DiracDelta, lambda *a: sp.S.Zero)
    d = d.replace(sp.Heaviside, lambda u, *a: sp.Piecewise((1, u > 0), (0, True)))
    d = d.replace(lambda e: isinstance(e, sp.Derivative) and isinstance(e.expr, PIECEWISE_CONSTANT),
                  lambda e: sp.S.Zero)
    d = d.replace(lambda e: isinstance(e, sp.Subs) and e.expr == 0, lambda e: sp.S.Zero)  # floor(u)' at u
    return sp.piecewise_fold(d)


_TEST_POINTS = (-1000.0, -30.0, -2.0, -0.7, 0.0, 0.3, 1.5, 30.0, 1000.0)


def _shortest_stable(expr, raw, whole, symbols, param_values):
    """The best of a few simplifications of ``expr``: finite wherever ``raw`` is and equal to it there;
    then finite at the most test points (x**(y-1)*y beats x**y*y/x at x = 0); then the shortest."""
    def abs_of_sign(e):
        for s in symbols:
            e = e.subs(s * sp.sign(s), sp.Abs(s))
        return e
    candidates = [expr]
    for transform in (sp.simplify, sp.factor, sp.cancel, sp.powsimp, lambda e: sp.simplify(abs_of_sign(e))):
        try:
            candidates.append(transform(expr))
        except Exception:  # a failed rewrite only means one candidate fewer
            pass
    build = whole if callable(whole) else (lambda e: e)
    grid = np.array(np.meshgrid(*[_TEST_POINTS] * len(symbols))).reshape(len(symbols), -1)
    raw_values = _evaluate_on(raw, symbols, grid, param_values)
    if raw_values is None:
        return min(candidates, key=sp.count_ops)
    finite = np.isfinite(raw_values)
    ranked = []
    for k, c in enumerate(candidates):
        values = _evaluate_on(build(c), symbols, grid, param_values)
        if values is None or not np.all(np.isfinite(values[finite])):
            continue
        if not np.allclose(values[finite], raw_values[finite], rtol=1e-9, atol=1e-300):
            continue
        ranked.append((int(np.sum(~np.isfinite(values))), sp.count_ops(c), k, c))
    return min(ranked)[3] if ranked else expr


def _evaluate_on(expr, symbols, grid, param_values):
    try:
        fn = numpy_function(symbols, expr.subs(param_values))
        with np.errstate(all="ignore"):
            return np.broadcast_to(np.asarray(fn(*grid), dtype=np.float64), grid.shape[1:]).copy()
    except Exception:  # not numerically evaluable (unknown functions): no check possible
        return None


def elementwise_vjp(node: Node, g: Tensor, inputs: Sequence[Tensor]) -> list[Tensor | None]:
    """g * d(op)/d(input_i), summed back over broadcast axes to each input's shape."""
    from .reduce import sum_to_shape

    out: list[Tensor | None] = []
    attrs = dict(node.attrs)
    for i, x in enumerate(inputs):
        if not x.dtype.is_float:
            out.append(None)
            continue
        try:
            dname = derivative_op(node.op, i)
        except UndefinedDerivativeError as err:  # at grad time: name the op and the user's line
            raise at_op(err, node.op, ", ".join(t.node.type_str for t in inputs), node.loc) from None
        if dname is None:
            out.append(None)
            continue
        # Trivial derivatives (add: 1, sub: -1, mul: the other input) need no derivative node.
        d, symbols = _derivative_expr(node.op, i), get(node.op).symbols
        if d == 1:
            contribution = g
        elif d == -1:
            contribution = -g
        elif d.is_number:
            contribution = g * float(d)
        elif d in symbols:
            contribution = g * inputs[symbols.index(d)]
        elif d == get(node.op).expr:  # exp' = exp: reuse the forward node
            contribution = g * Tensor(node, g.graph)
        else:
            contribution = g * apply(dname, inputs, attrs)
        out.append(sum_to_shape(cast(contribution, x.dtype), x.shape))
    return out


# -- the built-in ops -----------------------------------------------------------------------------------

def sympy_sigmoid(x: sp.Expr) -> sp.Expr:
    """The logistic sigmoid as a SymPy expression, in its overflow-free two-branch form."""
    return sp.Piecewise((1 / (1 + sp.exp(-x)), x >= 0), (sp.exp(x) / (1 + sp.exp(x)), True))


def sympy_softplus(x: sp.Expr) -> sp.Expr:
    """log(1 + e^x) as a SymPy expression that does not overflow for large |x|."""
    return sp.Piecewise((x + sp.log(1 + sp.exp(-x)), x > 0), (sp.log(1 + sp.exp(x)), True))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

P = sp.Piecewise  # short alias for the definitions below
define("neg", lambda x: -x, dtype_rule=dtype_promote)
define("add", lambda x, y: x + y, 2, dtype_rule=dtype_promote)
define("sub", lambda x, y: x - y, 2, dtype_rule=dtype_promote)
define("mul", lambda x, y: x * y, 2, dtype_rule=dtype_promote)
define("div", lambda x, y: x / y, 2)
define("pow", lambda x, y: x ** y, 2)
define("exp", sp.exp, from_output=lambda y: y)
define("log", sp.log)
define("sqrt", sp.sqrt)
define("abs", sp.Abs, dtype_rule=dtype_promote, notes="abs'(0) = 0")
define("sign", sp.sign, dtype_rule=dtype_promote, notes="derivative 0 everywhere")
define("maximum", lambda x, y: P((x, (x >= y) | IsNaN(x)), (y, True)), 2, dtype_rule=dtype_promote,
       notes="ties pass the gradient to the first input; a NaN in either input gives NaN (as numpy.maximum), "
             "its gradient going to the NaN input")
define("minimum", lambda x, y: P((x, (x <= y) | IsNaN(x)), (y, True)), 2, dtype_rule=dtype_promote,
       notes="ties pass the gradient to the first input; a NaN in either input gives NaN (as numpy.minimum), "
             "its gradient going to the NaN input")
define("clip", lambda x, lo, hi: P((lo, x < lo), (hi, x > hi), (x, True)), params={"lo": 0.0, "hi": 1.0},
       notes="gradient 1 inside [lo, hi], 0 outside; clip(NaN) = NaN with gradient 1 (JAX: 0)")
define("square", lambda x: x ** 2, dtype_rule=dtype_promote)
define("cast", lambda x: x, dtype_rule=dtype_cast, doc="cast: x converted to the dtype attribute")
define("where", lambda c, x, y: P((x, sp.Ne(c, 0)), (y, True)), 3, dtype_rule=dtype_where,
       doc="where: x where c is true (nonzero), y elsewhere")
for _name, _rel in [("less", sp.StrictLessThan), ("less_equal", sp.LessThan), ("greater", sp.StrictGreaterThan),
                    ("greater_equal", sp.GreaterThan), ("equal", sp.Eq), ("not_equal", sp.Ne)]:
    define(_name, (lambda rel: lambda x, y: P((1, rel(x, y)), (0, True)))(_rel), 2, dtype_rule=dtype_bool)

# Activations from the course material.
define("identity", lambda x: x, dtype_rule=dtype_promote, from_output=lambda y: sp.Integer(1))
define("sigmoid", sympy_sigmoid, doc="sigmoid: 1/(1 + exp(-x)) (two overflow-free branches)",
       from_output=lambda y: y * (1 - y))
define("tanh", sp.tanh, from_output=lambda y: 1 - y ** 2)
define("relu", lambda x: P((0, x <= 0), (x, True)), dtype_rule=dtype_promote,
       notes="relu'(0) = 0; relu(NaN) = NaN (as numpy.maximum(x, 0), PyTorch and JAX), with relu'(NaN) = 1 "
             "(PyTorch's choice; JAX's is 0): one compare and select per element",
       from_output=lambda y: P((0, y <= 0), (1, True)))  # relu'(NaN) = 1, as relu's own derivative
define("leaky_relu", lambda x, alpha: P((x, x > 0), (alpha * x, True)), params={"alpha": 0.01},
       notes="the course's max(0.1x, x) is leaky_relu(x, alpha=0.1); default alpha 0.01 as in PyTorch; "
             "NaN gives NaN, with gradient alpha (as JAX)",
       from_output=lambda y, alpha: P((1, y > 0), (alpha, True)))
define("elu", lambda x, alpha: P((x, x >= 0), (alpha * (sp.exp(x) - 1), True)), params={"alpha": 1.0},
       notes="NaN gives NaN, with gradient NaN (as JAX)", from_output=lambda y, alpha: P((1, y >= 0), (y + alpha, True)))
define("selu", lambda x: _SELU_SCALE * P((x, x > 0), (_SELU_ALPHA * (sp.exp(x) - 1), True)),
       notes="NaN gives NaN, with gradient NaN (as JAX)")
define("sigmoid_zxy", lambda v, z, x, y: z + sympy_sigmoid(x * v - y), params={"z": 0.0, "x": 1.0, "y": 0.0},
       input_names=("v",), doc="sigmoid_zxy: z + 1/(1 + exp(-x v + y)), the sigmoid with z, x, y parameters of the "
       "course's neuron models (deck 001); the defaults give the sigmoid",
       notes="x scales the input, y shifts it, z shifts the output; written as z + sigmoid(x v - y) in sigmoid's "
             "two overflow-free branches")
define("softplus", sympy_softplus, doc="softplus: log(1 + exp(x)) (two overflow-free branches)")
define("softsign", lambda x: x / (1 + sp.Abs(x)))
define("step", lambda x, a, b, c: P((sp.nan, IsNaN(x)), (b, x > c), (a, True)), params={"a": 0.0, "b": 1.0, "c": 0.0},
       doc="step: a if x <= c, b if x > c (the course's neuron model)",
       notes="derivative 0 everywhere; step(NaN) = NaN (as numpy.heaviside)")
define("ramp", lambda x, a, b, c, d: P((a, x < c), (b, x > d), (a + (x - c) * (b - a) / (d - c), True)),
       params={"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0},
       doc="ramp: a below c, b above d, linear from (c, a) to (d, b) between (the course's neuron model)")
define("gaussian", lambda x, mu, sigma: sp.exp(-((x - mu) / sigma) ** 2 / 2) / (sp.sqrt(2 * sp.pi) * sigma),
       params={"mu": 0.0, "sigma": 1.0}, doc="gaussian: exp(-((x - mu)/sigma)^2 / 2) / (sqrt(2 pi) sigma)")

# -- builders: the functions users call ------------------------------------------------------------------

neg = _builder("neg")
add = _builder("add")
sub = _builder("sub")
mul = _builder("mul")
div = _builder("div")
pow = _builder("pow")  # noqa: A001  (graphc.pow mirrors numpy.power)
exp = _builder("exp")
log = _builder("log")
sqrt = _builder("sqrt")
abs = _builder("abs")  # noqa: A001
sign = _builder("sign")
maximum = _builder("maximum")
minimum = _builder("minimum")
square = _builder("square")
less = _builder("less")
less_equal = _builder("less_equal")
greater = _builder("greater")
greater_equal = _builder("greater_equal")
equal = _builder("equal")
not_equal = _builder("not_equal")
identity = _builder("identity")
sigmoid = _builder("sigmoid")
tanh = _builder("tanh")
relu = _builder("relu")
leaky_relu = _builder("leaky_relu")
elu = _builder("elu")
selu = _builder("selu")
softplus = _builder("softplus")
softsign = _builder("softsign")
sigmoid_zxy = _builder("sigmoid_zxy")
step = _builder("step")
ramp = _builder("ramp")
gaussian = _builder("gaussian")
_clip = _builder("clip")
_where = _builder("where")


def clip(x: Any, lo: float, hi: float) -> Tensor:
    """Elementwise clamp of ``x`` to [lo, hi]."""
    return _clip(x, lo=lo, hi=hi)


def where(cond: Any, x: Any, y: Any) -> Tensor:
    """``x`` where ``cond`` is true, ``y`` elsewhere, with broadcasting (numpy.where)."""
    return _where(cond, x, y)


def cast(x: Any, dtype: Any) -> Tensor:
    """``x`` converted to ``dtype`` (a no-op, returning ``x``, when it already has it)."""
    dtype = as_dtype(dtype)
    if isinstance(x, Tensor) and x.dtype == dtype:
        return x
    return apply("cast", [x], {"dtype": dtype.name})


# -- fused elementwise nodes ---------------------------------------------------------------------------------
# A fused node carries one SymPy expression over symbols x0..x{n-1} (its inputs, broadcast together),
# with every parameter already a number. The fusion pass builds them; the backends print their scalar code.

def fused_symbols(n: int) -> tuple[sp.Symbol, ...]:
    return tuple(sp.Symbol(f"x{k}", real=True) for k in range(n))


def _fused_rule(inputs: Sequence[Node], attrs: Attrs):
    expr = attrs["expr"]
    extra = expr.free_symbols - set(fused_symbols(len(inputs)))
    if extra:
        raise ShapeError(f"expression {expr} uses symbols {sorted(map(str, extra))} that are not inputs")
    return broadcast_shapes(*(i.shape for i in inputs)), as_dtype(attrs["dtype"])


@functools.lru_cache(maxsize=4096)
def _lambdified_fused(expr: sp.Expr, n: int):
    return numpy_function(fused_symbols(n), expr)


def _fused_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    fn = _lambdified_fused(attrs["expr"], len(arrays))
    with np.errstate(all="ignore"):
        result = np.asarray(fn(*np.broadcast_arrays(*arrays)))  # see _make_reference
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    return result.reshape(shape) if result.size == int(np.prod(shape)) else np.broadcast_to(result, shape)


@functools.lru_cache(maxsize=4096)
def fused_derivative(expr: sp.Expr, n: int, i: int) -> sp.Expr:
    return differentiate(expr, fused_symbols(n)[i])


def _fused_vjp(node: Node, g: Tensor, inputs: Sequence[Tensor]) -> list[Tensor | None]:
    from .reduce import sum_to_shape

    out: list[Tensor | None] = []
    for i, x in enumerate(inputs):
        d = fused_derivative(node.attrs["expr"], len(inputs), i)
        if d == 0 or not x.dtype.is_float:
            out.append(None)
            continue
        local = fused(d, inputs, node.dtype)
        out.append(sum_to_shape(cast(g * local, x.dtype), x.shape))
    return out


register(OpDef("fused", "elementwise", "one SymPy expression over inputs x0..x{n-1}, evaluated elementwise "
               "with broadcasting (built by the fusion pass)", _fused_rule, _fused_reference, _fused_vjp))


def is_elementwise(node: Node) -> bool:
    """Whether ``node`` computes output element i from input elements i alone (broadcast), by one scalar
    expression: a ``fused`` node, or an op defined by a SymPy expression (built-ins, derivative ops
    ``d<op>_d<x>``, user activations)."""
    return node.op == "fused" or get(node.op).expr is not None


def node_expression(node: Node) -> tuple[sp.Expr, tuple[sp.Symbol, ...]]:
    """The scalar expression an elementwise ``node`` computes, over one symbol per input.

    A ``fused`` node's expression is its ``expr`` attribute over x0..x{n-1}; an op's is its registered
    expression with its parameters replaced by the node's attributes (their defaults when absent).
    """
    if node.op == "fused":
        return node.attrs["expr"], fused_symbols(len(node.inputs))
    return _op_expression(node.op, node.attrs)


@functools.lru_cache(maxsize=None)
def _op_expression(name: str, attrs: Attrs) -> tuple[sp.Expr, tuple[sp.Symbol, ...]]:
    """:func:`node_expression` of a registered op (cached: passes ask it for every node they visit)."""
    op = get(name)
    if op.expr is None:
        raise GraphcError(f"op {name!r} is not elementwise: it has no scalar expression")
    values = {sp.Symbol(p, real=True): sp.Float(float(attrs[p] if p in attrs else default))
              for p, default in op.params.items()}
    return (op.expr.xreplace(values) if values else op.expr), tuple(op.symbols)


def fused(expr: sp.Expr, inputs: Sequence[Any], dtype: Any) -> Tensor:
    """A fused elementwise node computing ``expr`` (over symbols x0, x1, ...) of ``inputs``."""
    return apply("fused", list(inputs), {"expr": sp.sympify(expr), "dtype": as_dtype(dtype).name})
