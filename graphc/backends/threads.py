"""One thread count for the process: graphc's own loops (Numba's pool) and BLAS (SciPy's OpenBLAS).

A compiled step runs its kernels one after the other: a GEMM (OpenBLAS's threads), then a loop nest
(Numba's ``prange`` threads), never both at once. So both pools get the same count T and never
oversubscribe the T cores between them. The count is set through Numba (``numba.set_num_threads``)
and through the OpenBLAS that Numba's BLAS calls resolve to (``scipy_openblas_set_num_threads``, found
in the loaded library with ctypes: threadpoolctl is not a dependency).

The policy (``threads=None``, the default): every core of the process's affinity mask, unless other
processes keep a core busy. A machine shared with a busy process is the case that collapses: a parallel
region (OpenMP or OpenBLAS) waits for its slowest thread, and a thread that shares its core with a busy
process gets half of it at best, a scheduler time slice (milliseconds) late at worst. The load of
*other* processes is measured from ``/proc/stat`` over a window graphc already spends (the compile, an
epoch of ``fit``): the whole machine's busy time minus this process's own CPU time. Each core that
others keep busy more than half the time is taken off; at least one thread stays.

When that leaves one thread on a machine of more cores, the busy cores still have a free share: that
thread then shares its GEMMs with a helper thread on the busy cores, panel by panel, so that the helper's
part is taken over whenever the scheduler runs the busy process instead (``share``; the backend does it,
see ``numba_cpu/sharing.py``). The MLP epoch with a busy process on one core of two: 1.6 s on one thread,
1.2-1.6 s shared (1.30 s in the benchmark), 0.95-1.03 s on two threads of an idle machine.
"""
from __future__ import annotations

import ctypes
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ..ir import GraphcError

#: How long the two pools' idle threads busy-wait for more work before they sleep, set (unless the user set
#: them) before either library starts: OpenMP's (Numba's layer) ``GOMP_SPINCOUNT`` spins and OpenBLAS's
#: ``OPENBLAS_THREAD_TIMEOUT`` (2**value cycles). Their defaults (300,000 spins; 2**28 cycles, ~0.1 s)
#: keep each pool's threads spinning while the other pool works: with 2 threads on the 2-core dev machine,
#: the MLP 784-512-256-10 step took 30 ms instead of 2 ms (the GEMM waited for a core an OpenMP thread
#: spun on). OpenBLAS's 2**20 cycles (~0.4 ms) keep its threads awake between the GEMMs of a step (tens of
#: microseconds apart) and let them sleep soon after: the MLP step at 2 threads took 1.81-1.85 ms against
#: 1.87-1.94 ms with 2**4 (they slept after every GEMM), and with ``parallel_loops=True`` no step collapsed.
SPIN_DEFAULTS = {"GOMP_SPINCOUNT": "1000", "OPENBLAS_THREAD_TIMEOUT": "20"}
for _var, _value in SPIN_DEFAULTS.items():
    os.environ.setdefault(_var, _value)

#: The cost rule of parallel loops: a kernel's outer loop (numba_cpu's renderer) runs on all of the process's
#: threads (``prange``) when the loop is independent (``Loop.parallel``) and its nest executes at least this many statements
#: (loads, assignments, stores: ``nest_work``). Measured on the dev machine (2-core EPYC, OpenMP layer,
#: load ~0.5): a prange region costs ~1.9 us to start and join where the same loop of 1000 elements
#: takes 0.35 us serially; the parallel loop wins from ~20,000 elements of two statements each
#: (10,000: 2.3 us vs 1.7 us serial; 100,000: 9.3 us vs 15.1 us). Below the rule a module keeps
#: ``parallel=False``: Numba's parallel pipeline costs compile time even where it finds nothing to do.
PARALLEL_MIN_WORK = 40_000

#: A core counts as taken by other processes when they keep it busy more than this share of the time.
TAKEN_SHARE = 0.5

