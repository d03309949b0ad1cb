"""The on-disk compile cache: one directory per compiled graph, shared by processes.

An entry is ``<root>/<key>/`` (root: ``$GRAPHC_CACHE_DIR`` or ``~/.cache/graphc``) holding the
generated module ``graph.py``, Numba's cache files in ``__pycache__/`` (``cache=True`` keeps the
machine code next to the module it came from), for an entry ``graphc.compile`` made the lowered
Program ``program.pkl`` (a record: :func:`write_record`) and ``manifest.json``: the key, the versions
that went into it and a SHA-256 of every file. ``graphc.compile``'s key is of the graph before the
passes (``before_passes``: the passes' and the IR's sources join it), so that a hit skips them. The key hashes the graph's structure (ops, attributes,
shapes, dtypes, constants, topology), the definitions (SymPy expressions) of the elementwise ops
it uses, user activations included, the call order of its inputs, the codegen options, graphc's,
Numba's, llvmlite's, NumPy's and SymPy's versions, this backend's own source and the op
registry's (graphc/ops), and the CPU (name and feature flags) that Numba compiles for.

Every read is verified against the manifest: a truncated or modified file, or a manifest of the
wrong shape, means the entry is wiped and rebuilt, never trusted. Writers take an exclusive ``fcntl``
lock on ``<root>/<key>.lock``, and write files to a temporary name then ``os.replace`` them, so two
processes compiling the same graph at once serialize: the second one finds the first one's entry and
loads it. Whatever else occupies an entry's or a lock's path (a file where the entry directory
belongs, a directory where the lock file belongs, a dangling link) is moved aside and deleted: the
cache directory is graphc's, and damage in it is healed, not reported.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ..io import atomic_write

MODULE_FILE = "graph.py"
MANIFEST_FILE = "manifest.json"
#: The lowered Program, kept so that a hit needs no passes, lowering or rendering (see :func:`write_record`).
PROGRAM_FILE = "program.pkl"
#: The llvm driver's kernels: the object file (a record, see write_record) and its .ll text.
KERNELS_FILE = "kernels.o"
KERNELS_TEXT_FILE = "kernels.ll"
FORMAT = 2  # 2: entries of compile() are keyed by the graph before the passes and hold the Program
#: A record file starts with this line, then the format version, the payload's SHA-256 and the payload.
RECORD_MAGIC = b"graphc-record\n"
RECORD_FORMAT = 1


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``override``, ``$GRAPHC_CACHE_DIR``, or ``~/.cache/graphc``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("GRAPHC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "graphc"


def fallback_root() -> Path:
    """The per-user cache in the system's temporary directory, used when the cache root is unwritable:
    ``graphc-cache-<uid>``. Every user can create names there, and a cache holds code graphc imports and
    machine code Numba loads, so that directory is used only if this user owns it and no one else can
    write to it; otherwise (planted by someone else, or a file in its place) this process gets a fresh
    private directory of its own."""
    path = Path(tempfile.gettempdir()) / f"graphc-cache-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return path
    if path not in _PRIVATE_FALLBACKS:
        _PRIVATE_FALLBACKS[path] = Path(tempfile.mkdtemp(prefix=f"{path.name}-"))
    return _PRIVATE_FALLBACKS[path]


_PRIVATE_FALLBACKS: dict[Path, Path] = {}


def writable_root(root: Path) -> tuple[Path, str | None]:
    """``root`` if files can be created in it (made if missing), else :func:`fallback_root`; the second
    value says why ``root`` was not usable (None when it was)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return root, None
    except OSError as err:  # a read-only or missing home, a file where the directory belongs...
        return fallback_root(), f"{root}: {err}"


_FINGERPRINT: dict[str, Any] | None = None
_SOURCES: dict[str, str] = {}
#: The other packages of graphc/backends whose code a backend's machine code comes from: numba_cpu's llvm
#: driver renders with the llvm target, and its runtime builds float32 exp/tanh with llvm/mathf.py.
COMPILES_WITH: dict[str, tuple[str, ...]] = {"numba_cpu": ("llvm",)}


