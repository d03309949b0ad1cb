"""Program: what lowering hands to the builder. Source text plus the layout facts the Executable needs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...ir import Graph, Node


@dataclass(frozen=True)
class Slot:
    """Where one node's value lives in a byte store (the parameter store or the workspace)."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ErrorSite:
    """A run-time check in the native code; ``status[0] == code`` reports it with (index, value)."""

    code: int
    kind: str            # "label"
    op: str
    node: int            # position of the checking node in the graph (%k)
    where: str           # the user's file:line, or ""
    input: str | None    # the input the checked values come from, when they come straight from one
    classes: int = 0


@dataclass
class Program:
    """A lowered graph: one Python module (kernels inlined into a driver), its buffer plan and checks.

    ``source`` is the module text; ``step`` is the driver's name (one native entry per call) and
    ``epoch`` the name of the function that runs a whole epoch of minibatches through it.
    """

    graph: Graph
    inputs: list[Node]
    source: str
    #: Parameters and constants in the parameter store: (node, key) -> slot. Keys are param names.
    state: dict[int, Slot]
    state_bytes: int
    workspace_bytes: int
    #: The driver's arguments after the inputs: always ("state", "ws", "status").
    input_args: list[str]
    outputs: list[tuple[tuple[int, ...], str]]
    errors: list[ErrorSite]
    #: (param node position, value node position, "inplace"|"copy") for each update.
    updates: list[tuple[int, int, str]]
    #: Node position -> "input" | "state" | "ws" | "out" | "alias" | "tview" | "inplace" (the buffer plan).
    plan: dict[int, str]
    options: dict[str, Any] = field(default_factory=dict)
    step: str = "step"
    epoch: str = "epoch"

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for k in self.plan.values():
            kinds[k] = kinds.get(k, 0) + 1
        return (f"{len(self.graph.nodes)} nodes, {self.source.count(chr(10))} source lines, "
                f"workspace {self.workspace_bytes} B, parameter store {self.state_bytes} B, buffers {kinds}")
