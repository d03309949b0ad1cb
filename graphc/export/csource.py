"""The C sources of an export: the header (the documented API), the glue (the state object around the
kernels), the executable's main and the assembler file that embeds the initial parameter stores.

The fixed parts are C files in ``templates/`` with ``${...}`` fields; this module writes the parts that
depend on the model (tables of entries, parameters and checks; one typed wrapper per entry).
"""
from __future__ import annotations

import string
from importlib import resources
from typing import Sequence

from .._version import __version__
from .entries import Entry, Param, Tensor
from .weights import DTYPE_CODES, crc32_table

#: dtype -> the .npy descr the executable reads and writes.
NPY_DESCR = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8", "bool": "|b1"}

#: The error codes of the C API, with what each means (the header documents them).
ERROR_CODES = [
    ("OK", 0, "success"),
    ("ERR_LABEL", 1, "a label is out of range (the message names the input, the label, its index and the op)"),
    ("ERR_NONFINITE", 2, "check_finite (on by default): NaN or Inf in an input, an output or an updated parameter; "
                         "a step's parameters are then restored"),
    ("ERR_WEIGHTS", 3, "a weights file that cannot be opened, is corrupt (checksum) or does not fit the model"),
    ("ERR_MEMORY", 4, "out of memory"),
    ("ERR_ARGUMENT", 5, "a NULL pointer, an unknown parameter name or entry, a buffer of the wrong size"),
]


def _template(name: str) -> string.Template:
    return string.Template(resources.files(__package__).joinpath("templates", name).read_text())


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(shape: Sequence[int]) -> str:
    return "{" + ", ".join(str(int(d)) for d in shape) + "}" if shape else "{0}"


def _type_text(t: Tensor) -> str:
    return f"{t.dtype}[{', '.join(map(str, t.shape))}]"


# -- the header ------------------------------------------------------------------------------------------

def header(lib: str, entries: list[Entry], params: list[Param], target: str, features: str, blas: str,
           batch_size: int | None) -> str:
    """``NAME.h``: every entry with its argument shapes and dtypes (as #defines and in comments), the error
    codes, the parameters, the target it was compiled for."""
    LIB = lib.upper()
    guard = f"GRAPHC_EXPORT_{LIB}_H"
    out = [f"/* {lib}.h: the C API of the graphc model '{lib}' (graphc {__version__}, graphc.export).",
           " *",
           f" * Link with -L<dir> -l{lib} (lib{lib}.so needs only libc and libm{', and a CBLAS' if blas == 'system' else ''}).",
           f" * Compiled for target '{target}': {features}",
           f" * GEMM: {'the system CBLAS (cblas_sgemm/cblas_dgemm)' if blas == 'system' else 'generated (blocked, vectorized LLVM IR)'}.",
           " *",
           f" * A state object ({lib}_state) holds the parameters (and the optimizer's state) of every entry, its",
           " * scratch memory and its last error message. Create one per thread: nothing is global, and one state",
           " * must not be used by two threads at once. Every function returns 0 or one of the error codes below;",
           f" * {lib}_error_message(state) then words the error as graphc does.",
           " * Arrays are C-contiguous (row-major), of exactly the shape and dtype given for each argument.",
           " */",
           f"#ifndef {guard}", f"#define {guard}", "", "#include <stddef.h>", "#include <stdint.h>", "",
           "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
           "/* error codes */"]
    out += [f"#define {LIB}_{name} {code}  /* {doc} */" for name, code, doc in ERROR_CODES]
    if batch_size is not None:
        out += ["", "/* the batch size the entries were compiled for (rows of x per call) */",
                f"#define {LIB}_BATCH_SIZE {batch_size}"]
    out += ["", f"typedef struct {lib}_state {lib}_state;", "",
            "/* A new state holding the parameters the model was exported with (embedded in the library). */",
            f"int {lib}_create({lib}_state **state);",
            f"void {lib}_destroy({lib}_state *state);",
            "/* The last error of this state, as a sentence. */",
            f"const char *{lib}_error_message(const {lib}_state *state);",
            "/* Check inputs, outputs and updated parameters for NaN/Inf on every call (default on; costs a scan",
            " * of the arrays and, for a step, a copy of its parameter store). */",
            f"void {lib}_set_check_finite({lib}_state *state, int on);", "",
            "/* Parameters, by name: the bytes of a C-contiguous array (see the list below). A weights file holds",
            " * them all, checksummed (format: graphc's docs/export.md); a corrupt or mismatched file is refused and",
            " * leaves the state unchanged. Saving writes PATH.tmp and renames it over PATH. */",
            f"int {lib}_load_weights({lib}_state *state, const char *path);",
            f"int {lib}_save_weights({lib}_state *state, const char *path);",
            f"int {lib}_get_param({lib}_state *state, const char *name, void *dst, size_t nbytes);",
            f"int {lib}_set_param({lib}_state *state, const char *name, const void *src, size_t nbytes);",
            f"int {lib}_param_count(void);",
            f"const char *{lib}_param_name(int index);",
            f"int64_t {lib}_param_size(const char *name);  /* bytes, or -1 for an unknown name */",
            "", f"/* parameters ({len(params)}):"]
    out += [f" *   {p.name:<24} {p.dtype}[{', '.join(map(str, p.shape))}]" for p in params]
    out += [" */", "", "/* -- entries ------------------------------------------------------------------------------- */"]
    for e, entry in enumerate(entries):
        out += [""] + _entry_doc(lib, entry, e)
    out += ["", f"/* Any entry by index ({', '.join(f'{k} = {en.name}' for k, en in enumerate(entries))}): inputs and outputs",
            " * as arrays of pointers, in the order of the entry's function. */",
            f"int {lib}_call({lib}_state *state, int entry, const void *const *inputs, void *const *outputs);",
            "", "#ifdef __cplusplus", "}", "#endif", f"#endif /* {guard} */", ""]
    return "\n".join(out)


