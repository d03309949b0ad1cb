"""Per-shape choices measured on this machine: conv2d as im2col + GEMM or as a direct loop nest.

Which wins depends on the shapes and the machine: im2col pays for copying the input (kh*kw times
over) and for BLAS calls that may be far from BLAS's sweet spot (LeNet's first layer makes 6x784x25
GEMMs); the loop nest copies nothing but runs at whatever LLVM makes of its loops (on the development
machine it was not vectorized and lost on every shape measured: docs/backends.md). So the backend times
both kernels of ``runtime`` on the node's own geometry, once per machine: the result is kept in
``<cache dir>/autotune.json`` (written atomically, checked when read; a damaged file or entry is
measured again and rewritten), and the choice becomes part of the compile-cache key.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ...io import atomic_write
from ..cache import environment
from ..lowering.geometry import ConvGeometry

CONV_METHODS = ("im2col", "direct")
_FILE = "autotune.json"
_VERSION = 1
_memo: dict[tuple[str, str], str] = {}


def conv2d_method(geometry: ConvGeometry, dtype: str, cache_dir: Path, requested: str = "auto") -> str:
    """"im2col" or "direct" for a conv2d of ``geometry`` in ``dtype``: ``requested`` unless "auto",
    else the faster one as measured on this machine (remembered in ``cache_dir``)."""
    if requested != "auto":
        if requested not in CONV_METHODS:
            raise ValueError(f"compile: conv must be 'auto' or one of {CONV_METHODS}, got {requested!r}")
        return requested
    if geometry.is_pointwise:
        return "im2col"
    key = f"{dtype}:{','.join(map(str, geometry))}"
    memo_key = (str(cache_dir), key)
    if memo_key in _memo:
        return _memo[memo_key]
    path = Path(cache_dir) / _FILE
    table = _read(path)
    entry = table.get(key)
    if entry is None:
        entry = _measurement(measure_conv2d(geometry, dtype))
        table = _read(path)  # another process may have added entries meanwhile
        table[key] = entry
        _write(path, table)
    _memo[memo_key] = entry["method"]
    return entry["method"]


def measure_conv2d(geometry: ConvGeometry, dtype: str, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each method on random data of ``geometry``."""
    from . import runtime

    g = geometry
    rng = np.random.default_rng(0)
    x = rng.standard_normal(g.N * g.C * g.H * g.W).astype(dtype)
    w = rng.standard_normal(g.Co * g.C * g.kh * g.kw).astype(dtype)
    out = np.empty(g.N * g.Co * g.Ho * g.Wo, dtype)
    col = np.empty(g.C * g.kh * g.kw * g.Ho * g.Wo, dtype)
    shape = tuple(g)
    runs = {"im2col": lambda: runtime.conv2d_im2col(x, 0, w, 0, *shape, col, 0, out, 0),
            "direct": lambda: runtime.conv2d_direct(x, 0, w, 0, *shape, out, 0)}
    times = {}
    for method, run in runs.items():
        run()  # compile (or load from Numba's cache) and warm the caches
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        times[method] = best
    return times


def _environment() -> dict:
    """cache.environment() as it reads back from JSON."""
    return json.loads(json.dumps(environment(), default=str, sort_keys=True))


def _read(path: Path) -> dict:
    """The measured choices that can be trusted: {} when the file is missing or damaged, or was measured
    with another CPU, Numba or backend source (``cache.environment``); otherwise its well-formed entries
    only (a damaged entry is dropped, so it is measured again and the rewritten file no longer has it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION or data.get("environment") != _environment():
        return {}
    table = data.get("conv2d")
    if not isinstance(table, dict):
        return {}
    return {key: entry for key, entry in table.items() if _is_valid_entry(entry)}


def _measurement(times: dict[str, float]) -> dict:
    """The entry kept for one shape: the fastest method (the first on a tie) and each method's seconds."""
    return {"method": min(CONV_METHODS, key=times.__getitem__), **{f"{m}_s": times[m] for m in CONV_METHODS}}


def _is_valid_entry(entry: object) -> bool:
    """An entry exactly as :func:`_measurement` makes it, with finite non-negative times: anything else
    (a number, a list, a time that is a string, a method that is not the fastest) was not written by
    graphc, or not completely, and is not trusted."""
    if not isinstance(entry, dict) or set(entry) != {"method", *(f"{m}_s" for m in CONV_METHODS)}:
        return False
    times = {m: entry[f"{m}_s"] for m in CONV_METHODS}
    if not all(type(t) in (int, float) and math.isfinite(t) and t >= 0 for t in times.values()):
        return False
    return entry == _measurement(times)


def _write(path: Path, table: dict) -> None:
    payload = {"version": _VERSION, "environment": _environment(), "conv2d": table}
    try:
        atomic_write(path, json.dumps(payload, indent=1, sort_keys=True).encode())
    except OSError:  # a read-only cache: the choice is still made, only not remembered
        pass
