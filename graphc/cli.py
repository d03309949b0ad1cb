"""The ``graphc`` command.

    graphc --version
    graphc ops                      # one line per op
    graphc ops relu sigmoid         # everything the registry knows about those ops
    graphc ops --markdown > docs/ops.md
    graphc train mnist --hidden 512,256 --epochs 5 --monitor   # an MLP, the course's monitors on
    mpiexec -n 2 graphc train mnist --distributed             # the same, data-parallel on 2 MPI ranks
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


#: The data sets ``graphc train`` knows by name (graphc.datasets loaders); any other name is an .npz file.
DATASETS = ("digits", "mnist", "fashion-mnist")


def _train_data(source: str):
    """(train, validation or None) for ``graphc train``: a data set by name, or an .npz file with arrays
    x and y (and optionally x_val and y_val)."""
    import numpy as np

    from graphc import datasets

    if source in DATASETS:
        splits = {"digits": datasets.digits, "mnist": datasets.mnist,
                  "fashion-mnist": datasets.fashion_mnist}[source]()
        return splits.train, splits.val
    with np.load(source) as arrays:
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise ValueError(f"{source} has no array(s) {', '.join(missing)} (it has {', '.join(arrays.files)}); "
                             f"graphc train reads x [N, features] and y [N] class indices")
        train = (arrays["x"], arrays["y"])
        val = (arrays["x_val"], arrays["y_val"]) if "x_val" in arrays and "y_val" in arrays else None
    return train, val


def _cmd_train(args: argparse.Namespace) -> int:
    from graphc.ir import GraphcError

    if args.monitor_plot and not args.monitor:
        print("graphc train: --monitor-plot plots the monitors: add --monitor", file=sys.stderr)
        return 2
    try:
        return _train(args)
    except (OSError, ValueError, ImportError, GraphcError) as err:  # unreadable or missing data, bad labels, no matplotlib
        print(f"graphc train: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    """Train an MLP as ``graphc train`` says; prints the accuracies and the last epoch's monitors."""
    import numpy as np

    import graphc
    from graphc.nn import Dense, Sequential

    (x, y), val = _train_data(args.data)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    x = x.reshape(len(x), -1)
    classes = int(np.max(y)) + 1 if len(y) else 1
    model = Sequential([Dense(h, args.activation, init="he_normal") for h in hidden] + [Dense(classes)],
                       input_shape=x.shape[1:], seed=args.seed)
    val = (val[0].reshape(len(val[0]), -1), val[1]) if val is not None else None
    history = graphc.fit(model, (x, y), epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=graphc.optim.Momentum(args.lr, 0.9), validation_data=val, backend=args.backend,
                         seed=args.seed, monitor=args.monitor, distributed="mpi" if args.distributed else None)
    if not model._trainer.world.is_root:  # a data-parallel job: rank 0 reports (every rank has the same results)
        return 0
    widths = "-".join(str(w) for w in (x.shape[1], *hidden, classes))
    if not history.epochs:
        print(f"MLP {widths}: no epochs trained")
        return 0
    print(f"MLP {widths}: training accuracy {history['acc'][-1]:.4f}"
          + (f", validation accuracy {history['val_acc'][-1]:.4f}" if val else ""))
    for layer, stats in history.monitor.items():
        print(f"  {layer}: " + "  ".join(f"{stat} {values[-1]:.4g}" for stat, values in stats.items()))
    if args.monitor_plot:
        print(f"monitor plot: {history.plot_monitors(args.monitor_plot)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphc",
        description="graphc: a symbolic computational-graph compiler for neural networks "
                    "(DSL -> graph -> symbolic gradient graph -> passes -> Numba/LLVM code).",
        epilog="Example: python examples/mnist_mlp.py trains the course's 784-512-256-10 MLP on MNIST with "
               "graphc.fit (about 98.3% test accuracy); `graphc COMMAND --help` shows each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"graphc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ops = sub.add_parser("ops", help="the op reference, generated from the op registry",
                         description="List the registered ops, show some in detail, or print the Markdown "
                                     "reference (docs/ops.md).")
    ops.add_argument("names", nargs="*", metavar="NAME", help="ops to show in detail (default: list all)")
    ops.add_argument("--markdown", action="store_true", help="print the full reference as Markdown")
    ops.set_defaults(run=_cmd_ops)
    train = sub.add_parser("train", help="train an MLP on a data set, optionally with the course's monitors",
                           description="Train a ReLU MLP (momentum 0.9) on a data set and report its accuracy; "
                                       "--monitor adds the training monitors (activation mean/std, dead units, "
                                       "update ratios) to the step and flags what leaves the course's ranges.")
    train.add_argument("data", metavar="DATA",
                       help=f"{', '.join(DATASETS)}, or an .npz file with x, y (and optionally x_val, y_val)")
    train.add_argument("--hidden", default="128", help="hidden layer widths, comma separated (default: 128)")
    train.add_argument("--activation", default="relu", help="hidden layers' activation (default: relu)")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.05, help="learning rate (default: 0.05)")
    train.add_argument("--backend", default=None, help="cpu (the default when available) or reference")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI: run as `mpiexec -n N graphc train ... --distributed` (without "
                            "the flag, more than one process under mpiexec is detected too); needs graphc[mpi]")
    train.add_argument("--monitor", action="store_true",
                       help="compute the monitors in the training step, keep them per epoch and flag them")
    train.add_argument("--monitor-plot", metavar="PNG", default=None,
                       help="with --monitor: save dead units and update ratios per epoch (needs matplotlib)")
    train.set_defaults(run=_cmd_train)
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
