"""Scalar code for the llvm target: a kernel-IR SymPy expression built as llvmlite IR instructions.

Extends SymPy's :class:`~sympy.printing.llvmjitcode.LLVMJitPrinter` (which knows doubles only) with the
scalar semantics every graphc target shares (``graphc/backends/numba_scalar.py``'s ScalarPrinter, the
reference backend's NumPy code being the oracle):

* a float32 kernel computes in ``float``, a float64 one in ``double``, integer (index) expressions in
  ``i64``; literals carry the type they are computed in; a low-precision SymPy Float means its decimal text;
* ``x**2..4`` are products, ``x**-1`` is ``1/x``, ``x**0.5`` is sqrt, ``x**-0.5`` is ``1/sqrt(x)``; any other
  power is ``llvm.pow``, NaN for a negative base with a finite non-integer exponent (graphc's pow);
* sign (NaN for NaN), frac (``x - floor(x)``, Python's ``x % 1``), Abs, NaN-propagating Max/Min (NumPy's
  maximum), Piecewise as nested selects (NaN when no branch applies), IsNaN, float32()/float64() casts;
* integer ``floor(p/q)`` is a floor division and ``Mod`` Python's floor modulo (seeds, indices);
* libm functions through LLVM intrinsics where LLVM has one (exp, log, sqrt, sin, cos, ...: O3 vectorizes
  them), otherwise as external declarations (``erff``/``erf``).
"""
from __future__ import annotations

import math
from typing import Callable

import llvmlite.binding as llvm_binding
import llvmlite.ir as ir
import numpy as np
import sympy as sp
from sympy.logic.boolalg import Boolean, BooleanFalse, BooleanTrue

from ...ir import GraphcError
from . import mathf


def _llvmjit_printer_class() -> type:
    """SymPy's LLVMJitPrinter. Its module calls ``llvmlite.binding.initialize()`` on import, which llvmlite
    >= 0.45 refuses (initialization is automatic there): the call is made a no-op while SymPy imports it."""
    original = llvm_binding.initialize
    llvm_binding.initialize = lambda: None
    try:
        from sympy.printing.llvmjitcode import LLVMJitPrinter
    finally:
        llvm_binding.initialize = original
    return LLVMJitPrinter


LLVMJitPrinter = _llvmjit_printer_class()

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
FLOAT = ir.FloatType()
DOUBLE = ir.DoubleType()

#: dtype name -> the LLVM type of one element in memory (bool is a byte, as NumPy's).
MEMORY_TYPE: dict[str, ir.Type] = {"float32": FLOAT, "float64": DOUBLE, "int64": I64, "int32": I32,
                                   "int16": ir.IntType(16), "int8": I8, "uint8": I8, "bool": I8}
#: dtype name -> the type a kernel computes that dtype's expressions in.
COMPUTE_TYPE: dict[str, ir.Type] = {"float32": FLOAT, "float64": DOUBLE, "bool": I1}

#: SymPy function -> LLVM intrinsic (O3 vectorizes these; libm's functions otherwise).
INTRINSICS = {"exp": "llvm.exp", "log": "llvm.log", "sin": "llvm.sin", "cos": "llvm.cos", "tan": "llvm.tan",
              "sinh": "llvm.sinh", "cosh": "llvm.cosh", "tanh": "llvm.tanh", "asin": "llvm.asin",
              "acos": "llvm.acos", "atan": "llvm.atan", "floor": "llvm.floor", "ceiling": "llvm.ceil",
              "Abs": "llvm.fabs"}
#: float32 functions built inline (mathf.py) instead: vectorizable, and the numbers the cpu runtime computes.
F32_INLINE = {"exp": mathf.exp_f32, "tanh": mathf.tanh_f32}
#: SymPy function -> libm's double function (the float one has an "f" suffix).
LIBM = {"erf": "erf", "erfc": "erfc", "asinh": "asinh", "acosh": "acosh", "atanh": "atanh", "log1p": "log1p",
        "expm1": "expm1", "cbrt": "cbrt"}


class LLVMRenderError(GraphcError):
    """An expression or statement the llvm target cannot render (the op and the user's line are named)."""


def compute_type(dtype: str | None) -> ir.Type:
    """The type expressions of ``dtype`` are computed in: float/double for floats, i1 for bool, else i64."""
    return COMPUTE_TYPE.get(dtype or "", I64)