#: While the policy shares GEMMs with a helper on a busy core, others get only what the helper leaves them
#: there (measured: a busy loop got 53-56% of its core, against 100% before). The core counts as taken
#: until their load falls under this share, so that the policy does not swing back to two threads.
FREED_SHARE = 0.25

#: A load this process measured over a window that ended at most this long ago still describes the machine:
#: a new policy settles on it rather than waiting out a window of its own. ``fit(..., epochs=1)`` called in a
#: loop (a notebook, bench/train_step.py) otherwise slept 50 ms per call after a cache-hit compile: 3% of an
#: MLP epoch.
RECENT_S = 1.0

#: (when the window ended, time.monotonic(); others' load there; the cores they kept busy)
_last_load: list[tuple[float, float, frozenset[int]]] = []


class ThreadsError(GraphcError, ValueError):
    """A ``threads=`` value that is not a positive thread count (or None for the policy)."""


# -- reading the machine's load ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuTimes:
    """A snapshot: the machine's busy and total time (seconds, summed over the cores of /proc/stat's
    ``cpu`` line), this process's own CPU time (all its threads) and the wall clock; per core, the busy
    time (``cpuN`` lines) and each of this process's threads' CPU time and the core it last ran on."""

    busy_s: float
    total_s: float
    own_s: float
    wall_s: float
    core_busy_s: dict[int, float] = field(default_factory=dict)
    own_threads: dict[int, tuple[int, float]] = field(default_factory=dict)  # thread id -> (core, seconds)


def _busy_and_total(fields: list[str]) -> tuple[float, float]:
    """(busy, total) ticks of one ``cpu``/``cpuN`` line's fields: idle and iowait are not busy; guest time is
    already inside user time, so it is not counted twice."""
    values = [float(v) for v in fields[1:9]] + [0.0] * (9 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def parse_proc_stat(text: str, ticks_per_s: float = 100.0) -> tuple[float, float]:
    """(busy, total) seconds from the aggregate ``cpu`` line of /proc/stat (see :func:`_busy_and_total`)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            busy, total = _busy_and_total(fields)
            return busy / ticks_per_s, total / ticks_per_s
    raise ThreadsError("graphc.threads: /proc/stat has no aggregate 'cpu' line")


def parse_core_busy(text: str, ticks_per_s: float = 100.0) -> dict[int, float]:
    """Busy seconds per core from the ``cpuN`` lines of /proc/stat (counted as :func:`parse_proc_stat` counts)."""
    cores = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].startswith("cpu") and fields[0][3:].isdigit():
            cores[int(fields[0][3:])] = _busy_and_total(fields)[0] / ticks_per_s
    return cores


def parse_task_stat(text: str, ticks_per_s: float = 100.0) -> tuple[int, float]:
    """(the core it last ran on, user + system seconds) from a /proc/<pid>/task/<tid>/stat line. The command
    name in parentheses may hold spaces, so the fields are counted from the last ')'."""
    rest = text[text.rindex(")") + 2:].split()  # rest[0] is field 3 (state)
    return int(rest[36]), (float(rest[11]) + float(rest[12])) / ticks_per_s


def own_threads(ticks_per_s: float) -> dict[int, tuple[int, float]]:
    """:func:`parse_task_stat` of each thread of this process ({} where /proc cannot say)."""
    threads = {}
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                threads[int(tid)] = parse_task_stat(f.read(), ticks_per_s)
    except (OSError, ValueError, IndexError):  # a thread that ended meanwhile, or no /proc
        pass
    return threads


def others_by_core(before: CpuTimes, after: CpuTimes) -> dict[int, float]:
    """Per core, how much of it other processes kept busy between two snapshots (0..1): the core's busy
    time less this process's threads' time, each thread's counted on the core it ran on last."""
    wall = after.wall_s - before.wall_s
    if wall < 0.02:
        return {}
    mine: dict[int, float] = {}
    for tid, (core, seconds) in after.own_threads.items():
        mine[core] = mine.get(core, 0.0) + seconds - before.own_threads.get(tid, (core, 0.0))[1]
    return {core: max(0.0, (busy - before.core_busy_s.get(core, busy) - mine.get(core, 0.0)) / wall)
            for core, busy in after.core_busy_s.items()}


def others_running(text: str) -> int:
    """Threads of other processes runnable at this instant: /proc/stat's ``procs_running``, less the
    thread reading it (graphc's pools sleep between calls)."""
    for line in text.splitlines():
        if line.startswith("procs_running "):
            return max(0, int(line.split()[1]) - 1)
    return 0


def _ticks_per_s() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - every Linux has it
        return 100.0


def snapshot(read: Callable[[], str] | None = None) -> CpuTimes | None:
    """The machine's CPU times now (None where /proc/stat cannot be read: not Linux)."""
    try:
        text = read() if read is not None else open("/proc/stat").read()
    except OSError:
        return None
    ticks = _ticks_per_s()
    busy, total = parse_proc_stat(text, ticks)
    return CpuTimes(busy, total, time.process_time(), time.monotonic(), parse_core_busy(text, ticks),
                    own_threads(ticks) if read is None else {})


def others_busy(before: CpuTimes, after: CpuTimes) -> float:
    """How many cores other processes kept busy between two snapshots (0.0 for a window too short to
    say: under 20 ms of wall time, or two ticks of /proc/stat)."""
    wall = after.wall_s - before.wall_s
    if wall < 0.02 or after.total_s - before.total_s <= 2.0 / _ticks_per_s():
        return 0.0
    busy = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, busy / wall)


