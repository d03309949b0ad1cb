"""Scalar code for elementwise kernels: a SymPy expression printed as Numba-friendly Python.

Shared by the Numba renderers (numba_cpu's @njit code, numba_cuda's @cuda.jit kernels).

Every elementwise op (built-in, user-defined, derivative ``d<op>_d<x>``, ``fused``) is one SymPy
expression; this module turns it into straight-line scalar statements (after ``sympy.cse``) with
typed literals, so a float32 kernel stays in float32 (``f32(0.5) * a0``, not a float64 ``0.5``).
"""
from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .lowering.ir import Assign, Load, Loop, Store

#: dtype name -> the name the generated module binds to its NumPy scalar type.
NP_TYPE = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b8"}
#: The float types, whose literals a kernel computing in them writes typed (``f32(0.5)``).
FLOAT_ALIAS = {name: NP_TYPE[name] for name in ("float32", "float64")}


class ScalarPrinter(PythonCodePrinter):
    """SymPy -> scalar Python for @njit code. Numbers carry the kernel's float type (``float_alias``);
    small integer powers become products; Piecewise becomes nested conditional expressions."""

    def __init__(self, float_alias: str | None):
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})
        self.float_alias = float_alias

    def _typed(self, text: str) -> str:
        return f"{self.float_alias}({text})" if self.float_alias else text

    def _print_Float(self, expr) -> str:
        # A low-precision Float (the passes write float32 constants with 9 digits) means its decimal text,
        # as SymPy's own printers (and so the reference backend) read it; a float64 one its exact value.
        value = float(str(expr)) if getattr(expr, "_prec", 53) < 53 else float(expr)
        if not np.isfinite(value):
            return self._typed("math.inf" if value > 0 else "-math.inf") if value == value else self._typed("math.nan")
        return self._typed(repr(value))

    def _print_Integer(self, expr) -> str:
        return self._typed(str(int(expr))) if self.float_alias else str(int(expr))

    def _print_Rational(self, expr) -> str:
        if self.float_alias:
            return self._typed(repr(float(expr)))
        return f"({int(expr.p)} / {int(expr.q)})"

    _print_Half = _print_Rational

    def _print_One(self, expr) -> str:
        return self._print_Integer(expr)

    def _print_Zero(self, expr) -> str:
        return self._print_Integer(expr)

    def _print_NegativeOne(self, expr) -> str:
        return self._print_Integer(expr)

    def _print_NumberSymbol(self, expr) -> str:
        return self._typed(repr(float(expr))) if self.float_alias else repr(float(expr))

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, expr) -> str:
        return self._typed("math.inf")

    def _print_NegativeInfinity(self, expr) -> str:
        return self._typed("-math.inf")

    def _print_NaN(self, expr) -> str:
        return self._typed("math.nan")

    def _print_BooleanTrue(self, expr) -> str:
        return "True"

    def _print_BooleanFalse(self, expr) -> str:
        return "False"

    def _print_Pow(self, expr, rational=False) -> str:
        base, exp = expr.as_base_exp()
        b = self.parenthesize(base, 1000)  # an atom or parenthesized
        if exp.is_Integer and 2 <= int(exp) <= 4:
            return "(" + "*".join([b] * int(exp)) + ")"
        if exp == -1:
            return f"({self._print_Integer(sp.Integer(1))}/{b})"
        if exp == sp.Rational(1, 2) or exp == sp.Float(0.5):
            return f"math.sqrt({self._print(base)})"
        if exp == -sp.Rational(1, 2):
            return f"({self._print_Integer(sp.Integer(1))}/math.sqrt({self._print(base)}))"
        power = f"({b}**{self.parenthesize(exp, 1000)})"
        zero = self._print_Integer(sp.Integer(0))
        # graphc's pow (graphc.ops.elementwise.numpy_power): a negative base, -inf included, with a
        # finite non-integer exponent is NaN (C's pow gives +inf for -inf).
        if exp.is_number:
            value = float(exp)
            if not np.isfinite(value) or value == int(value):
                return power
            return f"({self._print_NaN(sp.nan)} if {b} < {zero} else {power})"
        e = self.parenthesize(exp, 1000)
        return f"({self._print_NaN(sp.nan)} if {b} < {zero} and {e} % 1.0 != 0 and abs({e}) < math.inf else {power})"

    # graphc.ops.elementwise.CAST_FUNCTIONS: a conversion inside an expression is a value (rounding).
    def _print_float32(self, expr) -> str:
        return f"f32({self._print(expr.args[0])})"

    def _print_float64(self, expr) -> str:
        return f"f64({self._print(expr.args[0])})"

    def _print_IsNaN(self, expr) -> str:
        x = self._print(expr.args[0])
        return f"({x} != {x})"

    #: float32 exp and tanh by name: on the CPU, inline and vectorizable (numba_cpu.runtime's exp_f32 and
    #: tanh_f32, within a few ulp) instead of a libm call per element, which keeps LLVM from vectorizing
    #: the loop; a target with its own float32 functions (CUDA's libdevice) names math's.
    F32_FUNCTIONS = {"exp": "exp_f32", "tanh": "tanh_f32"}

    def _print_exp(self, expr) -> str:
        if self.float_alias == "f32":
            return f"{self.F32_FUNCTIONS['exp']}(f32({self._print(expr.args[0])}))"
        return f"math.exp({self._print(expr.args[0])})"

    def _print_tanh(self, expr) -> str:
        if self.float_alias == "f32":
            return f"{self.F32_FUNCTIONS['tanh']}(f32({self._print(expr.args[0])}))"
        return f"math.tanh({self._print(expr.args[0])})"

    def _print_sign(self, expr) -> str:
        x = self._print(expr.args[0])
        one, zero = self._print_Integer(sp.Integer(1)), self._print_Integer(sp.Integer(0))
        # np.sign: 1, -1, 0 for zero, NaN for NaN (x itself in the last branch covers both).
        return f"({one} if {x} > {zero} else (-{one} if {x} < {zero} else {x}))"

    def _print_frac(self, expr) -> str:
        # SymPy's Python printer writes frac(x) as a bare `x % 1`, which binds to a product before it:
        # y*frac(x) came out as `y*x % 1`, i.e. frac(y*x).
        return f"({self._print(expr.args[0])} % {self._print_Integer(sp.Integer(1))})"

    def _print_Abs(self, expr) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_Piecewise(self, expr) -> str:
        pieces = list(expr.args)
        text = None
        if pieces[-1].cond == sp.true:
            text = f"({self._print(pieces.pop().expr)})"
        else:
            text = self._print_NaN(sp.nan)  # no branch applies: NaN, never Python's None
        for e, c in reversed(pieces):
            text = f"({self._print(e)} if {self._print(c)} else {text})"
        return text


