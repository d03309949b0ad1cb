"""Random numbers inside graphs (dropout masks, augmentation), reproducible from an integer key.

``random_uniform(key, shape, salt)`` is U[0, 1) from NumPy's legacy Mersenne Twister seeded with
``(key * 1_000_003 + salt) mod 2**32``; Numba implements the same generator, so compiled code
draws the same numbers as the reference backend. Feed a new key each step.

``row_offset`` (an attribute, 0 when absent) makes an op draw what rows ``[row_offset, row_offset + N)``
of a batch of ``row_offset + N`` rows would draw: the draws of the first ``row_offset`` rows are skipped.
Data-parallel training gives rank r the offset of its share of the global batch, so that 2 ranks x 64
rows draw exactly the dropout masks of 1 process x 128 rows (graphc.train.distributed).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Attrs, DTypeError, Node, ShapeError, as_dtype
from . import checks
from .registry import OpDef, no_gradient, register
from .tensor import Tensor, apply

KEY_MULTIPLIER = 1_000_003


def seed_of(key: int, salt: int) -> int:
    return (int(key) * KEY_MULTIPLIER + int(salt)) % (2 ** 32)


def row_offset(attrs: Attrs) -> int:
    """The rows before this batch's whose draws are skipped (see the module docstring)."""
    return attrs.get("row_offset", 0)


def uniform_skipped(attrs: Attrs, shape: Sequence[int]) -> int:
    """How many draws random_uniform skips: ``row_offset`` rows of ``shape[1:]`` elements."""
    return row_offset(attrs) * int(np.prod(shape[1:], dtype=np.int64))


def _check_row_offset(attrs: Attrs, ndim: int) -> None:
    if row_offset(attrs) and ndim == 0:
        raise ShapeError(f"row_offset={row_offset(attrs)} needs a leading (row) axis, got a scalar shape")


def _generator(key: int, salt: int, skipped: int) -> np.random.RandomState:
    """The generator seeded from (key, salt), with its first ``skipped`` uniform draws taken."""
    rng = np.random.RandomState(seed_of(key, salt))
    if skipped:
        rng.random_sample(skipped)  # one double is two 32-bit outputs: drawing k then m is drawing k + m
    return rng


def _rule(inputs: Sequence[Node], attrs: Attrs):
    (key,) = inputs
    if key.shape != () or not key.dtype.is_int:
        raise DTypeError(f"the key must be an integer scalar, got {key.type_str}")
    shape = checks.dims("shape", attrs["shape"])
    _check_row_offset(attrs, len(shape))
    return shape, as_dtype(attrs["dtype"])


def _reference(arrays, attrs):
    rng = _generator(arrays[0], attrs["salt"], uniform_skipped(attrs, attrs["shape"]))
    return rng.random_sample(attrs["shape"])


register(OpDef("random_uniform", "random", "U[0, 1) samples of `shape` from an integer key (reproducible)",
               _rule, _reference, no_gradient, notes="not differentiable; same numbers in every backend"))


def _offset_attrs(row_offset: int) -> dict:
    """The row_offset attribute, absent when 0 (a single-process graph is unchanged, its cache key too)."""
    offset = checks.integer("row_offset", row_offset, 0)
    return {"row_offset": offset} if offset else {}


def random_uniform(key: Tensor, shape: Sequence[int], salt: int = 0, dtype="float32", row_offset: int = 0) -> Tensor:
    """Uniform [0, 1) samples drawn from ``key`` (an int64 scalar tensor) and a per-use ``salt``;
    ``row_offset``: the draws of that many leading rows are skipped (see the module docstring)."""
    with checks.located("random_uniform", [key]):
        attrs = {"shape": checks.dims("shape", shape), "salt": checks.integer("salt", salt)} | _offset_attrs(row_offset)
    return apply("random_uniform", [key], attrs | {"dtype": as_dtype(dtype).name})


# -- data augmentation: random per-sample shifts and horizontal flips of NCHW images -----------------------------
# Both draw from the same keyed generator, so they run inside a compiled training step (and so inside
# a native epoch) and give the same images in every backend.

def _augment_rule(inputs: Sequence[Node], attrs: Attrs):
    x, key = inputs
    if x.ndim != 4:
        raise ShapeError(f"needs NCHW images, got {x.type_str}")
    if key.shape != () or not key.dtype.is_int:
        raise DTypeError(f"the key must be an integer scalar, got {key.type_str}")
    return x.shape, x.dtype


def shift_offsets(key: int, salt: int, n: int, max_shift: int, skipped_rows: int = 0) -> np.ndarray:
    """[n, 2] integer (dy, dx) offsets in [-max_shift, max_shift], from U[0, 1) draws (two per image,
    after those of ``skipped_rows`` images)."""
    u = _generator(key, salt, 2 * skipped_rows).random_sample((n, 2))
    return np.floor(u * (2 * max_shift + 1)).astype(np.int64) - max_shift


def _shift_reference(arrays, attrs):
    x, key = arrays
    n, _, h, w = x.shape
    out = np.zeros_like(x)
    for i, (dy, dx) in enumerate(shift_offsets(key, attrs["salt"], n, attrs["max_shift"], row_offset(attrs))):
        # out[i, :, r, c] = x[i, :, r - dy, c - dx] where that pixel exists, 0 elsewhere
        out[i, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[i, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _flip_reference(arrays, attrs):
    x, key = arrays
    flip = _generator(key, attrs["salt"], row_offset(attrs)).random_sample(x.shape[0]) < 0.5
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


register(OpDef("random_shift2d", "random", "each image shifted by its own random (dy, dx) in "
               "[-max_shift, max_shift], zero filled (augmentation)", _augment_rule, _shift_reference, no_gradient,
               notes="applied to data; not differentiable"))
register(OpDef("random_flip2d", "random", "each image flipped left-right with probability 1/2 (augmentation)",
               _augment_rule, _flip_reference, no_gradient, notes="applied to data; not differentiable"))


def random_shift2d(x: Tensor, key: Tensor, max_shift: int = 2, salt: int = 0, row_offset: int = 0) -> Tensor:
    """Shift each NCHW image by a random whole number of pixels (at most ``max_shift``), zero filled;
    ``row_offset``: the draws of that many leading images are skipped."""
    with checks.located("random_shift2d", [x, key]):
        attrs = {"max_shift": checks.integer("max_shift", max_shift, 0), "salt": checks.integer("salt", salt)}
        attrs |= _offset_attrs(row_offset)
    return apply("random_shift2d", [x, key], attrs)


def random_flip2d(x: Tensor, key: Tensor, salt: int = 0, row_offset: int = 0) -> Tensor:
    """Flip each NCHW image left-right with probability 1/2; ``row_offset``: the draws of that many
    leading images are skipped."""
    with checks.located("random_flip2d", [x, key]):
        attrs = {"salt": checks.integer("salt", salt)} | _offset_attrs(row_offset)
    return apply("random_flip2d", [x, key], attrs)
