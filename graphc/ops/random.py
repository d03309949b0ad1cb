"""Random numbers inside graphs (dropout masks, augmentation), reproducible from an integer key.

``random_uniform(key, shape, salt)`` is U[0, 1) from NumPy's legacy Mersenne Twister seeded with
``(key * 1_000_003 + salt) mod 2**32``; Numba implements the same generator, so compiled code
draws the same numbers as the reference backend. Feed a new key each step.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..dsl import Tensor, apply
from ..ir import Attrs, DTypeError, Node, ShapeError, as_dtype
from .registry import OpDef, no_gradient, register

KEY_MULTIPLIER = 1_000_003


def seed_of(key: int, salt: int) -> int:
    return (int(key) * KEY_MULTIPLIER + int(salt)) % (2 ** 32)


def _rule(inputs: Sequence[Node], attrs: Attrs):
    (key,) = inputs
    if key.shape != () or not key.dtype.is_int:
        raise DTypeError(f"the key must be an integer scalar, got {key.type_str}")
    if any(d < 0 for d in attrs["shape"]):
        raise ShapeError(f"negative dimension in {attrs['shape']}")
    return attrs["shape"], as_dtype(attrs["dtype"])


def _reference(arrays, attrs):
    rng = np.random.RandomState(seed_of(arrays[0], attrs["salt"]))
    return rng.random_sample(attrs["shape"])


register(OpDef("random_uniform", "random", "U[0, 1) samples of `shape` from an integer key (reproducible)",
               _rule, _reference, no_gradient, notes="not differentiable; same numbers in every backend"))


def random_uniform(key: Tensor, shape: Sequence[int], salt: int = 0, dtype="float32") -> Tensor:
    """Uniform [0, 1) samples drawn from ``key`` (an int64 scalar tensor) and a per-use ``salt``."""
    return apply("random_uniform", [key], {"shape": tuple(int(d) for d in shape), "salt": int(salt),
                                           "dtype": as_dtype(dtype).name})
