"""The llvm target: a lowered Program rendered as LLVM IR with llvmlite and compiled to an object file.

    lower_program(graph, inputs) -> Program          the kernel IR (lowering.lower, conv="im2col")
    render_module(program, symbol) -> ir.Module      the entry function (render.py), its GEMMs and MT19937
    render_text(program, symbol) -> str              the .ll text, each kernel headed by its title
    compile_object(module, target) -> bytes          O3 for "native" or "generic" x86-64 (target.py)

Nothing from Numba and no generated Python: the object needs only libc and libm. The entry ABI (see
render.py) is what graphc.export builds its artifacts on; this package registers no ``graphc.compile``
backend.
"""
from __future__ import annotations

from typing import Sequence

from ...ir import Graph, GraphcError, Node
from ..lowering import Program, lower
from .random import MT_WORDS, define_mt19937
from .render import UnsupportedCallError, render_module, render_text
from .scalar import LLVMRenderError
from .target import LLVMTargetError, compile_object, jit_entry, target_machine

CONV_METHODS = ("im2col", "direct")


def lower_program(graph: Graph, inputs: Sequence[Node] | None = None, *, conv: str = "im2col",
                  fastmath: Sequence[str] = (), plan=None) -> Program:
    """The Program this target renders for ``graph``: :func:`lowering.lower` with every conv2d computed as
    ``conv`` ("im2col": columns + GEMM; "direct": a loop nest) and ``fastmath`` LLVM flags (default none:
    IEEE semantics). ``plan``: the graph's buffer plan when the passes made one."""
    if conv not in CONV_METHODS:
        raise GraphcError(f"llvm target: conv must be one of {', '.join(CONV_METHODS)}, got {conv!r}")
    options = {"conv": conv, "fastmath": tuple(sorted(fastmath))}
    return lower(graph, inputs, options, plan=plan, choose_conv=lambda node, geometry: conv)


__all__ = ["MT_WORDS", "LLVMRenderError", "LLVMTargetError", "Program", "UnsupportedCallError", "compile_object",
           "define_mt19937", "jit_entry", "lower_program", "render_module", "render_text", "target_machine"]
