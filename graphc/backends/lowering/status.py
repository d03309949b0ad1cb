"""What a step that stopped on a run-time check tells the user: the same message on every target.

A target reports ``(code, index, value)`` when a :class:`~.ir.Check` fails (the numba_cpu step writes
it into its status array, the NumPy interpreter raises at once); :func:`label_error` turns that report
into the :class:`InputError` naming the input, the bad label, the op and the user's line.
"""
from __future__ import annotations

import numpy as np

from ...ir import InputError
from .ir import ErrorSite


def label_error(site: ErrorSite, index: int, value: int, labels: np.ndarray | None = None,
                context: str = "") -> InputError:
    """The error for label ``value`` at flat ``index`` outside ``[0, site.classes)``.

    ``labels`` is the checked input's array when the caller has it (the message then counts the bad
    labels); ``context`` is inserted after the index (``" of minibatch 3"``).

    >>> site = ErrorSite(code=1, kind="label", op="one_hot", node=2, where="train.py:7", input="y", classes=3)
    >>> str(label_error(site, 1, 5, np.array([0, 5, 9])))
    "input 'y': label 5 at index 1 is out of range [0, 3) for one_hot (%2 at train.py:7); 2 of 3 labels are out of range"
    """
    where = f" at {site.where}" if site.where else ""
    count = ""
    if labels is not None and site.input is not None:
        bad = int(np.count_nonzero((labels < 0) | (labels >= site.classes)))
        count = f"; {bad} of {labels.size} labels are out of range"
    subject = f"input {site.input!r}" if site.input is not None else f"the labels of %{site.node}"
    return InputError(f"{subject}: label {value} at index {index}{context} is out of range [0, {site.classes}) "
                      f"for {site.op} (%{site.node}{where}){count}")
