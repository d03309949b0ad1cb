"""The numba_cpu compile cache: shared between processes, verified on every read, safe under concurrency.

Each test uses its own empty cache directory; the graphs are tiny so that a cold compile stays
around a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backends import cache as cache_module
from graphc.backends import numba_cpu

ROOT = Path(__file__).resolve().parents[1]

# A tiny training step, built the same way in every process; prints what the parent checks.
SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import graphc
    cache_dir = sys.argv[1]
    r = np.random.default_rng(0)
    with graphc.Graph("cached_step") as g:
        x = graphc.input("x", (4, 3))
        y = graphc.input("y", (4,), "int64")
        W = graphc.param("W", r.standard_normal((3, 2)).astype(np.float32))
        b = graphc.param("b", np.zeros(2, np.float32))
        loss = g.output(graphc.softmax_cross_entropy(graphc.tanh(graphc.dense(x, W, b)), y))
        for p, d in zip([W, b], graphc.grad(loss, [W, b])):
            g.update(p, p - 0.5 * d)
    t1 = time.perf_counter()
    exe = graphc.compile(loss, inputs=[x, y], backend="cpu", cache_dir=cache_dir)
    t2 = time.perf_counter()
    X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    Y = np.array([0, 1, 1, 0])
    losses = [float(exe(X, Y)) for _ in range(3)]
    print(json.dumps({"cache": exe.stats["cache"], "numba_cache_hit": exe.stats["numba_cache_hit"],
                      "build_s": t2 - t1, "losses": losses, "W": exe.params["W"].tolist(),
                      "key": exe.stats["cache_key"]}))
""")


