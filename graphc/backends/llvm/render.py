"""The llvm renderer: a lowered Program as one LLVM IR entry function (llvmlite), with the entry ABI

    int32_t SYMBOL(uint8_t *state, uint8_t *workspace, void *const *inputs, void *const *outputs,
                   int64_t *status, uint32_t *rng);

``state`` is the parameter store and ``workspace`` the scratch, laid out as the Program's buffers say; a
buffer of either is a ``getelementptr`` on the i8* base by its byte offset, bitcast to its element type;
``inputs[i]`` / ``outputs[i]`` are C-contiguous arrays. A failed Check writes (code, index, value) into
status[0..2] and returns the code; 0 is success. Seed/Draw call the module's MT19937 (random.py), a
Gemm the module's GEMM (gemm.py, one per dtype), a library Call is expanded into loops
(``lowering.library.expand_call``). With ``parallel_min_work`` (the cpu backend's llvm driver), a loop of chunks
(a convolution's, a pooling's: ``library.runs_in_parallel_chunks``) becomes an internal function of an
iteration range called through PARALLEL_FOR, which the loader defines and runs on several threads.

Scalars: every Assign/Load/Draw variable is a stack slot (``alloca`` in the entry block), which LLVM's
SROA turns into SSA values and loop phis (a variable may be assigned again: loop-carried accumulators);
loop counters are phis. Each kernel starts with a basic block named after its node (``k12_matmul``);
:func:`render_text` adds each kernel's title as a ``;`` comment before it. Floating-point code is IEEE
unless ``program.options["fastmath"]`` names LLVM fast-math flags.
"""
from __future__ import annotations

import contextlib
import re
from typing import Sequence

import llvmlite.ir as ir
import numpy as np
import sympy as sp

from ..lowering.ir import (
    COLLECTIVES,
    Assign,
    Buffer,
    Call,
    Check,
    Draw,
    Gemm,
    Kernel,
    Load,
    Loop,
    Program,
    Ref,
    Seed,
    Store,
    is_condition,
    outside_variables,
    walk,
)
from ..lowering.library import expand_call, runs_in_parallel_chunks
from .gemm import define_gemm
from .random import define_mt19937
from .scalar import I1, I8, I32, I64, MEMORY_TYPE, LLVMRenderError, ScalarBuilder, compute_type, is_float

#: The entry's parameters, in order.
ARGS = ("state", "workspace", "inputs", "outputs", "status", "rng")
#: A fused kernel's op lists every op it absorbed: its block name keeps the start (the title has it all).
BLOCK_OP_CHARS = 24
#: The function a module rendered with loops of chunks in parallel calls for each of them (the cpu backend's llvm driver
#: defines it: numba_cpu/sharing.py): ``graphc_parallel_for(range, state, workspace, inputs, outputs, n)`` runs
#: ``range(state, workspace, inputs, outputs, lo, hi)`` over [lo, hi) of [0, n), on the calling thread and, while
#: one runs, on a helper thread, each taking whole iterations.
PARALLEL_FOR = "graphc_parallel_for"


def range_type() -> ir.FunctionType:
    """An outlined parallel loop: ``void range(state, workspace, inputs, outputs, lo, hi)``."""
    i8p = I8.as_pointer()
    return ir.FunctionType(ir.VoidType(), [i8p, i8p, i8p.as_pointer(), i8p.as_pointer(), I64, I64])


def parallel_for_type() -> ir.FunctionType:
    i8p = I8.as_pointer()
    return ir.FunctionType(ir.VoidType(), [range_type().as_pointer(), i8p, i8p, i8p.as_pointer(), i8p.as_pointer(),
                                           I64])


class UnsupportedCallError(LLVMRenderError):
    """A library call the llvm target does not provide (allreduce_*: an export runs on one process)."""


def entry_type() -> ir.FunctionType:
    i8p = I8.as_pointer()
    return ir.FunctionType(I32, [i8p, i8p, i8p.as_pointer(), i8p.as_pointer(), I64.as_pointer(), I32.as_pointer()])


