"""Shape ops: transpose, slice, unslice, concatenate (copies with index arithmetic)."""
from __future__ import annotations
