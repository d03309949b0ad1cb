"""Damage in graphc's cache directory heals; the command line ends quietly when its reader goes away.

Each damage below was seen (issue 10) to end in a bare Python exception; the cache must heal it the way
it heals a truncated or edited entry (tests/test_numba_cpu_cache.py): measure or compile again, rewrite,
never trust. Compiled graphs are tiny; every compiled result is checked against NumPy or the reference
backend, and every test uses its own cache directory.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backends import cache as cache_module
from graphc.backends.numba_cpu import autotune, kernel_cache, runtime
from graphc.backends.numba_cpu.autotune import ConvGeometry, conv2d_method

#: The graphc under test (a subprocess must import this one, not another copy on the path).
PACKAGE = Path(graphc.__file__).resolve().parent


def subprocess_env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# -- 1. autotune.json: a damaged file or entry is measured again and rewritten, never trusted ---------------------

SMALL = ConvGeometry(N=2, C=3, H=7, W=6, Co=4, kh=3, kw=2, sh=1, sw=1, ph=1, pw=0, dh=1, dw=1, Ho=7, Wo=5)
SMALL_KEY = "float32:" + ",".join(map(str, SMALL))
OTHER_KEY = "float64:" + ",".join(map(str, SMALL))
#: What the fake measurement reports: "direct" is faster, so a trusted damaged entry would show as "im2col".
FAKE_TIMES = {"im2col": 2e-3, "direct": 1e-3}
MEASURED = {"method": "direct", "im2col_s": 2e-3, "direct_s": 1e-3}


def autotune_file(table) -> str:
    return json.dumps({"version": 1, "environment": autotune._environment(), "conv2d": table})


DAMAGED_ENTRIES = {
    "a number": 3,
    "a list": ["im2col"],
    "a string": "im2col",
    "null": None,
    "method is a number": {"method": 1, "im2col_s": 1e-3, "direct_s": 2e-3},
    "method is a list": {"method": ["im2col"], "im2col_s": 1e-3, "direct_s": 2e-3},
    "a time is a string": {"method": "im2col", "im2col_s": "fast", "direct_s": 2e-3},
    "times are booleans": {"method": "im2col", "im2col_s": False, "direct_s": True},
    "a time is negative": {"method": "im2col", "im2col_s": -1.0, "direct_s": 2e-3},
    "a time is NaN": {"method": "im2col", "im2col_s": math.nan, "direct_s": 2e-3},
    "a time is missing": {"method": "im2col", "im2col_s": 1e-3},
    "an unknown field": {"method": "im2col", "im2col_s": 1e-3, "direct_s": 2e-3, "winograd_s": 0.0},
    "method is not the fastest": {"method": "im2col", "im2col_s": 3e-3, "direct_s": 2e-3},
}


@pytest.fixture
def fake_measure(tmp_path, monkeypatch):
    """A fresh process's view (no in-memory memo) and a measurement that reports FAKE_TIMES."""
    calls: list[tuple] = []
    monkeypatch.setattr(autotune, "_memo", {})

    def measure(geometry, dtype):
        calls.append((geometry, dtype))
        return dict(FAKE_TIMES)

    monkeypatch.setattr(autotune, "measure_conv2d", measure)
    return calls


@pytest.mark.parametrize("damage", sorted(DAMAGED_ENTRIES))
def test_a_damaged_autotune_entry_is_measured_again_and_rewritten(tmp_path, monkeypatch, fake_measure, damage):
    path = tmp_path / "autotune.json"
    # The damaged entry is the one this shape needs; another shape's damaged entry must not survive the
    # rewrite either, while another shape's sound entry is kept.
    sound_other = {"method": "im2col", "im2col_s": 1e-3, "direct_s": 5e-3}
    path.write_text(autotune_file({SMALL_KEY: DAMAGED_ENTRIES[damage], OTHER_KEY: sound_other,
                                   "float16:1": DAMAGED_ENTRIES[damage]}))
    assert conv2d_method(SMALL, "float32", tmp_path) == "direct"  # FAKE_TIMES' fastest
    assert len(fake_measure) == 1
    saved = json.loads(path.read_text())
    assert saved["environment"] == autotune._environment()
    assert saved["conv2d"] == {SMALL_KEY: MEASURED, OTHER_KEY: sound_other}
    assert [p.name for p in tmp_path.iterdir()] == ["autotune.json"]  # written atomically: no temporary left
    # The rewritten file is trusted by the next process: no second measurement.
    monkeypatch.setattr(autotune, "_memo", {})
    assert conv2d_method(SMALL, "float32", tmp_path) == "direct"
    assert conv2d_method(SMALL, "float64", tmp_path) == "im2col"  # the sound entry, as recorded
    assert len(fake_measure) == 1


