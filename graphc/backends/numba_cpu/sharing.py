"""Work sharing: a helper thread takes panels of the step's GEMMs, and chunks of its parallel loops, while the
calling thread takes the rest.

The thread policy's answer to a machine where another process keeps a core busy (see
``graphc.backends.threads``). OpenBLAS on two threads splits a GEMM in two fixed halves and waits for the
slower: its thread on the shared core gets half of that core at best and a scheduler slice (milliseconds)
late at worst, so the MLP epoch took 2.3-2.9x as long as on one thread. One thread leaves the shared core's
free half unused. Here every large GEMM is cut into a few panels that the caller and one helper claim one
at a time (an atomic counter): when the helper is descheduled the caller takes its panels, so the caller
waits only for a panel the helper had started. Between GEMMs the helper sleeps on a futex, so it spends
none of its share of the core spinning, and the scheduler lets it in promptly when it wakes.

How the driver gets here: ``runtime.gemm`` loads the first slot of this module's control block (the data
symbol ``graphc_gemm_sharing``, resolved when the machine code is linked, so cached drivers find it in every
process). Zero means no sharing and the call goes to Numba's ``numba_xxgemm`` as before; otherwise the slot
holds the address of :func:`_shared_gemm`'s C entry (a ``cfunc``), which takes the same arguments.

Parallel loops (the llvm driver's loops of chunks, see llvm/render.py's PARALLEL_FOR): ``graphc_parallel_for``
(:func:`define_parallel_for`) loads the LOOPS slot the same way: zero runs the outlined loop on the calling
thread; otherwise its iterations (at most LOOP_CHUNKS panels of them) are claimed by the caller and the helper
as GEMM panels are. A GEMM inside a chunk runs alone, on the thread that runs the chunk (the job's owner
shares one job at a time).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import platform
import sys
import threading

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..llvm.render import range_type
from .kernel_cache import cached

#: The control block's symbol: the driver's gemm calls and the code below address it by this name.
SYMBOL = "graphc_gemm_sharing"

# Slots of the control block (int64). Words written by both threads sit on cache lines of their own.
ENTRY = 0     # shared_gemm's address while sharing is on, else 0 (read by every gemm call)
LOOPS = 1     # shared_loop's address while a helper runs, else 0 (read by every parallel loop)
OWNER = 8     # 1 while a thread shares a GEMM (another thread's GEMMs meanwhile run alone)
GEN = 16      # the last job published (the helper's futex word: its low 32 bits)
CLAIM = 24    # job << 32 | the next panel to claim
DONE = 32     # panels of the current job finished
STOP = 40     # 1: the helper returns
HELPED = 41   # panels the helper has run since it started (diagnostics, tests)
FAILED = 42   # a nonzero BLAS status from a helper's panel
JOB = 48      # the job: kind, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, axis, panels
#             # (a loop: kind LOOP_KIND, range, state, workspace, inputs, outputs, n, ..., chunks at JOB + 15)
LOOP_KIND = ord("l")
SLOTS = 64

#: A GEMM is shared from this many multiply-adds (m*n*k) on: below it the claims and the wake-up (a few
#: microseconds) cost more than the helper's part gains.
SHARE_MIN_MACS = 1 << 22

#: Panels per shared GEMM: at most MAX_PANELS, each at least MIN_PANEL rows or columns wide. Measured
#: (MLP 784-512-256-10 GEMMs, a busy process on the helper's core): 4 panels beat 8, whose extra packing
#: of the unsplit operand cost more than their finer balance gained.
MAX_PANELS = 4
MIN_PANEL = 64

#: How long the helper polls for the next job before it sleeps (iterations of an atomic load, ~20 us).
HELPER_SPINS = 2000

#: Chunks a parallel loop is cut into (fewer when it has fewer iterations): the caller takes chunks until none
#: is left, so a helper that wakes late costs at most the chunk it started.
LOOP_CHUNKS = 8

_storage = np.zeros(SLOTS + 8, np.int64)
BLOCK = _storage[(-_storage.ctypes.data % 64) // 8:][:SLOTS]  # starts on a 64-byte boundary
llvm.add_symbol(SYMBOL, BLOCK.ctypes.data)

def _cached(fn):
    """``@njit(nogil=True)``, cached as the runtime kernels are (kernel_cache.cached)."""
    return cached(fn, lambda cache: njit(nogil=True, cache=cache))


_i64 = ir.IntType(64)
_char = ir.IntType(8)
_void_p = _char.as_pointer()
#: futex(2)'s system call number on the architectures graphc shares GEMMs on (Linux only: elsewhere the
#: policy's one thread runs alone, see SUPPORTED).
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine(), 0)
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129

#: Whether this machine can share GEMMs (Linux, a known futex call, thread affinity).
SUPPORTED = sys.platform.startswith("linux") and _SYS_FUTEX != 0 and hasattr(os, "sched_setaffinity")


def block_slot(builder: ir.IRBuilder, index: ir.Value) -> ir.Value:
    """A pointer (i64*) to slot ``index`` of the control block, declared in ``builder``'s module."""
    module = builder.module
    block = module.globals.get(SYMBOL)
    if block is None:
        block = ir.GlobalVariable(module, ir.ArrayType(_i64, SLOTS), SYMBOL)
        block.linkage = "external"
    return builder.gep(block, [ir.Constant(ir.IntType(32), 0), index])


