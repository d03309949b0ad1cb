"""Numba's on-disk cache for graphc's own compiled functions (the runtime kernels, the GEMM sharing code),
wherever one can be written."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import numba

from ..cache import cache_root, writable_root


def _numba_fallback_cache_dir() -> str | None:
    """Where the kernels' Numba cache goes when Numba has no place of its own: ``numba/`` in graphc's
    compile cache (``$GRAPHC_CACHE_DIR`` or ``~/.cache/graphc``, else the per-user temporary one, as for
    compiled graphs); None when even that cannot be written."""
    try:
        root, _ = writable_root(cache_root())
        return str(root / "numba")
    except OSError:
        return None


@contextlib.contextmanager
def _numba_cache_dir(path: str) -> Iterator[None]:
    """Numba's $NUMBA_CACHE_DIR set to ``path`` while a kernel is decorated: its cache locator reads the
    setting once, when the decorator runs, so other Numba users in the process are not affected."""
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = path
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


def cached(fn: Callable, decorator: Callable[[bool], Callable]) -> Any:
    """``decorator(True)(fn)`` (``decorator(cache)`` is e.g. ``njit`` with ``cache=cache``), with a cache
    wherever one can be written. Numba keeps the cache beside the function's file or in the user's cache
    directory; with a read-only install and a read-only home it has neither, and refuses to decorate
    ("cannot cache function ...: no locator available"). Then the cache goes where graphc's compile cache
    goes, and if nothing at all is writable the function is compiled in every process instead (one
    warning for all of them)."""
    try:
        return decorator(True)(fn)
    except RuntimeError as err:
        if "no locator available" not in str(err):
            raise
        reason = str(err)
    fallback = _numba_fallback_cache_dir()
    if fallback is not None:
        try:
            with _numba_cache_dir(fallback):
                return decorator(True)(fn)
        except RuntimeError as err:
            if "no locator available" not in str(err):
                raise
            reason = f"{reason}; nor in {fallback}"
    global _warned_uncached
    if not _warned_uncached:
        _warned_uncached = True
        warnings.warn(f"graphc: the runtime kernels are compiled in every process: {reason}", RuntimeWarning,
                      stacklevel=3)
    return decorator(False)(fn)


_warned_uncached = False