@pytest.mark.parametrize("content", ["[1, 2]", "3", '"conv2d"', "null", '{"version": 1, "conv2d": {"x": 3}}'])
def test_an_autotune_file_of_the_wrong_shape_is_measured_again(tmp_path, fake_measure, content):
    """Regression guard (passes on main too): a top level that is not the expected table is ignored whole."""
    path = tmp_path / "autotune.json"
    path.write_text(content)
    assert conv2d_method(SMALL, "float32", tmp_path) == "direct"
    assert len(fake_measure) == 1
    assert json.loads(path.read_text())["conv2d"] == {SMALL_KEY: MEASURED}


def test_compile_heals_a_damaged_autotune_file_and_computes_the_reference_values(tmp_path, monkeypatch):
    """End to end, real measurement: the conv2d node's own entry in autotune.json is a number."""
    monkeypatch.setattr(autotune, "_memo", {})
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "autotune.json").write_text(autotune_file({SMALL_KEY: 3}))
    with graphc.Graph("conv_autotune_damaged") as g:
        x = graphc.input("x", (2, 3, 7, 6))
        w = graphc.param("w", np.random.default_rng(0).standard_normal((4, 3, 3, 2)).astype(np.float32))
        y = g.output(graphc.conv2d(x, w, padding=(1, 0)))
    exe = graphc.compile(y, inputs=[x], backend="cpu", cache_dir=cache_dir, conv="auto")
    feed = np.random.default_rng(1).standard_normal((2, 3, 7, 6)).astype(np.float32)
    want = graphc.compile(y, inputs=[x], backend="reference")(feed)
    np.testing.assert_allclose(exe(feed), want, rtol=2e-4, atol=2e-5)
    entry = json.loads((cache_dir / "autotune.json").read_text())["conv2d"][SMALL_KEY]
    assert entry["method"] in autotune.CONV_METHODS and entry["method"] == min(
        autotune.CONV_METHODS, key=lambda m: entry[f"{m}_s"])


# -- 2. an entry's path: leftovers of a killed compile, a file, links ---------------------------------------------

def small_graph():
    with graphc.Graph("recovery_small") as g:
        x = graphc.input("x", (5,))
        w = graphc.param("w", np.full(5, 1.5, np.float32))
        y = g.output(graphc.sigmoid(x * w) + 1.0)
    return y


X = np.linspace(-3, 3, 5, dtype=np.float32)
#: The NumPy oracle for small_graph at X.
WANT = 1.0 / (1.0 + np.exp(-X.astype(np.float64) * 1.5)) + 1.0


@pytest.fixture(scope="module")
def small_key(tmp_path_factory) -> str:
    """small_graph's cache key (the key does not depend on the cache directory)."""
    exe = graphc.compile(small_graph(), backend="cpu", cache_dir=tmp_path_factory.mktemp("key"))
    return exe.stats["cache_key"]


def compile_small(cache_dir: Path):
    exe = graphc.compile(small_graph(), backend="cpu", cache_dir=cache_dir)
    np.testing.assert_allclose(exe(X), WANT, rtol=1e-6)
    return exe


def assert_healthy(cache_dir: Path, key: str) -> None:
    """One sound entry, a regular lock file, nothing left over from healing."""
    entry = cache_module.Entry(cache_dir, key)
    assert entry.dir.is_dir() and not entry.dir.is_symlink()
    assert entry.problems() == []
    assert stat.S_ISREG(os.lstat(entry.lock_path).st_mode)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([key, f"{key}.lock"])