def block_name(kernel: Kernel) -> str:
    """The first basic block of ``kernel``: ``k<node>_<op>`` (``k12_matmul``, ``k7_fused_mul_relu``)."""
    op = re.sub(r"[^0-9A-Za-z]+", "_", kernel.op).strip("_")[:BLOCK_OP_CHARS].rstrip("_")
    return f"k{kernel.node}_{op}"


class Renderer:
    """Builds one Program's entry function into ``module``."""

    def __init__(self, program: Program, module: ir.Module, symbol: str, blas: str = "generated",
                 parallel_min_work: int | None = None):
        self.program = program
        #: The cost rule's threshold (ir.runs_chunks_in_parallel) when the loader provides PARALLEL_FOR; None:
        #: every loop runs inline, on the calling thread.
        self.parallel_min_work = parallel_min_work
        self.ranges = 0  # the parallel loops outlined so far
        self.module = module
        self.blas = blas
        self.fastmath = tuple(sorted(program.options.get("fastmath") or ()))
        self.fn = ir.Function(module, entry_type(), symbol)
        for arg, name in zip(self.fn.args, ARGS):
            arg.name = name
            arg.add_attribute("noalias")  # the stores, the pointer arrays, status and rng never overlap
            arg.add_attribute("captures(none)")
        self.entry = self.fn.append_basic_block("entry")
        self.setup = ir.IRBuilder(self.entry)  # allocas and buffer addresses, before the first kernel
        self.b = ir.IRBuilder()
        self.pointers: dict[int, ir.Value] = {}
        self.slots: dict[sp.Symbol, ir.Value] = {}
        self.counters: dict[sp.Symbol, ir.Value] = {}
        self.kernel: Kernel | None = None
        self.scalar = ScalarBuilder(module, self.b, self.value_of, self.fastmath, types=self.type_of)
        #: first block name -> the kernel's title (render_text's comments).
        self.titles: dict[str, str] = {}

    # -- the function ----------------------------------------------------------------------------------
    def render(self) -> ir.Function:
        kernels = self.program.checks + self.program.kernels
        first = None
        for kernel in kernels:
            block = self.fn.append_basic_block(block_name(kernel))
            self.titles[block.name] = kernel.title
            if first is None:
                first = block
            else:
                self.b.branch(block)
            self.b.position_at_end(block)
            self.kernel, self.slots, self.counters = kernel, {}, {}
            self.outer(kernel.body)
        done = self.fn.append_basic_block("done")
        if first is None:
            first = done
        else:
            self.b.branch(done)
        self.b.position_at_end(done)
        self.b.ret(ir.Constant(I32, 0))
        self.setup.branch(first)
        return self.fn

    # -- memory ----------------------------------------------------------------------------------------
    def pointer(self, buf: Buffer) -> ir.Value:
        """The address of ``buf``'s first element, typed (computed once, in the entry block)."""
        found = self.pointers.get(id(buf))
        if found is not None:
            return found
        s = self.setup
        ty = MEMORY_TYPE[buf.dtype].as_pointer()
        name = re.sub(r"\W", "_", buf.name)
        if buf.store in ("input", "output"):
            table = self.fn.args[2 if buf.store == "input" else 3]
            raw = s.load(s.gep(table, [ir.Constant(I64, buf.arg)], inbounds=True), name=f"{name}.addr")
        elif buf.store in ("state", "workspace"):
            base = self.fn.args[0 if buf.store == "state" else 1]
            nbytes = buf.offset * np.dtype(buf.dtype).itemsize
            raw = s.gep(base, [ir.Constant(I64, nbytes)], inbounds=True)
        else:
            raise self.error(f"buffer {buf.name} is in an unknown store {buf.store!r}")
        found = self.pointers[id(buf)] = s.bitcast(raw, ty, name=name)
        return found

    def address(self, buf: Buffer, index: sp.Expr) -> ir.Value:
        return self.b.gep(self.pointer(buf), [self.integer(index)], inbounds=True)

    def ref(self, ref: Ref) -> ir.Value:
        return self.address(ref.buffer, ref.offset)

    # -- variables ---------------------------------------------------------------------------------------
    def value_of(self, var: sp.Symbol) -> ir.Value:
        if var in self.counters:
            return self.counters[var]
        slot = self.slots.get(var)
        if slot is None:
            raise self.error(f"reads variable {var} before it is assigned")
        return self.b.load(slot)

    def type_of(self, var: sp.Symbol) -> ir.Type:
        if var in self.counters:
            return self.counters[var].type
        slot = self.slots.get(var)
        if slot is None:
            raise self.error(f"reads variable {var} before it is assigned")
        return slot.type.pointee

    def assign(self, var: sp.Symbol, value: ir.Value) -> None:
        slot = self.slots.get(var)
        if slot is None:
            slot = self.slots[var] = self.setup.alloca(value.type, name=str(var))
        self.b.store(self.scalar.convert(value, slot.type.pointee), slot)

    def integer(self, expr: sp.Expr) -> ir.Value:
        return self.scalar.build(sp.sympify(expr), I64)

    # -- statements --------------------------------------------------------------------------------------
    def outer(self, body: Sequence) -> None:
        """A kernel's outer statements: a loop of chunks the cost rule runs in parallel
        (``library.runs_in_parallel_chunks``: a convolution's, or the one its library call expands to first),
        reading no variable from before it, is outlined (:meth:`parallel`); the rest inline."""
        for s in body:
            if self.parallel_min_work is None or not runs_in_parallel_chunks(s, self.parallel_min_work):
                self.block([s])
            elif type(s) is Call:
                chunks, *rest = expand_call(s)
                self.parallel(chunks)
                self.block(rest)
            elif not outside_variables([s]):
                self.parallel(s)
            else:
                self.block([s])

    def parallel(self, s: Loop) -> None:
        """``s`` as an internal function ``<entry>.range<k>(state, workspace, inputs, outputs, lo, hi)`` running
        iterations lo..hi-1, called through PARALLEL_FOR."""
        k = self.ranges
        self.ranges += 1
        fn = self.function(f"range{k}", ("lo", "hi"), f"{self.kernel.title}: iterations lo..hi-1 of {s.var}, "
                                                      f"run in parallel")
        with self.inside(fn, {}):
            self.counted(s.var, fn.args[4], fn.args[5], lambda: self.chunk(s))
        runtime = self.module.globals.get(PARALLEL_FOR) or ir.Function(self.module, parallel_for_type(), PARALLEL_FOR)
        self.b.call(runtime, [fn, *self.fn.args[:4], ir.Constant(I64, s.extent)])

    def chunk(self, s: Loop) -> None:
        """One iteration of the parallel loop ``s``: a sequential loop of GEMMs in it (a chunk's images) calls a
        function per iteration (:meth:`iterations`), the rest inline."""
        # The counter modulo the extent (itself): its range known, LLVM tells the chunk's buffers apart (below).
        self.counters[s.var] = self.b.urem(self.counters[s.var], ir.Constant(I64, s.extent), name=f"{s.var}.known")
        for inner in s.body:
            if (type(inner) is Loop and not inner.parallel and any(type(x) is Gemm for x in walk(inner.body))
                    and outside_variables(inner.body) <= {s.var, inner.var}):
                self.iterations(inner, s, str(inner.var))
            else:
                self.block([inner])

    def iterations(self, loop: Loop, chunks: Loop, name: str) -> None:
        """``loop`` (inside the parallel loop ``chunks``) calling ``<entry>.<name>(state, workspace, inputs,
        outputs, chunk, iteration)``, a function of its body, once per iteration.

        Inline, every address of the body that depends on the chunk but not the iteration is an invariant of
        the loop (one per nest of an expanded im2col or col2im): LLVM kept dozens of them live across the loop
        and spilled them, which cost the LeNet-like step's compile +35% in LLVM (docs/performance.md). As a
        function, the body's addresses are computed from its arguments as a loop's are from its counter."""
        fn = self.function(name, (str(chunks.var), str(loop.var)), f"{self.kernel.title}: one iteration of "
                                                                     f"{loop.var} of a chunk")
        fn.attributes.add("noinline")  # inlined, its addresses would be the loop's invariants again
        # Each counter modulo its extent (itself): LLVM then knows its range, as a loop counter's, and tells the
        # buffers addressed through it apart; without it, col2im's loops were not vectorized.
        entry = ir.IRBuilder(fn.blocks[0])
        known = {var: entry.urem(arg, ir.Constant(I64, extent), name=str(var))
                 for var, extent, arg in ((chunks.var, chunks.extent, fn.args[4]), (loop.var, loop.extent, fn.args[5]))}
        with self.inside(fn, known):
            self.block(loop.body)
        self.counted(loop.var, ir.Constant(I64, 0), ir.Constant(I64, loop.extent),
                     lambda: self.b.call(fn, [*self.fn.args[:4], self.counters[chunks.var], self.counters[loop.var]]))

    def function(self, suffix: str, counters: Sequence[str], title: str) -> ir.Function:
        """A new internal function ``<entry>.<suffix>(state, workspace, inputs, outputs, *counters)`` (i64
        counters), its entry block (for its buffer addresses and stack slots) and a first block headed by
        ``title`` in the .ll text."""
        i8p = I8.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i8p.as_pointer(), i8p.as_pointer()] + [I64] * len(counters))
        fn = ir.Function(self.module, fnty, f"{self.fn.name}.{suffix}")
        fn.linkage = "internal"
        for arg, name in zip(fn.args, ARGS[:4] + tuple(f"{c}.arg" for c in counters)):
            arg.name = name
        for arg in fn.args[:4]:
            arg.add_attribute("noalias")
            arg.add_attribute("captures(none)")
        fn.append_basic_block("entry")
        first = fn.append_basic_block(f"k{self.kernel.node}_{suffix.replace('.', '_')}")
        self.titles[first.name] = title
        return fn

    @contextlib.contextmanager
    def inside(self, fn: ir.Function, counters: dict):
        """Render into ``fn`` (made by :meth:`function`) with ``counters`` (a counter of the caller's loops
        that ``fn`` reads is an argument), then back to where the caller was."""
        caller = self.fn, self.setup, self.pointers, self.slots, self.counters, self.b.block
        self.fn, self.pointers, self.slots, self.counters = fn, {}, {}, dict(counters)
        self.setup = ir.IRBuilder(fn.blocks[0])  # at its end: after what the caller put there
        self.b.position_at_end(fn.blocks[1])
        yield
        self.b.ret_void()
        self.setup.branch(fn.blocks[1])
        self.fn, self.setup, self.pointers, self.slots, self.counters, block = caller
        self.b.position_at_end(block)

    def block(self, body: Sequence) -> None:
        for s in body:
            kind = type(s)
            if kind is Loop:
                self.loop(s)
            elif kind is Load:
                self.load(s)
            elif kind is Assign:
                ty = I1 if is_condition(s.value) else compute_type(s.dtype)
                self.assign(s.var, self.scalar.build(s.value, ty))
            elif kind is Store:
                self.store(s)
            elif kind is Check:
                self.check(s)
            elif kind is Gemm:
                self.gemm(s)
            elif kind is Call:
                self.call(s)
            elif kind is Seed:
                seed, _ = define_mt19937(self.module)
                self.b.call(seed, [self.fn.args[5], self.b.trunc(self.integer(s.value), I32)])
            elif kind is Draw:
                _, uniform = define_mt19937(self.module)
                self.assign(s.var, self.b.call(uniform, [self.fn.args[5]]))
            else:
                raise self.error(f"unknown statement {s!r}")

    def loop(self, s: Loop) -> None:
        """A counted loop: ``var`` a phi from 0 to ``extent`` (nothing runs when extent <= 0)."""
        if s.extent > 0:
            self.counted(s.var, ir.Constant(I64, 0), ir.Constant(I64, s.extent), s.body)

    def counted(self, var: sp.Symbol, start: ir.Value, stop: ir.Value, body: Sequence) -> None:
        """``for var in range(start, stop): body``, for start < stop: ``var`` a phi."""
        b = self.b
        name = str(var)
        before = b.block
        head = b.append_basic_block(f"{name}.loop")
        b.branch(head)
        b.position_at_end(head)
        counter = b.phi(I64, name=name)
        counter.add_incoming(start, before)
        outer = self.counters.get(var)
        self.counters[var] = counter
        if callable(body):
            body()
        else:
            self.block(body)
        following = b.add(counter, ir.Constant(I64, 1), name=f"{name}.next", flags=("nuw", "nsw"))
        counter.add_incoming(following, b.block)
        end = b.append_basic_block(f"{name}.end")
        b.cbranch(b.icmp_signed("<", following, stop), head, end)
        b.position_at_end(end)
        if outer is None:
            del self.counters[var]
        else:
            self.counters[var] = outer

    def load(self, s: Load) -> None:
        buf = s.buffer
        ty = MEMORY_TYPE[buf.dtype]
        if s.guard is None:
            value = self.b.load(self.address(buf, s.index))
        elif buf.size == 0:
            value = ir.Constant(ty, 0)  # an empty buffer: no guard can hold
        else:
            # Guard false: 0, and the memory is never read (the address is clamped to element 0, which the
            # load then ignores; a select, not a branch, keeps the loop vectorizable).
            guard = self.scalar.truth(s.guard)
            index = self.b.select(guard, self.integer(s.index), ir.Constant(I64, 0))
            loaded = self.b.load(self.b.gep(self.pointer(buf), [index], inbounds=True))
            value = self.b.select(guard, loaded, ir.Constant(ty, 0))
        if buf.dtype == "bool":
            value = self.b.icmp_unsigned("!=", value, ir.Constant(I8, 0))
        self.assign(s.var, value)

    def stored(self, expr: sp.Expr, dtype: str) -> ir.Value:
        """``expr`` computed for a buffer of ``dtype`` (bool: != 0), in its memory type."""
        value = self.scalar.build(expr, compute_type(dtype))
        if dtype == "bool":
            return self.b.zext(value, I8)
        return self.scalar.convert(value, MEMORY_TYPE[dtype])

    def store(self, s: Store) -> None:
        buf = s.buffer
        if buf.store == "input":
            raise self.error(f"writes into {buf.name}, an input ({buf.note})")
        b = self.b
        at = self.address(buf, s.index)
        value = self.stored(s.value, buf.dtype)
        if s.reduce is not None:
            old = b.load(at)
            if s.reduce == "add":
                if buf.dtype == "bool":
                    value = b.or_(old, value)
                elif is_float(value.type):
                    value = self.scalar._flagged(b.fadd(old, value))
                else:
                    value = b.add(old, value)
            elif s.reduce in ("max", "min"):
                # NaN propagates, as in NumPy's reductions: value if (value cmp old or value is NaN) else old.
                cmp = ">" if s.reduce == "max" else "<"
                if is_float(value.type):
                    take = b.or_(self.scalar._flagged(b.fcmp_ordered(cmp, value, old)),
                                 self.scalar._flagged(b.fcmp_unordered("uno", value, value)))
                else:
                    take = b.icmp_signed(cmp, value, old) if buf.dtype != "bool" else b.icmp_unsigned(cmp, value, old)
                value = b.select(take, value, old)
            else:
                raise self.error(f"unknown reduction {s.reduce!r}")
        b.store(value, at)

    def check(self, s: Check) -> None:
        b = self.b
        failed = self.scalar.truth(s.failed)
        stop = b.append_basic_block(f"check{s.site.code}.failed")
        go_on = b.append_basic_block(f"check{s.site.code}.ok")
        b.cbranch(failed, stop, go_on)
        b.position_at_end(stop)
        status = self.fn.args[4]
        for k, value in enumerate((ir.Constant(I64, s.site.code), self.integer(s.index), self.integer(s.value))):
            b.store(value, b.gep(status, [ir.Constant(I64, k)], inbounds=True))
        b.ret(ir.Constant(I32, s.site.code))
        b.position_at_end(go_on)

    def gemm(self, s: Gemm) -> None:
        dtype = s.c.buffer.dtype
        if dtype not in ("float32", "float64") or {s.a.buffer.dtype, s.b.buffer.dtype} != {dtype}:
            raise self.error(f"gemm of {s.a.buffer.dtype} x {s.b.buffer.dtype} -> {dtype}: GEMM takes one float dtype")
        fn = define_gemm(self.module, dtype, self.blas)  # defined once per module, then found
        ty = compute_type(dtype)
        i32, i64 = (lambda v: ir.Constant(I32, int(v))), (lambda v: ir.Constant(I64, int(v)))
        args = [i32(s.trans_a), i32(s.trans_b), i64(s.m), i64(s.n), i64(s.k), self.scalar.build(s.alpha, ty),
                self.ref(s.a), i64(s.lda), self.ref(s.b), i64(s.ldb), self.scalar.build(s.beta, ty),
                self.ref(s.c), i64(s.ldc)]
        self.b.call(fn, args)

    def call(self, s: Call) -> None:
        if s.name in COLLECTIVES:  # no MPI in an exported artifact
            k = self.kernel
            raise UnsupportedCallError(
                f"{self.program.name}: {s.name} (node %{k.node} {k.op}"
                f"{', ' + k.where if k.where else ''}) needs MPI, which the llvm target does not provide: "
                f"an exported step runs on one process")
        self.block(expand_call(s))

    def error(self, message: str) -> LLVMRenderError:
        title = self.kernel.title if self.kernel is not None else "the layout"
        return LLVMRenderError(f"{self.program.name}: llvm target: kernel {title}: {message}")


