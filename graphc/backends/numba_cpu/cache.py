"""The on-disk compile cache: one directory per compiled graph, shared by processes.

An entry is ``<root>/<key>/`` (root: ``$GRAPHC_CACHE_DIR`` or ``~/.cache/graphc``) holding the
generated module ``graph.py``, Numba's cache files in ``__pycache__/`` (``cache=True`` keeps the
machine code next to the module it came from) and ``manifest.json``: the key, the versions that
went into it and a SHA-256 of every file. The key hashes the graph's structure (ops, attributes,
shapes, dtypes, constants, topology), the definitions (SymPy expressions) of the elementwise ops
it uses, user activations included, the call order of its inputs, the codegen options, graphc's,
Numba's, llvmlite's, NumPy's and SymPy's versions, this backend's own source and the op
registry's (graphc/ops), and the CPU (name and feature flags) that Numba compiles for.

Every read is verified against the manifest: a truncated or modified file means the entry is wiped
and rebuilt, never trusted. Writers take an exclusive ``fcntl`` lock on ``<root>/<key>.lock``, and
write files to a temporary name then ``os.replace`` them, so two processes compiling the same graph
at once serialize: the second one finds the first one's entry and loads it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ...io import atomic_write

MODULE_FILE = "graph.py"
MANIFEST_FILE = "manifest.json"
FORMAT = 1


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``override``, ``$GRAPHC_CACHE_DIR``, or ``~/.cache/graphc``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("GRAPHC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "graphc"


_FINGERPRINT: dict[str, Any] | None = None


def environment() -> dict[str, Any]:
    """Everything outside the graph that changes the machine code: versions and the target CPU."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import llvmlite
        import llvmlite.binding as llvm
        import numba
        import numpy
        import sympy

        import graphc

        backend_dir = Path(__file__).parent
        src = _sources_hash(backend_dir)
        ops = _sources_hash(backend_dir.parent.parent / "ops")
        _FINGERPRINT = {
            "format": FORMAT, "graphc": graphc.__version__, "numba": numba.__version__,
            "llvmlite": llvmlite.__version__, "numpy": numpy.__version__, "sympy": sympy.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu": numba.config.CPU_NAME or llvm.get_host_cpu_name(),
            "cpu_features": numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten(),
            "numba_opt": numba.config.OPT, "backend_source": src, "ops_source": ops,
        }
    return dict(_FINGERPRINT)


def _sources_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def op_definitions(graph) -> str:
    """A hash of the SymPy expressions and parameters of the elementwise ops ``graph`` uses: the
    structural hash names an op, and the generated code prints its expression (a user activation
    redefined under the same name, or relu's definition changed, must not find the old code)."""
    import sympy

    from ...ops import registry

    digest = hashlib.sha256()
    for name in sorted({n.op for n in graph.nodes if registry.is_registered(n.op)}):
        op = registry.get(name)
        if op.expr is not None:
            digest.update(f"{name}\n{sympy.srepr(op.expr)}\n{sorted(op.params.items())}\n".encode())
    return digest.hexdigest()


def cache_key(graph_hash: str, input_positions: list[int], options: dict[str, Any], op_definitions: str = "") -> str:
    material = json.dumps({"graph": graph_hash, "inputs": input_positions, "ops": op_definitions,
                           "options": {k: repr(v) for k, v in sorted(options.items())},
                           "env": environment()}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the duration of the block (blocks while another holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Entry:
    """One cache entry: ``<root>/<key>/``."""

    def __init__(self, root: Path, key: str):
        self.root = root
        self.key = key
        self.dir = root / key
        self.module_path = self.dir / MODULE_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self.lock_path = root / f"{key}.lock"
        self.module_name = f"_graphc_{key[:24]}"

    # -- the manifest -------------------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("key") == self.key else None

    def problems(self) -> list[str]:
        """Why this entry cannot be trusted (empty when every file matches its recorded checksum)."""
        manifest = self.read_manifest()
        if manifest is None:
            return ["no valid manifest"] if self.dir.exists() else ["absent"]
        out = []
        files = dict(manifest.get("files", {}))
        if MODULE_FILE not in files:
            out.append("the manifest lists no module")
        for name, digest in files.items():
            path = self.dir / name
            try:
                if sha256_file(path) != digest:
                    out.append(f"{name}: checksum mismatch")
            except OSError:
                out.append(f"{name}: missing")
        return out

    def numba_files(self) -> list[Path]:
        pycache = self.dir / "__pycache__"
        if not pycache.is_dir():
            return []
        return sorted(p for p in pycache.iterdir() if p.suffix in (".nbi", ".nbc") and not p.name.startswith("."))

    def write_manifest(self, source_sha: str, extra: dict[str, Any]) -> None:
        files = {MODULE_FILE: source_sha}
        for p in self.numba_files():
            files[str(p.relative_to(self.dir))] = sha256_file(p)
        manifest = {"key": self.key, "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "environment": environment(), "files": files, **extra}
        atomic_write(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    # -- writing and importing ----------------------------------------------------------------------
    def reset(self, source: str) -> str:
        """Wipe the entry and write ``source`` as its module; returns the module's SHA-256."""
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        data = source.encode()
        atomic_write(self.module_path, data)
        return hashlib.sha256(data).hexdigest()

    def import_module(self, reuse: bool = True):
        """Import ``graph.py`` under a unique module name (registered in sys.modules: Numba's cache
        re-imports it by name when it loads machine code)."""
        existing = sys.modules.get(self.module_name)
        if reuse and existing is not None and getattr(existing, "__file__", None) == str(self.module_path):
            if getattr(existing, "__graphc_sha__", None) == sha256_file(self.module_path):
                return existing
        sys.modules.pop(self.module_name, None)
        spec = importlib.util.spec_from_file_location(self.module_name, self.module_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(self.module_name, None)
            raise
        module.__graphc_sha__ = sha256_file(self.module_path)
        return module
