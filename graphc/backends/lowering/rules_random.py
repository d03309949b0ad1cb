"""Random ops: the legacy Mersenne Twister seeded per node (NumPy and Numba draw the same numbers)."""
from __future__ import annotations
