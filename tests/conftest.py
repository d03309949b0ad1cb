"""Shared test fixtures: golden files.

Golden files live in tests/golden/. Regenerate them after an intended change with::

    GRAPHC_UPDATE_GOLDEN=1 python -m pytest tests/...

and review the diff (``git diff tests/golden``) before committing.
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Callable

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"

# tests/cuda_sim runs in a process of its own, under Numba's CUDA simulator (see its conftest.py):
# NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda_sim  (or on a GPU: GRAPHC_CUDA_TESTS=device)
CUDA_TESTS = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("GRAPHC_CUDA_TESTS") == "device"
collect_ignore = [] if CUDA_TESTS else ["cuda_sim"]
UPDATE_GOLDEN = os.environ.get("GRAPHC_UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """``golden(name, text)``: assert ``text`` equals tests/golden/<name>.

    With GRAPHC_UPDATE_GOLDEN=1 the file is (re)written instead, and the test passes.
    """

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden file {path} does not exist; create it with GRAPHC_UPDATE_GOLDEN=1")
        expected = path.read_text()
        if text != expected:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                                f"golden/{name}", "actual"))
            pytest.fail(f"text differs from golden file {path} "
                        f"(GRAPHC_UPDATE_GOLDEN=1 rewrites it if the change is intended):\n{diff}")

    return check


@pytest.fixture(scope="session")
def graphc_cache_dir(request, tmp_path_factory) -> Path:
    """A compile cache (GRAPHC_CACHE_DIR) for compiled backends, kept in .pytest_cache between runs:
    a warm run loads compiled graphs instead of recompiling them (a fresh directory without the cache plugin)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("graphc-compile-cache")
    return Path(cache.mkdir("graphc-compile-cache"))


@pytest.fixture
def scratch_registry():
    """Ops a test registers are removed after it: a test's deliberately broken op (one SymPy cannot
    differentiate) must not reach the tests that walk every registered op."""
    from graphc.ops import registry

    saved = dict(registry._REGISTRY)
    yield registry
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def pytest_sessionfinish(session) -> None:
    """A pytest-xdist worker (``-n 2``) hands its fuzz counts to the controller, whose summary adds them up."""
    fuzz = sys.modules.get("fuzzgraphs")
    if fuzz is not None and hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz"] = {part: dict(counts) for part, counts in fuzz.RECORD.items()}


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without the plugin it is never called
def pytest_testnodedown(node, error) -> None:
    """In the controller of ``-n 2``: a finished worker's fuzz counts join this process's."""
    counts = getattr(node, "workeroutput", {}).get("fuzz")
    if counts and any(c["graphs"] for c in counts.values()):
        import fuzzgraphs

        for part, c in counts.items():
            fuzzgraphs.record(part, c["graphs"], c["disagreements"])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The fuzz counts (tests/test_fuzz.py), e.g. ``fuzz: 1000 graphs through optimize levels 0-3, 0 disagreements;
    60 graphs through cpu, 0 disagreements``, when fuzz tests ran in this session."""
    fuzz = sys.modules.get("fuzzgraphs")
    line = fuzz.summary_line() if fuzz is not None else None
    if line:
        terminalreporter.write_sep("-", "fuzz")
        terminalreporter.write_line(line)
