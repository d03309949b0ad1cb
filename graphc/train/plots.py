"""Training curves as figures (matplotlib, the ``plot`` extra; the core never imports it).

:func:`history_figure` draws a :class:`~graphc.train.loop.History`: one panel per score (the loss, then each
metric), training and validation curves together, the best epoch marked, and the learning rate per epoch
in a panel of its own. ``History.plot(path)`` saves it as a PNG.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .losses import METRICS

#: The y-axis label of each score's panel.
SCORE_LABELS = {"loss": "loss", "acc": "accuracy", "mae": "mean absolute error"}


def pyplot(what: str) -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (files only, no display needed); ``what`` names the
    caller in the error when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"{what} needs matplotlib: pip install 'graphc[plot]'") from None
    return plt


def best_epoch(history: Any) -> int | None:
    """The epoch to mark as the best: early stopping's (``history.best_epoch``), else the first epoch of the
    lowest validation loss, else of the lowest training loss; None for a history without epochs."""
    if history.best_epoch is not None:
        return history.best_epoch
    for key in ("val_loss", "loss"):
        values = np.asarray(history.metrics.get(key, []), dtype=float)
        finite = np.isfinite(values)
        if finite.any():
            return history.epochs[int(np.argmin(np.where(finite, values, np.inf)))]
    return None


def history_figure(history: Any) -> Any:
    """The figure of ``history``'s curves: a panel per score with axis labels (epoch; the score), the best epoch
    as a dotted vertical line on each, and the learning rate (log scale when it spans more than a decade)."""
    plt = pyplot("History.plot")
    scores = ["loss"] + [m for m in METRICS if m in history.metrics]
    has_lr = "lr" in history.metrics
    panels = len(scores) + has_lr
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    best = best_epoch(history)
    for ax, score in zip(axes[0], scores):
        for prefix, style, kind in (("", "-", "training"), ("val_", "--", "validation")):
            if prefix + score in history.metrics:
                ax.plot(history.epochs, history.metrics[prefix + score], style, marker=".", label=f"{kind} {score}")
        if best is not None:
            ax.axvline(best, color="tab:red", linestyle=":", label=f"best epoch {best}")
        ax.set(xlabel="epoch", ylabel=SCORE_LABELS.get(score, score), title=SCORE_LABELS.get(score, score))
        ax.legend(fontsize="small")
    if has_lr:
        ax = axes[0][-1]
        lr = np.asarray(history.metrics["lr"], dtype=float)
        ax.plot(history.epochs, lr, "-", marker=".", color="tab:green", label="learning rate")
        if len(lr) and (lr > 0).all() and lr.max() > 10 * lr.min():
            ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate (first step of each epoch)")
    fig.tight_layout()
    return fig
