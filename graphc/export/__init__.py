"""Ahead-of-time export: a graph or a model as a C library, a header and a standalone executable.

    export(model, "out", name="mnist")      entries -> Programs (lowered for the llvm target)
        render_module (every entry, one llvmlite module) -> compile_object -> mnist.o
        mnist.h, mnist_glue.c (the state object), mnist_main.c, mnist.weights, mnist.json
        cc -> libmnist.so, mnist (the executable; linked statically against mnist.o and the glue)

Nothing produced needs Python, NumPy, Numba or LLVM at run time: only libc and libm. See docs/export.md.
:func:`load` opens an export from Python (ctypes) to call its entries, which is how the tests compare it
with the other backends.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..nn import Module
from . import csource
from .build import features_of, find_cc, link, write_text
from .entries import ExportError, c_identifier, entry_of, lower_entry, model_graphs, param_table
from .loader import ExportedModel, ExportRunError, load
from .weights import WeightsFileError, read_weights, write_weights

TARGETS = ("native", "generic")
BLAS = ("generated", "system")


@dataclass
class ExportResult:
    """What :func:`export` wrote: ``files`` by kind (object, library, header, executable, glue, main,
    weights, manifest), the entries' C function names, the target and its CPU features, timings."""

    directory: str
    name: str
    entries: list[str]
    files: dict[str, str]
    target: str
    features: str
    stats: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"exported {self.name} ({', '.join(f'{self.name}_{e}' for e in self.entries)}) for {self.target} to "
                f"{self.directory}: " + ", ".join(os.path.basename(p) for p in self.files.values()))


def export(outputs_or_model: Any, directory: str, name: str | None = None, target: str = "native",
           blas: str = "generated", batch_size: int | None = None, optimizer: Any = None,
           loss: Any = "softmax_cross_entropy", train: bool = False, optimize: int | None = None,
           cc: str | None = None, inputs: Sequence[Any] | None = None) -> ExportResult:
    """Compile a graph or a model ahead of time into ``directory``: ``NAME.o``, ``libNAME.so``, ``NAME.h``,
    the executable ``NAME``, the weights ``NAME.weights`` and ``NAME.json`` (what :func:`load` reads).

    ``outputs_or_model``: a Graph or output Tensors (one entry, ``NAME_run``), or a graphc.nn model
    (``NAME_predict``, the forward pass for ``batch_size`` rows, default 1; with ``train=True`` or an
    ``optimizer`` also ``NAME_step``, the whole training step with the optimizer's update: inputs x, y,
    lr; outputs the loss and the metrics' batch totals). ``target``: "native" (this CPU's features) or
    "generic" (baseline x86-64, runs anywhere). ``blas``: "generated" (GEMM generated in LLVM IR: no
    dependency) or "system" (link the system's CBLAS, -lopenblas). ``optimize``: the passes' level
    (default: the native backends'). ``inputs``: a graph entry's argument order (as graphc.compile). ``cc``: the C compiler (default ``$CC``
    or ``cc``). The parameters exported are the model's (or the graph's) current values.

    >>> import graphc
    >>> from graphc.nn import Dense, Sequential
    >>> net = Sequential([Dense(16, "relu"), Dense(10)], input_shape=(64,))
    >>> result = graphc.export(net, "out", name="digits", batch_size=32)   # doctest: +SKIP
    >>> model = graphc.export.load("out")                                  # doctest: +SKIP
    >>> logits = model.predict(x[:32])                                     # doctest: +SKIP
    """
    started = time.perf_counter()
    if target not in TARGETS:
        raise ExportError(f"export: target must be one of {TARGETS}, got {target!r}")
    if blas not in BLAS:
        raise ExportError(f"export: blas must be one of {BLAS}, got {blas!r}")
    compiler = find_cc(cc)  # before any work: a missing compiler is found at once
    lib = c_identifier(name or _default_name(outputs_or_model), "name")
    entries = _entries(outputs_or_model, lib, batch_size, optimizer, loss, train, optimize, inputs)
    params = param_table(entries)
    stats = {"lower_s": time.perf_counter() - started}
    os.makedirs(directory, exist_ok=True)
    files = {k: os.path.join(directory, f) for k, f in (
        ("object", f"{lib}.o"), ("header", f"{lib}.h"), ("glue", f"{lib}_glue.c"), ("main", f"{lib}_main.c"),
        ("weights", f"{lib}.weights"), ("manifest", f"{lib}.json"))}
    t0 = time.perf_counter()
    _write_object(files["object"], entries, target, blas)
    stats["llvm_s"] = time.perf_counter() - t0
    features = features_of(target)
    rows = entries[0].inputs[0].shape[0] if entries[0].rows else None
    write_text(files["header"], csource.header(lib, entries, params, target, features, blas, rows))
    write_text(files["glue"], csource.glue(lib, entries, params))
    write_text(files["main"], csource.main_source(lib, entries))
    write_weights(files["weights"], {p.name: p.value for p in params})
    write_text(files["manifest"], json.dumps(_manifest(lib, entries, params, target, features, blas), indent=1))
    t0 = time.perf_counter()
    files.update(link(directory, lib, compiler, {e.name: e.image for e in entries}, blas))
    stats["cc_s"] = time.perf_counter() - t0
    stats["total_s"] = time.perf_counter() - started
    return ExportResult(os.path.abspath(directory), lib, [e.name for e in entries], files, target, features, stats)


def _default_name(obj: Any) -> str:
    name = getattr(obj, "name", None) or "model"
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name))
    return cleaned if cleaned and not cleaned[0].isdigit() else f"m_{cleaned}"


def _entries(obj: Any, lib: str, batch_size: int | None, optimizer: Any, loss: Any, train: bool,
             optimize: int | None, inputs: Sequence[Any] | None) -> list:
    if isinstance(obj, Module):
        from ..optim import SGD

        train = train or optimizer is not None
        graphs = model_graphs(obj, batch_size or 1, optimizer or SGD(0.01), loss, train, lib)
        return [lower_entry(lib, entry, graph, None, outs, rows, optimize) for entry, graph, outs, rows in graphs]
    if batch_size is not None or train or optimizer is not None:
        raise ExportError("export: batch_size, optimizer and train apply to a graphc.nn model; a Graph is exported "
                          "as built (its inputs' shapes, its own updates)")
    return [lower_entry(lib, "run", obj, inputs, None, False, optimize)]


def _write_object(path: str, entries: list, target: str, blas: str) -> None:
    """Every entry rendered into one llvmlite module, compiled to one object file."""
    from ..backends.llvm import compile_object, render_module
    from ..io import atomic_write

    module = None
    for entry in entries:
        module = render_module(entry.program, entry.symbol, module, blas=blas)
    atomic_write(path, compile_object(module, target))


def _manifest(lib: str, entries: list, params: list, target: str, features: str, blas: str) -> dict:
    from .._version import __version__

    def tensors(ts):
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

    return {"name": lib, "graphc": __version__, "target": target, "features": features, "blas": blas,
            "entries": [{"name": e.name, "graph": e.program.graph.name, "inputs": tensors(e.inputs),
                         "outputs": tensors(e.outputs), "updates": e.updates, "rows": e.rows} for e in entries],
            "params": [{"name": p.name, "dtype": p.dtype, "shape": list(p.shape)} for p in params]}


# ``graphc.export`` is this function (graphc/__init__.py); ``graphc.export.load`` opens an export.
export.load = load  # type: ignore[attr-defined]

__all__ = ["ExportError", "ExportResult", "ExportRunError", "ExportedModel", "WeightsFileError", "entry_of",
           "export", "load", "read_weights", "write_weights"]
