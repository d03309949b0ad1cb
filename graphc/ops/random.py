"""Random numbers inside graphs (dropout masks, augmentation), reproducible from an integer key.

``random_uniform(key, shape, salt)`` is U[0, 1) from NumPy's legacy Mersenne Twister seeded with
``(key * 1_000_003 + salt) mod 2**32``; Numba implements the same generator, so compiled code
draws the same numbers as the reference backend. Feed a new key each step.
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


def _rule(inputs: Sequence[Node], attrs: Attrs):
    (key,) = inputs
    if key.shape != () or not key.dtype.is_int:
        raise DTypeError(f"the key must be an integer scalar, got {key.type_str}")
    return checks.dims("shape", attrs["shape"]), as_dtype(attrs["dtype"])


def _reference(arrays, attrs):
    rng = np.random.RandomState(seed_of(arrays[0], attrs["salt"]))
    return rng.random_sample(attrs["shape"])


register(OpDef("random_uniform", "random", "U[0, 1) samples of `shape` from an integer key (reproducible)",
               _rule, _reference, no_gradient, notes="not differentiable; same numbers in every backend"))


def random_uniform(key: Tensor, shape: Sequence[int], salt: int = 0, dtype="float32") -> Tensor:
    """Uniform [0, 1) samples drawn from ``key`` (an int64 scalar tensor) and a per-use ``salt``."""
    with checks.located("random_uniform", [key]):
        attrs = {"shape": checks.dims("shape", shape), "salt": checks.integer("salt", salt)}
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


def shift_offsets(key: int, salt: int, n: int, max_shift: int) -> np.ndarray:
    """[n, 2] integer (dy, dx) offsets in [-max_shift, max_shift], from U[0, 1) draws."""
    u = np.random.RandomState(seed_of(key, salt)).random_sample((n, 2))
    return np.floor(u * (2 * max_shift + 1)).astype(np.int64) - max_shift


def _shift_reference(arrays, attrs):
    x, key = arrays
    n, _, h, w = x.shape
    out = np.zeros_like(x)
    for i, (dy, dx) in enumerate(shift_offsets(key, attrs["salt"], n, attrs["max_shift"])):
        # out[i, :, r, c] = x[i, :, r - dy, c - dx] where that pixel exists, 0 elsewhere
        out[i, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[i, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _flip_reference(arrays, attrs):
    x, key = arrays
    flip = np.random.RandomState(seed_of(key, attrs["salt"])).random_sample(x.shape[0]) < 0.5
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


register(OpDef("random_shift2d", "random", "each image shifted by its own random (dy, dx) in "
               "[-max_shift, max_shift], zero filled (augmentation)", _augment_rule, _shift_reference, no_gradient,
               notes="applied to data; not differentiable"))
register(OpDef("random_flip2d", "random", "each image flipped left-right with probability 1/2 (augmentation)",
               _augment_rule, _flip_reference, no_gradient, notes="applied to data; not differentiable"))


def random_shift2d(x: Tensor, key: Tensor, max_shift: int = 2, salt: int = 0) -> Tensor:
    """Shift each NCHW image by a random whole number of pixels (at most ``max_shift``), zero filled."""
    with checks.located("random_shift2d", [x, key]):
        attrs = {"max_shift": checks.integer("max_shift", max_shift, 0), "salt": checks.integer("salt", salt)}
    return apply("random_shift2d", [x, key], attrs)


def random_flip2d(x: Tensor, key: Tensor, salt: int = 0) -> Tensor:
    """Flip each NCHW image left-right with probability 1/2."""
    with checks.located("random_flip2d", [x, key]):
        salt = checks.integer("salt", salt)
    return apply("random_flip2d", [x, key], {"salt": salt})
