"""Offline compilation of CUDA kernels, with no GPU: PTX from Numba, assembled by ``ptxas`` for the
resources each kernel needs (registers, shared memory, stack, spills).

``numba.cuda.compile_ptx`` compiles a kernel for a given compute capability without a device, except
that a ``@cuda.jit(device=True)`` function it calls is compiled for "the current device", which asks the
driver. :func:`compile_ptx` supplies the requested compute capability instead when no GPU is present.
The ``ptxas`` that accepts Numba's PTX comes with the ``nvidia-cuda-nvcc`` wheel (``nvidia/cu13/bin``);
the system's older CUDA toolkits may reject its PTX version.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...ir.errors import GraphcError


class PtxasNotFound(GraphcError, FileNotFoundError):
    """No ``ptxas`` to assemble PTX with."""


class PtxasFailed(GraphcError, RuntimeError):
    """``ptxas`` rejected a kernel's PTX."""


def find_ptxas() -> Path:
    """The ``ptxas`` to use: the nvidia-cuda-nvcc wheel's (``nvidia/cu13/bin/ptxas``, or an older wheel's
    layout), else ``$CUDA_HOME/bin/ptxas``, else the one on PATH."""
    candidates: list[Path] = []
    try:
        import nvidia  # the namespace package of NVIDIA's wheels
        for root in map(Path, nvidia.__path__):
            candidates += [root / "cu13" / "bin" / "ptxas", root / "cuda_nvcc" / "bin" / "ptxas"]
    except ImportError:
        pass
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "ptxas")
    on_path = shutil.which("ptxas")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise PtxasNotFound("no ptxas found (looked for the nvidia-cuda-nvcc wheel's nvidia/cu13/bin/ptxas, "
                        "$CUDA_HOME/bin and PATH): pip install 'nvidia-cuda-nvcc==13.5.*'")


@contextlib.contextmanager
def _device_of_capability(cc: tuple[int, int]) -> Iterator[None]:
    """While no GPU is present, Numba's device functions compile as if the current device had ``cc``."""
    from numba import cuda
    from numba.cuda import dispatcher

    if cuda.is_available():
        yield
        return
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=tuple(cc))
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def compile_ptx(kernel, signature: str, cc: tuple[int, int]) -> str:
    """The PTX of ``kernel`` (a ``@cuda.jit`` dispatcher or its Python function) for ``signature`` and
    compute capability ``cc``, with or without a GPU."""
    from numba import cuda

    with _device_of_capability(cc):
        ptx, _ = cuda.compile_ptx(getattr(kernel, "py_func", kernel), signature, cc=tuple(cc))
    return ptx


@dataclass(frozen=True)
class Resources:
    """What ``ptxas -v`` reports for one entry function (bytes, except registers)."""

    function: str
    arch: str
    registers: int
    smem: int
    stack: int
    spill_stores: int
    spill_loads: int

    @property
    def name(self) -> str:
        """The Python name of the function (the last part of Numba's mangled ``_ZN<len><part>...`` name)."""
        return demangled(self.function)


def demangled(mangled: str) -> str:
    """``_ZN6graphc8backends...11gemm_kernelB2v1...`` -> ``gemm_kernel`` (the mangled name itself when
    it is not of that form)."""
    if not mangled.startswith("_ZN"):
        return mangled
    rest, last = mangled[3:], mangled
    while rest[:1].isdigit():
        digits = re.match(r"\d+", rest).group()
        size = int(digits)
        last, rest = rest[len(digits):len(digits) + size], rest[len(digits) + size:]
    return last


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_verbose(text: str) -> list[Resources]:
    """The entry functions' resources from ``ptxas -v`` output (device functions are inlined or
    reported within their entry's figures)."""
    found: list[Resources] = []
    current: dict | None = None

    def flush() -> None:
        if current is not None and current["registers"] >= 0:  # -1: no "Used" line seen
            found.append(Resources(**current))

    for line in text.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            flush()
            current = dict(function=entry.group(1), arch=entry.group(2), registers=-1, smem=0, stack=0,
                           spill_stores=0, spill_loads=0)
            continue
        if current is None:
            continue
        frame = _FRAME.search(line)
        if frame:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, frame.groups())
        used = _USED.search(line)
        if used:
            current["registers"] = int(used.group(1))
            smem = _SMEM.search(line)
            current["smem"] = int(smem.group(1)) if smem else 0
    flush()
    return found


def assemble(ptx: str, cc: tuple[int, int], ptxas: Path | None = None) -> list[Resources]:
    """Assemble ``ptx`` for ``sm_<cc>`` with ``ptxas -v`` and return each entry function's resources;
    PtxasFailed with ptxas's message if it rejects the PTX."""
    ptxas = ptxas or find_ptxas()
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.TemporaryDirectory(prefix="graphc-ptx-") as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run([str(ptxas), "-v", f"-arch={arch}", "-o", str(Path(tmp) / "kernel.cubin"),
                               str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        raise PtxasFailed(f"ptxas ({ptxas}) rejected the PTX for {arch}: {done.stderr.strip()[:2000]}")
    return parse_ptxas_verbose(done.stdout + done.stderr)
