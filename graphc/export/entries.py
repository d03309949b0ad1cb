"""What an export compiles: its entries, each a graph lowered to its own Program.

A Graph (or a list of its outputs) exports as one entry, ``run``. A graphc.nn model exports as
``predict`` (the inference graph, :func:`graphc.train.loop.build_eval`) and, when asked, ``step``
(the whole training step with the optimizer's update, :func:`graphc.train.loop.build_train_step`).
Each entry has its own parameter-store layout; :class:`Entry` records where every named parameter
lives in it, which is what the C glue needs to keep the entries' parameters consistent.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..backends import lower_for
from ..backends.executable import param_key
from ..backends.lowering import Program, Slot
from ..ir import Graph, GraphcError
from ..nn import Module
from ..train import losses as loss_defs
from ..train.loop import build_eval, build_train_step

#: The dtypes an export's arrays may have, with their C types.
C_TYPES = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t", "bool": "uint8_t"}


class ExportError(GraphcError):
    """An export that cannot be made: a bad name or option, an op or dtype the artifact cannot hold,
    a missing C compiler or a failed build (the message then has the compiler's output)."""


@dataclass
class Tensor:
    """An entry's input or output: its C-side name, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def c_type(self) -> str:
        return C_TYPES[self.dtype]

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


@dataclass
class Param:
    """A named parameter (or optimizer state) and where it lives in the store of each entry that has it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    #: entry index -> its Slot in that entry's parameter store
    slots: dict[int, Slot] = field(default_factory=dict)
    value: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Entry:
    """One exported function: ``NAME_<name>`` in C, the kernel ``symbol`` in the object file."""

    name: str
    symbol: str
    program: Program
    inputs: list[Tensor]
    outputs: list[Tensor]
    #: the initial parameter store (parameters and constants), embedded in the library
    image: bytes
    #: whether the entry updates parameters in place (a training step)
    updates: bool
    #: whether the first input's leading axis is a batch of independent rows (the executable then takes any number)
    rows: bool = False


def c_identifier(name: str, what: str) -> str:
    """``name`` checked to be a C identifier (it prefixes every symbol, file and macro of the export)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        raise ExportError(f"export: {what} {name!r} must be a C identifier (letters, digits, _; not starting with a "
                          f"digit): it prefixes every C symbol, macro and file of the export")
    return name


def model_graphs(model: Module, batch_size: int, optimizer: Any, loss: Any, train: bool, lib: str
                 ) -> list[tuple[str, Graph, list[str], bool]]:
    """(entry name, graph, output names, rows) for a model: predict, and step when training is asked for."""
    graphs = [("predict", build_eval(model, batch_size, name=f"{lib}_predict"), ["out"], True)]
    if train:
        spec = loss_defs.loss_of(loss)
        metrics = loss_defs.metrics_of(None, spec)
        step = build_train_step(model, batch_size, optimizer, loss, name=f"{lib}_step")
        graphs.append(("step", step, ["loss"] + [f"{m}_total" for m in metrics], False))
    return graphs


def lower_entry(lib: str, name: str, graph_or_outputs: Any, inputs: Sequence[Any] | None,
                output_names: Sequence[str] | None, rows: bool, optimize: int | None) -> Entry:
    """The Entry for one graph: cut, optimized (the native backends' default level) and lowered by the llvm target."""
    program = lower_for(graph_or_outputs, inputs, backend="llvm", optimize=optimize)
    return entry_of(lib, name, program, output_names, rows)


def entry_of(lib: str, name: str, program: Program, output_names: Sequence[str] | None, rows: bool) -> Entry:
    """The Entry for a lowered Program: typed arguments, the initial store image."""
    graph = program.graph
    inputs = [Tensor(_c_name(n.name, arg), n.dtype.name, tuple(n.shape)) for arg, n in zip(program.input_args, program.inputs)]
    out_names = list(output_names or [])
    out_names += [_output_name(graph, k) for k in range(len(out_names), len(program.outputs))]
    outputs = [Tensor(c_identifier(nm, "output name"), b.dtype, tuple(b.shape)) for nm, b in zip(out_names, program.outputs)]
    for t in inputs + outputs:
        if t.dtype not in C_TYPES:
            raise ExportError(f"export: {name}: {t.name} has dtype {t.dtype}, which the C API cannot pass "
                              f"(one of {', '.join(C_TYPES)})")
    rows = rows and bool(inputs) and len(inputs[0].shape) > 0
    return Entry(name, f"{lib}_{name}_kernel", program, inputs, outputs, initial_store(program),
                 bool(program.updates), rows)


#: Names a C argument cannot have.
C_KEYWORDS = frozenset("auto break case char const continue default do double else enum extern float for goto if inline "
                       "int long register restrict return short signed sizeof static struct switch typedef union "
                       "unsigned void volatile while state inputs outputs".split())


def _c_name(name: str, fallback: str) -> str:
    """An input's C argument name: its graph name when that is a C identifier (x, y, lr), else the Program's."""
    ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or "") and name not in C_KEYWORDS
    return name if ok else c_identifier(fallback, "input name")


def _output_name(graph: Graph, k: int) -> str:
    node = graph.outputs[k]
    name = node.name if node.name and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node.name) else ""
    return name or f"out{k}"


def initial_store(program: Program) -> bytes:
    """The parameter store as a fresh executable of ``program`` starts: constants and the parameters' values."""
    store = np.zeros(max(program.state_bytes, 1), np.uint8)
    for node in program.graph.nodes:
        slot = program.state.get(id(node))
        if slot is not None:
            slot.view(store)[...] = node.value
    return store.tobytes()


def param_table(entries: list[Entry]) -> list[Param]:
    """Every named parameter of the entries (their union, in first-seen order) with its slot in each entry."""
    found: dict[str, Param] = {}
    for e, entry in enumerate(entries):
        for k, node in enumerate(entry.program.graph.params):
            slot = entry.program.state.get(id(node))
            if slot is None:  # a parameter the passes left unused: no slot, nothing to keep
                continue
            key = param_key(node, k)
            param = found.setdefault(key, Param(key, node.dtype.name, tuple(node.shape), value=np.array(node.value)))
            if (param.dtype, param.shape) != (node.dtype.name, tuple(node.shape)):
                raise ExportError(f"export: parameter {key!r} is {node.dtype.name}{list(node.shape)} in {entry.name} "
                                  f"and {param.dtype}{list(param.shape)} in another entry")
            param.slots[e] = slot
    return list(found.values())

