"""Softmax, log-softmax, softmax cross-entropy, one-hot, batch norm."""
from __future__ import annotations