def xxgemm_type(intp: ir.Type) -> ir.FunctionType:
    """``numba_xxgemm``'s C signature (column-major BLAS: kind, trans_a, trans_b, m, n, k, alpha*, a*, lda,
    b*, ldb, beta*, c*, ldc), which :func:`shared_gemm`'s entry shares."""
    return ir.FunctionType(ir.IntType(32), [_char, _char, _char, intp, intp, intp, _void_p, _void_p, intp,
                                            _void_p, intp, _void_p, _void_p, intp])


def call_gemm(builder: ir.IRBuilder, kind: str, trans_a: ir.Value, trans_b: ir.Value, m: ir.Value, n: ir.Value,
              k: ir.Value, alpha: ir.Value, a: ir.Value, lda: ir.Value, b: ir.Value, ldb: ir.Value, beta: ir.Value,
              c: ir.Value, ldc: ir.Value) -> ir.Value:
    """Build a row-major GEMM call (``kind`` "s" or "d"; ``trans_*`` i1 flags; alpha and beta pointers to the
    scalars; a, b, c i8 pointers; sizes intp), as every generated GEMM makes it: through the shared GEMM's entry
    while the thread policy shares GEMMs with a helper thread, else ``numba_xxgemm``. Returns BLAS's status."""
    intp = m.type
    fnty = xxgemm_type(intp)
    module = builder.module
    blas = module.globals.get("numba_xxgemm") or ir.Function(module, fnty, "numba_xxgemm")
    entry = builder.load_atomic(block_slot(builder, ir.Constant(_i64, ENTRY)), "monotonic", 8)
    fn = builder.select(builder.icmp_unsigned("!=", entry, ir.Constant(_i64, 0)), builder.inttoptr(entry, fnty.as_pointer()),
                        blas)

    def letter(flag):
        return builder.select(flag, ir.Constant(_char, ord("t")), ir.Constant(_char, ord("n")))

    # Column-major BLAS sees a row-major matrix transposed: C^T = op(B)^T op(A)^T.
    return builder.call(fn, (ir.Constant(_char, ord(kind)), letter(trans_b), letter(trans_a), n, m, k, alpha, b, ldb,
                             a, lda, beta, c, ldc))


# -- atomics on the control block ---------------------------------------------------------------------------

@intrinsic
def _load(typingctx, index):
    def codegen(context, builder, signature, args):
        return builder.load_atomic(block_slot(builder, args[0]), "acquire", 8)
    return types.int64(types.intp), codegen


@intrinsic
def _store(typingctx, index, value):
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[1], block_slot(builder, args[0]), "release", 8)
        return context.get_dummy_value()
    return types.void(types.intp, types.int64), codegen


@intrinsic
def _add(typingctx, index, value):
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", block_slot(builder, args[0]), args[1], "seq_cst")
    return types.int64(types.intp, types.int64), codegen


