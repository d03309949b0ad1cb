"""Lowering: Graph -> Program, the kernel IR every target renders (see ``ir.py``).

    lower(graph, inputs) -> Program       layout (where every value lives) + schedule of kernels
    interpret.interpret(program, *inputs) -> (outputs, params)   a Program run with NumPy: the oracle
                                                                for lowering itself (the tests import it)

A target provides a renderer of Programs and the library calls of :data:`ir.LIBRARY`, nothing else.
"""
from __future__ import annotations

from ...passes.buffers import ALIGN
from .context import RULES, has_rule, op_label, rule_for
from .ir import Buffer, ErrorSite, Kernel, Program, Slot, aligned
from .layout import batched_inputs
from .lower import lower

__all__ = ["ALIGN", "Buffer", "ErrorSite", "Kernel", "Program", "RULES", "Slot", "aligned", "batched_inputs",
           "has_rule", "lower", "op_label", "rule_for"]
