"""Checkpoints: one .npz holding every parameter (weights and optimizer state) and a manifest
(JSON, stored in the archive as ``__manifest__``) with each array's SHA-256, the epoch, the
schedule's state and the RNG state.

The file is written to a temporary name and renamed over the old one, so a process killed
mid-write leaves the previous checkpoint whole. Loading verifies the manifest and every checksum
and refuses a truncated or altered file with a clear error.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from ..io import atomic_write

FORMAT = "graphc-checkpoint-1"
MANIFEST = "__manifest__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, altered or of another format."""


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def save_checkpoint(path: str, params: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
    """Write ``params`` and ``meta`` to ``path`` (.npz) atomically."""
    manifest = {
        "format": FORMAT,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": _digest(v)} for k, v in params.items()},
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
    expected = manifest["arrays"]
    if set(arrays) != set(expected):
        raise CheckpointError(f"checkpoint {path}: arrays {sorted(arrays)} differ from the manifest's {sorted(expected)}")
    for k, v in arrays.items():
        if _digest(v) != expected[k]["sha256"] or list(v.shape) != expected[k]["shape"]:
            raise CheckpointError(f"checkpoint {path}: array {k!r} does not match its checksum")
    return arrays, manifest["meta"]