def render_module(program: Program, symbol: str, module: ir.Module | None = None,
                  blas: str = "generated") -> ir.Module:
    """``program``'s entry function ``symbol`` (the ABI above) built into ``module`` (a new one when None),
    with the MT19937 functions when it draws and one GEMM per dtype it multiplies in."""
    if module is None:
        module = ir.Module(name=program.name)
    Renderer(program, module, symbol, blas).render()
    return module


def render_text(program: Program, symbol: str, blas: str = "generated") -> str:
    """The module's .ll text with a header comment and, before each kernel's first block, its title
    (node, op, the user's file:line) as a ``;`` comment."""
    return render_module_and_text(program, symbol, blas)[1]


def render_module_and_text(program: Program, symbol: str, blas: str = "generated", internal: bool = False,
                           parallel_min_work: int | None = None) -> tuple[ir.Module, str]:
    """:func:`render_module` and :func:`render_text` of one rendering. ``internal``: every function the module
    defines but the entry is internal (the MT19937 functions: each object loaded in one process keeps its own).
    ``parallel_min_work``: loops of chunks of at least this much work (ir.runs_chunks_in_parallel) run through
    PARALLEL_FOR, which whoever loads the module provides (the cpu backend's llvm driver); None: all inline."""
    from ..._version import __version__

    module = ir.Module(name=program.name)
    renderer = Renderer(program, module, symbol, blas, parallel_min_work)
    renderer.render()
    if internal:
        for fn in module.functions:
            if fn.name != symbol and not fn.is_declaration:
                fn.linkage = "internal"
    text, titles = str(module), renderer.titles
    lines = [f"; graphc {__version__} llvm backend: graph {program.name}",
             f"; {program.summary()}",
             f"; entry: int32_t {symbol}(uint8_t *state, uint8_t *workspace, void *const *inputs, "
             f"void *const *outputs, int64_t *status, uint32_t *rng)"]
    for line in text.splitlines():
        label = re.match(r'^"?([A-Za-z0-9_.]+)"?:', line)
        if label and label.group(1) in titles:
            lines.append(f"; {titles[label.group(1)]}")
        lines.append(line)
    return module, "\n".join(lines) + "\n"


__all__ = ["ARGS", "PARALLEL_FOR", "UnsupportedCallError", "block_name", "entry_type", "parallel_for_type",
           "range_type", "render_module", "render_module_and_text", "render_text"]
