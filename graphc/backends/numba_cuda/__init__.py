"""The Numba CUDA backend: the same lowered Program rendered as ``@cuda.jit`` kernels and a host driver.

    lowering.lower(graph, inputs) -> Program     the kernel IR (target-independent, as for the cpu)
    render(program) -> str                       one module: a kernel per phase, ``step`` (render.py)
    build_program(program) -> CudaExecutable     the on-disk cache; import; kernels compile at first launch

``graphc.compile(outputs, backend="cuda")`` calls :func:`build`. It needs the ``cuda`` extra
(``pip install 'graphc[cuda]'``: numba-cuda with NVRTC/NVVM wheels, and a ptxas) and either a CUDA GPU
or Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``: every CUDA thread a Python thread; tiny shapes only).
Without a GPU, :func:`compile_ptx` still turns every kernel of a graph into PTX for a chosen compute
capability, and :func:`assemble` runs ``ptxas`` on it (registers, shared memory, spills).
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ...ir import Graph, GraphcError, Node
from ..cache import Entry, cache_key, cache_root, locked, op_definitions, writable_root
from ..lowering import Program, has_rule, lower

INSTALL = "pip install 'graphc[cuda]'  (numba-cuda[cu13] and nvidia-cuda-nvcc: NVVM, NVRTC and ptxas as wheels)"


class CudaUnavailable(GraphcError):
    """The cuda backend cannot run here: the extra is missing, or there is no GPU and no simulator."""


def simulated() -> bool:
    """Whether Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def require_numba_cuda() -> None:
    """Raise CudaUnavailable, saying what to install, when numba-cuda is missing."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise CudaUnavailable(f"backend='cuda' needs the numba-cuda package: {INSTALL}")


def require_device() -> None:
    """Raise CudaUnavailable when neither a CUDA GPU nor the simulator is there to run kernels."""
    require_numba_cuda()
    if simulated():
        return
    from numba import cuda

    if not cuda.is_available():
        raise CudaUnavailable(
            "backend='cuda': no CUDA GPU is usable here (Numba found no working driver). Run the kernels in "
            "Numba's simulator with NUMBA_ENABLE_CUDASIM=1 (slow: tiny graphs only), or compile them to PTX "
            "without a GPU with graphc.backends.numba_cuda.compile_ptx(...).")


def build(graph: Graph | Program, inputs: Sequence[Node] | None = None, *, check_finite: bool = False,
          strict: bool = False, cache_dir: str | None = None, conv: str = "auto", plan=None, **cpu_options: Any):
    """Lower ``graph`` and build it for the device (see :func:`build_program`). ``conv``: conv2d as
    "im2col" + GEMM ("auto" means im2col here: no autotuning on the device yet) or a "direct" kernel.
    The cpu backend's code options (``fastmath``, ``boundscheck``, ``part_lines``) do not apply."""
    require_device()
    t0 = time.perf_counter()
    program = graph if isinstance(graph, Program) else lower_program(graph, inputs, conv=conv, plan=plan)
    codegen_s = time.perf_counter() - t0
    exe = build_program(program, check_finite=check_finite, strict=strict, cache_dir=cache_dir)
    exe.stats["codegen_s"] = codegen_s
    return exe


def lower_program(graph: Graph, inputs: Sequence[Node] | None = None, *, conv: str = "auto", plan=None) -> Program:
    """The Program this target renders for ``graph``: ``lower`` with its conv choice ("auto" and "im2col":
    im2col + GEMM; "direct": one kernel). Needs neither a GPU nor numba-cuda."""
    if conv not in ("auto", "im2col", "direct"):
        raise GraphcError(f"backend='cuda': conv must be 'auto', 'im2col' or 'direct', got {conv!r}")
    method = "im2col" if conv == "auto" else conv
    return lower(graph, inputs, {"conv": method}, plan=plan, choose_conv=lambda node, geometry: method)


def module_of(program: Program, cache_dir: str | None = None) -> tuple[Any, str, Entry, dict]:
    """The rendered module of ``program`` through the on-disk cache: (module, source, entry, stats). The
    key includes the simulator flag and numba-cuda's version; the kernels compile at their first launch
    (numba-cuda caches their machine code next to the module)."""
    from importlib.metadata import version

    from ..._version import __version__
    from .render import render

    graph = program.graph
    positions = [graph.nodes.index(n) for n in program.inputs]
    # The conv method of each node changes the program; the simulator and numba-cuda change the code.
    target = {"numba_cuda": version("numba-cuda"), "simulator": simulated(),
              "conv_methods": program.options.get("conv_methods")}
    key = cache_key(graph.structural_hash(), positions, target, op_definitions(graph), backend="numba_cuda")
    root, unusable = writable_root(cache_root(cache_dir))
    entry = Entry(root, key, backend="numba_cuda")
    stats: dict[str, Any] = {"cache_key": key, "cache_dir": str(entry.dir)}
    if unusable:
        stats["cache_dir_unusable"] = unusable
    with locked(entry.lock_path):
        problems = entry.problems()
        if problems:
            stats["cache"] = "miss" if problems == ["absent"] else "rebuilt"
            # The simulator has no machine code to cache.
            sha = entry.reset(render(program, __version__, cache=not simulated()))
            entry.write_manifest(sha, {"graph": graph.name, "program": program.summary()})
        else:
            stats["cache"] = "hit"
        module = entry.import_module(reuse=not problems)
    return module, entry.module_path.read_text(), entry, stats


