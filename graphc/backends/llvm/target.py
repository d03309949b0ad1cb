"""From an llvmlite module to machine code: the target machine, O3, an object file; a test-only JIT.

    target_machine("native" | "generic")   the host's CPU and features, or baseline x86-64 (any x86-64)
    compile_object(module, target) -> bytes  parse, verify, O3 (new pass manager), emit_object
    link_shared(module, dir, name, target)   the object linked by ``cc`` into dir/lib<name>.so
    jit_entry(module, symbol) -> callable    that library's entry function, via ctypes (tests)
"""
from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np

from ...ir import GraphcError

TARGETS = ("native", "generic")
_initialized: list[bool] = []


class LLVMTargetError(GraphcError):
    """An unknown target, a module LLVM rejects, or a link that failed."""


def _initialize() -> None:
    if not _initialized:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _initialized.append(True)


def target_machine(target: str = "native") -> llvm.TargetMachine:
    """The machine code is for: ``"native"`` (this host's CPU name and features) or ``"generic"`` (cpu
    x86-64 with baseline features, so the artifact runs on any x86-64). Position-independent code."""
    _initialize()
    if target not in TARGETS:
        raise LLVMTargetError(f"llvm target: unknown target {target!r}; use one of {', '.join(TARGETS)}")
    triple = llvm.get_default_triple()
    if target == "native":
        cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    else:
        cpu, features = "x86-64", ""
    return llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=3, reloc="pic",
                                                                codemodel="default")


def optimize(module: ir.Module | str, target: str = "native", level: int = 3) -> llvm.ModuleRef:
    """``module`` parsed, verified and optimized at ``level`` (default O3) for ``target`` (the new pass manager)."""
    tm = target_machine(target)
    try:
        parsed = llvm.parse_assembly(str(module))
        parsed.verify()
    except RuntimeError as err:
        raise LLVMTargetError(f"llvm target: LLVM rejects the generated module: {err}") from None
    parsed.triple = tm.triple
    parsed.data_layout = str(tm.target_data)
    tuning = llvm.create_pipeline_tuning_options(speed_level=level)
    tuning.loop_vectorization = True
    tuning.slp_vectorization = True
    builder = llvm.create_pass_builder(tm, tuning)
    builder.getModulePassManager().run(parsed, builder)
    return parsed


def compile_object(module: ir.Module | str, target: str = "native") -> bytes:
    """An ELF object file of ``module`` for ``target`` (see :func:`target_machine`), optimized at O3."""
    return target_machine(target).emit_object(optimize(module, target))


class JitEntry:
    """One entry function of a module, loaded from a shared library: ``entry(state, workspace, inputs,
    outputs, status, rng) -> int`` (the ABI's return code). Arrays are NumPy arrays (state, workspace:
    uint8; status: int64[4]; rng: uint32[625]); the library lives as long as this object."""

    def __init__(self, library: ctypes.CDLL, symbol: str, directory: tempfile.TemporaryDirectory):
        self._library, self._directory = library, directory
        self.function = getattr(library, symbol)
        self.function.restype = ctypes.c_int32
        self.function.argtypes = [ctypes.c_void_p] * 6

    def __call__(self, state: np.ndarray, workspace: np.ndarray, inputs: Sequence[np.ndarray],
                 outputs: Sequence[np.ndarray], status: np.ndarray, rng: np.ndarray) -> int:
        for a in (*inputs, *outputs):
            if not a.flags.c_contiguous:
                raise LLVMTargetError("llvm target: the entry takes C-contiguous arrays")
        ins = (ctypes.c_void_p * max(len(inputs), 1))(*[a.ctypes.data for a in inputs])
        outs = (ctypes.c_void_p * max(len(outputs), 1))(*[a.ctypes.data for a in outputs])
        return int(self.function(state.ctypes.data, workspace.ctypes.data, ctypes.addressof(ins),
                                 ctypes.addressof(outs), status.ctypes.data, rng.ctypes.data))

    def symbol(self, name: str, restype, argtypes) -> Callable:
        """Another function of the library (the MT19937 ones, for tests)."""
        fn = getattr(self._library, name)
        fn.restype, fn.argtypes = restype, argtypes
        return fn


def link_shared(module: ir.Module | str, directory: str | Path, name: str = "module",
                target: str = "native") -> Path:
    """``directory/lib<name>.so``: the object of :func:`compile_object` (kept as ``<name>.o``) linked by
    ``cc -shared`` against libm."""
    obj, lib = Path(directory, f"{name}.o"), Path(directory, f"lib{name}.so")
    obj.write_bytes(compile_object(module, target))
    done = subprocess.run(["cc", "-shared", "-o", str(lib), str(obj), "-lm"], capture_output=True, text=True)
    if done.returncode:
        raise LLVMTargetError(f"llvm target: cc could not link {lib.name}: {done.stderr.strip()}")
    return lib


def jit_entry(module: ir.Module | str, symbol: str, target: str = "native") -> JitEntry:
    """``symbol`` of ``module`` callable from Python (tests): :func:`link_shared` into a temporary directory,
    loaded with ctypes."""
    directory = tempfile.TemporaryDirectory(prefix="graphc-llvm-")
    lib = link_shared(module, directory.name, target=target)
    return JitEntry(ctypes.CDLL(str(lib)), symbol, directory)