def test_a_file_where_the_entry_directory_belongs_is_replaced(tmp_path, small_key):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / small_key).write_text("not a directory")
    exe = compile_small(cache_dir)
    assert exe.stats["cache"] == "rebuilt" and exe.stats["cache_problems"] == ["no valid manifest"]
    assert_healthy(cache_dir, small_key)


def test_a_dangling_link_where_the_entry_belongs_is_replaced(tmp_path, small_key):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / small_key).symlink_to(tmp_path / "nowhere")
    exe = compile_small(cache_dir)
    assert exe.stats["cache"] == "rebuilt"
    assert not (tmp_path / "nowhere").exists()
    assert_healthy(cache_dir, small_key)


def test_a_link_to_another_directory_is_replaced_not_written_through(tmp_path, small_key):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("someone else's file")
    (cache_dir / small_key).symlink_to(elsewhere)
    exe = compile_small(cache_dir)
    assert exe.stats["cache"] == "rebuilt"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]  # nothing written there, nothing deleted
    assert_healthy(cache_dir, small_key)


@pytest.mark.parametrize("leftover", ["module only", "empty directory", "a directory named graph.py"])
def test_a_killed_compiles_directory_without_manifest_is_rebuilt(tmp_path, small_key, leftover):
    """Regression guard (passes on main too): the leftovers of a compile killed before its manifest."""
    cache_dir = tmp_path / "cache"
    entry_dir = cache_dir / small_key
    entry_dir.mkdir(parents=True)
    if leftover == "module only":
        (entry_dir / "graph.py").write_text("raise SystemExit('half a module')\n")
    elif leftover == "a directory named graph.py":
        (entry_dir / "graph.py").mkdir()
    exe = compile_small(cache_dir)
    assert exe.stats["cache"] == "rebuilt" and exe.stats["cache_problems"] == ["no valid manifest"]
    assert_healthy(cache_dir, small_key)


# -- manifests that are valid JSON but of the wrong shape ------------------------------------------------------

def wrong_shape(manifest: dict, damage: str):
    files = manifest["files"]
    if damage == "a list":
        return [manifest]
    if damage == "files missing":
        return {k: v for k, v in manifest.items() if k != "files"}
    if damage == "files is a list":
        return dict(manifest, files=sorted(files))
    if damage == "files is a string":
        return dict(manifest, files="graph.py")
    if damage == "files is a number":
        return dict(manifest, files=7)
    if damage == "a digest is a number":
        return dict(manifest, files=dict(files, **{"graph.py": 12345}))
    if damage == "a digest is null":
        return dict(manifest, files=dict(files, **{"graph.py": None}))
    if damage == "a digest is a table":
        return dict(manifest, files=dict(files, **{"graph.py": {"sha256": files["graph.py"]}}))
    if damage == "a file outside the entry":
        return dict(manifest, files=dict(files, **{"../outside.txt": files["graph.py"]}))
    if damage == "an absolute file name":
        return dict(manifest, files=dict(files, **{"/etc/hostname": files["graph.py"]}))
    raise AssertionError(damage)


