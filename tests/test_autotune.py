"""The per-shape conv2d choice (im2col + GEMM or the direct loop nest): measured once per machine,
remembered in the cache directory, checked when read, and part of the compile-cache key. That both
methods compute the reference's values is tested in test_numba_cpu.py (the conv graph, each method)."""
import json

import numpy as np
import pytest

import graphc
from graphc.backends.numba_cpu import autotune
from graphc.backends.numba_cpu.autotune import ConvGeometry, conv2d_method, measure_conv2d

SMALL = ConvGeometry(N=2, C=3, H=7, W=6, Co=4, kh=3, kw=2, sh=1, sw=1, ph=1, pw=0, dh=1, dw=1, Ho=7, Wo=5)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "_memo", {})
    return tmp_path


def test_both_methods_are_timed():
    times = measure_conv2d(SMALL, "float32")
    assert set(times) == {"im2col", "direct"} and all(0 < t < 1 for t in times.values())


def test_the_measured_choice_is_remembered_on_disk(fresh, monkeypatch):
    calls = []

    def fake_measure(geometry, dtype):
        calls.append((geometry, dtype))
        return {"im2col": 2e-3, "direct": 1e-3}

    monkeypatch.setattr(autotune, "measure_conv2d", fake_measure)
    assert conv2d_method(SMALL, "float32", fresh) == "direct"
    saved = json.loads((fresh / "autotune.json").read_text())
    (entry,) = saved["conv2d"].values()
    assert entry == {"method": "direct", "im2col_s": 2e-3, "direct_s": 1e-3}
    # A new process (no in-memory memo) reads the file instead of measuring again.
    monkeypatch.setattr(autotune, "_memo", {})
    assert conv2d_method(SMALL, "float32", fresh) == "direct" and len(calls) == 1
    # Another dtype is another shape to measure.
    assert conv2d_method(SMALL, "float64", fresh) == "direct" and len(calls) == 2


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"version": 1, "conv2d": []}',
                                    b'{"version": 1, "environment": {"cpu": "elsewhere"}, "conv2d": {}}'])
def test_a_damaged_or_foreign_file_is_measured_again(fresh, monkeypatch, damage):
    (fresh / "autotune.json").write_bytes(damage)
    monkeypatch.setattr(autotune, "measure_conv2d", lambda g, d: {"im2col": 1e-3, "direct": 2e-3})
    assert conv2d_method(SMALL, "float32", fresh) == "im2col"
    assert json.loads((fresh / "autotune.json").read_text())["environment"] == autotune._environment()


def test_a_requested_method_is_used_without_measuring(fresh, monkeypatch):
    monkeypatch.setattr(autotune, "measure_conv2d", lambda g, d: pytest.fail("measured"))
    assert conv2d_method(SMALL, "float32", fresh, "direct") == "direct"
    assert conv2d_method(SMALL._replace(kh=1, kw=1, ph=0, Wo=6), "float32", fresh) == "im2col"  # 1x1: a GEMM
    with pytest.raises(ValueError, match="conv must be 'auto' or one of"):
        conv2d_method(SMALL, "float32", fresh, "winograd")


def test_the_choice_is_part_of_the_compile_cache_key(graphc_cache_dir):
    with graphc.Graph("conv_choice") as g:
        x = graphc.input("x", (2, 3, 7, 6))
        w = graphc.param("w", np.random.default_rng(0).standard_normal((4, 3, 3, 2)).astype(np.float32))
        y = g.output(graphc.conv2d(x, w, padding=(1, 0)))
    exes = {m: graphc.compile(y, inputs=[x], backend="cpu", cache_dir=graphc_cache_dir, conv=m)
            for m in ("im2col", "direct")}
    assert exes["im2col"].stats["cache_key"] != exes["direct"].stats["cache_key"]
    feed = np.random.default_rng(1).standard_normal((2, 3, 7, 6)).astype(np.float32)
    want = graphc.compile(y, inputs=[x])(feed)
    for exe in exes.values():
        np.testing.assert_allclose(exe(feed), want, rtol=2e-4, atol=2e-5)
