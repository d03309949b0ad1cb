"""Writing an export: the object file from llvmlite, the C sources, then the library and the executable
linked by the system's C compiler. Every file lands atomically (written aside, then renamed)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Sequence

from ..io import atomic_write
from .entries import ExportError


def find_cc(cc: str | None = None) -> str:
    """The C compiler that links the library: ``cc``, else ``$CC``, else ``cc`` on the PATH."""
    name = cc or os.environ.get("CC") or "cc"
    path = shutil.which(name)
    if path is None:
        raise ExportError(f"export: no C compiler {name!r} on the PATH: graphc.export compiles the C glue and links "
                          f"lib<name>.so and the executable with the system's cc (gcc or clang). Install one "
                          f"(Debian/Ubuntu: apt-get install gcc) or name it with CC=/path/to/cc")
    return path


def run_cc(cc: str, args: Sequence[str], what: str, cwd: str) -> None:
    """Run the compiler; a failure is an ExportError with its command line and output."""
    cmd = [cc, *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"export: {what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                          f"{(proc.stdout + proc.stderr).strip()}")


def features_of(target: str) -> str:
    """The CPU and features the object is compiled for, as the header records them."""
    if target == "generic":
        return "cpu x86-64 (the baseline: SSE2, no AVX/AVX2/AVX-512), runs on any x86-64"
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    enabled = sorted(k for k, on in features.items() if on)
    return f"cpu {llvm.get_host_cpu_name()} (this host), features +" + " +".join(enabled)


def link(directory: str, lib: str, cc: str, images: dict[str, bytes], blas: str) -> dict[str, str]:
    """Compile and link lib<lib>.so and the executable <lib> from <lib>.o, the glue, the main and the
    embedded parameter stores. Builds in a scratch directory, then renames the results into place."""
    from .csource import data_source

    libs = ["-lm"] + (["-lopenblas"] if blas == "system" else [])
    here = os.path.abspath(directory)  # the compiler runs in the scratch directory
    build = tempfile.mkdtemp(prefix=f".build-{lib}-", dir=here)
    try:
        paths = {}
        for entry, image in images.items():
            paths[entry] = os.path.join(build, f"{lib}_{entry}.store")
            with open(paths[entry], "wb") as f:
                f.write(image)
        data_s = os.path.join(build, f"{lib}_data.S")
        with open(data_s, "w") as f:
            f.write(data_source(lib, paths))
        obj, glue_c, main_c = (os.path.join(here, f) for f in (f"{lib}.o", f"{lib}_glue.c", f"{lib}_main.c"))
        run_cc(cc, ["-c", "-fPIC", data_s, "-o", os.path.join(build, "data.o")], "assembling the parameter stores", build)
        # Only the API (NAME_*) is exported: the GEMM and the random generator stay private, so that two exported
        # libraries in one program never bind to each other's graphc_sgemm.
        exports = os.path.join(build, "exports.map")
        with open(exports, "w") as f:
            f.write(f"{{ global: {lib}_*; local: *; }};\n")
        so = os.path.join(build, f"lib{lib}.so")
        run_cc(cc, ["-shared", "-fPIC", "-O2", "-I", here, f"-Wl,--version-script={exports}", "-o", so, obj, glue_c,
                    os.path.join(build, "data.o"), *libs], f"linking lib{lib}.so", build)
        exe = os.path.join(build, lib)
        run_cc(cc, ["-O2", "-I", here, "-o", exe, main_c, glue_c, obj, os.path.join(build, "data.o"), *libs],
               f"linking the executable {lib}", build)
        out = {"library": os.path.join(here, f"lib{lib}.so"), "executable": os.path.join(here, lib)}
        os.replace(so, out["library"])
        os.replace(exe, out["executable"])
        return out
    finally:
        shutil.rmtree(build, ignore_errors=True)


def write_text(path: str, text: str) -> str:
    atomic_write(path, text.encode())
    return path