MANIFEST_DAMAGE = {  # damage -> what the rebuilt entry's stats must say about it
    "a list": "no valid manifest",
    "files missing": "the manifest has no table of files",
    "files is a list": "files is a list",
    "files is a string": "files is a str",
    "files is a number": "files is a int",
    "a digest is a number": "digest of graph.py is not a SHA-256: 12345",
    "a digest is null": "digest of graph.py is not a SHA-256: None",
    "a digest is a table": "digest of graph.py is not a SHA-256",
    "a file outside the entry": "a file outside the entry: '../outside.txt'",
    "an absolute file name": "a file outside the entry: '/etc/hostname'",
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_manifest_of_the_wrong_shape_is_rebuilt_not_trusted(tmp_path, damage):
    """Valid JSON, wrong shape: rebuilt, never trusted, never a bare exception. (On main: "files is a
    list/string/number" raise ValueError/TypeError; "a list" was already rebuilt (a regression guard);
    the others were rebuilt with a vaguer reason, or, for names outside the entry, after reading files
    outside it.)"""
    cache_dir = tmp_path / "cache"
    first = compile_small(cache_dir)
    entry = first._entry
    manifest = json.loads(entry.manifest_path.read_text())
    entry.manifest_path.write_text(json.dumps(wrong_shape(manifest, damage)))
    again = compile_small(cache_dir)
    assert again.stats["cache"] == "rebuilt", again.stats
    (problem,) = again.stats["cache_problems"]
    assert MANIFEST_DAMAGE[damage] in problem
    assert_healthy(cache_dir, first.stats["cache_key"])
    assert json.loads(entry.manifest_path.read_text())["files"]["graph.py"] == manifest["files"]["graph.py"]


# -- 3. the lock's path ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty directory", "directory with files", "dangling link"])
def test_what_blocks_the_lock_file_is_moved_aside(tmp_path, small_key, damage):
    cache_dir = tmp_path / "cache"
    lock = cache_dir / f"{small_key}.lock"
    if damage == "dangling link":
        cache_dir.mkdir()
        lock.symlink_to(tmp_path / "lock-target")
    else:
        lock.mkdir(parents=True)
        if damage == "directory with files":
            (lock / "sub").mkdir()
            (lock / "sub" / "file").write_text("x")
    exe = compile_small(cache_dir)
    assert exe.stats["cache"] == "miss"
    assert not (tmp_path / "lock-target").exists()  # the link was not followed to create a file elsewhere
    assert_healthy(cache_dir, small_key)


def test_two_lockers_healing_a_directory_at_the_lock_path_still_exclude_each_other(tmp_path):
    """Both find a directory where the lock file belongs; each must end up locking the same file."""
    lock = tmp_path / "key.lock"
    (lock / "inside").mkdir(parents=True)
    start = threading.Barrier(4)
    intervals: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def hold():
        try:
            start.wait()
            with cache_module.locked(lock):
                t0 = time.monotonic()
                time.sleep(0.05)
                intervals.append((t0, time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            errors.append(err)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(intervals) == 4
    intervals.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(intervals, intervals[1:])), intervals
    assert stat.S_ISREG(os.lstat(lock).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["key.lock"]  # the directory was deleted, not just moved


def test_an_unopenable_lock_file_is_an_error_not_moved_aside(tmp_path, monkeypatch):
    """Regression guard (passes on main too) for the healing above: a regular lock file that cannot be
    opened (permissions; simulated, since root opens anything) is not damage and is left where it is."""
    lock = tmp_path / "key.lock"
    lock.write_text("")

    def refusing(real_open):
        def refuse(path, *args, **kwargs):
            if Path(path) == lock:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)
        return refuse

    monkeypatch.setattr(os, "open", refusing(os.open))
    monkeypatch.setattr("builtins.open", refusing(open))
    with pytest.raises(PermissionError):
        with cache_module.locked(lock):
            pass
    monkeypatch.undo()
    assert stat.S_ISREG(os.lstat(lock).st_mode) and [p.name for p in tmp_path.iterdir()] == ["key.lock"]


# -- 4. runtime kernels with a read-only install and a read-only home ------------------------------------------

@pytest.mark.parametrize("planted", ["world-writable directory", "file", "link to a directory"])
def test_a_fallback_directory_someone_else_could_write_is_not_used(tmp_path, monkeypatch, planted):
    """The fallback lives in the shared temporary directory; a graphc-cache-<uid> that others can write
    (or that is not a directory of ours) could hold planted code, so a private directory is used instead.
    (On main: the world-writable one was used, and a file there raised FileExistsError.)"""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cache_module, "_PRIVATE_FALLBACKS", {}, raising=False)
    shared = tmp_path / f"graphc-cache-{os.getuid()}"
    if planted == "file":
        shared.write_text("x")
    elif planted == "link to a directory":
        (tmp_path / "theirs").mkdir()
        shared.symlink_to(tmp_path / "theirs")
    else:
        shared.mkdir()
        shared.chmod(0o777)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    exe = compile_small(blocked)
    assert str(blocked) in exe.stats["cache_dir_unusable"]
    root = Path(exe.stats["cache_dir"]).parent
    assert root.parent == tmp_path and root.name.startswith(shared.name + "-")
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert compile_small(blocked).stats["cache"] == "hit"  # one private directory per process, not one per call


def test_the_users_own_fallback_directory_is_used(tmp_path, monkeypatch):
    """Regression guard (passes on main too): a private graphc-cache-<uid> is the fallback."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    exe = compile_small(blocked)
    assert exe.stats["cache_dir"] == str(tmp_path / f"graphc-cache-{os.getuid()}" / exe.stats["cache_key"])


READ_ONLY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import graphc
    from graphc.backends.numba_cpu import runtime
    assert graphc.__file__.startswith(sys.argv[1]), graphc.__file__
    r = np.random.default_rng(0)
    with graphc.Graph("read_only_conv") as g:
        x = graphc.input("x", (2, 3, 6, 5))
        w = graphc.param("w", r.standard_normal((4, 3, 3, 3)).astype(np.float32))
        y = g.output(graphc.relu(graphc.conv2d(x, w, padding=1)))
    exe = graphc.compile(y, inputs=[x], backend="cpu", conv="im2col")
    feed = r.standard_normal((2, 3, 6, 5)).astype(np.float32)
    got, want = exe(feed), graphc.compile(y, inputs=[x], backend="reference")(feed)
    print(json.dumps({"max_err": float(np.max(np.abs(got - want))), "scale": float(np.max(np.abs(want))),
                      "cache": exe.stats["cache"], "cache_dir": exe.stats["cache_dir"],
                      "cache_dir_unusable": exe.stats.get("cache_dir_unusable"),
                      "kernel_cache": runtime.conv2d_im2col._cache.cache_path}))
""")


