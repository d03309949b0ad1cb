"""Layers and models: ``graphc.nn.Sequential([Dense(512, "relu"), ...], input_shape=(784,))``."""
from . import init
from .layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Context,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Flatten,
    Maxout,
    MaxPool2D,
    Module,
    RandomFlip,
    RandomLayer,
    RandomShift,
    Residual,
    Sequential,
    UnknownActivationError,
    Upsample,
)

__all__ = ["Activation", "AvgPool2D", "BatchNorm", "Context", "Conv2D", "ConvTranspose2D", "Dense", "Dropout", "Flatten", "MaxPool2D",
           "Maxout", "Module", "RandomFlip", "RandomLayer", "RandomShift", "Residual", "Sequential", "UnknownActivationError",
           "Upsample", "init"]
