"""The llvm driver (``driver="llvm"``): a step's kernels compiled by graphc's llvm target, without Numba.

Numba types and lowers a driver's Python in Python, ~2.5 ms a line, after a fixed ~0.5 s for its first
function in a process; that is most of a cold compile (docs/performance.md, "Compile time"). The llvm
target renders the same Program as LLVM IR directly: the MLP step's kernels compile in ~0.2 s instead of
~1.0 s and run as fast. This module turns that IR into the cpu backend's step:

    kernels_object(program, symbol) -> (object bytes, .ll text)   rendered and optimized at level 2
    load_entry(obj, symbol) -> int                                 the object loaded; the entry's address
    EntryStep(program, address)                                     the step, called as Numba's step is

The entry's GEMMs call ``graphc_sgemm`` / ``graphc_dgemm`` (the llvm target's ``blas="external"``), defined
once per process here: Numba's ``numba_xxgemm`` (SciPy's BLAS), or the shared GEMM while the thread policy
shares GEMMs with a helper thread (sharing.py's control block), exactly as ``runtime.gemm`` chooses.
Loops of chunks of at least CHUNK_MIN_WORK element operations (the cost rule,
``lowering.ir.runs_chunks_in_parallel``: a convolution's chunks of images) are outlined and called through
``graphc_parallel_for``, defined here too: their iterations are shared with sharing.py's helper thread, which
runs whenever the executable has two threads or more; without it the caller runs them all.
The entry's symbol is registered with LLVM (``add_symbol``), so the module's Numba ``step`` wrapper, which
``epoch`` calls, links against it in every process, from Numba's cache too.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir

from ...ir import GraphcError
from ..llvm.gemm import define_gemm, gemm_symbol
from ..llvm.random import MT_WORDS
from ..llvm.render import (
    PARALLEL_FOR,
    UnsupportedCallError,
    parallel_for_type,
    render_module_and_text,
)
from ..llvm.target import optimize, target_machine
from ..lowering import Program
from ..lowering.ir import draws
from ..lowering.library import runs_in_parallel_chunks
from . import sharing

#: A loop of chunks is shared with the helper thread from this much work on (ir.step_work's count: a
#: convolution's multiply-adds, a pooling's window reads; 0.05-0.2 ms on the LeNet-like step); waking the helper
#: and joining it costs a few microseconds.
CHUNK_MIN_WORK = 200_000

#: LLVM's level for the kernels (as for the Numba driver: see DRIVER_OPT_LEVEL in __init__.py).
OPT_LEVEL = 2

#: The execution engines of every object loaded in this process: an entry's code lives as long as its engine,
#: and a compiled ``epoch`` may hold its address for the life of the process.
_ENGINES: list = []
_LOCK = threading.Lock()


class LLVMDriverError(GraphcError):
    """A Program the llvm driver cannot run (a collective call: use ``driver="numba"``)."""


def kernels_object(program: Program, symbol: str) -> tuple[bytes, str]:
    """The object file of ``program``'s entry ``symbol`` (the llvm target's ABI, GEMMs external, every other
    function internal) for this machine, and its .ll text with each kernel's title (for ``exe.llvm_ir``)."""
    try:
        module, text = render_module_and_text(program, symbol, blas="external", internal=True,
                                              parallel_min_work=CHUNK_MIN_WORK)
    except UnsupportedCallError as err:
        raise LLVMDriverError(f"{err}; compile with driver='numba' to run it") from None
    tm = target_machine("native")
    return tm.emit_object(optimize(module, "native", OPT_LEVEL)), text


def shares_chunks(program: Program) -> bool:
    """Whether ``program``'s kernels, as this driver renders them, run a loop of chunks in parallel (through
    PARALLEL_FOR): what the executable starts the helper thread for."""
    return any(runs_in_parallel_chunks(s, CHUNK_MIN_WORK) for kernel in program.kernels for s in kernel.body)


def load_entry(obj: bytes, symbol: str) -> int:
    """Load ``obj`` into a new execution engine and return ``symbol``'s address, registered with LLVM so that
    Numba code calling it by name links. The GEMMs and PARALLEL_FOR it calls are defined first (once per process)."""
    with _LOCK:
        _define_runtime()
        _check_header(obj)
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine("native"))
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
        address = engine.get_function_address(symbol)
        if not address:
            raise LLVMDriverError(f"llvm driver: the object defines no {symbol}")
        _ENGINES.append(engine)
        llvm.add_symbol(symbol, address)
        return address


#: The header an object for this machine starts with: file format, word size, byte order and (ELF) the machine.
_HEADER: list[bytes] = []


def _check_header(obj: bytes) -> None:
    """LLVMDriverError unless ``obj`` starts as an object this machine emits: llvmlite crashes the process on
    bytes that are not an object file (the cache's checksums keep damaged files away; this keeps others away)."""
    if not _HEADER:
        probe = target_machine("native").emit_object(llvm.parse_assembly(str(ir.Module("probe"))))
        _HEADER.append(probe[:7] + probe[18:20] if probe[:4] == b"\x7fELF" else probe[:4])
    header = obj[:7] + obj[18:20] if obj[:4] == b"\x7fELF" else obj[:4]
    if len(obj) < 64 or header != _HEADER[0]:
        raise LLVMDriverError("llvm driver: the cached kernels are not an object file for this machine")