def read_only_copy_of_graphc(tmp_path: Path) -> Path:
    """This graphc, copied and made unwritable in a way root respects too: every package directory's
    ``__pycache__`` is a regular file (so no cache directory can be made there, not even by root), and the
    whole copy is chmod a-w (which is what stops everyone else)."""
    site = tmp_path / "site"
    copy = site / "graphc"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for directory in [copy, *(p for p in copy.rglob("*") if p.is_dir())]:
        (directory / "__pycache__").write_text("a file, where Numba and Python would cache\n")
    for path in [copy, *copy.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


def make_writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_runtime_kernels_cache_falls_back_with_a_read_only_package_and_home(tmp_path):
    site = read_only_copy_of_graphc(tmp_path)
    try:
        blocker = tmp_path / "home-is-a-file"
        blocker.write_text("HOME points below this file: ~/.cache cannot be created, not even by root\n")
        home = blocker / "home"
        temp = tmp_path / "tmp"
        temp.mkdir()
        # The conditions are real: Numba's locators (mkdir + a temporary file) fail beside the module and
        # in the user's cache, and so does graphc's compile cache in the home.
        for unwritable in (site / "graphc" / "backends" / "numba_cpu" / "__pycache__", home / ".cache" / "numba"):
            with pytest.raises(OSError):
                os.makedirs(unwritable, exist_ok=True)
        script = tmp_path / "read_only_conv.py"
        script.write_text(READ_ONLY_SCRIPT)
        env = subprocess_env(HOME=str(home), TMPDIR=str(temp), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1",
                             NUMBA_CACHE_DIR=None, GRAPHC_CACHE_DIR=None, XDG_CACHE_HOME=None)
        runs = []
        for _ in range(2):  # the second process finds what the first one cached in the fallback
            proc = subprocess.run([sys.executable, str(script), str(site / "graphc")], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr == ""  # no warning: the fallback is a real cache
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        make_writable(site)
    fallback = temp / f"graphc-cache-{os.getuid()}"
    for run in runs:
        assert run["max_err"] <= 1e-5 * max(1.0, run["scale"]), run  # float32 sums of 27 products
        assert str(home / ".cache" / "graphc") in run["cache_dir_unusable"]
        assert run["cache_dir"].startswith(str(fallback))
        assert run["kernel_cache"].startswith(str(fallback / "numba"))
    assert [r["cache"] for r in runs] == ["miss", "hit"]
    assert list((fallback / "numba").rglob("runtime.conv2d_im2col-*.nbi"))  # the kernels' own cache files


def fake_njit(writable: set[str | None]):
    """Numba's njit as seen from runtime._kernel: with cache=True it finds a locator only when
    numba.config.CACHE_DIR is in ``writable``; returns what it was asked for instead of compiling."""
    import numba

    def njit(**options):
        if options["cache"] and (numba.config.CACHE_DIR or None) not in writable:
            raise RuntimeError("cannot cache function 'k': no locator available for file 'runtime.py'")
        return lambda fn: ("decorated", fn, options["cache"], numba.config.CACHE_DIR)

    return njit


def test_kernels_cache_in_the_fallback_only_when_numba_has_no_place(monkeypatch):
    import numba

    def kernel():
        pass

    saved = numba.config.CACHE_DIR
    monkeypatch.setattr(kernel_cache, "_numba_fallback_cache_dir", lambda: "/fallback/numba")
    monkeypatch.setattr(runtime, "njit", fake_njit({None}))  # Numba's own places work
    assert runtime._kernel(kernel) == ("decorated", kernel, True, saved)
    monkeypatch.setattr(runtime, "njit", fake_njit({"/fallback/numba"}))  # only graphc's fallback works
    assert runtime._kernel(kernel) == ("decorated", kernel, True, "/fallback/numba")
    assert numba.config.CACHE_DIR == saved  # the setting is Numba's user's again once decorated


def test_kernels_compile_uncached_with_one_warning_when_nothing_is_writable(monkeypatch):
    def kernel():
        pass

    monkeypatch.setattr(kernel_cache, "_warned_uncached", False)
    monkeypatch.setattr(kernel_cache, "_numba_fallback_cache_dir", lambda: None)
    monkeypatch.setattr(runtime, "njit", fake_njit(set()))
    with pytest.warns(RuntimeWarning, match="compiled in every process: cannot cache function 'k'") as seen:
        assert runtime._kernel(kernel)[2] is False
        assert runtime._kernel(kernel)[2] is False
    assert len(seen) == 1

    def other_error(**options):
        raise RuntimeError("something else")

    monkeypatch.setattr(runtime, "njit", other_error)
    with pytest.raises(RuntimeError, match="something else"):  # only the missing locator is handled
        runtime._kernel(kernel)


def test_every_cached_runtime_kernel_is_in_kernels():
    """graphc flushes runtime.KERNELS' caches when a driver fails to load; the conv2d kernels the driver
    calls were missing from that list (on main)."""
    from numba.core.registry import CPUDispatcher

    dispatchers = {v for v in vars(runtime).values() if isinstance(v, CPUDispatcher)}
    assert dispatchers == set(runtime.KERNELS)


# -- 5. `graphc ops | head -1` ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["ops"], ["ops", "--markdown"], ["ops", "relu", "sigmoid"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(argv):
    """`graphc ops | head -1`, with `head` done before graphc writes (otherwise whether graphc ever
    writes to a closed pipe depends on timing): the pipe's only reader is gone, as when a slower
    graphc meets a quick head."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"first line\n")
    head = subprocess.run(["head", "-1"], stdin=read_end, capture_output=True, timeout=60)
    os.close(read_end)
    assert head.stdout == b"first line\n"
    proc = subprocess.run([sys.executable, "-m", "graphc", *argv], stdout=write_end, stderr=subprocess.PIPE,
                          env=subprocess_env(), timeout=120)
    os.close(write_end)
    assert proc.stderr.decode() == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert proc.returncode == 141  # what a shell reports for a standard tool ended by SIGPIPE


def test_a_reader_that_reads_everything_still_gets_it_all():
    """Regression guard (passes on main too): with a reader, the whole table arrives and the status is 0."""
    proc = subprocess.run([sys.executable, "-m", "graphc", "ops"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"relu", "sigmoid", "conv2d", "matmul"} <= names