def _macro(lib: str, entry: Entry, t: Tensor) -> str:
    return f"{lib.upper()}_{entry.name.upper()}_{t.name.upper()}"


def _entry_doc(lib: str, entry: Entry, index: int) -> list[str]:
    what = {"predict": "the model's forward pass (inference)",
            "step": "one training step: forward, backward and the optimizer's update of the parameters, in place",
            }.get(entry.name, "the exported graph")
    out = [f"/* {lib}_{entry.name} (entry {index}): {what}.", " *   graph: " + entry.program.graph.name]
    for t in entry.inputs:
        out.append(f" *   input  {t.name:<8} {_type_text(t)}")
    for t in entry.outputs:
        out.append(f" *   output {t.name:<8} {_type_text(t)}")
    if entry.program.errors:
        out.append(f" *   returns {lib.upper()}_ERR_LABEL when a label is out of range (nothing is computed then)")
    out.append(" */")
    for t in entry.inputs + entry.outputs:
        m = _macro(lib, entry, t)
        out.append(f"#define {m}_NDIM {len(t.shape)}")
        out.append(f"#define {m}_SHAPE {_shape(t.shape)}")
        out.append(f"#define {m}_SIZE {t.size}  /* elements */")
        out.append(f"#define {m}_TYPE {t.c_type}")
    out.append(f"int {_signature(lib, entry)};")
    return out


def _signature(lib: str, entry: Entry) -> str:
    """Scalars in by value, arrays in by const pointer, outputs by pointer."""
    args = [f"{lib}_state *state"]
    args += [f"{t.c_type} {t.name}" if not t.shape else f"const {t.c_type} *{t.name}" for t in entry.inputs]
    args += [f"{t.c_type} *{t.name}" for t in entry.outputs]
    return f"{lib}_{entry.name}({', '.join(args)})"


# -- the glue --------------------------------------------------------------------------------------------

def glue(lib: str, entries: list[Entry], params: list[Param]) -> str:
    """``NAME_glue.c``: the tables of this model and one typed wrapper per entry in the fixed glue."""
    return _template("glue.c").substitute(lib=lib, LIB=lib.upper(), version=__version__, n_entries=len(entries),
                                          n_params=max(len(params), 0), tables=_tables(lib, entries, params),
                                          wrappers=_wrappers(lib, entries))


def _tensor_rows(tensors: list[Tensor]) -> str:
    return ",\n".join(f"    {{{_c_string(t.name)}, {DTYPE_CODES[t.dtype]}, {len(t.shape)}, {_shape(t.shape)}, {t.size}}}"
                      for t in tensors) or "    {0}"