def _define_runtime() -> None:
    """``graphc_sgemm`` / ``graphc_dgemm`` and PARALLEL_FOR for every object of this process (see the module
    docstring)."""
    if _ENGINES:  # their engine is the first one
        return
    from numba import _helperlib
    from numba.np.linalg import ensure_blas

    ensure_blas()  # SciPy's BLAS, which numba_xxgemm calls
    llvm.add_symbol("numba_xxgemm", _helperlib.c_helpers["xxgemm"])
    module = ir.Module("graphc_gemms")
    for dtype in ("float32", "float64"):
        _define_runtime_gemm(module, dtype)
    sharing.define_parallel_for(module, PARALLEL_FOR, parallel_for_type())
    engine = llvm.create_mcjit_compiler(optimize(module, "native", OPT_LEVEL), target_machine("native"))
    engine.finalize_object()
    _ENGINES.append(engine)
    for name in (gemm_symbol("float32"), gemm_symbol("float64"), PARALLEL_FOR):
        llvm.add_symbol(name, engine.get_function_address(name))


def _define_runtime_gemm(module: ir.Module, dtype: str) -> None:
    """``graphc_?gemm`` (row-major, the llvm target's contract) calling BLAS as ``runtime.gemm`` does
    (``sharing.call_gemm``). Its status is not read: it fails only without SciPy's BLAS, which _define_runtime
    required."""
    fn = define_gemm(ir.Module("declaration"), dtype, "external")
    fn = ir.Function(module, fn.function_type, fn.name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ta, tb, m, n, k, alpha, a, lda, bb, ldb, beta, c, ldc = fn.args
    void_p = ir.IntType(8).as_pointer()

    def nonzero(flag):
        return b.icmp_signed("!=", flag, ir.Constant(flag.type, 0))

    def slot(value):
        at = b.alloca(value.type)
        b.store(value, at)
        return b.bitcast(at, void_p)

    sharing.call_gemm(b, "s" if dtype == "float32" else "d", nonzero(ta), nonzero(tb), m, n, k, slot(alpha),
                      b.bitcast(a, void_p), lda, b.bitcast(bb, void_p), ldb, slot(beta), b.bitcast(c, void_p), ldc)
    b.ret_void()


def assembly(text: str) -> str:
    """The machine code of the kernels' .ll ``text`` as assembly, optimized as :func:`kernels_object` does."""
    return target_machine("native").emit_assembly(optimize(text, "native", OPT_LEVEL))


class EntryStep:
    """The entry at ``address`` as the executable calls a step: ``step(*inputs, state, ws, status)`` returns
    the outputs (new arrays). Inputs must be what the Numba step's signature takes (C-contiguous, the
    program's dtypes and shapes): the executable binds them first. A program that draws keeps its MT19937
    state here (each Seed statement sets it, as ``np.random.seed`` does in the Numba driver)."""

    def __init__(self, program: Program, address: int):
        self._entry = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_void_p] * 6)(address)
        self._outputs = [(tuple(o.shape), np.dtype(o.dtype)) for o in program.outputs]
        self._ins = (ctypes.c_void_p * max(len(program.inputs), 1))()
        self._outs = (ctypes.c_void_p * max(len(self._outputs), 1))()
        self._ins_at, self._outs_at = ctypes.addressof(self._ins), ctypes.addressof(self._outs)
        self._rng = np.zeros(MT_WORDS, np.uint32) if draws(program) else None
        self._rng_at = None if self._rng is None else self._rng.ctypes.data
        self._stores: tuple = (None, None, None)
        self._store_at = (0, 0, 0)

    def __call__(self, *args: Any) -> tuple:
        *inputs, state, ws, status = args
        if state is not self._stores[0] or ws is not self._stores[1] or status is not self._stores[2]:
            # The executable passes the same three arrays on every call: their addresses are looked up once.
            self._stores = (state, ws, status)
            self._store_at = (state.ctypes.data, ws.ctypes.data, status.ctypes.data)
        outs = tuple(np.empty(shape, dtype) for shape, dtype in self._outputs)
        for k, a in enumerate(inputs):
            self._ins[k] = _address(a)
        for k, o in enumerate(outs):
            self._outs[k] = _address(o)
        state_at, ws_at, status_at = self._store_at
        self._entry(state_at, ws_at, self._ins_at, self._outs_at, status_at, self._rng_at)
        return outs


_CHAR_AT = ctypes.c_char.from_buffer
_ADDRESS_OF = ctypes.addressof


def _address(a: np.ndarray) -> int:
    """The address of a writable C-contiguous array's data: through the buffer protocol, 0.5 us against 1.6 us
    for ``a.ctypes.data`` (a tiny step's arrays made the llvm driver's call 1.7x slower than Numba's). A
    zero-size array, which exports no byte to point at, gets ``a.ctypes.data``."""
    try:
        return _ADDRESS_OF(_CHAR_AT(a))
    except (ValueError, TypeError):
        return a.ctypes.data