@intrinsic
def _cas(typingctx, index, expected, new):
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(block_slot(builder, args[0]), args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(types.intp, types.int64, types.int64), codegen


@intrinsic
def _futex(typingctx, op, value):
    """futex(2) on the low 32 bits of the GEN slot: wait while they equal ``value``, or wake ``value`` waiters."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_i64, [_i64], var_arg=True)
        syscall = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        word = builder.ptrtoint(block_slot(builder, ir.Constant(_i64, GEN)), _i64)
        zero = ir.Constant(_i64, 0)
        return builder.call(syscall, [ir.Constant(_i64, _SYS_FUTEX), word, args[0], args[1], zero, zero, zero])
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _xxgemm(typingctx, kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """``numba_xxgemm`` on raw addresses (int64): one panel's BLAS call."""
    sig = types.int64(*([types.int64] * 14))

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        fn = cgutils.get_or_insert_function(builder.module, xxgemm_type(intp), "numba_xxgemm")
        chars = [builder.trunc(v, _char) for v in args[:3]]
        sizes = [builder.trunc(v, intp) if intp.width < 64 else v for v in args[3:6]]
        ptr = [builder.inttoptr(args[i], _void_p) for i in (6, 7, 9, 11, 12)]
        res = builder.call(fn, chars + sizes + [ptr[0], ptr[1], args[8], ptr[2], args[10], ptr[3], ptr[4], args[13]])
        return builder.sext(res, _i64)
    return sig, codegen


@intrinsic
def _call_range(typingctx, fn, state, ws, ins, outs, lo, hi):
    """Iterations lo..hi-1 of the outlined loop at address ``fn`` (every operand an int64)."""
    sig = types.void(*([types.int64] * 7))

    def codegen(context, builder, signature, args):
        fnty = range_type()
        operands = [builder.inttoptr(v, t) for v, t in zip(args[1:5], fnty.args[:4])]
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), operands + list(args[5:]))
        return context.get_dummy_value()
    return sig, codegen


# -- the work ------------------------------------------------------------------------------------------------

