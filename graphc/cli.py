"""The ``graphc`` command.

    graphc --version
    graphc ops                      # one line per op
    graphc ops relu sigmoid         # everything the registry knows about those ops
    graphc ops --markdown > docs/ops.md
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _version() -> str:
    from graphc._version import __version__

    return __version__


def _write_utf8(text: str) -> None:
    """docs/ops.md is UTF-8 whatever the locale, so a redirect writes the same bytes everywhere."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a replaced stdout (tests capturing text): write text
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8"))
        buffer.flush()


def _cmd_ops(args: argparse.Namespace) -> int:
    from graphc import docs
    from graphc.ops import is_registered

    if args.markdown:
        if args.names:
            print("graphc ops: --markdown writes the whole reference; give no op names with it", file=sys.stderr)
            return 2
        _write_utf8(docs.ops_markdown() + "\n")
        return 0
    if not args.names:
        print(docs.ops_table())
        return 0
    unknown = [n for n in args.names if not is_registered(n)]
    if unknown:
        print(f"graphc ops: unknown op(s) {', '.join(unknown)}; `graphc ops` lists them all", file=sys.stderr)
        return 2
    unicode = "utf" in (getattr(sys.stdout, "encoding", None) or "").lower()
    print("\n\n".join(docs.op_detail(n, unicode=unicode) for n in args.names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphc",
        description="graphc: a symbolic computational-graph compiler for neural networks "
                    "(DSL -> graph -> symbolic gradient graph -> passes -> Numba/LLVM code).",
        epilog="Example: python examples/mlp_784.py builds and evaluates the course's 784-512-256-10 MLP.",
    )
    parser.add_argument("--version", action="version", version=f"graphc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ops = sub.add_parser("ops", help="the op reference, generated from the op registry",
                         description="List the registered ops, show some in detail, or print the Markdown "
                                     "reference (docs/ops.md).")
    ops.add_argument("names", nargs="*", metavar="NAME", help="ops to show in detail (default: list all)")
    ops.add_argument("--markdown", action="store_true", help="print the full reference as Markdown")
    ops.set_defaults(run=_cmd_ops)
    return parser


#: The status a shell reports for a command killed by SIGPIPE (128 + 13), as `yes | head -1` shows for `yes`.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphc`` console script (and ``python -m graphc``).

    A reader that stops early (``graphc ops | head -1``) ends the command quietly, as it ends standard
    Unix tools: no traceback, exit status 141 (Python's documented pattern for BrokenPipeError, not
    SIGPIPE's default action, which would also kill the process on a closed socket)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, not at interpreter exit, where a broken pipe can only be reported
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


def _discard_stdout() -> None:
    """Point stdout's descriptor at /dev/null: Python flushes stdout again at exit, and what is still
    buffered must go nowhere rather than raise a second BrokenPipeError."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stdout (tests): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
