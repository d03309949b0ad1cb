"""The IDX format of MNIST and Fashion-MNIST: a big-endian header, then raw array data.

Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then one
big-endian uint32 per dimension. Files may be gzip-compressed (``.gz``).
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from ..io import atomic_write

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
          0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


class IDXError(ValueError):
    """A file that is not a well-formed IDX file."""


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array, checking its header against its size."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise IDXError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise IDXError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IDXError(f"{path}: header says shape {shape} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8/int8 array as an IDX file (gzipped when ``path`` ends in .gz), atomically."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise IDXError(f"write_idx supports uint8 and int8 arrays, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.tobytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write(path, payload)


def find_idx(directory: str, stem: str) -> str | None:
    """``directory``'s file for ``stem`` (e.g. 'train-images-idx3-ubyte'), in its usual spellings."""
    variants = [stem, stem.replace("-idx", ".idx")]
    for name in variants:
        for candidate in (name, name + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    return None