@_cached
def _run_panel(p):
    """Panel ``p`` of the published job: a chunk of a loop's iterations, or a band of a GEMM's rows (axis 0) or
    columns (axis 1) of column-major C."""
    kind, ta, tb = _load(JOB), _load(JOB + 1), _load(JOB + 2)
    if kind == LOOP_KIND:
        n, chunks = _load(JOB + 6), _load(JOB + 15)
        _call_range(ta, tb, _load(JOB + 3), _load(JOB + 4), _load(JOB + 5), n * p // chunks, n * (p + 1) // chunks)
        return 0
    m, n, k = _load(JOB + 3), _load(JOB + 4), _load(JOB + 5)
    alpha, a, lda, b, ldb = _load(JOB + 6), _load(JOB + 7), _load(JOB + 8), _load(JOB + 9), _load(JOB + 10)
    beta, c, ldc, axis, panels = _load(JOB + 11), _load(JOB + 12), _load(JOB + 13), _load(JOB + 14), _load(JOB + 15)
    item = 4 if kind == 115 else 8  # 's' or 'd'
    if axis == 0:  # rows lo:hi of C and of op(A)
        lo, hi = m * p // panels, m * (p + 1) // panels
        a_p = a + (lo if ta == 110 else lo * lda) * item  # 'n': A is m x k; 't': A is k x m
        return _xxgemm(kind, ta, tb, hi - lo, n, k, alpha, a_p, lda, b, ldb, beta, c + lo * item, ldc)
    lo, hi = n * p // panels, n * (p + 1) // panels  # columns lo:hi of C and of op(B)
    b_p = b + (lo * ldb if tb == 110 else lo) * item
    return _xxgemm(kind, ta, tb, m, hi - lo, k, alpha, a, lda, b_p, ldb, beta, c + lo * ldc * item, ldc)


@_cached
def _work(job):
    """Claim and run panels of ``job`` until none is left (or it is no longer the current job); returns how many."""
    ran = 0
    while True:
        claim = _load(CLAIM)
        if claim >> 32 != job or claim & 0xFFFFFFFF >= _load(JOB + 15):
            return ran
        if _cas(CLAIM, claim, claim + 1):  # the job cannot end before this panel is DONE: its slots stay put
            status = _run_panel(claim & 0xFFFFFFFF)
            if status != 0:
                _store(FAILED, status)
            _add(DONE, 1)
            ran += 1


@_cached
def _shared_gemm(kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if m * n * k < SHARE_MIN_MACS or not _cas(OWNER, 0, 1):  # small, or another thread is sharing one
        return _xxgemm(kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    axis = 0 if m >= n else 1
    panels = max(2, min(MAX_PANELS, max(m, n) // MIN_PANEL))
    _store(JOB, kind)
    _store(JOB + 1, ta)
    _store(JOB + 2, tb)
    _store(JOB + 3, m)
    _store(JOB + 4, n)
    _store(JOB + 5, k)
    _store(JOB + 6, alpha)
    _store(JOB + 7, a)
    _store(JOB + 8, lda)
    _store(JOB + 9, b)
    _store(JOB + 10, ldb)
    _store(JOB + 11, beta)
    _store(JOB + 12, c)
    _store(JOB + 13, ldc)
    _store(JOB + 14, axis)
    _store(JOB + 15, panels)
    return _run_job(panels)


@_cached
def _shared_loop(fn, state, ws, ins, outs, n):
    """Iterations 0..n-1 of the outlined loop ``fn`` in chunks the caller and the helper claim."""
    if n < 2 or not _cas(OWNER, 0, 1):  # one iteration, or another thread is sharing a job
        _call_range(fn, state, ws, ins, outs, 0, n)
        return 0
    _store(JOB, LOOP_KIND)
    _store(JOB + 1, fn)
    _store(JOB + 2, state)
    _store(JOB + 3, ws)
    _store(JOB + 4, ins)
    _store(JOB + 5, outs)
    _store(JOB + 6, n)
    _store(JOB + 15, min(n, LOOP_CHUNKS))
    return _run_job(min(n, LOOP_CHUNKS))


@_cached
def _run_job(panels):
    """Publish the job in the JOB slots (the caller owns them), wake the helper, run panels until none is left,
    wait for the helper's last one; the job's status (a GEMM panel's BLAS error), and OWNER released."""
    job = (_load(GEN) + 1) & 0x7FFFFFFF
    _store(DONE, 0)
    _store(FAILED, 0)
    _store(CLAIM, job << 32)
    _store(GEN, job)
    _futex(_FUTEX_WAKE_PRIVATE, 1)
    _work(job)
    while _load(DONE) < panels:  # only a panel the helper started: its core is shared, this one is not
        pass
    status = _load(FAILED)
    _store(OWNER, 0)
    return status


@_cached
def _helper_loop(spins):
    """The helper thread: run panels of each job published, sleep on the futex when none comes."""
    seen = _load(GEN)
    idle = 0
    while _load(STOP) == 0:
        job = _load(GEN)
        if job == seen:
            idle += 1
            if idle > spins:
                _futex(_FUTEX_WAIT_PRIVATE, job & 0xFFFFFFFF)
                idle = 0
            continue
        seen, idle = job, 0
        _add(HELPED, _work(job))
    return 0


_entry: list = []          # the compiled C entries (kept alive while their addresses are published)
HELPER: list[threading.Thread] = []  # the helper thread while it runs (the executables read it on every call)
_lock = threading.Lock()
_at_exit: list = []


def _compiled_entry():
    if not _entry:
        from numba import cfunc

        i64 = types.int64
        sig = types.int32(types.int8, types.int8, types.int8, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64)

        def entry(kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            return _shared_gemm(np.int64(kind), np.int64(ta), np.int64(tb), m, n, k, alpha, a, lda, b, ldb, beta,
                                c, ldc)

        def loop_entry(fn, state, ws, ins, outs, n):
            _shared_loop(fn, state, ws, ins, outs, n)

        _entry.append(cached(entry, lambda cache: cfunc(sig, nopython=True, cache=cache)))
        _entry.append(cached(loop_entry, lambda cache: cfunc(types.void(*([i64] * 6)), nopython=True, cache=cache)))
    return _entry


def define_parallel_for(module: ir.Module, name: str, fnty: ir.FunctionType) -> None:
    """``name`` (llvm/render.py's PARALLEL_FOR, of type ``fnty``) in ``module``: the outlined loop on the calling
    thread while the LOOPS slot is 0, else through :func:`_shared_loop`'s C entry at the slot's address."""
    fn = ir.Function(module, fnty, name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    entry = b.load_atomic(block_slot(b, ir.Constant(_i64, LOOPS)), "monotonic", 8)
    alone, shared = fn.append_basic_block("alone"), fn.append_basic_block("shared")
    b.cbranch(b.icmp_unsigned("==", entry, ir.Constant(_i64, 0)), alone, shared)
    b.position_at_end(alone)
    b.call(fn.args[0], [*fn.args[1:5], ir.Constant(_i64, 0), fn.args[5]])
    b.ret_void()
    b.position_at_end(shared)
    c_entry = ir.FunctionType(ir.VoidType(), [_i64] * 6)
    b.call(b.inttoptr(entry, c_entry.as_pointer()), [b.ptrtoint(a, _i64) for a in fn.args[:5]] + [fn.args[5]])
    b.ret_void()


def helper_cores(busy: frozenset[int] | set[int] = frozenset()) -> set[int]:
    """Where the helper runs: the cores of the process's affinity that others keep busy (``busy``, as the
    thread policy measured them), else every one but the core the calling thread runs on now; the caller
    itself stays where the scheduler puts it, which is the free core.

    Measured (MLP epoch, a busy process pinned to one core of two): 1.19-1.21 s with the helper on the busy
    core; 1.4-1.9 s, changing from epoch to epoch, when the scheduler placed it; 1.6-1.7 s when it was
    pinned to the free core (the caller then ran beside the busy process); 1.62 s without a helper."""
    cores = os.sched_getaffinity(0)
    if cores & set(busy):
        return cores & set(busy)
    try:
        here = ctypes.CDLL(None).sched_getcpu()
    except (AttributeError, OSError):  # pragma: no cover - every glibc and musl has it
        return cores
    return (cores - {here}) or cores


def start(busy: frozenset[int] | set[int] = frozenset()) -> None:
    """Share the GEMMs and the parallel loops of every compiled step in this process with one helper thread, run
    on :func:`helper_cores` of ``busy`` (the cores other processes keep busy); a running helper moves there.
    Nothing happens where sharing is not SUPPORTED."""
    if not SUPPORTED:
        return
    with _lock:
        if not HELPER:
            gemm_entry, loop_entry = _compiled_entry()
            BLOCK[STOP] = 0
            helper = threading.Thread(target=_helper_loop, args=(HELPER_SPINS,), name="graphc-helper", daemon=True)
            helper.start()
            HELPER.append(helper)
            BLOCK[ENTRY] = gemm_entry.address
            BLOCK[LOOPS] = loop_entry.address
        # the helper thread's affinity only: the caller's own is the user's
        os.sched_setaffinity(HELPER[0].native_id, helper_cores(busy))
        if not _at_exit:
            _at_exit.append(atexit.register(stop))


def stop() -> None:
    """Back to plain BLAS calls; the helper thread ends (idempotent)."""
    with _lock:
        if not HELPER:
            return
        BLOCK[ENTRY] = 0
        BLOCK[LOOPS] = 0
        BLOCK[STOP] = 1
        _bump_and_wake()
        HELPER.pop().join()


@_cached
def _bump_and_wake():
    _add(GEN, 1)
    _futex(_FUTEX_WAKE_PRIVATE, 1)
    return 0


def active() -> bool:
    """Whether GEMMs and parallel loops are shared now."""
    return bool(HELPER)


def cores() -> set[int]:
    """The cores the helper runs on (empty when there is none)."""
    return os.sched_getaffinity(HELPER[0].native_id) if HELPER else set()


def helped() -> int:
    """Panels the helper has run in this process (a diagnostic: tests check that it takes part)."""
    return int(BLOCK[HELPED])
