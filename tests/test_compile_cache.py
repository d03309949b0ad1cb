"""compile(backend="cpu") on a cache hit: the entry holds the lowered Program, so a hit runs no passes,
no lowering and no rendering; a damaged Program is rebuilt (with a warning), never trusted.

The oracles: the reference backend (NumPy) and a cold build of the same graph in an empty cache.
Timing targets are not asserted here (bench/compile_time.py measures them in fresh processes).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

import graphc
import graphc.passes
from graphc import NonFiniteError
from graphc.backends import cache as cache_module
from graphc.backends import numba_cpu

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
Y = np.array([0, 1, 1, 0])


def train_step(seed: int, w_name: str = "W"):
    """A tiny training step (dense, tanh, softmax cross-entropy, SGD) with weights drawn from ``seed``."""
    r = np.random.default_rng(seed)
    with graphc.Graph("cache_step") as g:
        x = graphc.input("x", (4, 3))
        y = graphc.input("y", (4,), "int64")
        W = graphc.param(w_name, r.standard_normal((3, 2)).astype(np.float32))
        b = graphc.param("b", r.standard_normal(2).astype(np.float32))
        loss = g.output(graphc.softmax_cross_entropy(graphc.tanh(graphc.dense(x, W, b)), y))
        for p, d in zip([W, b], graphc.grad(loss, [W, b])):
            g.update(p, p - 0.5 * d)
    return loss, [x, y]


def compile_step(cache_dir: Path, seed: int = 0, **options):
    loss, inputs = train_step(seed)
    return graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=cache_dir, **options)


def run_three_steps(exe) -> tuple[list[float], dict[str, np.ndarray]]:
    losses = [float(exe(X, Y)) for _ in range(3)]
    return losses, {k: np.array(v) for k, v in exe.params.items()}


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, object]:
    """A cache directory holding the step's entry, and the cold build that filled it."""
    cache_dir = tmp_path_factory.mktemp("filled")
    cold = compile_step(cache_dir)
    assert cold.stats["cache"] == "miss"
    return cache_dir, cold


def forbid_codegen(monkeypatch) -> None:
    """Every stage a hit must skip raises: the passes, the lowering, the renderer."""
    def fail(stage):
        def raiser(*args, **kwargs):
            raise AssertionError(f"a cache hit ran {stage}")
        return raiser
    monkeypatch.setattr(graphc.passes, "optimize", fail("the passes"))
    monkeypatch.setattr(numba_cpu, "lower_program", fail("the lowering"))
    monkeypatch.setattr(numba_cpu, "lower", fail("the lowering"))
    monkeypatch.setattr(numba_cpu, "render", fail("the renderer"))


def test_a_hit_skips_the_passes_the_lowering_and_the_renderer(filled, monkeypatch):
    cache_dir, cold = filled
    forbid_codegen(monkeypatch)
    hit = compile_step(cache_dir)
    assert hit.stats["cache"] == "hit" and hit.stats["cache_key"] == cold.stats["cache_key"]
    assert "passes" not in hit.stats["stages"] and "lower" not in hit.stats["stages"]
    assert "render" not in hit.stats["stages"] and "program_load" in hit.stats["stages"]
    # the Program, its source and the graph it was lowered from come back as the cold build made them
    assert str(hit.program) == str(cold.program) and hit.source == cold.source
    assert hit.graph.text() == cold.graph.text() and hit.input_names == ["x", "y"]


def test_a_hit_takes_the_parameter_values_of_the_graph_being_compiled(filled, tmp_path):
    """Same structure, other weights: the hit runs with the new weights, equal to a cold build of them
    (bit for bit: the same code) and to the reference backend."""
    cache_dir, _ = filled
    hit = compile_step(cache_dir, seed=7)
    assert hit.stats["cache"] == "hit"
    cold = compile_step(tmp_path / "empty", seed=7)
    assert cold.stats["cache"] == "miss"
    loss, inputs = train_step(7)
    reference = graphc.compile(loss, inputs=inputs)
    hit_losses, hit_params = run_three_steps(hit)
    cold_losses, cold_params = run_three_steps(cold)
    ref_losses, ref_params = run_three_steps(reference)
    assert hit_losses == cold_losses
    np.testing.assert_allclose(hit_losses, ref_losses, rtol=1e-5)
    for name in ("W", "b"):
        np.testing.assert_array_equal(hit_params[name], cold_params[name])
        np.testing.assert_allclose(hit_params[name], ref_params[name], rtol=1e-5, atol=1e-6)
    initial = dict(zip(("W", "b"), (p.value for p in train_step(0)[0].graph.params)))
    assert not np.allclose(hit_params["W"], initial["W"])  # seed 0's weights (pickled once) were not used