def build_program(program: Program, *, check_finite: bool = False, strict: bool = False,
                  cache_dir: str | None = None):
    """The device executable of ``program``: its module from the cache, the parameter store and the
    workspace allocated on the device."""
    from ..lowering.ir import library_calls
    from .executable import CudaExecutable

    unsupported = sorted({c.name for c in library_calls(program)} - set(CUDA_LIBRARY))
    if unsupported:
        raise GraphcError(f"backend='cuda' cannot run the library calls {', '.join(unsupported)} yet (graph "
                          f"{program.name!r}); use backend='cpu'")
    t0 = time.perf_counter()
    module, source, entry, stats = module_of(program, cache_dir)
    stats["build_s"] = time.perf_counter() - t0
    return CudaExecutable(program, module, stats, source, entry, check_finite=check_finite, strict=strict)


#: The library calls of the kernel IR this target's runtime provides.
CUDA_LIBRARY = ("conv2d_im2col", "conv2d_direct", "col2im_add", "max_pool", "avg_pool", "max_pool_backward",
                "max_pool_gather")


def has_lowering(op: str) -> bool:
    """Whether this backend computes ``op``: every op with a lowering rule whose kernels it renders."""
    return has_rule(op)


__all__ = ["CudaUnavailable", "KernelResources", "build", "build_program", "compile_ptx", "has_lowering",
           "kernel_resources", "lower_program", "module_of", "require_device", "simulated"]


# -- PTX without a GPU ---------------------------------------------------------------------------------------

def compile_ptx_module(module: Any, cc: tuple[int, int] | None = None) -> dict[str, str]:
    """The PTX of every kernel of a rendered module (by name), for compute capability ``cc`` (default:
    the GPU's, or 8.0 without one). Needs NVVM (the cuda extra), not a GPU; not under the simulator."""
    if simulated():
        raise CudaUnavailable("PTX is not available under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): "
                              "compile it in a process without the simulator")
    from numba import cuda

    from .ptx import compile_ptx as kernel_ptx

    if cc is None:
        cc = cuda.get_current_device().compute_capability if cuda.is_available() else (8, 0)
    return {name: kernel_ptx(getattr(module, name), signature, cc)
            for name, signature in module.SIGNATURES.items()}


def compile_ptx(program: Program, cc: tuple[int, int] = (8, 0), cache_dir: str | None = None) -> dict[str, str]:
    """Every kernel ``program`` runs on the device, as PTX for ``cc``: the generated kernels and the
    runtime's kernels its library calls launch. No GPU needed.

    >>> ptx = graphc.backends.numba_cuda.compile_ptx(lower(graph), cc=(9, 0))   # doctest: +SKIP
    """
    require_numba_cuda()
    module, _source, _entry, _stats = module_of(program, cache_dir)
    out = compile_ptx_module(module, cc)
    out.update(runtime_ptx(program, cc))
    return out


def runtime_ptx(program: Program, cc: tuple[int, int]) -> dict[str, str]:
    """The PTX of the runtime kernels ``program``'s library calls launch (for its float dtype)."""
    from ..lowering.ir import library_calls
    from . import runtime
    from .ptx import compile_ptx as kernel_ptx

    made = library_calls(program)
    calls = {c.name for c in made}
    dtypes = {c.args[0].buffer.dtype for c in made}
    wanted = {f"{c}_kernel" for c in calls} | ({"im2col_kernel", "gemm_kernel"} if "conv2d_im2col" in calls else set())
    out = {}
    for dtype in sorted(dtypes):
        for name, (kernel, signature) in runtime.PTX_SIGNATURES(dtype).items():
            if name in wanted:
                out[f"runtime.{name}[{dtype}]"] = kernel_ptx(kernel, signature, cc)
    return out


@dataclass(frozen=True)
class KernelResources:
    """One device kernel of a Program assembled for one compute capability: ``kernel`` (the module's
    kernel name, or ``runtime.<name>[<dtype>]`` for a runtime kernel a library call launches), ``kind``
    (the phase kind: grid, swapped, reduce, gemm, serial; "runtime" for a runtime kernel), ``title``
    (the IR kernel's node, op and the user's line; the library kernel for a runtime kernel) and what
    ``ptxas -v`` reported (registers, shared memory, stack, spills)."""

    kernel: str
    kind: str
    title: str
    resources: Any  # ptx.Resources


def kernel_resources(program: Program, cc: tuple[int, int] = (8, 0), cache_dir: str | None = None,
                     ptxas: Any = None) -> list[KernelResources]:
    """Every kernel ``program`` runs on the device (:func:`compile_ptx`) assembled with ``ptxas`` for
    ``sm_<cc>``: its resources, in the module's order, then the runtime's kernels. No GPU needed."""
    from .ptx import assemble, find_ptxas

    ptxas = ptxas or find_ptxas()
    module, _source, _entry, _stats = module_of(program, cache_dir)
    out = []
    for name, text in compile_ptx(program, cc, cache_dir).items():
        (res,) = assemble(text, cc, ptxas)
        if name.startswith("runtime."):
            kind, title = "runtime", name[len("runtime."):].split("[")[0]
        else:
            kind, title = _phase_of(getattr(module, name))
        out.append(KernelResources(name, kind, title, res))
    return out


def _phase_of(kernel: Any) -> tuple[str, str]:
    """(phase kind, IR kernel title) of a generated kernel, from its docstring: "<title> (<kind>)" (render.py)."""
    doc = (getattr(kernel, "py_func", kernel).__doc__ or "").strip()
    title, _, kind = doc.rpartition(" (")
    return kind.rstrip(")"), title
