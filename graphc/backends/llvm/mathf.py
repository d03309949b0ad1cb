"""Vectorizable float32 math as inline LLVM IR: ``tanh_f32(builder, v)`` and ``exp_f32(builder, v)``.

A libm call per element (~9 ns for tanhf) also keeps LLVM from vectorizing the loop around it. These are
emitted inline instead, so both CPU targets vectorize them: the llvm target's scalar builder for float32
``tanh`` and ``exp``, and the cpu runtime's Numba intrinsics of the same names (numba_cpu/runtime.py), so
the Numba and the llvm drivers compute the same numbers.

* tanh_f32 is the rational approximation XLA and Eigen use for float32 (at most a few ulp from the correctly
  rounded result); NaN stays NaN, +-inf gives +-1.
* exp_f32 is Cephes' expf (range reduction by n*ln2 in two parts, degree-5 polynomial); 2**n is built in two
  halves so that n = 128 (x near the top of the range) and the subnormal results stay right. Overflow gives
  inf, underflow 0 or a subnormal, NaN stays NaN.
"""
from __future__ import annotations

from llvmlite import ir

_TANH_CLAMP = 7.90531110763549805  # the approximation's range: beyond it, its value at the clamp (1 - 2.4e-7)
#: Beyond 13 ln 2, 1 - tanh(x) < 2**-25 (half an ulp below 1): the correctly rounded float32 tanh is exactly +-1,
#: as NumPy's is. (The rational approximation clamped at 7.9 gives 0.99999976 there, so tanh(inf) was not 1,
#: tanh'(inf) = 1 - tanh^2 was 4.8e-7 instead of 0, and inf * tanh'(inf) was inf instead of NumPy's NaN.)
_TANH_ONE = 9.01091334
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)

_EXP_HI, _EXP_LO = 88.72283935546875, -103.97283935546875
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)

_F = ir.FloatType()
_I32 = ir.IntType(32)
_FLAGS = ("contract",)


def _const(c: float) -> ir.Constant:
    return ir.Constant(_F, c)


def tanh_f32(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh of the float ``x``, built at ``builder``."""
    # Ordered comparisons keep NaN: neither clamp fires.
    v = builder.select(builder.fcmp_ordered("<", x, _const(-_TANH_CLAMP)), _const(-_TANH_CLAMP), x)
    v = builder.select(builder.fcmp_ordered(">", v, _const(_TANH_CLAMP)), _const(_TANH_CLAMP), v)
    x2 = builder.fmul(v, v, flags=_FLAGS)

    def horner(coefficients):
        acc = _const(coefficients[0])
        for c in coefficients[1:]:
            acc = builder.fadd(builder.fmul(acc, x2, flags=_FLAGS), _const(c), flags=_FLAGS)
        return acc

    p = builder.fmul(horner(_TANH_P), v, flags=_FLAGS)
    y = builder.fdiv(p, horner(_TANH_Q))
    # Saturate to exactly +-1 (ordered comparisons: NaN stays NaN).
    y = builder.select(builder.fcmp_ordered(">", x, _const(_TANH_ONE)), _const(1.0), y)
    return builder.select(builder.fcmp_ordered("<", x, _const(-_TANH_ONE)), _const(-1.0), y)


def exp_f32(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """exp of the float ``v``, built at ``builder``."""
    floor = builder.module.declare_intrinsic("llvm.floor", [_F])
    t = builder.select(builder.fcmp_ordered(">", v, _const(_EXP_HI)), _const(_EXP_HI), v)
    t = builder.select(builder.fcmp_ordered("<", t, _const(_EXP_LO)), _const(_EXP_LO), t)
    n = builder.call(floor, [builder.fadd(builder.fmul(t, _const(1.44269504088896341)), _const(0.5))])
    r = builder.fsub(builder.fsub(t, builder.fmul(n, _const(0.693359375))), builder.fmul(n, _const(-2.12194440e-4)))
    p = _const(_EXP_P[0])
    for c in _EXP_P[1:]:
        p = builder.fadd(builder.fmul(p, r, flags=_FLAGS), _const(c), flags=_FLAGS)
    y = builder.fadd(builder.fadd(builder.fmul(p, builder.fmul(r, r)), r), _const(1.0))
    k = builder.fptosi(n, _I32)
    half = builder.ashr(k, ir.Constant(_I32, 1))

    def pow2(e):
        return builder.bitcast(builder.shl(builder.add(e, ir.Constant(_I32, 127)), ir.Constant(_I32, 23)), _F)

    y = builder.fmul(builder.fmul(y, pow2(half)), pow2(builder.sub(k, half)))
    y = builder.select(builder.fcmp_ordered(">", v, _const(_EXP_HI)), _const(float("inf")), y)
    y = builder.select(builder.fcmp_ordered("<", v, _const(_EXP_LO)), _const(0.0), y)
    return builder.select(builder.fcmp_unordered("uno", v, v), v, y)