def environment(backend: str = "numba_cpu") -> dict[str, Any]:
    """Everything outside the graph that changes the machine code: versions, the host CPU, and the
    sources of ``backend`` (a package of graphc/backends), of the lowering it renders and of the
    scalar printer; a target adds its own facts (a GPU's compute capability) to the key's options."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import llvmlite
        import llvmlite.binding as llvm
        import numba
        import numpy
        import sympy

        from .._version import __version__

        _FINGERPRINT = {
            "format": FORMAT, "graphc": __version__, "numba": numba.__version__,
            "llvmlite": llvmlite.__version__, "numpy": numpy.__version__, "sympy": sympy.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu": numba.config.CPU_NAME or llvm.get_host_cpu_name(),
            "cpu_features": numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten(),
            "numba_opt": numba.config.OPT, "ops_source": _sources_hash(Path(__file__).parent.parent / "ops"),
        }
    if backend not in _SOURCES:
        here = Path(__file__).parent
        # The renderer, the lowering it renders, the scalar printer and the targets the backend compiles with:
        # a change to any changes the code.
        _SOURCES[backend] = "".join(_sources_hash(here / package) for package in
                                    (backend, "lowering", *COMPILES_WITH.get(backend, ()))) + \
            hashlib.sha256((here / "numba_scalar.py").read_bytes()).hexdigest()
    return {"backend": backend, "backend_source": _SOURCES[backend], **_FINGERPRINT}


def front_sources() -> str:
    """A hash of what turns a graph as built into the graph that is lowered: the passes and the IR they
    rewrite (part of the key of an entry found before the passes run, see :func:`cache_key`)."""
    if "front" not in _SOURCES:
        here = Path(__file__).parent.parent
        _SOURCES["front"] = _sources_hash(here / "passes") + _sources_hash(here / "ir")
    return _SOURCES["front"]


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

    from ..ops import registry

    digest = hashlib.sha256()
    for name in sorted({n.op for n in graph.nodes if registry.is_registered(n.op)}):
        op = registry.get(name)
        if op.expr is not None:
            digest.update(f"{name}\n{sympy.srepr(op.expr)}\n{sorted(op.params.items())}\n".encode())
    return digest.hexdigest()


def cache_key(graph_hash: str, input_positions: list[int], options: dict[str, Any], op_definitions: str = "",
              backend: str = "numba_cpu", before_passes: bool = False) -> str:
    """The entry's name. ``before_passes``: ``graph_hash`` is of the graph as built (compile()'s key, whose
    entry also holds the Program), so the passes' and the IR's sources go into the key as well."""
    material = {"graph": graph_hash, "inputs": input_positions, "ops": op_definitions,
                "options": {k: repr(v) for k, v in sorted(options.items())}, "env": environment(backend)}
    if before_passes:
        material["front"] = front_sources()
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class RecordError(Exception):
    """A record file that cannot be trusted (internal: the entry is rebuilt, never used)."""


def write_record(path: Path, payload: bytes) -> None:
    """Write ``payload`` atomically behind a header: magic line, format version, the payload's SHA-256."""
    header = RECORD_MAGIC + f"{RECORD_FORMAT}\n{hashlib.sha256(payload).hexdigest()}\n".encode()
    atomic_write(path, header + payload)


def read_record(path: Path) -> bytes:
    """The payload of a record written by :func:`write_record`, verified; RecordError says why not."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecordError(f"{path.name}: cannot be read ({err})") from None
    if not data.startswith(RECORD_MAGIC):
        raise RecordError(f"{path.name}: not a graphc record")
    lines = data[len(RECORD_MAGIC):].split(b"\n", 2)
    if len(lines) != 3:
        raise RecordError(f"{path.name}: truncated header")
    version, digest, payload = lines
    if version != str(RECORD_FORMAT).encode():
        raise RecordError(f"{path.name}: record format {version[:20]!r}, this graphc reads {RECORD_FORMAT}")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise RecordError(f"{path.name}: checksum mismatch")
    return payload


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def discard(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link, directory tree) without following links: it is first
    renamed to a unique name beside it, so that the path is free at once even if deleting fails."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:  # already gone (another process healed it first)
        return
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            trash.unlink()


def _open_lock_file(path: Path) -> int:
    """A descriptor of the regular file at ``path`` (created if missing). Anything else there (a
    directory, a link, a FIFO) raises OSError: it is not ours to lock, and O_NOFOLLOW / O_NONBLOCK keep
    the open from creating a link's target or waiting for a FIFO's writer."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _heal_lock_path(path: Path) -> int:
    """Open the lock file after replacing what blocks it, holding a lock on the directory meanwhile: two
    processes healing at once must not each move the other's fresh lock file aside and lock different files."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        try:
            return _open_lock_file(path)
        except OSError:
            if _is_regular_file(path):
                raise  # a lock file we may not open (permissions): not damage, not ours to move
            discard(path)  # still not a file, and no other healer can act now: ours to clear
            return _open_lock_file(path)
    finally:
        os.close(dir_fd)  # also releases the directory lock


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the duration of the block (blocks while another holds it).
    A directory, link or other non-file left at ``path`` is moved aside and deleted first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _open_lock_file(path)
    except OSError:
        fd = _heal_lock_path(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _file_table_problem(files: Any) -> str | None:
    """Why a manifest's ``files`` cannot be trusted: it must map relative names inside the entry to
    SHA-256 hex digests (None when it does)."""
    if files is None:
        return "the manifest has no table of files"
    if not isinstance(files, dict):
        return f"the manifest's files is a {type(files).__name__}, not a table of name -> SHA-256"
    for name, digest in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or not parts or ".." in parts:
            return f"the manifest names a file outside the entry: {name!r}"
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            return f"the manifest's digest of {name} is not a SHA-256: {digest!r}"
    return None


class Entry:
    """One cache entry: ``<root>/<key>/``."""

    def __init__(self, root: Path, key: str, backend: str = "numba_cpu"):
        self.root = root
        self.key = key
        self.backend = backend
        self.dir = root / key
        self.module_path = self.dir / MODULE_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self.program_path = self.dir / PROGRAM_FILE
        self.kernels_path = self.dir / KERNELS_FILE
        self.kernels_text_path = self.dir / KERNELS_TEXT_FILE
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
            return ["no valid manifest"] if os.path.lexists(self.dir) else ["absent"]
        files = manifest.get("files")
        problem = _file_table_problem(files)
        if problem:
            return [problem]
        out = []
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
        for path in (self.program_path, self.kernels_path, self.kernels_text_path):
            if path.is_file():
                files[path.name] = sha256_file(path)
        for p in self.numba_files():
            files[str(p.relative_to(self.dir))] = sha256_file(p)
        manifest = {"key": self.key, "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "environment": environment(self.backend), "files": files, **extra}
        atomic_write(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    # -- writing and importing ----------------------------------------------------------------------
    def reset(self, source: str) -> str:
        """Wipe the entry and write ``source`` as its module; returns the module's SHA-256. Whatever is
        at the entry's path (an old entry, a killed compile's leftovers, a file, a link) goes first."""
        if os.path.lexists(self.dir):
            discard(self.dir)
        self.dir.mkdir(parents=True)
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