# -- the decision ------------------------------------------------------------------------------------------

def available_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_threads(cores: int, others: float) -> int:
    """The policy's thread count: ``cores`` minus each core other processes keep busy more than
    TAKEN_SHARE of the time (``others`` cores' worth of their load), at least 1."""
    taken = math.floor(others + (1.0 - TAKEN_SHARE))
    return max(1, min(cores, cores - taken))


def check_threads(threads: int | None, where: str) -> int | None:
    """``threads`` validated: None (the policy) or a positive int."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ThreadsError(f"{where}: threads must be None (the default policy) or a positive int, got {threads!r}")
    return threads


class ThreadPolicy:
    """The thread count of a compiled graph or of a ``fit``: ``fixed`` when the user gave one, else the
    policy's, decided from the load measured since it was made and re-decided by :meth:`recheck`."""

    def __init__(self, fixed: int | None = None, read: Callable[[], str] | None = None,
                 cores: int | None = None, may_share: bool = True):
        self.fixed = fixed
        self.may_share = may_share
        self.cores = cores or available_cores()
        self._read = read
        self._since = snapshot(read) if fixed is None else None
        self.others = 0.0
        self.threads = fixed if fixed is not None else self.cores
        self.busy_cores: frozenset[int] = frozenset()  # the cores others kept busy > TAKEN_SHARE of the window

    @property
    def share(self) -> bool:
        """Whether the one thread the policy left also shares its GEMMs with a helper thread on the busy
        core(s): only the policy's own decision of one thread where the process has more cores (a count
        the user fixed is what runs), and not where the busy cores are this job's own (``may_share=False``:
        the other ranks of a data-parallel fit, which need their cores at the very moments a helper would)."""
        return self.may_share and self.fixed is None and self.threads == 1 < self.cores

    def settle(self, min_window_s: float = 0.05) -> int:
        """The first decision, from a window of at least ``min_window_s`` since it was made. When the work before
        it (a compile) was shorter, the load this process measured within the last RECENT_S decides, else it
        waits for the rest of the window."""
        if self.fixed is None and self._since is not None:
            left = min_window_s - (time.monotonic() - self._since.wall_s)
            if left > 0:
                recent = self._recent_load()
                if recent is not None:  # the window keeps running from the start: recheck() measures all of it
                    self.others, self.busy_cores = recent
                    self.threads = choose_threads(self.cores, self.others)
                    return self.threads
                time.sleep(left)
        return self.recheck()

    def _recent_load(self) -> tuple[float, frozenset[int]] | None:
        """Others' load as this process last measured it, if that window ended within RECENT_S and no more
        of them is running now than then (only for a policy that reads the real /proc/stat: one with a
        ``read=`` of its own neither uses nor leaves one)."""
        if self._read is not None or not _last_load:
            return None
        ended, others, busy_cores = _last_load[0]
        if time.monotonic() - ended > RECENT_S:
            return None
        # A process that started since (a busy loop on one core) shows in the runnable count at once;
        # 2.9 s instead of 1.6 s for an MLP epoch on two threads when the old load was trusted regardless.
        running = min(others_running(open("/proc/stat").read()) for _ in range(3))
        return (others, busy_cores) if running <= others + TAKEN_SHARE else None

    def recheck(self) -> int:
        """The thread count from the load of other processes since the last check (or start)."""
        if self.fixed is not None:
            return self.fixed
        now = snapshot(self._read)
        if now is None or self._since is None:
            return self.threads
        if now.wall_s - self._since.wall_s >= 0.02:
            sharing = self.share  # while it shares, a busy core holds until others' load there is under FREED_SHARE
            self.others = others_busy(self._since, now)
            threads = choose_threads(self.cores, self.others)
            self.threads = threads if not sharing or self.others < FREED_SHARE else min(threads, self.threads)
            taken = FREED_SHARE if sharing else TAKEN_SHARE
            self.busy_cores = frozenset(core for core, load in others_by_core(self._since, now).items()
                                        if load > taken)
            self._since = now
            if self._read is None:
                _last_load[:] = [(now.wall_s, self.others, self.busy_cores)]
        return self.threads


