"""Training: fit, evaluate, predict, early stopping, checkpoints, learning-rate and batch-size schedules."""
from . import losses, schedules
from .checkpoint import CheckpointError, load_checkpoint, load_layers, save_checkpoint
from .loop import (
    EarlyStopping,
    History,
    Trainer,
    build_eval,
    build_train_step,
    evaluate,
    fit,
    initial_loss_check,
    overfit_check,
    predict,
    predict_outputs,
)
from .schedules import BatchSizeSchedule
from .search import SearchResult, Trial, random_search

__all__ = ["BatchSizeSchedule", "CheckpointError", "EarlyStopping", "History", "Trainer", "build_eval", "build_train_step", "evaluate",
           "fit", "initial_loss_check", "load_checkpoint", "load_layers", "losses", "overfit_check", "predict",
           "predict_outputs", "random_search", "save_checkpoint", "schedules", "SearchResult", "Trial"]
