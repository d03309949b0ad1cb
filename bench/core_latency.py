"""Core-to-core round trip: how far apart the host runs this machine's two cores.

    python bench/core_latency.py [--cores 0,1] [--trips 20000] [--repeat 1] [--every 0]

Two threads, pinned to two cores, hand one cache line back and forth (an atomic store, then a spin on an
atomic load until the other thread answers); printed: the median round trip over blocks of trips, in
nanoseconds. On a virtual machine the number says where the host put its virtual CPUs. Measured on the
2-core AMD EPYC VM of docs/benchmarks.md: ~50-100 ns when both ran in one L3 cache (one CCX), ~310-400 ns when
they ran in two, and the host moved them from one placement to the other while processes ran (mostly while
both cores were busy). A GEMM shared between the cores (performance.md, "GEMM work sharing") moves its
operands and results from one core's cache to the other's, so its gain follows this number;
bench/train_step.py records it before and after every worker (``core_to_core_ns``).

The threads are llvmlite-compiled loops (no Python between trips), called through ctypes, which releases
the GIL.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import threading
import time

#: The two loops: ``ping(lo, hi)`` stores 2i+1 and waits for 2i+2, for i in lo..hi-1; ``pong(n)`` answers
#: the first n trips. Sequentially consistent enough with release stores and acquire loads on one word.
LOOPS_IR = """
@line = global [8 x i64] zeroinitializer, align 64

define void @ping(i64 %lo, i64 %hi) {
entry:
  %word = getelementptr [8 x i64], [8 x i64]* @line, i64 0, i64 0
  br label %head
head:
  %i = phi i64 [%lo, %entry], [%next, %wait]
  %done = icmp sge i64 %i, %hi
  br i1 %done, label %exit, label %send
send:
  %twice = shl i64 %i, 1
  %odd = add i64 %twice, 1
  store atomic i64 %odd, i64* %word release, align 8
  %even = add i64 %twice, 2
  %next = add i64 %i, 1
  br label %wait
wait:
  %v = load atomic i64, i64* %word acquire, align 8
  %back = icmp eq i64 %v, %even
  br i1 %back, label %head, label %wait
exit:
  ret void
}

define void @pong(i64 %n) {
entry:
  %word = getelementptr [8 x i64], [8 x i64]* @line, i64 0, i64 0
  br label %head
head:
  %i = phi i64 [0, %entry], [%next, %answer]
  %done = icmp sge i64 %i, %n
  br i1 %done, label %exit, label %expect
expect:
  %twice = shl i64 %i, 1
  %odd = add i64 %twice, 1
  br label %wait
wait:
  %v = load atomic i64, i64* %word acquire, align 8
  %here = icmp eq i64 %v, %odd
  br i1 %here, label %answer, label %wait
answer:
  %even = add i64 %twice, 2
  store atomic i64 %even, i64* %word release, align 8
  %next = add i64 %i, 1
  br label %head
exit:
  ret void
}

define void @reset() {
  %word = getelementptr [8 x i64], [8 x i64]* @line, i64 0, i64 0
  store atomic i64 0, i64* %word release, align 8
  ret void
}
"""

_loops: list = []


def _compiled() -> tuple:
    """(engine, ping, pong, reset): the loops compiled once per process."""
    if not _loops:
        import llvmlite.binding as llvm  # not graphc's target module: importing graphc would set its thread
        #                                  environment (threads.SPIN_DEFAULTS) in bench/train_step.py's parent,
        #                                  which passes its environment to every framework's worker
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        machine = llvm.Target.from_default_triple().create_target_machine(opt=2)
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(LOOPS_IR), machine)
        engine.finalize_object()
        addr = engine.get_function_address
        _loops.extend([engine, ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64)(addr("ping")),
                       ctypes.CFUNCTYPE(None, ctypes.c_int64)(addr("pong")), ctypes.CFUNCTYPE(None)(addr("reset"))])
    return tuple(_loops)


def round_trip_ns(cores: tuple[int, int] = (0, 1), trips: int = 20_000, blocks: int = 10) -> float | None:
    """The median round trip (ns) of one cache line between ``cores``, over ``blocks`` blocks of trips; None
    where the process may not run on both (or the platform cannot pin threads)."""
    if not hasattr(os, "sched_setaffinity") or not set(cores) <= os.sched_getaffinity(0) or cores[0] == cores[1]:
        return None
    _, ping, pong, reset = _compiled()
    per_block = max(1, trips // blocks)
    reset()
    mask = os.sched_getaffinity(0)

    def answer():
        os.sched_setaffinity(0, {cores[1]})  # this thread only (Linux: 0 is the calling thread)
        pong(per_block * blocks)

    thread = threading.Thread(target=answer, daemon=True)
    os.sched_setaffinity(0, {cores[0]})
    try:
        thread.start()
        times = []
        for b in range(blocks):
            t = time.perf_counter_ns()
            ping(b * per_block, (b + 1) * per_block)
            times.append((time.perf_counter_ns() - t) / per_block)
        thread.join()
    finally:
        os.sched_setaffinity(0, mask)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default="0,1", help="the two cores (default 0,1)")
    parser.add_argument("--trips", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1, help="measurements to print")
    parser.add_argument("--every", type=float, default=0.0, help="seconds between measurements")
    args = parser.parse_args()
    a, b = (int(c) for c in args.cores.split(","))
    for k in range(args.repeat):
        if k:
            time.sleep(args.every)
        ns = round_trip_ns((a, b), args.trips)
        print(f"{time.strftime('%H:%M:%S')} cores {a}<->{b}: " + ("not both available" if ns is None else f"{ns:.1f} ns"),
              flush=True)


if __name__ == "__main__":
    main()