def run_script(tmp_path: Path, cache_dir: Path) -> subprocess.Popen:
    script = tmp_path / "cached_step.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(script), str(cache_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def expected_losses() -> list[float]:
    """The same three SGD steps in plain NumPy (float64), the oracle for every process."""
    r = np.random.default_rng(0)
    W = r.standard_normal((3, 2)).astype(np.float32).astype(np.float64)
    b = np.zeros(2)
    X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3).astype(np.float64)
    Y = np.array([0, 1, 1, 0])
    losses = []
    for _ in range(3):
        z = X @ W + b
        h = np.tanh(z)
        p = np.exp(h - h.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        losses.append(-np.mean(np.log(p[np.arange(4), Y])))
        dh = (p - np.eye(2)[Y]) / 4
        dz = dh * (1 - h ** 2)
        W, b = W - 0.5 * X.T @ dz, b - 0.5 * dz.sum(0)
    return losses


def test_second_process_loads_the_cached_entry(tmp_path):
    cache_dir = tmp_path / "cache"
    first = result(run_script(tmp_path, cache_dir))
    second = result(run_script(tmp_path, cache_dir))
    assert first["cache"] == "miss" and not first["numba_cache_hit"]
    assert second["cache"] == "hit" and second["numba_cache_hit"]
    assert second["key"] == first["key"]
    np.testing.assert_allclose(first["losses"], expected_losses(), rtol=1e-5)
    assert second["losses"] == first["losses"] and second["W"] == first["W"]
    # One entry: the module, Numba's files for it, and a manifest whose checksums match.
    entry = cache_module.Entry(cache_dir, first["key"])
    assert entry.problems() == []
    manifest = json.loads(entry.manifest_path.read_text())
    assert set(manifest["files"]) >= {"graph.py"} and any(f.endswith(".nbc") for f in manifest["files"])
    assert manifest["environment"]["numba"] and manifest["environment"]["cpu"]


def test_concurrent_compiles_of_one_graph_both_succeed(tmp_path):
    cache_dir = tmp_path / "cache"
    procs = [run_script(tmp_path, cache_dir) for _ in range(2)]
    results = [result(p) for p in procs]
    assert sorted(r["cache"] for r in results) == ["hit", "miss"]  # the lock serialized them
    assert results[0]["losses"] == results[1]["losses"]
    np.testing.assert_allclose(results[0]["losses"], expected_losses(), rtol=1e-5)
    assert cache_module.Entry(cache_dir, results[0]["key"]).problems() == []


def small_graph(scale: float = 1.0, shape=(5,), dtype="float32"):
    with graphc.Graph("small") as g:
        x = graphc.input("x", shape, dtype)
        w = graphc.param("w", np.full(shape, scale, dtype))
        y = g.output(graphc.sigmoid(x * w) + 1.0)
    return y


@pytest.fixture
def compiled(tmp_path):
    cache_dir = tmp_path / "cache"
    exe = graphc.compile(small_graph(), backend="cpu", cache_dir=cache_dir)
    return exe, cache_dir


def sigmoid_plus_one(x, w):
    return 1.0 / (1.0 + np.exp(-x * w)) + 1.0


@pytest.mark.parametrize("damage", ["truncate module", "edit module", "truncate numba data", "delete numba index",
                                    "garbage manifest"])
def test_damaged_entry_is_detected_and_rebuilt(compiled, damage):
    exe, cache_dir = compiled
    entry = exe._entry
    if damage == "truncate module":
        data = entry.module_path.read_bytes()
        entry.module_path.write_bytes(data[: len(data) // 2])
    elif damage == "edit module":
        entry.module_path.write_text(entry.module_path.read_text().replace("+ ", "- "))
    elif damage == "truncate numba data":
        nbc = next(p for p in entry.numba_files() if p.suffix == ".nbc")
        nbc.write_bytes(nbc.read_bytes()[:100])
    elif damage == "delete numba index":
        next(p for p in entry.numba_files() if p.suffix == ".nbi").unlink()
    else:
        entry.manifest_path.write_text("{not json")
    assert entry.problems(), "the damage must be visible to the manifest check"
    again = graphc.compile(small_graph(), backend="cpu", cache_dir=cache_dir)
    assert again.stats["cache"] == "rebuilt", again.stats
    assert again.stats["cache_problems"]
    x = np.linspace(-3, 3, 5, dtype=np.float32)
    np.testing.assert_allclose(again(x), sigmoid_plus_one(x, 1.0), rtol=1e-6)
    assert entry.problems() == []
    assert again.source == entry.module_path.read_text() == numba_cpu.render(again.program, graphc.__version__)  # rewritten


def test_key_follows_structure_shapes_and_dtypes_not_parameter_values(compiled):
    exe, cache_dir = compiled
    same_structure = graphc.compile(small_graph(scale=3.0), backend="cpu", cache_dir=cache_dir)
    assert same_structure.stats["cache_key"] == exe.stats["cache_key"]  # values live in the parameter store
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(same_structure(x), sigmoid_plus_one(x, 3.0), rtol=1e-6)
    np.testing.assert_allclose(exe(x), sigmoid_plus_one(x, 1.0), rtol=1e-6)
    other_shape = graphc.compile(small_graph(shape=(6,)), backend="cpu", cache_dir=cache_dir)
    other_dtype = graphc.compile(small_graph(dtype="float64"), backend="cpu", cache_dir=cache_dir)
    keys = {exe.stats["cache_key"], other_shape.stats["cache_key"], other_dtype.stats["cache_key"]}
    assert len(keys) == 3
    assert sorted(p.name for p in cache_dir.iterdir() if p.is_dir()) == sorted(keys)


def test_key_covers_versions_and_cpu(monkeypatch):
    base = cache_module.environment()
    for field in ("graphc", "numba", "numpy", "llvmlite", "cpu", "cpu_features", "backend_source"):
        assert base[field], field
    key = cache_module.cache_key("graph", [0], {})
    for field, value in (("numba", "0.0.0"), ("cpu", "another-cpu"), ("cpu_features", "-avx512f")):
        monkeypatch.setattr(cache_module, "_FINGERPRINT", dict(base, **{field: value}))
        assert cache_module.cache_key("graph", [0], {}) != key, field
    monkeypatch.setattr(cache_module, "_FINGERPRINT", base)
    assert cache_module.cache_key("graph", [0], {}) == key
    assert cache_module.cache_key("graph", [1], {}) != key  # the inputs' call order
    assert cache_module.cache_key("graph", [0], {"boundscheck": True}) != key


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "from_env"))
    assert cache_module.cache_root() == tmp_path / "from_env"
    monkeypatch.delenv("GRAPHC_CACHE_DIR")
    assert cache_module.cache_root() == Path.home() / ".cache" / "graphc"


def test_unwritable_cache_dir_falls_back_to_a_temporary_one(tmp_path):
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("a file where the cache directory should be")
    exe = graphc.compile(small_graph(), backend="cpu", cache_dir=blocked)
    assert blocked.as_posix() in exe.stats["cache_dir_unusable"]
    assert exe.stats["cache_dir"].startswith(os.path.join(tempfile.gettempdir(), "graphc-cache-"))
    x = np.linspace(-3, 3, 5, dtype=np.float32)
    np.testing.assert_allclose(exe(x), sigmoid_plus_one(x, 1.0), rtol=1e-6)


def test_key_covers_the_sources_of_every_package_the_backend_compiles_with(monkeypatch):
    """numba_cpu's machine code comes from its own package, the lowering and the llvm target (the llvm driver
    renders with it; the runtime's float32 exp/tanh are built by llvm/mathf.py): a change to any file of them is
    a new key, so a cached entry never runs code an edit of those files replaced."""
    hashed = []
    monkeypatch.setattr(cache_module, "_SOURCES", {})
    monkeypatch.setattr(cache_module, "_FINGERPRINT", {})  # versions and CPU: not what this test is about
    monkeypatch.setattr(cache_module, "_sources_hash", lambda directory: hashed.append(directory.name) or "h")
    cache_module.environment("numba_cpu")
    assert hashed == ["numba_cpu", "lowering", "llvm"]