def test_another_parameter_name_is_another_entry(filled):
    """The structural hash ignores names; the key does not (the Program holds them)."""
    cache_dir, cold = filled
    loss, inputs = train_step(0, w_name="kernel")
    exe = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=cache_dir)
    assert exe.stats["cache"] == "miss" and exe.stats["cache_key"] != cold.stats["cache_key"]
    assert sorted(exe.params) == ["b", "kernel"]


def test_stage_timings_are_reported(filled):
    _, cold = filled
    stages = cold.stats["stages"]
    assert set(stages) >= {"passes", "lower", "render", "import", "numba", "passes_cpu", "lower_cpu", "render_cpu",
                           "import_cpu", "numba_cpu"}
    assert all(isinstance(v, float) and v >= 0 for v in stages.values())
    assert cold.stats["optimize"].level == graphc.passes.DEFAULT_LEVEL


def test_a_driver_compiles_at_the_driver_opt_level_and_numbas_setting_is_restored(tmp_path, monkeypatch):
    # The level LLVM's passes run at is whatever Numba's config says when it builds a pass manager:
    # record it there, for a cold compile (fresh cache directory, a graph seed no other test uses).
    from numba.core import codegen, config

    seen, before = [], config.OPT
    original = codegen.CPUCodegen._pass_builder

    def recording(self, **kwargs):
        seen.append(int(config.OPT))
        return original(self, **kwargs)

    monkeypatch.setattr(codegen.CPUCodegen, "_pass_builder", recording)
    exe = compile_step(tmp_path, seed=41)
    assert exe.stats["cache"] == "miss" and seen
    assert set(seen) == {numba_cpu.DRIVER_OPT_LEVEL}
    assert config.OPT == before and type(config.OPT) is type(before)
    with pytest.raises(RuntimeError), numba_cpu.driver_opt_level(1):
        assert config.OPT == 1
        raise RuntimeError("a failed compile")
    assert config.OPT == before


def test_check_finite_replays_on_a_hit(tmp_path, monkeypatch):
    """check_finite names the node that made a NaN by replaying the graph as built: a hit keeps it."""
    def build():
        with graphc.Graph("log_ratio_hit") as g:
            x = graphc.input("x", (4,))
            out = g.output(graphc.log(x) * 2.0)
        return graphc.compile(out, backend="cpu", cache_dir=tmp_path, check_finite=True)

    assert build().stats["cache"] == "miss"
    forbid_codegen(monkeypatch)
    exe = build()
    assert exe.stats["cache"] == "hit"
    np.testing.assert_allclose(exe(np.array([1, 2, 3, 4], np.float32)), 2 * np.log([1, 2, 3, 4]), rtol=1e-6)
    with pytest.raises(NonFiniteError) as info:
        exe(np.array([1, 2, 0, 4], np.float32))
    text = str(info.value)
    assert re.search(r"log_ratio_hit: output 0 \(%\d+ .+ at .*test_compile_cache.py:\d+\) is not finite: "
                     r"first at index \[2\]: -inf", text), text
    assert re.search(r"%1:f32\[4\] = log %0 ", text), text  # the replay on the graph as built found the log


# -- a damaged Program --------------------------------------------------------------------------------------------

def rewrite_manifest(entry: cache_module.Entry) -> None:
    """Make the manifest agree with the damaged file, so that only the record's own checks can catch it."""
    manifest = json.loads(entry.manifest_path.read_text())
    manifest["files"][cache_module.PROGRAM_FILE] = hashlib.sha256(entry.program_path.read_bytes()).hexdigest()
    entry.manifest_path.write_text(json.dumps(manifest))


