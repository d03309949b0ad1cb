"""Reductions: sum, mean, max, min over axes; argmax."""
from __future__ import annotations
