"""Convolutions and pooling: library calls (im2col + GEMM, direct, col2im, pooling kernels)."""
from __future__ import annotations