def _tables(lib: str, entries: list[Entry], params: list[Param]) -> str:
    out = ["/* -- this model ------------------------------------------------------------------------------- */", ""]
    out.append("/* CRC-32 as zlib computes it (reflected polynomial 0xEDB88320): the weights file's checksums */")
    out.append("static const uint32_t CRC_TABLE[256] = {")
    table = crc32_table()
    out += ["    " + ", ".join(f"0x{v:08x}u" for v in table[i:i + 6]) + "," for i in range(0, 256, 6)]
    out += ["};", ""]
    for entry in entries:
        out.append(f"/* {entry.name}: the kernel in {lib}.o and its initial parameter store ({lib}_data.S) */")
        out.append(f"int32_t {entry.symbol}(uint8_t *, uint8_t *, void *const *, void *const *, int64_t *, uint32_t *);")
        out.append(f"extern const uint8_t {lib}_image_{entry.name}[];")
        out.append(f"static const struct tensor_info {entry.name.upper()}_INPUTS[] = {{\n{_tensor_rows(entry.inputs)}\n}};")
        out.append(f"static const struct tensor_info {entry.name.upper()}_OUTPUTS[] = {{\n{_tensor_rows(entry.outputs)}\n}};")
        sites = []
        names = [t.name for t in entry.inputs]
        node_names = [n.name for n in entry.program.inputs]
        for site in entry.program.errors:
            index = node_names.index(site.input) if site.input in node_names else -1
            sites.append(f"    {{{site.code}, {_c_string(site.op)}, {site.node}, {_c_string(site.where)}, {index}, "
                         f"{site.classes}}}  /* {names[index] if index >= 0 else 'computed labels'} */")
        out.append(f"static const struct site_info {entry.name.upper()}_SITES[] = {{\n" + (",\n".join(sites) or "    {0}")
                   + "\n};")
        out.append("")
    out.append("static const struct entry_info ENTRIES[N_ENTRIES] = {")
    for entry in entries:
        p = entry.program
        E = entry.name.upper()
        out.append(f"    {{{_c_string(entry.name)}, {entry.symbol}, {lib}_image_{entry.name}, {max(p.state_bytes, 1)}, "
                   f"{max(p.workspace_bytes, 1)}, {len(entry.inputs)}, {len(entry.outputs)}, {len(p.errors)}, "
                   f"{E}_INPUTS, {E}_OUTPUTS, {E}_SITES, {int(entry.updates)}}},")
    out += ["};", "", "static const struct param_info PARAMS[N_PARAMS + 1] = {"]
    for prm in params:
        offsets = ", ".join(str(prm.slots[e].offset) if e in prm.slots else "-1" for e in range(len(entries)))
        out.append(f"    {{{_c_string(prm.name)}, {DTYPE_CODES[prm.dtype]}, {len(prm.shape)}, {_shape(prm.shape)}, "
                   f"{prm.nbytes}, {{{offsets}}}}},")
    out += ["    {0}  /* end */", "};"]
    return "\n".join(out)


def _wrappers(lib: str, entries: list[Entry]) -> str:
    out = ["/* -- the typed entry functions (documented in the header) ------------------------------------- */"]
    for e, entry in enumerate(entries):
        out += ["", f"int {_signature(lib, entry)} {{"]
        ins = [f"&{t.name}" if not t.shape else t.name for t in entry.inputs]
        out.append(f"    const void *inputs[] = {{{', '.join(ins) or 'NULL'}}};")
        out.append(f"    void *outputs[] = {{{', '.join(t.name for t in entry.outputs) or 'NULL'}}};")
        out.append(f"    return run_entry(state, {e}, inputs, outputs);")
        out.append("}")
    return "\n".join(out)


# -- the executable and the embedded stores --------------------------------------------------------------

def main_source(lib: str, entries: list[Entry]) -> str:
    """``NAME_main.c``: the standalone executable (npy in, npy out; see templates/main.c)."""
    rows = []
    for entry in entries:
        def tensors(ts: list[Tensor]) -> str:
            return "{" + ", ".join(f"{{{_c_string(t.name)}, {_c_string(NPY_DESCR[t.dtype])}, {t.itemsize}, "
                                   f"{len(t.shape)}, {_shape(t.shape)}, {t.size}}}" for t in ts) + "}"
        rows.append(f"    {{{_c_string(entry.name)}, {int(entry.rows)}, {len(entry.inputs)}, {len(entry.outputs)}, "
                    f"{tensors(entry.inputs)}, {tensors(entry.outputs)}}}")
    table = (f"#define N_EXE_ENTRIES {len(entries)}\nstatic const struct entry EXE_ENTRIES[N_EXE_ENTRIES] = {{\n"
             + ",\n".join(rows) + "\n};")
    return _template("main.c").substitute(lib=lib, LIB=lib.upper(), version=__version__, entry_table=table)


def data_source(lib: str, images: dict[str, str]) -> str:
    """``NAME_data.S``: each entry's initial parameter store, embedded with ``.incbin`` (read-only data,
    64-byte aligned, hidden: the glue copies it into the state's store)."""
    out = [f"/* {lib}_data.S: the initial parameter stores of {lib}'s entries (graphc {__version__}). */",
           "    .section .rodata"]
    for entry, path in images.items():
        sym = f"{lib}_image_{entry}"
        out += ["    .balign 64", f"    .globl {sym}", f"    .hidden {sym}", f"    .type {sym}, @object",
                f"{sym}:", f'    .incbin "{path}"']
    out += ['    .section .note.GNU-stack,"",@progbits', ""]
    return "\n".join(out)