def is_float(ty: ir.Type) -> bool:
    return isinstance(ty, (ir.FloatType, ir.DoubleType))


class ScalarBuilder(LLVMJitPrinter):
    """Builds one expression's instructions at ``builder``'s position. ``variables(symbol) -> Value``
    gives each free symbol's current value (of whatever type it has: i1, i32, i64, float, double);
    ``fastmath`` are LLVM fast-math flags put on every floating-point instruction (none: IEEE)."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder, variables: Callable[[sp.Symbol], ir.Value],
                 fastmath: tuple[str, ...] = (), types: Callable[[sp.Symbol], ir.Type] | None = None):
        super().__init__(module, builder, builder.block.parent if builder.block is not None else None)
        self.variables = variables
        #: A variable's type without reading it (the renderer's stack slots: no load just to ask).
        self.type_of = types or (lambda var: variables(var).type)
        self.fastmath = tuple(fastmath)
        self.fp_type: ir.Type = DOUBLE

    # -- entry point -----------------------------------------------------------------------------------
    def build(self, expr: sp.Basic, ty: ir.Type) -> ir.Value:
        """``expr`` computed in ``ty`` (float, double, i64; i1 for a truth value)."""
        saved = self.fp_type
        self.fp_type = ty
        try:
            if ty == I1:
                return self.truth(expr)
            if isinstance(expr, Boolean) and not isinstance(expr, sp.Symbol):
                return self.convert(self.truth(expr), ty)
            if not is_float(ty) and self._float_valued(expr):
                # An integer result of a float expression (an Assign to int64 of floor(u*5) - 2 is not one:
                # floor gives an integer) is computed in double and truncated, as NumPy's astype does.
                return self.convert(self.build(expr, DOUBLE), ty)
            return self._print(expr)
        finally:
            self.fp_type = saved

    def convert(self, value: ir.Value, ty: ir.Type) -> ir.Value:
        """``value`` converted to ``ty`` as NumPy's astype does (bool: != 0; floats to ints: truncation)."""
        src = value.type
        if src == ty:
            return value
        b = self.builder
        if ty == I1:
            if is_float(src):
                return self._flagged(b.fcmp_unordered("!=", value, ir.Constant(src, 0.0)))
            return b.icmp_signed("!=", value, ir.Constant(src, 0))
        if is_float(ty):
            if src == I1:
                return b.uitofp(value, ty)
            if isinstance(src, ir.IntType):
                return b.sitofp(value, ty)
            return b.fptrunc(value, ty) if ty == FLOAT else b.fpext(value, ty)
        if src == I1:
            return b.zext(value, ty)
        if isinstance(src, ir.IntType):
            return b.trunc(value, ty) if src.width > ty.width else b.sext(value, ty)
        return b.fptosi(value, ty)

    # -- what an expression is -------------------------------------------------------------------------
    def _float_valued(self, expr: sp.Basic) -> bool:
        """Whether ``expr`` has a non-integer value type: a float variable, a Float or fraction outside a
        floor/ceiling, a float function."""
        if isinstance(expr, sp.Symbol):  # first: a Symbol is a Boolean too, in SymPy
            return is_float(self.type_of(expr))
        if isinstance(expr, (sp.floor, sp.ceiling, Boolean)):
            return False
        if expr.is_Number or expr in (sp.oo, -sp.oo, sp.nan) or isinstance(expr, sp.NumberSymbol):
            return not expr.is_Integer
        if isinstance(expr, sp.Pow) and not (expr.exp.is_Integer and int(expr.exp) >= 0):
            return True
        if isinstance(expr, (sp.Mod, sp.Add, sp.Mul, sp.Pow, sp.Max, sp.Min, sp.Abs, sp.sign, sp.Piecewise)):
            parts = [a.expr if isinstance(a, sp.functions.elementary.piecewise.ExprCondPair) else a
                     for a in expr.args]
            return any(self._float_valued(a) for a in parts)
        return True  # exp, log, casts, ...: float functions

    # -- helpers -----------------------------------------------------------------------------------------
    def _flagged(self, instr):
        """``instr`` with the program's fast-math flags when it is floating-point (arithmetic or fcmp): LLVM
        rejects the flags on integer arithmetic (index math, integer-valued expressions)."""
        if self.fastmath and (is_float(instr.type) or instr.opname == "fcmp"):
            instr.flags.extend(f for f in self.fastmath if f not in instr.flags)
        return instr

    def _const(self, value: float | int) -> ir.Constant:
        if is_float(self.fp_type):
            if self.fp_type == FLOAT and math.isfinite(value):
                value = float(np.float32(value))
            return ir.Constant(self.fp_type, float(value))
        return ir.Constant(self.fp_type, int(value))

    def _operand(self, expr: sp.Basic) -> ir.Value:
        return self.convert(self._print(expr), self.fp_type)

    def _intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        fn = self.module.declare_intrinsic(name, [args[0].type])
        return self._call(fn, list(args))

    def _call(self, fn, args):
        # fast-math flags belong on calls returning a float only (llvm.smax and the like are integer calls)
        fastmath = self.fastmath if is_float(fn.function_type.return_type) else ()
        return self.builder.call(fn, args, fastmath=fastmath)

    def _libm(self, name: str, arg: ir.Value) -> ir.Value:
        ty = arg.type
        symbol = name + ("f" if ty == FLOAT else "")
        fn = self.module.globals.get(symbol)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty]), symbol)
            fn.attributes.add("nounwind")
        return self._call(fn, [arg])

    def _float_arg(self, expr: sp.Basic) -> ir.Value:
        """A float function's argument: in the kernel's float type, double in an integer expression."""
        ty = self.fp_type if is_float(self.fp_type) else DOUBLE
        return self.convert(self.build(expr, ty), ty)

    def _result(self, value: ir.Value) -> ir.Value:
        return self.convert(value, self.fp_type)

    def _nan(self) -> ir.Value:
        ty = self.fp_type if is_float(self.fp_type) else DOUBLE
        return ir.Constant(ty, float("nan"))

    def _select(self, cond: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        if a.type != b.type:  # a NaN branch in an integer expression: the value is a float
            ty = DOUBLE if not is_float(a.type) and not is_float(b.type) else (a.type if is_float(a.type) else b.type)
            a, b = self.convert(a, ty), self.convert(b, ty)
        return self.builder.select(cond, a, b)

    # -- atoms -------------------------------------------------------------------------------------------
    def _print_Symbol(self, s):
        return self.variables(s)

    def _print_Float(self, expr):
        # A low-precision Float (the passes write float32 constants with 9 digits) means its decimal text.
        value = float(str(expr)) if getattr(expr, "_prec", 53) < 53 else float(expr)
        return self._const(value) if is_float(self.fp_type) else ir.Constant(DOUBLE, value)

    def _print_Integer(self, expr):
        return self._const(int(expr))

    def _print_Rational(self, expr):
        return self._const(float(expr)) if is_float(self.fp_type) else ir.Constant(DOUBLE, float(expr))

    _print_Half = _print_Rational

    def _print_NumberSymbol(self, expr):
        return self._print_Rational(expr)

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, expr):
        return ir.Constant(self.fp_type if is_float(self.fp_type) else DOUBLE, math.inf)

    def _print_NegativeInfinity(self, expr):
        return ir.Constant(self.fp_type if is_float(self.fp_type) else DOUBLE, -math.inf)

    def _print_NaN(self, expr):
        return self._nan()

    def _print_Number(self, n):
        return self._print_Rational(n)

    # -- arithmetic -------------------------------------------------------------------------------------
    def _fold(self, expr, fop: str, iop: str):
        values = [self._operand(a) for a in expr.args]
        if not is_float(self.fp_type) and any(is_float(v.type) for v in values):
            values = [self.convert(v, DOUBLE) for v in values]
        ty = values[0].type
        op = fop if is_float(ty) else iop
        out = values[0]
        for v in values[1:]:
            out = self._flagged(getattr(self.builder, op)(out, self.convert(v, ty)))
        return out

    def _print_Add(self, expr):
        # a + (-1)*b as one subtraction (the same IEEE result as adding -b, one instruction fewer to read)
        minus = [a for a in expr.args if isinstance(a, sp.Mul) and len(a.args) == 2 and a.args[0] == -1]
        plus = [a for a in expr.args if a not in minus]
        if not minus or not plus:
            return self._fold(expr, "fadd", "add")
        out = self._print_Add(sp.Add(*plus, evaluate=False)) if len(plus) > 1 else self._operand(plus[0])
        for m in minus:
            value = self._operand(m.args[1])
            if is_float(out.type) or is_float(value.type):
                ty = out.type if is_float(out.type) else value.type
                out = self._flagged(self.builder.fsub(self.convert(out, ty), self.convert(value, ty)))
            else:
                out = self.builder.sub(out, value)
        return out

    def _print_Mul(self, expr):
        # A division written as x * y**-1 (lowering.ir.divided): one fdiv, as x / y rounds.
        num = [a for a in expr.args if not (isinstance(a, sp.Pow) and a.exp == -1)]
        den = [a.base for a in expr.args if isinstance(a, sp.Pow) and a.exp == -1]
        if den and num and is_float(self.fp_type):
            top = self._print_Mul(sp.Mul(*num, evaluate=False)) if len(num) > 1 else self._operand(num[0])
            for d in den:
                top = self._flagged(self.builder.fdiv(top, self._operand(d)))
            return top
        if len(expr.args) == 2 and expr.args[0] == -1:  # -x
            x = self._operand(expr.args[1])
            return self._flagged(self.builder.fneg(x)) if is_float(x.type) else self.builder.neg(x)
        return self._fold(expr, "fmul", "mul")

    def _print_Pow(self, expr):
        base, exp = expr.as_base_exp()
        if not is_float(self.fp_type):
            if exp.is_Integer and 0 <= int(exp) <= 8:
                out = ir.Constant(self.fp_type, 1)
                for _ in range(int(exp)):
                    out = self.builder.mul(out, self._operand(base))
                return out
            return self.build(expr, DOUBLE)
        b = self._operand(base)
        one = self._const(1)
        if exp.is_Integer and 2 <= int(exp) <= 4:
            out = b
            for _ in range(int(exp) - 1):
                out = self._flagged(self.builder.fmul(out, b))
            return out
        if exp == -1:
            return self._flagged(self.builder.fdiv(one, b))
        if exp == sp.Rational(1, 2) or exp == sp.Float(0.5):
            return self._intrinsic("llvm.sqrt", b)
        if exp == -sp.Rational(1, 2):
            return self._flagged(self.builder.fdiv(one, self._intrinsic("llvm.sqrt", b)))
        e = self._operand(exp)
        power = self._intrinsic("llvm.pow", b, e)
        if exp.is_number:
            value = float(exp)
            if not math.isfinite(value) or value == int(value):
                return power
            undefined = self._flagged(self.builder.fcmp_ordered("<", b, self._const(0)))
        else:
            # graphc's pow (graphc.ops.elementwise.numpy_power): a negative base (-inf included) with a
            # finite non-integer exponent is NaN.
            negative = self._flagged(self.builder.fcmp_ordered("<", b, self._const(0)))
            fraction = self._flagged(self.builder.fcmp_unordered("!=", self._flagged(self.builder.frem(e, one)),
                                                                 self._const(0)))
            finite = self._flagged(self.builder.fcmp_ordered("<", self._intrinsic("llvm.fabs", e),
                                                             ir.Constant(e.type, math.inf)))
            undefined = self.builder.and_(negative, self.builder.and_(fraction, finite))
        return self.builder.select(undefined, self._nan(), power)

    def _print_Mod(self, expr):
        a, q = expr.args
        if is_float(self.fp_type) or self._float_valued(expr):
            ty = self.fp_type if is_float(self.fp_type) else DOUBLE
            x, y = (self.convert(self.build(v, ty), ty) for v in (a, q))
            return self._result(self._float_mod(x, y))
        x, y = self._operand(a), self._operand(q)
        r = self.builder.srem(x, y)
        # Python's modulo takes the divisor's sign: r + q when r and q have opposite signs.
        fix = self.builder.and_(self.builder.icmp_signed("!=", r, ir.Constant(r.type, 0)),
                                self.builder.icmp_signed("<", self.builder.xor(r, y), ir.Constant(r.type, 0)))
        return self.builder.select(fix, self.builder.add(r, y), r)

    def _float_mod(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """Python's float ``x % y`` (NumPy's mod): the result has the divisor's sign."""
        b = self.builder
        r = self._flagged(b.frem(x, y))
        zero = ir.Constant(x.type, 0.0)
        opposite = b.and_(self._flagged(b.fcmp_ordered("!=", r, zero)),
                          b.xor(self._flagged(b.fcmp_ordered("<", r, zero)), self._flagged(b.fcmp_ordered("<", y, zero))))
        return b.select(opposite, self._flagged(b.fadd(r, y)), r)

    def _print_floor(self, expr):
        return self._rounding(expr, "llvm.floor")

    def _print_ceiling(self, expr):
        return self._rounding(expr, "llvm.ceil")

    def _rounding(self, expr, intrinsic: str):
        arg = expr.args[0]
        if not is_float(self.fp_type) and intrinsic == "llvm.floor":
            p, q = sp.fraction(sp.together(arg))
            if q.is_Integer and q != 1 and not self._float_valued(p):
                return self._floor_div(self._operand(p), ir.Constant(self.fp_type, int(q)))
        if not is_float(self.fp_type) and not self._float_valued(arg):
            return self._operand(arg)
        return self._result(self._intrinsic(intrinsic, self._float_arg(arg)))

    def _floor_div(self, p: ir.Value, q: ir.Value) -> ir.Value:
        """``p // q`` of integers (rounding toward -inf, as the interpreter's exact floor)."""
        b = self.builder
        d = b.sdiv(p, q)
        r = b.srem(p, q)
        fix = b.and_(b.icmp_signed("!=", r, ir.Constant(r.type, 0)),
                     b.icmp_signed("<", b.xor(r, q), ir.Constant(r.type, 0)))
        return b.sub(d, b.zext(fix, d.type))

    def _print_frac(self, expr):
        x = self._float_arg(expr.args[0])
        return self._result(self._float_mod(x, ir.Constant(x.type, 1.0)))

    def _print_Abs(self, expr):
        if not is_float(self.fp_type) and not self._float_valued(expr.args[0]):
            x = self._operand(expr.args[0])
            return self.builder.select(self.builder.icmp_signed("<", x, ir.Constant(x.type, 0)), self.builder.neg(x), x)
        return self._result(self._intrinsic("llvm.fabs", self._float_arg(expr.args[0])))

    def _print_sign(self, expr):
        # np.sign: 1, -1, 0 for zero, NaN for NaN (x itself in the last branch covers both).
        if not is_float(self.fp_type) and not self._float_valued(expr.args[0]):
            x = self._operand(expr.args[0])
            one, zero = ir.Constant(x.type, 1), ir.Constant(x.type, 0)
            return self.builder.select(self.builder.icmp_signed(">", x, zero), one, self.builder.select(
                self.builder.icmp_signed("<", x, zero), ir.Constant(x.type, -1), x))
        x = self._float_arg(expr.args[0])
        one, zero = ir.Constant(x.type, 1.0), ir.Constant(x.type, 0.0)
        b = self.builder
        return self._result(b.select(self._flagged(b.fcmp_ordered(">", x, zero)), one,
                                     b.select(self._flagged(b.fcmp_ordered("<", x, zero)), ir.Constant(x.type, -1.0), x)))

    def _extremum(self, expr, cmp: str):
        # NaN-propagating as numpy.maximum / the `maximum` op: a if (a cmp b or isnan(a)) else b.
        values = [self._operand(a) for a in expr.args]
        if not is_float(self.fp_type) and any(is_float(v.type) for v in values):
            values = [self.convert(v, DOUBLE) for v in values]
        out = values[0]
        b = self.builder
        for v in values[1:]:
            v = self.convert(v, out.type)
            if is_float(out.type):
                keep = b.or_(self._flagged(b.fcmp_ordered(cmp, out, v)), self._flagged(b.fcmp_unordered("uno", out, out)))
            else:
                keep = b.icmp_signed(cmp, out, v)
            out = b.select(keep, out, v)
        return out

    def _print_Max(self, expr):
        return self._extremum(expr, ">=")

    def _print_Min(self, expr):
        return self._extremum(expr, "<=")

    def _print_Piecewise(self, expr):
        pieces = list(expr.args)
        if pieces[-1].cond == sp.true:
            out = self._operand(pieces.pop().expr)
        else:
            out = self._nan()  # no branch applies: NaN
        for e, c in reversed(pieces):
            out = self._select(self.truth(c), self._operand(e), out)
        return self._result(out) if out.type != self.fp_type and is_float(self.fp_type) else out

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name in ("float32", "float64"):  # graphc.ops.elementwise.CAST_FUNCTIONS: a rounding, a value
            ty = FLOAT if name == "float32" else DOUBLE
            return self._result(self.convert(self.build(expr.args[0], ty), ty))
        if name in F32_INLINE and self.fp_type == FLOAT:
            return F32_INLINE[name](self.builder, self._float_arg(expr.args[0]))
        if name in INTRINSICS:
            return self._result(self._intrinsic(f"{INTRINSICS[name]}", self._float_arg(expr.args[0])))
        if name in LIBM:
            return self._result(self._libm(LIBM[name], self._float_arg(expr.args[0])))
        if name == "IsNaN":
            return self.convert(self.truth(expr), self.fp_type)
        raise LLVMRenderError(f"llvm target: no scalar code for {expr.func}() in {expr}")

    def _print_log(self, expr):
        return self._print_Function(expr)

    def _print_exp(self, expr):
        return self._print_Function(expr)

    # -- truth values ------------------------------------------------------------------------------------
    def truth(self, expr: sp.Basic) -> ir.Value:
        """``expr`` as an i1 (relations, And/Or/Not, IsNaN, or a value != 0)."""
        b = self.builder
        if isinstance(expr, BooleanTrue) or expr is True:
            return ir.Constant(I1, 1)
        if isinstance(expr, BooleanFalse) or expr is False:
            return ir.Constant(I1, 0)
        if isinstance(expr, sp.And):
            out = self.truth(expr.args[0])
            for a in expr.args[1:]:
                out = b.and_(out, self.truth(a))
            return out
        if isinstance(expr, sp.Or):
            out = self.truth(expr.args[0])
            for a in expr.args[1:]:
                out = b.or_(out, self.truth(a))
            return out
        if isinstance(expr, sp.Not):
            return b.not_(self.truth(expr.args[0]))
        if isinstance(expr, sp.Xor):
            out = self.truth(expr.args[0])
            for a in expr.args[1:]:
                out = b.xor(out, self.truth(a))
            return out
        if isinstance(expr, sp.ITE):  # SymPy's if-then-else of truth values (a simplified Piecewise makes them)
            return b.select(*(self.truth(a) for a in expr.args))
        if type(expr).__name__ == "IsNaN":
            x = self._comparand(expr.args[0], (expr.args[0],))
            if not is_float(x.type):
                return ir.Constant(I1, 0)
            return self._flagged(b.fcmp_unordered("uno", x, x))
        if isinstance(expr, sp.core.relational.Relational):
            return self._relation(expr)
        if isinstance(expr, sp.Symbol):
            return self.convert(self.variables(expr), I1)
        if isinstance(expr, Boolean):  # printing it would come back here (_print_Boolean)
            raise LLVMRenderError(f"llvm target: no code for the truth value {type(expr).__name__} ({expr})")
        saved = self.fp_type
        self.fp_type = DOUBLE if self._float_valued(expr) else I64
        try:
            return self.convert(self._print(expr), I1)
        finally:
            self.fp_type = saved

    def _comparand(self, expr: sp.Basic, both: tuple) -> ir.Value:
        """One side of a comparison: in the kernel's float type if it computes in one, else in double when
        either side is float-valued, else i64."""
        if is_float(self.fp_type):
            ty = self.fp_type
        elif any(self._float_valued(e) for e in both):
            ty = self._float_width(both)
        else:
            ty = I64
        return self.convert(self.build(expr, ty), ty)

    def _float_width(self, exprs) -> ir.Type:
        """float when every float variable among ``exprs`` is a float (no double one), else double."""
        kinds = {self.type_of(s) for e in exprs for s in e.free_symbols}
        floats = {k for k in kinds if is_float(k)}
        return FLOAT if floats == {FLOAT} else DOUBLE

    _FCMP = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}

    def _relation(self, expr) -> ir.Value:
        lhs, rhs = expr.args
        op = expr.rel_op
        a, c = self._comparand(lhs, (lhs, rhs)), self._comparand(rhs, (lhs, rhs))
        if is_float(a.type):
            if op == "!=":  # NaN != anything is true, as in NumPy
                return self._flagged(self.builder.fcmp_unordered("!=", a, c))
            return self._flagged(self.builder.fcmp_ordered(self._FCMP[op], a, c))
        return self.builder.icmp_signed(op, a, c)

    def _print_Boolean(self, expr):
        return self.convert(self.truth(expr), self.fp_type)

    def emptyPrinter(self, expr):
        raise LLVMRenderError(f"llvm target: no scalar code for {type(expr).__name__} ({expr})")
