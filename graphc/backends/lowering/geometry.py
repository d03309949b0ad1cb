"""Convolution geometry: target-independent data the conv rules build and a target's choice of
convolution method (numba_cpu's autotune) reads."""
from __future__ import annotations

from typing import NamedTuple


class ConvGeometry(NamedTuple):
    """One conv2d node's shapes: input [N, C, H, W], weight [Co, C, kh, kw], output [N, Co, Ho, Wo]."""

    N: int
    C: int
    H: int
    W: int
    Co: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    Ho: int
    Wo: int

    @property
    def is_pointwise(self) -> bool:
        """1x1, stride 1, no padding: already a plain GEMM, nothing to choose."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)
