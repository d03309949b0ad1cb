"""Weight initializers: seeded, reproducible functions (shape, fan_in, fan_out, rng) -> array.

>>> import numpy as np
>>> w = glorot_uniform((784, 512), 784, 512, np.random.default_rng(0))
>>> bool(abs(w).max() <= np.sqrt(6 / (784 + 512)))
True
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Initializer = Callable[[tuple, int, int, np.random.Generator], np.ndarray]


def normal(std: float = 0.01) -> Initializer:
    """N(0, std^2): the course's small random weights (std 0.01 or 0.05)."""
    def init(shape, fan_in, fan_out, rng):
        return rng.normal(0.0, std, shape)
    init.__name__ = f"normal({std})"
    return init


def zeros(shape, fan_in, fan_out, rng):
    return np.zeros(shape)


def ones(shape, fan_in, fan_out, rng):
    return np.ones(shape)


def glorot_uniform(shape, fan_in, fan_out, rng):
    """Xavier/Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, shape)


def glorot_normal(shape, fan_in, fan_out, rng):
    """Xavier/Glorot normal: N(0, 2 / (fan_in + fan_out))."""
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)


def he_normal(shape, fan_in, fan_out, rng):
    """He/Kaiming normal for ReLU: N(0, 2 / fan_in)."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)


def he_uniform(shape, fan_in, fan_out, rng):
    """He/Kaiming uniform: U(-a, a), a = sqrt(6 / fan_in)."""
    a = np.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, shape)


xavier_uniform, xavier_normal = glorot_uniform, glorot_normal

_BY_NAME: dict[str, Initializer] = {
    "zeros": zeros, "ones": ones, "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform, "xavier_normal": glorot_normal, "he_normal": he_normal,
    "he_uniform": he_uniform, "normal": normal(0.01),
}


def get(init: str | Initializer) -> Initializer:
    """An initializer by name ('he_normal', 'glorot_uniform', 'normal', ...) or the callable itself."""
    if callable(init):
        return init
    try:
        return _BY_NAME[init]
    except KeyError:
        raise ValueError(f"unknown initializer {init!r}; known: {sorted(_BY_NAME)}") from None