def store_cast(result: str, dtype: str) -> str:
    """The result converted to the output dtype (a no-op conversion costs nothing after LLVM)."""
    if dtype == "bool":
        return f"({result}) != 0"
    return f"{NP_TYPE[dtype]}({result})"


class NumbaStatements:
    """What the Numba renderers (numba_cpu's @njit driver, numba_cuda's @cuda.jit kernels) print alike.

    Memory: a buffer of the parameter store or the workspace is a typed view of that store (``sf32``:
    the parameter store as float32, ``wf64``: the workspace as float64) plus a module-level offset
    constant (its name: ``P2``, ``V7``, ...); inputs and outputs are flat arrays of their own. Statements:
    loops, loads, assignments and stores; a target prints the rest (:meth:`target_lines`: checks,
    draws, GEMMs, library calls), each in its own way.
    """

    printer_class = ScalarPrinter

    def __init__(self, program):
        self.program = program
        self.views: dict[str, tuple[str, str]] = {}  # view variable -> (store, dtype): "sf32" -> ("state", "float32")
        self.consts: dict[str, tuple[int, str]] = {}  # offset constant -> (elements, what it is)
        self._printers = {alias: self.printer_class(alias) for alias in (None, "f32", "f64")}

    def printer(self, dtype: str | None) -> ScalarPrinter:
        """The printer of scalars computed in ``dtype`` (typed float literals), or of integers (None)."""
        return self._printers[FLOAT_ALIAS.get(dtype or "")]

    def index(self, expr) -> str:
        return self._printers[None].doprint(expr)

    # -- memory --------------------------------------------------------------------------------------
    def array(self, buf) -> tuple[str, str]:
        """(array variable, offset constant or "0") of ``buf``."""
        if buf.store in ("input", "output"):
            return buf.name, "0"
        var = ("s" if buf.store == "state" else "w") + NP_TYPE[buf.dtype]
        self.views.setdefault(var, (buf.store, buf.dtype))
        self.consts[buf.name] = (buf.offset, buf.note)
        return var, buf.name

    def element(self, buf, index) -> str:
        arr, off = self.array(buf)
        text = self.index(index)
        if off == "0":
            return f"{arr}[{text}]"
        return f"{arr}[{off}]" if index == 0 else f"{arr}[{off} + {text}]"

    def ref(self, ref) -> str:
        """A library call's operand: its array and the offset of its first element."""
        arr, off = self.array(ref.buffer)
        if ref.offset == 0:
            return f"{arr}, {off}"
        plus = self.index(ref.offset)
        return f"{arr}, {plus if off == '0' else f'{off} + {plus}'}"

    # -- statements ----------------------------------------------------------------------------------
    def lines(self, body, depth: int = 1) -> list[str]:
        pad = "    " * depth
        out: list[str] = []
        for s in body:
            if isinstance(s, Loop):
                out.append(f"{pad}for {s.var} in range({s.extent}):")
                out += self.lines(s.body, depth + 1)
            elif isinstance(s, Load):
                value = self.element(s.buffer, s.index)
                if s.guard is not None:
                    zero = self.printer(s.buffer.dtype).doprint(sp.Integer(0))
                    value = f"{value} if {self.index(s.guard)} else {zero}"
                out.append(f"{pad}{s.var} = {value}")
            elif isinstance(s, Assign):
                out.append(pad + self.assignment(s))
            elif isinstance(s, Store):
                out.append(pad + self.store(s))
            else:
                out += self.target_lines(s, pad)
        return out

    def target_lines(self, s, pad: str) -> list[str]:
        """The lines of a statement only the target knows how to print."""
        raise TypeError(f"{type(self).__name__} cannot render {s!r}")

    def assignment(self, s) -> str:
        printer = self.printer(s.dtype)
        value = s.value
        # `acc = acc + x` reads better, and is the same code, as `acc += x`.
        if isinstance(value, sp.Add) and s.var in value.args:
            rest = sp.Add(*[a for a in value.args if a != s.var], evaluate=False)
            return f"{s.var} += {printer.doprint(rest)}"
        if s.dtype in ("int32", "int64") and value.has(sp.floor, sp.ceiling):
            # math.floor/ceil return an int on the CPU but a float in CUDA kernels, and a float cannot
            # index an array there (random_shift2d's offsets): say the dtype.
            return f"{s.var} = {NP_TYPE[s.dtype]}({printer.doprint(value)})"
        return f"{s.var} = {printer.doprint(value)}"

    def store(self, s) -> str:
        target = self.element(s.buffer, s.index)
        value = self.value(s.value, s.buffer.dtype)
        if s.reduce == "add":
            return f"{target} += {value}" if s.exact else f"{target} = {store_cast(f'{target} + {value}', s.buffer.dtype)}"
        if s.reduce in ("max", "min"):
            cmp = ">" if s.reduce == "max" else "<"
            # NaN propagates, as in NumPy's reductions.
            value = f"{value} if ({value} {cmp} {target} or {value} != {value}) else {target}"
        elif s.reduce is not None:  # pragma: no cover
            raise ValueError(f"unknown reduction {s.reduce!r}")
        return f"{target} = {value if s.exact else store_cast(value, s.buffer.dtype)}"

    def value(self, expr, dtype: str) -> str:
        if dtype == "bool" and expr.is_number:
            return "True" if expr != 0 else "False"
        return self.printer(dtype).doprint(expr)
