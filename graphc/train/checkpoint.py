"""Checkpoints: one .npz holding every parameter (weights and optimizer state) and a manifest
(JSON, stored in the archive as ``__manifest__``) with each array's SHA-256, the epoch, the
schedule's state and the RNG state.

The file is written to a temporary name and renamed over the old one, so a process killed
mid-write leaves the previous checkpoint whole. Loading verifies the manifest and every checksum
and refuses a truncated or altered file with a clear error; :func:`check_arrays` then refuses one
that is whole but does not fit the model (a missing array, another shape or dtype, NaN or Inf).
:func:`load_layers` copies some layers' weights from a checkpoint of another model (transfer learning).
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..backends.finite import first_bad
from ..io import atomic_write
from ..ir import GraphcError
from ..nn.layers import Module
from ..optim.hyperparams import user_line_text

FORMAT = "graphc-checkpoint-1"
MANIFEST = "__manifest__"


class CheckpointError(GraphcError, ValueError):
    """A checkpoint that is missing, truncated, altered, of another format, or that does not fit the model.
    (A ValueError too, as it was before graphc's errors had a common base.)"""


def array_sha256(arr: np.ndarray) -> str:
    """The SHA-256 of an array's bytes in C order (checkpoints and saved models record one per array)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def save_checkpoint(path: str, params: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
    """Write ``params`` and ``meta`` to ``path`` (.npz) atomically."""
    manifest = {
        "format": FORMAT,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": array_sha256(v)} for k, v in params.items()},
        "meta": meta or {},
    }
    if MANIFEST in params:
        raise CheckpointError(f"a parameter may not be called {MANIFEST!r}")
    text = json.dumps(manifest, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **params, **{MANIFEST: np.frombuffer(text, np.uint8)})
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify a checkpoint; returns (params, meta)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # noqa: BLE001  a damaged zip header raises anything from BadZipFile to NotImplementedError
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err})") from None
    if MANIFEST not in arrays:
        raise CheckpointError(f"checkpoint {path} has no manifest: not written by graphc")
    try:
        manifest = json.loads(arrays.pop(MANIFEST).tobytes())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays"), dict):
        raise CheckpointError(f"checkpoint {path}: its manifest is corrupt")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {manifest.get('format')!r}")
    if not isinstance(manifest.get("meta", {}), dict):
        raise CheckpointError(f"checkpoint {path}: the manifest's meta is not a JSON object")
    expected = manifest["arrays"]
    _check_listed(path, arrays, expected)
    for k, v in arrays.items():
        entry = expected[k]
        if not isinstance(entry, dict) or not {"shape", "dtype", "sha256"} <= set(entry):
            raise CheckpointError(f"checkpoint {path}: the manifest's entry for array {k!r} is corrupt")
        if array_sha256(v) != entry["sha256"] or list(v.shape) != entry["shape"]:
            raise CheckpointError(f"checkpoint {path}: array {k!r} does not match its checksum")
        if str(v.dtype) != entry["dtype"]:
            raise CheckpointError(f"checkpoint {path}: array {k!r} is {v.dtype}, its manifest entry says {entry['dtype']}")
    return arrays, manifest.get("meta", {})


def _check_listed(path: str, arrays: dict, expected: dict) -> None:
    """The archive holds exactly the arrays the manifest lists; a dropped or added one is named alone."""
    dropped, added = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if dropped:
        raise CheckpointError(f"checkpoint {path}: array(s) {dropped} listed in the manifest are missing from the file")
    if added:
        raise CheckpointError(f"checkpoint {path}: array(s) {added} in the file are not in the manifest")


def check_arrays(path: str, arrays: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Refuse ``arrays`` (loaded from ``path``) unless each of ``expected`` (the model's state: name ->
    array) is there with its shape and dtype and holds only finite values: resuming from NaN weights,
    or casting float64 into float32 silently, would be a silent wrong answer."""
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: it was written for another model")
    wrong = [f"{k} {list(arrays[k].shape)} (model: {list(v.shape)})" for k, v in expected.items()
             if arrays[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: {', '.join(wrong)}: it was written for another model")
    for k, v in expected.items():
        if arrays[k].dtype != v.dtype:
            raise CheckpointError(f"checkpoint {path}: array {k!r} is {arrays[k].dtype} where the model's is {v.dtype}")
        found = first_bad(arrays[k])
        if found is not None:
            first, value = found
            bad = int(np.count_nonzero(~np.isfinite(arrays[k])))
            raise CheckpointError(f"checkpoint {path}: array {k!r} holds {value} at index {first} "
                                  f"({bad} of {arrays[k].size} values are NaN or Inf): not resumable")


def load_layers(model: Module, path: str, layers: str | Sequence[str] | Mapping[str, str]) -> list[str]:
    """Copy the weights of the layers named ``layers`` from the checkpoint at ``path`` into ``model``
    (transfer learning: a trunk trained by another model). The checkpoint is one written by ``fit``
    (``checkpoint=``) or ``save_checkpoint(path, model.named_values())``; its arrays are named like graph
    parameters, ``<layer>.<param>``. ``layers`` is a layer name, a list of them (the same names in both
    models), or a mapping ``{layer of model: layer in the checkpoint}``. A named layer's inner layers (a
    Residual's body) come with it; optimizer state does not.

    All or nothing: a layer missing from the model or the checkpoint, a parameter of another shape or dtype,
    or a NaN or Inf raise a :class:`CheckpointError` naming it, and nothing is copied. Returns the names of
    the parameters copied."""
    arrays, _ = load_checkpoint(path)
    pairs = _layer_pairs(model, path, arrays, layers)
    for (module, k), source in pairs.items():
        target, value = f"{module.name}.{k}", arrays[source]
        if value.shape != module.values[k].shape:
            raise CheckpointError(f"load_layers: {source} in checkpoint {path} is {list(value.shape)} but the model's "
                                  f"{target} is {list(module.values[k].shape)}{user_line_text()}")
    check_arrays(path, {f"{m.name}.{k}": arrays[source] for (m, k), source in pairs.items()},
                 {f"{m.name}.{k}": m.values[k] for (m, k) in pairs})
    for (module, k), source in pairs.items():
        module.values[k] = arrays[source].copy()
    return [f"{m.name}.{k}" for (m, k) in pairs]


def _layer_pairs(model: Module, path: str, arrays: dict[str, np.ndarray],
                 layers: str | Sequence[str] | Mapping[str, str]) -> dict[tuple[Module, str], str]:
    """(module, parameter) of the model -> the checkpoint array it is loaded from, for every named layer
    and the layers inside it; refuses a name the model or the checkpoint lacks."""
    names = {layers: layers} if isinstance(layers, str) else dict(layers) if isinstance(layers, Mapping) \
        else {n: n for n in layers}
    by_name = {m.name: m for m in model.modules()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise CheckpointError(f"load_layers: the model has no layer {', '.join(map(repr, unknown))}; its layers: "
                              f"{[m.name for m in model.modules()[1:]]}{user_line_text()}")
    pairs: dict[tuple[Module, str], str] = {}
    for target, source in names.items():
        for sub in by_name[target].modules():
            for k in sub.values:
                pairs[(sub, k)] = f"{_source_layer(sub.name, target, source)}.{k}"
    missing = sorted({source for source in pairs.values() if source not in arrays})
    if missing:
        weights = sorted(k for k in arrays if k.rsplit(".", 1)[0] not in arrays and not k.startswith("__"))
        raise CheckpointError(f"load_layers: checkpoint {path} has no {', '.join(map(repr, missing))}: no layer of that "
                              f"name (its weights: {weights}){user_line_text()}")
    return pairs


def _source_layer(name: str, target: str, source: str) -> str:
    """The checkpoint's name for layer ``name`` of the model, inside the layer ``target`` loaded from ``source``:
    an inner layer named ``<target>.<inner>`` (a Residual's) is ``<source>.<inner>``; others keep their name."""
    if name == target:
        return source
    return source + name[len(target):] if name.startswith(target + ".") else name
