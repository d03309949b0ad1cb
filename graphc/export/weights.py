"""The weights file an exported library saves and loads: named arrays, checksummed, little-endian.

One format for every use (the values an export starts from, what a C program saves after training,
what ``--weights`` hands the executable), read by the generated C glue and by :func:`read_weights`.
Nothing in a file is read as numbers before both checksums match, so a truncated or corrupt file is
refused with a message, never loaded as garbage weights::

    offset  size  field
    0       8     magic b"GRAPHCWT"
    8       4     u32 version (1)
    12      4     u32 count: the number of arrays
    16      8     u64 body_bytes: the bytes of the records after the 32-byte header
    24      4     u32 CRC-32 (zlib's) of the body
    28      4     u32 CRC-32 of bytes 0..27 (the header before this field)
    32      ...   count records: u32 name_len, the name (UTF-8), u32 dtype code, u32 ndim,
                  i64 shape[ndim], u64 nbytes, nbytes of C-order data

dtype codes: :data:`DTYPE_CODES`. CRC-32 detects corruption (a flipped bit, a cut file), not tampering.
"""
from __future__ import annotations

import struct
import zlib
from typing import Mapping

import numpy as np

from ..io import atomic_write
from ..ir import GraphcError

MAGIC = b"GRAPHCWT"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")
#: dtype name -> the code the file stores (and the C glue's dtype numbers).
DTYPE_CODES = {"float32": 1, "float64": 2, "int32": 3, "int64": 4, "bool": 5}
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}


class WeightsFileError(GraphcError):
    """A weights file that cannot be used: not one, corrupt (a checksum differs), truncated, or holding
    arrays that do not fit the model (names, dtypes, shapes). The message names the file and the problem."""


def encode_weights(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The file's bytes for ``arrays`` (name -> array), in the mapping's order."""
    body = bytearray()
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        if a.dtype.name not in DTYPE_CODES:
            raise WeightsFileError(f"weights: array {name!r} has dtype {a.dtype}, which a weights file cannot hold "
                                   f"(one of {', '.join(DTYPE_CODES)})")
        raw = name.encode()
        body += struct.pack("<I", len(raw)) + raw + struct.pack("<II", DTYPE_CODES[a.dtype.name], a.ndim)
        body += struct.pack(f"<{a.ndim}q", *a.shape) + struct.pack("<Q", a.nbytes)
        body += a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    head = struct.pack("<8sIIQI", MAGIC, VERSION, len(arrays), len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + bytes(body)


def write_weights(path: str, arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` to ``path`` atomically (readers see the old file or the whole new one); returns ``path``."""
    atomic_write(path, encode_weights(arrays))
    return path


def read_weights(path: str) -> dict[str, np.ndarray]:
    """The arrays of the weights file ``path`` by name, after checking its magic, version, size and checksums."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise WeightsFileError(f"weights file {path!r}: cannot read it: {err.strerror}") from None
    return decode_weights(data, path)


def decode_weights(data: bytes, path: str = "<bytes>") -> dict[str, np.ndarray]:
    """The arrays encoded in ``data`` (see the module doc); ``path`` only labels the messages."""
    def fail(why: str) -> WeightsFileError:
        return WeightsFileError(f"weights file {path!r}: {why}")

    if len(data) < HEADER.size:
        raise fail(f"{len(data)} bytes is too short for a graphc weights file (a {HEADER.size}-byte header)")
    magic, version, count, body_bytes, body_crc, head_crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise fail(f"not a graphc weights file (it starts with {data[:8]!r}, not {MAGIC!r})")
    if zlib.crc32(data[:28]) != head_crc:
        raise fail("the header's checksum does not match: the file is corrupt")
    if version != VERSION:
        raise fail(f"format version {version}; this graphc reads version {VERSION}")
    if body_bytes != len(data) - HEADER.size:
        raise fail(f"the header announces {body_bytes} bytes of arrays and the file has {len(data) - HEADER.size}: "
                   f"it was cut short or has bytes appended")
    body = memoryview(data)[HEADER.size:]
    if zlib.crc32(body) != body_crc:
        raise fail(f"the arrays' CRC-32 is {zlib.crc32(body):08x}, the header says {body_crc:08x}: the file is corrupt; "
                   f"its numbers are not read")
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for _ in range(count):
        (name_len,) = struct.unpack_from("<I", body, pos)
        name = bytes(body[pos + 4:pos + 4 + name_len]).decode()
        pos += 4 + name_len
        code, ndim = struct.unpack_from("<II", body, pos)
        shape = struct.unpack_from(f"<{ndim}q", body, pos + 8)
        (nbytes,) = struct.unpack_from("<Q", body, pos + 8 + 8 * ndim)
        pos += 16 + 8 * ndim
        dtype = np.dtype(DTYPE_NAMES.get(code, "V1")).newbyteorder("<")
        if code not in DTYPE_NAMES or nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise fail(f"array {name!r}: dtype code {code}, shape {list(shape)} and {nbytes} bytes do not agree")
        arrays[name] = np.frombuffer(body[pos:pos + nbytes], dtype).reshape(shape).astype(dtype.newbyteorder("="))
        pos += nbytes
    return arrays


def crc32_table() -> list[int]:
    """The 256-entry table of zlib's CRC-32 (reflected polynomial 0xEDB88320), which the C glue embeds."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table