# -- applying it to both pools -----------------------------------------------------------------------------

_current: list[int] = [0]  # the count last applied in this process (0: none yet)
_blas_setter: list = []


def _scipy_openblas() -> ctypes.CDLL | None:
    """The OpenBLAS that Numba's BLAS calls resolve to: SciPy's (loaded with scipy.linalg.cython_blas), not
    NumPy's own copy (numpy.libs), which the same process also has loaded."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - loads the library Numba's np.dot and gemm call

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except (ImportError, OSError):  # pragma: no cover - no SciPy BLAS, or no /proc: nothing to set
        return None
    scipy_first = sorted(paths, key=lambda p: ("scipy" not in p or "numpy.libs" in p, p))
    return ctypes.CDLL(scipy_first[0]) if scipy_first else None


def _symbol(lib: ctypes.CDLL, names: tuple[str, ...]):
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


def _openblas_setter():
    """``set_num_threads`` of SciPy's OpenBLAS (see :func:`_scipy_openblas`), or None if not found."""
    if not _blas_setter:
        lib = _scipy_openblas()
        fn = lib and _symbol(lib, ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                                   "openblas_set_num_threads", "openblas_set_num_threads64_"))
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], None
        _blas_setter.append(fn)
    return _blas_setter[0]


def blas_threads() -> int | None:
    """SciPy's OpenBLAS's current thread count, by its own getter (None where it was not found)."""
    lib = _scipy_openblas()
    fn = lib and _symbol(lib, ("scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                               "openblas_get_num_threads", "openblas_get_num_threads64_"))
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    return int(fn())


def usable(threads: int) -> int:
    """``threads`` capped at the size of Numba's pool (NUMBA_NUM_THREADS, fixed when Numba loads)."""
    import numba

    return max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))


def apply(threads: int) -> int:
    """Give both pools ``threads`` (capped at Numba's pool size); returns the count applied."""
    import numba

    threads = usable(threads)
    if _current[0] == threads:
        return threads
    numba.set_num_threads(threads)
    setter = _openblas_setter()
    if setter is not None:
        setter(threads)
    _current[0] = threads
    return threads


def current() -> int:
    """The count last applied by graphc in this process (0: none yet)."""
    return _current[0]
