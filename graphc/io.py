"""Files graphc writes: atomically (temp file + rename) and verifiable (SHA-256) when read back."""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile


def _temp_prefix(path: str) -> str:
    """The start of every temporary name atomic_write uses for ``path`` on this host:
    ``.tmp-<file name>.<host>.``, followed by the writer's pid, a dot and mkstemp's random part."""
    return f".tmp-{os.path.basename(path)}.{socket.gethostname()}."


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's process counts as alive)."""
    if os.name != "posix":  # Windows' os.kill(pid, 0) would send CTRL_C_EVENT: never probe there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_writers_files(path: str) -> list[str]:
    """Delete the temporary files that killed writers of ``path`` left behind, and return their names.

    Only files named by a writer on this host whose process no longer exists are removed: a live
    writer's file (another process saving the same checkpoint now) is never touched, nor one from
    another host sharing the directory, whose pids mean nothing here. A pid reused by a new process
    keeps its leftover until that process ends: the safe side.
    """
    directory, prefix = os.path.dirname(os.path.abspath(path)), _temp_prefix(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        parts = name[len(prefix):].split(".") if name.startswith(prefix) else []
        pid = parts[0] if len(parts) == 2 else ""  # <pid>.<random>: mkstemp's random part has no dot
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:  # another writer removed it first, or we may not: clean-up never fails a save
                pass
    return removed


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The temporary file is named after its writer (host and pid), so a later write of the same path
    removes what killed writers left (see :func:`remove_dead_writers_files`).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_dead_writers_files(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{_temp_prefix(path)}{os.getpid()}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> str:
    """graphc's cache directory: $GRAPHC_CACHE_DIR, else $XDG_CACHE_HOME/graphc, else ~/.cache/graphc."""
    if os.environ.get("GRAPHC_CACHE_DIR"):
        return os.environ["GRAPHC_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphc")
