"""The legacy Mersenne Twister in LLVM IR: what ``np.random.seed(s); np.random.random_sample()`` draws.

The state is ``MT_WORDS`` uint32 words: the 624 words of MT19937, then the index of the next word to
temper (624: regenerate first), as graphc/backends/numba_cuda/runtime.py's ``mt_seed`` /
``mt_random_sample`` keep it. The module gets two external functions (the entry ABI's):

    void   graphc_mt_seed(uint32_t *rng, uint32_t seed)   init_genrand, as np.random.seed(seed)
    double graphc_mt_uniform(uint32_t *rng)               genrand_res53, as random_sample()

uint32 arithmetic is i32 arithmetic (wrapping multiplication and addition, logical shifts).
"""
from __future__ import annotations

import llvmlite.ir as ir

from .scalar import DOUBLE, I32

MT_WORDS = 625
_N = 624
_M = 397
SEED = "graphc_mt_seed"
UNIFORM = "graphc_mt_uniform"


def _c(value: int) -> ir.Constant:
    return ir.Constant(I32, value)


def _counted_loop(builder: ir.IRBuilder, count: int, name: str, body) -> None:
    """``for i in range(count): body(builder, i)`` (i: an i32 phi)."""
    fn = builder.function
    head, loop, done = fn.append_basic_block(f"{name}"), fn.append_basic_block(f"{name}.body"), fn.append_basic_block(f"{name}.end")
    start = builder.block
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(I32, name=f"{name}.i")
    i.add_incoming(_c(0), start)
    builder.cbranch(builder.icmp_unsigned("<", i, _c(count)), loop, done)
    builder.position_at_end(loop)
    body(builder, i)
    i.add_incoming(builder.add(i, _c(1)), builder.block)
    builder.branch(head)
    builder.position_at_end(done)


def _word(builder: ir.IRBuilder, mt: ir.Value, i) -> ir.Value:
    """The address of word ``i`` (an i32 value or an int)."""
    index = i if isinstance(i, ir.Value) else _c(i)
    return builder.gep(mt, [index], inbounds=True)


def _define_seed(module: ir.Module) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I32.as_pointer(), I32]), SEED)
    fn.args[0].name, fn.args[1].name = "rng", "seed"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mt, seed = fn.args
    s_slot = b.alloca(I32, name="s")
    b.store(seed, s_slot)

    def body(b: ir.IRBuilder, i: ir.Value) -> None:
        # mt[i] = s; s = 1812433253 * (s ^ (s >> 30)) + i + 1   (mod 2**32)
        s = b.load(s_slot)
        b.store(s, _word(b, mt, i))
        mixed = b.mul(_c(1812433253), b.xor(s, b.lshr(s, _c(30))))
        b.store(b.add(b.add(mixed, i), _c(1)), s_slot)

    _counted_loop(b, _N, "init", body)
    b.store(_c(_N), _word(b, mt, _N))
    b.ret_void()
    return fn


def _define_regenerate(module: ir.Module) -> ir.Function:
    """The next 624 words in place (mt19937_gen): word i from words i, i+1 and i+397 (mod 624), in order,
    so each reads what the reference's three loops read."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I32.as_pointer()]), "graphc_mt_regenerate")
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mt = fn.args[0]

    def body(b: ir.IRBuilder, i: ir.Value) -> None:
        i1 = b.urem(b.add(i, _c(1)), _c(_N))
        im = b.urem(b.add(i, _c(_M)), _c(_N))
        y = b.or_(b.and_(b.load(_word(b, mt, i)), _c(0x80000000)), b.and_(b.load(_word(b, mt, i1)), _c(0x7FFFFFFF)))
        word = b.xor(b.load(_word(b, mt, im)), b.lshr(y, _c(1)))
        odd = b.icmp_unsigned("!=", b.and_(y, _c(1)), _c(0))
        word = b.select(odd, b.xor(word, _c(0x9908B0DF)), word)
        b.store(word, _word(b, mt, i))

    _counted_loop(b, _N, "twist", body)
    b.ret_void()
    return fn


def _define_next(module: ir.Module, regenerate: ir.Function) -> ir.Function:
    """The next tempered 32-bit word (genrand_int32)."""
    fn = ir.Function(module, ir.FunctionType(I32, [I32.as_pointer()]), "graphc_mt_next")
    fn.linkage = "internal"
    entry, refill, draw = (fn.append_basic_block(n) for n in ("entry", "refill", "draw"))
    b = ir.IRBuilder(entry)
    mt = fn.args[0]
    pos = b.load(_word(b, mt, _N))
    b.cbranch(b.icmp_unsigned(">=", pos, _c(_N)), refill, draw)
    b.position_at_end(refill)
    b.call(regenerate, [mt])
    b.branch(draw)
    b.position_at_end(draw)
    at = b.phi(I32, name="pos")
    at.add_incoming(pos, entry)
    at.add_incoming(_c(0), refill)
    y = b.load(_word(b, mt, at))
    b.store(b.add(at, _c(1)), _word(b, mt, _N))
    y = b.xor(y, b.lshr(y, _c(11)))
    y = b.xor(y, b.and_(b.shl(y, _c(7)), _c(0x9D2C5680)))
    y = b.xor(y, b.and_(b.shl(y, _c(15)), _c(0xEFC60000)))
    y = b.xor(y, b.lshr(y, _c(18)))
    b.ret(y)
    return fn


def _define_uniform(module: ir.Module, next_word: ir.Function) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(DOUBLE, [I32.as_pointer()]), UNIFORM)
    fn.args[0].name = "rng"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    a = b.lshr(b.call(next_word, [fn.args[0]]), _c(5))
    c = b.lshr(b.call(next_word, [fn.args[0]]), _c(6))
    # (a * 2**26 + b) / 2**53: a 53-bit double in [0, 1), exactly as random_sample.
    value = b.fadd(b.fmul(b.uitofp(a, DOUBLE), ir.Constant(DOUBLE, 67108864.0)), b.uitofp(c, DOUBLE))
    b.ret(b.fmul(value, ir.Constant(DOUBLE, 1.0 / 9007199254740992.0)))
    return fn


def define_mt19937(module: ir.Module) -> tuple[ir.Function, ir.Function]:
    """(graphc_mt_seed, graphc_mt_uniform) in ``module``, defined once (later calls return them)."""
    if SEED in module.globals:
        return module.globals[SEED], module.globals[UNIFORM]
    seed = _define_seed(module)
    uniform = _define_uniform(module, _define_next(module, _define_regenerate(module)))
    return seed, uniform