def damage(entry: cache_module.Entry, how: str) -> str:
    """Damage the entry's Program; returns the problem the rebuild must report."""
    data = entry.program_path.read_bytes()
    if how == "a flipped byte":
        entry.program_path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
        return "program.pkl: checksum mismatch"
    if how == "truncated":
        entry.program_path.write_bytes(data[: len(data) // 2])
        return "program.pkl: checksum mismatch"
    if how == "a flipped byte, manifest updated":
        entry.program_path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
        rewrite_manifest(entry)
        return "program.pkl: checksum mismatch"
    if how == "a sound record of something else":
        cache_module.write_record(entry.program_path, b"\x80\x05K\x07.")  # pickle of the int 7
        rewrite_manifest(entry)
        return "program.pkl: not a Program of format"
    if how == "another record format":
        entry.program_path.write_bytes(data.replace(b"\n1\n", b"\n99\n", 1))
        rewrite_manifest(entry)
        return "program.pkl: record format b'99'"
    raise ValueError(how)


DAMAGE = ["a flipped byte", "truncated", "a flipped byte, manifest updated", "a sound record of something else",
          "another record format"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_program_is_rebuilt_with_a_warning(filled, tmp_path, how):
    _, cold = filled
    cache_dir = tmp_path / "cache"
    assert compile_step(cache_dir).stats["cache"] == "miss"
    entry = cache_module.Entry(cache_dir, cold.stats["cache_key"])
    problem = damage(entry, how)
    with pytest.warns(RuntimeWarning, match=r"holds a damaged Program .*rebuilding it"):
        exe = compile_step(cache_dir)
    assert exe.stats["cache"] == "rebuilt"
    assert any(p.startswith(problem) for p in exe.stats["cache_problems"]), exe.stats["cache_problems"]
    assert "passes" in exe.stats["stages"]  # rebuilt from the graph, not from the damaged file
    loss, inputs = train_step(0)
    np.testing.assert_allclose(run_three_steps(exe)[0], run_three_steps(graphc.compile(loss, inputs=inputs))[0],
                               rtol=1e-5)
    assert entry.problems() == []  # healed: the next compile is a plain hit
    assert compile_step(cache_dir).stats["cache"] == "hit"


def test_a_record_is_verified_before_it_is_unpickled(tmp_path):
    """write_record/read_record: the payload comes back only when header and checksum agree."""
    path = tmp_path / "r.pkl"
    cache_module.write_record(path, b"payload")
    assert cache_module.read_record(path) == b"payload"
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(cache_module.RecordError, match="r.pkl: checksum mismatch"):
        cache_module.read_record(path)
    path.write_bytes(b"something else")
    with pytest.raises(cache_module.RecordError, match="r.pkl: not a graphc record"):
        cache_module.read_record(path)


# -- a hit in a new process ---------------------------------------------------------------------------------------

PROCESS = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_compile_cache import X, Y, compile_step
exe = compile_step({cache!r}, seed=3)
losses = [float(exe(X, Y)) for _ in range(2)]
epoch = exe.run_epoch(np.tile(X, (3, 1)), np.tile(Y, 3), perm=np.arange(12))
print(json.dumps({{"cache": exe.stats["cache"], "stages": sorted(exe.stats["stages"]), "losses": losses,
                  "epoch": np.asarray(epoch).ravel().tolist(), "W": exe.params["W"].tolist()}}))
"""


def run_process(cache_dir: Path) -> dict:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    code = PROCESS.format(tests=str(root / "tests"), cache=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_hit_in_a_new_process_loads_the_machine_code_and_trains_like_the_reference(tmp_path):
    """The second process loads the Program and Numba's machine code (without Numba's target set-up), then
    runs steps and an epoch (compiled there, on top of the loaded step): the same numbers as the first
    process and as the reference backend."""
    first, second = run_process(tmp_path), run_process(tmp_path)
    assert first["cache"] == "miss" and second["cache"] == "hit"
    assert "passes" in first["stages"] and "passes" not in second["stages"]
    assert second["losses"] == first["losses"] and second["epoch"] == first["epoch"] and second["W"] == first["W"]
    loss, inputs = train_step(3)
    reference = graphc.compile(loss, inputs=inputs)
    want = [float(reference(X, Y)) for _ in range(2)]
    data_x, data_y = np.tile(X, (3, 1)), np.tile(Y, 3)  # the epoch's data, visited in order (perm = 0..11)
    want += [float(reference(data_x[rows], data_y[rows])) for rows in (slice(0, 4), slice(4, 8), slice(8, 12))]
    np.testing.assert_allclose(second["losses"] + second["epoch"], want, rtol=1e-5)
    np.testing.assert_allclose(second["W"], reference.params["W"], rtol=1e-5, atol=1e-6)


def test_a_program_that_cannot_be_pickled_leaves_the_entry_without_it(tmp_path, monkeypatch, recwarn):
    """A Program pickle cannot write (a user op's SymPy class that is not importable): the entry is written
    without program.pkl and a hit lowers the graph again, silently (nothing in the entry is damaged)."""
    def unpicklable(program):
        raise TypeError("cannot pickle 'UserActivation' class")
    monkeypatch.setattr(numba_cpu, "dump_program", unpicklable)
    cold = compile_step(tmp_path)
    assert cold.stats["cache"] == "miss" and "UserActivation" in cold.stats["program_not_stored"]
    entry = cache_module.Entry(tmp_path, cold.stats["cache_key"])
    assert not entry.program_path.exists() and entry.problems() == []
    hit = compile_step(tmp_path)
    assert hit.stats["cache"] == "hit" and "passes" in hit.stats["stages"] and "render" not in hit.stats["stages"]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    loss, inputs = train_step(0)
    np.testing.assert_allclose(run_three_steps(hit)[0], run_three_steps(graphc.compile(loss, inputs=inputs))[0],
                               rtol=1e-5)
