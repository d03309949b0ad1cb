"""Opening an export from Python: ``graphc.export.load(directory)`` -> one callable per entry (ctypes on
``libNAME.so``, argument shapes from ``NAME.json``). For tests and for users who want the artifact's own
numbers; the artifact itself needs no Python."""
from __future__ import annotations

import ctypes
import glob
import json
import os
from typing import Any, Iterator, MutableMapping

import numpy as np

from ..ir import GraphcError, InputError


class ExportRunError(GraphcError):
    """An exported entry returned an error code: ``code`` (see NAME.h) and the library's message."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class ExportedModel:
    """An export opened with ctypes: ``model.<entry>(*arrays)`` (e.g. ``model.predict(x)``) returns its
    outputs; ``model.params`` reads and writes parameters by name; ``load_weights``/``save_weights``; one
    state object (not thread-safe)."""

    def __init__(self, directory: str, name: str | None = None):
        if name is None:
            found = sorted(glob.glob(os.path.join(directory, "*.json")))
            if len(found) != 1:
                raise InputError(f"graphc.export.load: {directory!r} holds {len(found)} exports' manifests "
                                 f"({', '.join(map(os.path.basename, found))}); name the one to load")
            name = os.path.basename(found[0])[:-5]
        with open(os.path.join(directory, f"{name}.json")) as f:
            self.manifest = json.load(f)
        self.name = name
        self.lib = ctypes.CDLL(os.path.abspath(os.path.join(directory, f"lib{name}.so")))
        fn = self._fn
        fn("create", [ctypes.POINTER(ctypes.c_void_p)])
        fn("destroy", [ctypes.c_void_p], None)
        fn("error_message", [ctypes.c_void_p], ctypes.c_char_p)
        fn("call", [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p])
        fn("set_check_finite", [ctypes.c_void_p, ctypes.c_int], None)
        for what in ("load_weights", "save_weights"):
            fn(what, [ctypes.c_void_p, ctypes.c_char_p])
        for what in ("get_param", "set_param"):
            fn(what, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t])
        state = ctypes.c_void_p()
        self._check(getattr(self.lib, f"{name}_create")(ctypes.byref(state)), "create")
        self._state = state
        self._destroy = getattr(self.lib, f"{name}_destroy")
        self.params = _Params(self)
        for k, entry in enumerate(self.manifest["entries"]):
            setattr(self, entry["name"], _EntryCall(self, k, entry))

    def _fn(self, what: str, argtypes: list, restype: Any = ctypes.c_int) -> None:
        f = getattr(self.lib, f"{self.name}_{what}")
        f.argtypes, f.restype = argtypes, restype

    def _check(self, code: int, what: str) -> None:
        if code:
            state = getattr(self, "_state", None)
            message = getattr(self.lib, f"{self.name}_error_message")(state).decode() if state else f"{what} failed"
            raise ExportRunError(f"{self.name}: {message} (error code {code})", code)

    @property
    def check_finite(self) -> None:
        raise AttributeError("check_finite is write-only")

    @check_finite.setter
    def check_finite(self, on: bool) -> None:
        getattr(self.lib, f"{self.name}_set_check_finite")(self._state, int(bool(on)))

    def load_weights(self, path: str) -> None:
        self._check(getattr(self.lib, f"{self.name}_load_weights")(self._state, os.fsencode(path)), "load_weights")

    def save_weights(self, path: str) -> None:
        self._check(getattr(self.lib, f"{self.name}_save_weights")(self._state, os.fsencode(path)), "save_weights")

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and state.value:
            self._destroy(state)
            self._state = None


class _EntryCall:
    """One entry: called with its inputs (converted to the exact dtype, C order), returns its outputs."""

    def __init__(self, model: ExportedModel, index: int, info: dict):
        self.model, self.index, self.info = model, index, info
        self.__name__ = f"{model.name}_{info['name']}"

    def __call__(self, *arrays: Any):
        spec = self.info["inputs"]
        if len(arrays) != len(spec):
            raise InputError(f"{self.__name__}: expected {len(spec)} inputs {[t['name'] for t in spec]}, got {len(arrays)}")
        ins = []
        for t, a in zip(spec, arrays):
            a = _c_array(a, t["dtype"])
            if a.shape != tuple(t["shape"]):
                raise InputError(f"{self.__name__}: input {t['name']!r} must have shape {t['shape']}, got {list(a.shape)}")
            ins.append(a)
        outs = [np.empty(t["shape"], t["dtype"]) for t in self.info["outputs"]]
        in_ptrs = (ctypes.c_void_p * max(len(ins), 1))(*(a.ctypes.data for a in ins))
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*(o.ctypes.data for o in outs))
        code = getattr(self.model.lib, f"{self.model.name}_call")(self.model._state, self.index, in_ptrs, out_ptrs)
        self.model._check(code, self.info["name"])
        return outs[0] if len(outs) == 1 else tuple(outs)


class _Params(MutableMapping):
    def __init__(self, model: ExportedModel):
        self.model = model
        self.spec = {p["name"]: p for p in model.manifest["params"]}

    def __getitem__(self, key: str) -> np.ndarray:
        p = self.spec[key]
        out = np.empty(p["shape"], p["dtype"])
        self.model._check(getattr(self.model.lib, f"{self.model.name}_get_param")(self.model._state, key.encode(),
                                                                         out.ctypes.data, out.nbytes), "get_param")
        return out

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.spec:
            raise InputError(f"{self.model.name}: no parameter {key!r}; parameters are {list(self.spec)}")
        p = self.spec[key]
        a = _c_array(value, p["dtype"])
        if a.shape != tuple(p["shape"]):
            raise InputError(f"{self.model.name}: parameter {key!r} has shape {p['shape']}, got {list(a.shape)}")
        self.model._check(getattr(self.model.lib, f"{self.model.name}_set_param")(self.model._state, key.encode(),
                                                                         a.ctypes.data, a.nbytes), "set_param")

    def __delitem__(self, key: str) -> None:
        raise InputError("the parameters of an export cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self.spec)

    def __len__(self) -> int:
        return len(self.spec)


def _c_array(value: Any, dtype: str) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` (a scalar stays 0-d: numpy.ascontiguousarray makes it 1-d)."""
    a = np.asarray(value, dtype=dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def load(directory: str, name: str | None = None) -> ExportedModel:
    """Open the export in ``directory`` (``name``: which one, when it holds several) through ctypes."""
    return ExportedModel(directory, name)
