"""The ``graphc`` command.

    graphc --version
    graphc ops                      # one line per op
    graphc ops relu sigmoid         # everything the registry knows about those ops
    graphc ops --markdown > docs/ops.md
    graphc train mnist --hidden 512,256 --epochs 5 --monitor   # an MLP, the course's monitors on
    mpiexec -n 2 graphc train mnist --distributed             # the same, data-parallel on 2 MPI ranks
    graphc inspect examples/mnist_mlp.py --grad --draw step.svg
    graphc compile examples/mnist_mlp.py --backend cpu --source step.py
    graphc train examples/mnist_mlp.py --epochs 2 --save mnist_mlp.graphc
    graphc eval mnist_mlp.graphc --data mnist
    graphc export mnist_mlp.graphc --format onnx
    graphc bench examples/mnist_mlp.py
    graphc cache ls | verify | clean
    graphc doctor

A FILE is a model file (a Python file defining ``model()`` and optionally ``loss``, ``optimizer``,
``data``: graphc.modelfile); FILE_OR_SAVED is a model file or a model written by ``graphc.save``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence


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
    """``graphc train FILE`` trains a model file's model; ``graphc train DATA`` (a data set or an .npz file)
    the MLP that --hidden describes."""
    if args.monitor_plot and not args.monitor:
        raise CommandError("--monitor-plot plots the monitors: add --monitor")
    if args.file.endswith(".py"):
        return _train_model_file(args)
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    """Train an MLP as ``graphc train`` says; prints the accuracies and the last epoch's monitors."""
    import numpy as np

    import graphc
    from graphc.nn import Dense, Sequential

    (x, y), val = _train_data(args.file)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    x = x.reshape(len(x), -1)
    classes = int(np.max(y)) + 1 if len(y) else 1
    model = Sequential([Dense(h, args.activation, init="he_normal") for h in hidden] + [Dense(classes)],
                       input_shape=x.shape[1:], seed=args.seed)
    val = (val[0].reshape(len(val[0]), -1), val[1]) if val is not None else None
    history = graphc.fit(model, (x, y), epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=graphc.optim.Momentum(0.05 if args.lr is None else args.lr, 0.9), validation_data=val,
                         backend=args.backend, seed=args.seed, monitor=args.monitor,
                         distributed="mpi" if args.distributed else None)
    if not model._trainer.world.is_root:  # a data-parallel job: rank 0 reports (every rank has the same results)
        return 0
    widths = "-".join(str(w) for w in (x.shape[1], *hidden, classes))
    if not history.epochs:
        print(f"MLP {widths}: no epochs trained")
        return 0
    print(f"MLP {widths}: training accuracy {history['acc'][-1]:.4f}"
          + (f", validation accuracy {history['val_acc'][-1]:.4f}" if val else ""))
    print_monitors(history)
    if args.monitor_plot:
        print(f"monitor plot: {history.plot_monitors(args.monitor_plot)}")
    return 0


# -- what a FILE or FILE_OR_SAVED argument names ------------------------------------------------------------------

class CommandError(Exception):
    """A mistake in a command's arguments (or what they name): printed as ``graphc CMD: message``, status 2."""


@dataclass
class Target:
    """A model from a model file (with its file's loss, optimizer and data, when it defines them) or from
    a file ``graphc.save`` wrote (the model alone)."""

    model: Any
    path: str
    loss: Any = None
    optimizer: Any = None
    data: Any = None

    @property
    def stem(self) -> str:
        """The file's name without directory and extension: the default name of what a command writes."""
        return os.path.splitext(os.path.basename(self.path))[0]


def load_target(path: str) -> Target:
    """The model that ``path`` names: a model file (``.py``: graphc.modelfile.load_model_file) or a
    saved model (``graphc.load``)."""
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    if path.endswith(".py"):
        from graphc.modelfile import load_model_file

        found = load_model_file(path)
        return Target(found.model, path, found.loss, found.optimizer, found.data)
    from graphc.saved import load

    return Target(load(path), path)


def _module(target: Target, command: str):
    """The target's graphc.nn model; a Graph (a model file whose model() builds one) cannot be trained."""
    from graphc.nn import Module

    if not isinstance(target.model, Module):
        raise CommandError(f"{target.path}: `graphc {command}` needs a graphc.nn model, and this model is a "
                           f"{type(target.model).__name__}; `graphc inspect` and `graphc compile` take a Graph")
    return target.model


# -- data: --data digits|mnist|fashion-mnist|idx:DIR|npz:FILE ---------------------------------------------------------

DATA_FORMS = ("digits, mnist, fashion-mnist, idx:DIR (the four MNIST-style IDX files), npz:FILE, or a model file "
              "(.py: its data, prepared as it prepares it)")


def load_data(source: Any, model: Any = None):
    """The graphc.datasets.Splits that ``source`` names (a --data value, or a model file's ``data``: a
    name or a function returning Splits), each split's rows reshaped to the model's input shape when
    they hold as many values (digits' 64 pixels feed an [N, 1, 8, 8] convolution as well as an MLP)."""
    from graphc import datasets

    if source is None:
        raise CommandError(f"no data: pass --data ({DATA_FORMS}); the model file defines no `data` (and a saved "
                           f"model holds none)")
    if callable(source):
        splits = source()
    elif source in DATASETS:
        splits = {"digits": datasets.digits, "mnist": datasets.mnist, "fashion-mnist": datasets.fashion_mnist}[source]()
    elif isinstance(source, str) and source.startswith("idx:"):
        splits = datasets.mnist(path=source[len("idx:"):])
    elif isinstance(source, str) and source.startswith("npz:"):
        splits = _npz_splits(source[len("npz:"):])
    elif isinstance(source, str) and source.endswith(".py"):  # a model file's data, as it prepares it
        return load_data(load_target(source).data, model)
    else:
        raise CommandError(f"unknown data {source!r}: use {DATA_FORMS}")
    if not isinstance(splits, datasets.Splits):
        raise CommandError(f"the model file's data() returned a {type(splits).__name__}, not graphc.datasets.Splits")
    if model is None or not hasattr(model, "in_shape"):
        return splits
    shape = tuple(model.in_shape)
    fit_rows = lambda part: None if part is None else (_rows_as(part[0], shape), part[1])  # noqa: E731
    return datasets.Splits(fit_rows(splits.train), fit_rows(splits.val), fit_rows(splits.test), splits.classes,
                           splits.name)


def _rows_as(x, shape: tuple[int, ...]):
    """``x`` [N, ...] as [N, *shape] when a row holds as many values; otherwise as it is (fit then says why not)."""
    import numpy as np

    if x.shape[1:] != shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        return x.reshape((len(x),) + shape)
    return x


def _npz_splits(path: str):
    """Splits from an .npz file: x and y, optionally x_val/y_val and x_test/y_test."""
    import numpy as np

    from graphc import datasets

    with np.load(path) as arrays:
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise CommandError(f"{path} has no array(s) {', '.join(missing)} (it has {', '.join(arrays.files)}); "
                               f"npz data holds x [N, ...] and y [N], optionally x_val, y_val, x_test, y_test")
        pair = lambda k: (arrays["x" + k], arrays["y" + k]) if "x" + k in arrays and "y" + k in arrays else None  # noqa: E731
        train, val, test = pair(""), pair("_val"), pair("_test")
    classes = int(max(int(np.max(p[1])) for p in (train, val, test) if p is not None and len(p[1]))) + 1
    return datasets.Splits(train, val, test, classes, os.path.basename(path))


# -- --optimizer 'adam(lr=1e-3)' and --schedule 'cosine(T=10)' --------------------------------------------------------

def parse_call(text: str, what: str) -> tuple[str, list, dict]:
    """``name(arg, key=value, ...)`` (or a bare ``name``) with literal arguments: (name, args, kwargs)."""
    import ast

    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise CommandError(f"{what} {text!r} is not of the form name(key=value, ...)") from None
    if isinstance(tree, ast.Name):
        return tree.id, [], {}
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise CommandError(f"{what} {text!r} is not of the form name(key=value, ...)")
    try:
        args = [ast.literal_eval(a) for a in tree.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
    except ValueError:
        raise CommandError(f"{what} {text!r}: arguments must be numbers (or other literals)") from None
    return tree.func.id, args, kwargs


def optimizers() -> dict[str, type]:
    """The optimizers --optimizer knows, by their lower-case names (graphc.optim)."""
    from graphc import optim

    return {cls.name: cls for cls in vars(optim).values()
            if isinstance(cls, type) and issubclass(cls, optim.Optimizer) and cls is not optim.Optimizer}


def parse_optimizer(text: str):
    """``adam(lr=1e-3)`` -> graphc.optim.Adam(lr=1e-3)."""
    name, args, kwargs = parse_call(text, "--optimizer")
    known = optimizers()
    if name.lower() not in known:
        raise CommandError(f"unknown optimizer {name!r}; one of {', '.join(sorted(known))}")
    try:
        return known[name.lower()](*args, **kwargs)
    except TypeError as err:
        raise CommandError(f"--optimizer {text!r}: {err}") from None


#: The schedules --schedule knows (graphc.train.schedules); each takes lr0 first.
SCHEDULES = ("constant", "step", "linear", "exponential", "cosine", "inverse_sqrt", "reduce_on_plateau")


def parse_schedule(text: str, lr: float, epochs: int):
    """``cosine(T=10)`` -> graphc.train.schedules.cosine(lr, T=10): lr0 defaults to the optimizer's rate
    and a horizon T to the number of epochs."""
    import inspect

    from graphc.train import schedules

    name, args, kwargs = parse_call(text, "--schedule")
    if name not in SCHEDULES:
        raise CommandError(f"unknown schedule {name!r}; one of {', '.join(SCHEDULES)}")
    make = getattr(schedules, name)
    params = inspect.signature(make).parameters
    if not args and "lr0" not in kwargs and "lr" not in kwargs:
        kwargs["lr0" if "lr0" in params else "lr"] = lr
    if "T" in params and "T" not in kwargs and len(args) < 2:
        kwargs["T"] = epochs
    try:
        return make(*args, **kwargs)
    except TypeError as err:
        raise CommandError(f"--schedule {text!r}: {err}") from None


# -- the graphs a model file describes ---------------------------------------------------------------------------------

def step_graph(target: Target, batch_size: int, grad: bool, command: str = "inspect"):
    """The graph ``inspect``/``compile`` show: for a graphc.nn model, its inference graph, or with ``grad``
    its training step (forward, loss, gradients, the optimizer's updates); a Graph as it is, with ``grad``
    the gradients of its first output (a scalar loss) with respect to its trainable parameters added."""
    from graphc import dsl, optim
    from graphc.ir import Graph
    from graphc.train.loop import build_eval, build_train_step

    model = target.model
    if isinstance(model, Graph):
        if grad and not any(n.provenance is not None for n in model.nodes):
            from graphc.autodiff import grad as gradient

            if not model.outputs:
                raise CommandError(f"{target.path}: the graph has no output to differentiate")
            loss = dsl.Tensor(model.outputs[0], model)
            with model:
                model.output(*gradient(loss, [dsl.Tensor(p, model) for p in model.trainable_params]))
        return model
    _module(target, command)
    if not grad:
        return build_eval(model, batch_size)
    return build_train_step(model, batch_size, target.optimizer or optim.SGD(0.01),
                            target.loss or "softmax_cross_entropy")


def gradient_subset(graph) -> list:
    """The backward nodes (those with provenance), in graph order."""
    nodes = [n for n in graph.nodes if n.provenance is not None]
    if not nodes:
        raise CommandError(f"graph {graph.name!r} has no gradient nodes (add --grad)")
    return nodes


def _with_their_inputs(graph, nodes: list) -> list:
    """``nodes`` and the nodes they read, in graph order: a drawing of the gradient shows what it reads."""
    keep = {id(n) for n in nodes} | {id(i) for n in nodes for i in n.inputs}
    return [n for n in graph.nodes if id(n) in keep]


def draw(graph, path: str, nodes=None) -> str:
    """Write the drawing ``path`` (.svg, .png: rendered by Graphviz when ``dot`` is installed, else the .dot
    beside it with the command that renders it; .dot: the DOT text). Returns the file written."""
    from graphc.ir.dot import graph_dot

    stem, ext = os.path.splitext(path)
    if ext == ".dot":
        with open(path, "w") as f:
            f.write(graph_dot(graph, nodes))
        return path
    if ext not in (".svg", ".png", ".pdf"):
        raise CommandError(f"--draw {path}: the drawing's name ends in .svg, .png, .pdf or .dot")
    return graph.save_dot(stem, format=ext[1:], nodes=nodes)


# -- graphc inspect ----------------------------------------------------------------------------------------------------

def _cmd_inspect(args: argparse.Namespace) -> int:
    target = load_target(args.file)
    graph = step_graph(target, args.batch_size, grad=args.grad or args.only_gradient)
    shown = gradient_subset(graph) if args.only_gradient else None
    print(graph.text(shown), end="")
    optimized = None
    if args.passes is not None or args.kernels:
        from graphc.passes import DEFAULT_LEVEL, optimize

        level = DEFAULT_LEVEL if args.passes is None else args.passes
        optimized = optimize(graph, level)
    if args.passes is not None:
        print(f"\npasses (level {optimized.level}):")
        print(optimized.table(), end="")
        print(f"\noptimized graph:\n{optimized.graph.text()}", end="")
    if args.kernels:
        from graphc.backends.lowering import lower

        print(f"\nkernels (graph optimized at level {optimized.level}):")
        print(lower(optimized.graph, plan=optimized.buffer_plan))
    if args.draw:
        drawn = draw(graph, args.draw, _with_their_inputs(graph, shown) if shown else None)
        print(f"\ndrawing: {drawn}")
    return 0


# -- graphc compile ----------------------------------------------------------------------------------------------------

def _cmd_compile(args: argparse.Namespace) -> int:
    import time

    import graphc
    from graphc import dsl
    from graphc.ir import Graph

    target = load_target(args.file)
    # a graphc.nn model's training step (or inference graph); a Graph as it is
    graph = step_graph(target, args.batch_size, not args.inference and not isinstance(target.model, Graph), "compile")
    started = time.perf_counter()
    exe = graphc.compile([dsl.Tensor(o, graph) for o in graph.outputs], backend=args.backend)
    seconds = time.perf_counter() - started
    stats = exe.stats
    print(f"compiled {graph.name} ({len(graph.nodes)} nodes) for backend {args.backend} in {seconds:.2f} s")
    optimized, stages = stats.get("optimize"), stats.get("stages") or {}
    timings = [("passes", optimized.seconds if optimized is not None else None),
               ("code generation", stats.get("codegen_s")), ("import", stats.get("import_s")),
               ("Numba compile (or cache load)", stats.get("numba_compile_s")),
               ("llvm driver: kernels", stages.get("llvm")), ("llvm driver: load", stages.get("load")),
               ("total", stats.get("trace_to_build_s"))]
    for name, value in timings:
        if value is not None:
            print(f"  {name:<30} {value:8.3f} s")
    if "driver" in stats:  # backend cpu: the driver compile's default ("auto") chose
        print(f"driver: {stats['driver']}")
    if "cache" in stats:
        print(f"cache: {stats['cache']}, entry {stats.get('cache_dir', '-')}")
    if args.source:
        with open(args.source, "w") as f:
            f.write(exe.source)
        print(f"generated source: {args.source} ({exe.source.count(chr(10))} lines)")
    return 0


# -- graphc train FILE -------------------------------------------------------------------------------------------------

class BatchProgress:
    """Progress within each epoch for ``graphc train``: batches done, samples per second and the running
    loss, as a tqdm bar when tqdm is installed, else as text lines on stderr (rewritten in place on a
    terminal; elsewhere, as in a CI log, a line every few seconds and at the end of each epoch)."""

    EVERY_S = 2.0  # seconds between two lines of plain text outside a terminal

    def __init__(self, epochs: int):
        import time

        self.epochs, self.clock = epochs, time.perf_counter
        self.epoch, self.started, self.last_line, self.bar = None, 0.0, 0.0, None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.tqdm = tqdm
        self.tty = sys.stderr.isatty()

    def __call__(self, epoch: int | None, done: int, steps: int, rows: int, loss_sum: float) -> None:
        if epoch != self.epoch:
            self._start(epoch, steps)
        now = self.clock()
        rate = rows / max(now - self.started, 1e-9)
        loss = loss_sum / max(rows, 1)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix({"samples/s": f"{rate:.0f}", "loss": f"{loss:.4f}"})
            if done == steps:
                self.bar.close()
            return
        line = f"epoch {epoch}/{self.epochs}  batch {done}/{steps}  {rate:,.0f} samples/s  loss {loss:.4f}"
        if self.tty:
            print("\r" + line, end="\n" if done == steps else "", file=sys.stderr, flush=True)
        elif done == steps or now - self.last_line >= self.EVERY_S:
            print(line, file=sys.stderr, flush=True)
            self.last_line = now

    def _start(self, epoch: int | None, steps: int) -> None:
        self.epoch, self.started = epoch, self.clock()
        self.last_line = self.started
        if self.tqdm is not None:
            self.bar = self.tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", unit="batch", file=sys.stderr)


def history_table(history) -> str:
    """One row per epoch: the History's scores (loss, metrics, validation), the learning rate and the time."""
    def place(name: str) -> tuple[int, int, str]:  # loss, metrics, their val_ twins, then batch size, lr, time
        base = name[len("val_"):] if name.startswith("val_") else name
        tail = ("batch_size", "lr", "seconds")
        return (tail.index(name) + 2 if name in tail else int(name != base), base != "loss", base)

    columns = sorted(history.metrics, key=place)
    width = {c: max(len(c), 9) for c in columns}
    lines = ["epoch  " + "  ".join(f"{c:>{width[c]}}" for c in columns)]
    for k, epoch in enumerate(history.epochs):
        cells = []
        for c in columns:
            value = history.metrics[c][k]
            text = f"{value:.3g}" if c == "lr" else f"{value:.2f}" if c == "seconds" else \
                str(int(value)) if c == "batch_size" else f"{value:.4f}"
            cells.append(f"{text:>{width[c]}}")
        mark = " *" if history.best_epoch == epoch else ""
        lines.append(f"{epoch:>5}  " + "  ".join(cells) + mark)
    if history.best_epoch is not None:
        lines.append(f"* best epoch {history.best_epoch}")
    return "\n".join(lines)


def scores_text(name: str, scores: dict[str, float], rows: int) -> str:
    """``test: loss 0.1234  acc 0.9650 (360 examples)``: the line train and eval both print."""
    return f"{name}: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({rows} examples)"


def _evaluation_split(splits, name: str):
    """The split --split names (test by default, else the validation split when there is no test split)."""
    part = getattr(splits, name)
    if part is None and name == "test" and splits.val is not None:
        return "val", splits.val
    if part is None:
        raise CommandError(f"the data {splits.name!r} has no {name} split")
    return name, part


def _train_model_file(args: argparse.Namespace) -> int:
    """``graphc train FILE``: fit the model file's model with per-epoch progress, then print the summary
    table and the test scores, and save the trained model (graphc.save)."""
    import graphc
    from graphc.optim import SGD
    from graphc.train.loop import Trainer

    target = load_target(args.file)
    model = _module(target, "train")
    splits = load_data(args.data or target.data, model)
    optimizer = parse_optimizer(args.optimizer) if args.optimizer else target.optimizer or SGD(0.01)
    if args.lr is not None:
        optimizer.lr = args.lr
        optimizer.validate()
    schedule = parse_schedule(args.schedule, optimizer.lr, args.epochs) if args.schedule else None
    from graphc.train.distributed import world_of

    world = world_of("mpi" if args.distributed else None)  # a data-parallel job under mpiexec
    trainer = Trainer(model, optimizer, target.loss or "softmax_cross_entropy", backend=args.backend,
                      monitor=args.monitor, world=world)
    trainer.progress = BatchProgress(args.epochs) if world.is_root else None
    checkpoint = None
    if args.checkpoint:
        os.makedirs(args.checkpoint, exist_ok=True)
        checkpoint = os.path.join(args.checkpoint, f"{target.stem}.ckpt.npz")
    elif args.resume:
        raise CommandError("--resume continues from --checkpoint DIR: give the directory")
    if world.is_root:
        print(f"training {target.stem} on {splits.name}: {len(splits.train[0])} examples, {args.epochs} epochs, "
              f"batch size {args.batch_size}, {type(optimizer).__name__} (lr {optimizer.lr:g})", flush=True)
    history = graphc.fit(model, splits.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         schedule=schedule, validation_data=splits.val, seed=args.seed, backend=args.backend,
                         checkpoint=checkpoint, resume=args.resume, verbose=False, trainer=trainer,
                         monitor=args.monitor)
    if not world.is_root:  # rank 0 reports and saves (every rank holds the same model)
        return 0
    print(history_table(history))
    if history.monitor:
        print("monitors (last epoch):")
        print_monitors(history)
    if splits.test is not None:
        print(scores_text("test", trainer.scores(*splits.test), len(splits.test[0])))
    if args.plot:
        print(f"curves: {history.plot(args.plot)}")
    from graphc.saved import save

    print(f"saved model: {save(model, args.save or target.stem + '.graphc')}")
    return 0


# -- graphc eval -------------------------------------------------------------------------------------------------------

def _cmd_eval(args: argparse.Namespace) -> int:
    from graphc.train.loop import Trainer

    target = load_target(args.file)
    model = _module(target, "eval")
    splits = load_data(args.data or target.data, model)
    name, (x, y) = _evaluation_split(splits, args.split)
    trainer = Trainer(model, loss=target.loss or "softmax_cross_entropy", backend=args.backend)
    print(scores_text(name, trainer.scores(x, y), len(x)))
    return 0


# -- graphc export -----------------------------------------------------------------------------------------------------

def _cmd_export(args: argparse.Namespace) -> int:
    if args.format in ("so", "exe"):
        return _export_native(args)
    target = load_target(args.file)
    from graphc.onnx_export import export_onnx

    shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
    path = export_onnx(target.model, args.output or target.stem + ".onnx", input_shape=shape)
    print(f"wrote {path} (ONNX, {os.path.getsize(path)} bytes)")
    return 0


def _export_native(args: argparse.Namespace) -> int:
    """--format so|exe: graphc.export writes both the library (with its header) and the executable."""
    from graphc.export import export
    from graphc.ir import Graph
    from graphc.optim import SGD

    target = load_target(args.file)
    model = target.model
    if args.weights:
        from graphc.saved import load

        model = _module(target, "export --weights")
        model.load_values(load(args.weights).named_values())
    is_model = not isinstance(model, Graph)
    if (args.train or args.batch_size) and not is_model:
        raise CommandError(f"{args.file}: --train and --batch-size apply to a graphc.nn model; this model is a Graph")
    optimizer = (target.optimizer or SGD(0.01)) if args.train else None
    options = dict(batch_size=args.batch_size or 1, optimizer=optimizer, loss=target.loss or "softmax_cross_entropy",
                   train=args.train) if is_model else {}
    name = args.name or "".join(c if c.isalnum() else "_" for c in target.stem)
    result = export(model, args.out or ".", name=name,
                    target=args.target, blas=args.blas, **options)
    print(result)
    main = result.files["library"] if args.format == "so" else result.files["executable"]
    print(f"{'library' if args.format == 'so' else 'executable'}: {main} (C API: {result.files['header']}; "
          f"see docs/export.md)")
    return 0


# -- graphc bench ------------------------------------------------------------------------------------------------------

def _cmd_bench(args: argparse.Namespace) -> int:
    """Compile the training step and the inference graph, then time training epochs."""
    import time

    import numpy as np

    from graphc.optim import SGD
    from graphc.train.loop import Trainer, steps_per_epoch

    target = load_target(args.file)
    model = _module(target, "bench")
    x, y = load_data(args.data or target.data or "digits", model).train
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    optimizer = parse_optimizer(args.optimizer) if args.optimizer else target.optimizer or SGD(0.01)
    trainer = Trainer(model, optimizer, target.loss or "softmax_cross_entropy", backend=args.backend)
    started = time.perf_counter()
    step = trainer.step_executable(args.batch_size)
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer.eval_executable(args.batch_size)
    compile_eval_s = time.perf_counter() - started
    steps = steps_per_epoch(len(x), args.batch_size)
    rng = np.random.default_rng(args.seed)
    epochs = []
    for _ in range(args.epochs):
        started = time.perf_counter()
        trainer.train_epoch(x, y, args.batch_size, lambda s: optimizer.lr, rng, args.seed)
        epochs.append(time.perf_counter() - started)
    best = min(epochs)
    print(f"bench {target.stem}: {len(x)} examples, batch size {args.batch_size}, {steps} steps an epoch, "
          f"backend {trainer.backend}")
    rows = [("compile train step", f"{compile_s:.3f} s" + (f" (cache {step.stats['cache']})" if "cache" in step.stats else "")),
            ("compile inference", f"{compile_eval_s:.3f} s"),
            (f"epoch (best of {len(epochs)})", f"{best:.4g} s"),
            ("step (epoch / steps)", f"{best / steps * 1e3:.4g} ms"),
            ("throughput", f"{len(x) / best:,.0f} samples/s")]
    for name, value in rows:
        print(f"  {name:<24} {value}")
    return 0


# -- graphc cache ------------------------------------------------------------------------------------------------------

def cache_entries(root):
    """The compile cache's entries under ``root`` (directories named by a 64-hex-digit key); the datasets
    and Numba's kernel cache that share the root are not entries."""
    import re

    from graphc.backends.cache import Entry

    if not root.is_dir():
        return []
    return [Entry(root, p.name) for p in sorted(root.iterdir()) if p.is_dir() and re.fullmatch(r"[0-9a-f]{64}", p.name)]


def _entry_bytes(entry) -> int:
    return sum(p.stat().st_size for p in entry.dir.rglob("*") if p.is_file() and not p.is_symlink())


def _cmd_cache(args: argparse.Namespace) -> int:
    from graphc.backends.cache import cache_root, discard

    root = cache_root()
    entries = cache_entries(root)
    if args.action == "ls":
        print(f"compile cache {root}: {len(entries)} entries")
        for e in entries:
            manifest = e.read_manifest() or {}
            problems = e.problems()
            state = "ok" if not problems else "damaged: " + "; ".join(problems)
            backend = (manifest.get("environment") or {}).get("backend", "?")
            print(f"  {e.key[:16]}  {manifest.get('graph', '?'):<24} {backend:<10} {manifest.get('created', '?'):<19} "
                  f"{_entry_bytes(e) / 1024:8.1f} KiB  {state}")
        return 0
    if args.action == "verify":
        bad = [(e, e.problems()) for e in entries]
        bad = [(e, p) for e, p in bad if p]
        for e, problems in bad:
            print(f"  {e.key[:16]}  {'; '.join(problems)}")
        print(f"compile cache {root}: {len(entries) - len(bad)} of {len(entries)} entries verified"
              + (f", {len(bad)} damaged (the next compile rebuilds them; `graphc cache clean --damaged` removes them)"
                 if bad else ""))
        return 1 if bad else 0
    doomed = [e for e in entries if e.problems()] if args.damaged else entries
    freed = sum(_entry_bytes(e) for e in doomed)
    for e in doomed:
        discard(e.dir)
        if e.lock_path.exists():
            discard(e.lock_path)
    print(f"compile cache {root}: removed {len(doomed)} {'damaged ' if args.damaged else ''}entries "
          f"({freed / 1024:.1f} KiB); the datasets there are kept")
    return 0


# -- graphc doctor -----------------------------------------------------------------------------------------------------

def _version_of(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _blas_lines() -> list[str]:
    """The BLAS NumPy was built with (numpy.show_config) and, with threadpoolctl, the one loaded, its
    kernel (architecture) and threads."""
    import numpy as np

    lines = []
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        lines.append(f"BLAS (NumPy build): {blas.get('name', '?')} {blas.get('version', '')}".rstrip())
    except TypeError:  # NumPy < 1.25 has no mode=
        lines.append("BLAS (NumPy build): see numpy.show_config()")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines.append("BLAS (loaded): install threadpoolctl to see the library, kernel and threads in use")
        return lines
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            lines.append(f"BLAS (loaded): {pool.get('internal_api')} {pool.get('version')}, kernel "
                         f"{pool.get('architecture', '?')}, {pool.get('num_threads')} threads ({pool.get('filepath')})")
    return lines


def _threading_layer() -> str:
    """The threading layer Numba uses for parallel code (known only once a parallel function has run)."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=False)
    def _total(a):
        s = 0.0
        for i in numba.prange(a.shape[0]):
            s += a[i]
        return s

    try:
        _total(np.ones(4))
        return numba.threading_layer()
    except Exception as err:  # noqa: BLE001 - the doctor reports any failure rather than stopping
        return f"unavailable ({type(err).__name__}: {err})"


def _cuda_lines() -> list[str]:
    lines = []
    from graphc.backends import numba_cuda
    from graphc.backends.numba_cuda import ptx
    from graphc.ir import GraphcError

    for label, check in (("numba-cuda", numba_cuda.require_numba_cuda), ("CUDA device", numba_cuda.require_device)):
        try:
            check()
            lines.append(f"{label}: ok" + (" (Numba's CUDA simulator)" if label == "CUDA device" and numba_cuda.simulated() else ""))
        except GraphcError as err:
            lines.append(f"{label}: no: {err}")
            break
    try:
        lines.append(f"ptxas (PTX to GPU code): {ptx.find_ptxas()}")
    except GraphcError as err:
        lines.append(f"ptxas: no: {err}")
    return lines


def _cache_lines() -> list[str]:
    from graphc.backends.cache import cache_root, writable_root
    from graphc.datasets import cache_dir

    root = cache_root()
    usable, why = writable_root(root)
    entries = cache_entries(usable)
    damaged = sum(1 for e in entries if e.problems())
    lines = [f"compile cache: {usable}" + (f" (fallback: {why})" if why else "") +
             f", {len(entries)} entries, {damaged} damaged" + (" (graphc cache verify)" if damaged else "")]
    lines.append(f"datasets: {cache_dir()}")
    return lines


def _cmd_doctor(args: argparse.Namespace) -> int:
    import platform

    import numba

    print(f"graphc {_version()} ({os.path.dirname(os.path.abspath(__file__))})")
    print(f"Python {platform.python_version()} ({sys.executable}), {platform.system()} {platform.machine()}")
    print("packages: " + ", ".join(f"{p} {_version_of(p)}" for p in
                                   ("numpy", "numba", "llvmlite", "sympy", "scipy", "tqdm", "matplotlib",
                                    "scikit-learn", "onnx", "onnxruntime", "numba-cuda", "threadpoolctl")))
    for line in _blas_lines():
        print(line)
    print(f"threads: {os.cpu_count()} CPUs, Numba {numba.config.NUMBA_NUM_THREADS} threads "
          f"(NUMBA_NUM_THREADS), threading layer {_threading_layer()}")
    print(f"CPU (Numba's target): {numba.config.CPU_NAME or _host_cpu()}")
    for line in _cuda_lines() + _cache_lines():
        print(line)
    return 0


def _host_cpu() -> str:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def print_monitors(history) -> None:
    """With --monitor: each layer's monitors in the last epoch."""
    for layer, stats in history.monitor.items():
        print(f"  {layer}: " + "  ".join(f"{stat} {values[-1]:.4g}" for stat, values in stats.items()))


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
    _add_inspect(sub)
    _add_compile(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_cache(sub)
    _add_doctor(sub)
    return parser


def _subcommand(sub, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example (kept as written: one command a line)."""
    import textwrap

    paragraphs = "\n\n".join(textwrap.fill(p, 100) for p in description.split("\n\n"))
    return sub.add_parser(name, help=help, description=paragraphs, epilog=f"Example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_model_options(p: argparse.ArgumentParser, batch_size: int = 128) -> None:
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"rows per batch (default: {batch_size})")


def _add_inspect(sub) -> None:
    p = _subcommand(sub, "inspect", "print a model file's graph, gradient, passes, kernels; draw it",
                    "Print the graph of a model file (its inference graph; with --grad the training step: forward, "
                    "loss, gradients with their provenance, optimizer updates), the pass table, the kernel Program, "
                    "and draw it (forward, backward and update nodes in three colours, update edges dashed).",
                    "graphc inspect examples/mnist_mlp.py --grad --passes 2 --draw step.svg")
    p.add_argument("file", metavar="FILE_OR_SAVED", help="a model file (.py) or a saved model (graphc.save)")
    p.add_argument("--grad", action="store_true", help="the training step: gradients and updates too")
    p.add_argument("--only-gradient", action="store_true", help="show only the gradient (backward) nodes")
    p.add_argument("--passes", type=int, metavar="LEVEL", default=None,
                   help="optimize at LEVEL (0-3): the pass table and the optimized graph")
    p.add_argument("--kernels", action="store_true", help="the lowered kernel Program (of the optimized graph)")
    p.add_argument("--draw", metavar="OUT", default=None,
                   help="draw the graph: OUT.svg or OUT.png (Graphviz; without it the .dot and how to render it), OUT.dot")
    _add_model_options(p, batch_size=32)
    p.set_defaults(run=_cmd_inspect)


def _add_compile(sub) -> None:
    p = _subcommand(sub, "compile", "compile a model file's training step; timings, cache entry, source",
                    "Compile the training step of a model file (or with --inference its inference graph) and report "
                    "the time of each stage, the compile-cache entry, and optionally write the generated source.",
                    "graphc compile examples/mnist_mlp.py --backend cpu --source step.py")
    p.add_argument("file", metavar="FILE_OR_SAVED", help="a model file (.py) or a saved model (graphc.save)")
    p.add_argument("--backend", choices=("cpu", "cuda"), default="cpu", help="the target (default: cpu)")
    p.add_argument("--source", metavar="OUT.py", default=None, help="write the generated source there")
    p.add_argument("--inference", action="store_true", help="compile the inference graph, not the training step")
    _add_model_options(p)
    p.set_defaults(run=_cmd_compile)


def _add_train(sub) -> None:
    p = _subcommand(sub, "train", "train a model file's model (or an MLP on a data set) and save it",
                    "Train the model of a model file on --data (default: the file's `data`) with per-epoch progress "
                    "(batches, samples/s, running loss), print a summary table and the test scores, and save the "
                    "trained model (graphc.save; load it with graphc.load or `graphc eval`).\n\n"
                    "The older form `graphc train DATA` trains a ReLU MLP (--hidden, momentum 0.9) on a data set; "
                    "--monitor adds the training monitors (activation mean/std, dead units, update ratios) to the "
                    "step and flags what leaves the course's ranges.",
                    "graphc train examples/mnist_mlp.py --epochs 2 --optimizer 'adam(lr=1e-3)' --save mnist.graphc\n"
                    "  graphc train mnist --hidden 512,256 --epochs 5 --monitor")
    p.add_argument("file", metavar="FILE",
                   help=f"a model file (.py); or, for the MLP form, {', '.join(DATASETS)} or an .npz file with x, y "
                        f"(and optionally x_val, y_val)")
    p.add_argument("--data", default=None, help=f"{DATA_FORMS} (default: the model file's `data`)")
    p.add_argument("--epochs", type=int, default=5, help="default: 5")
    _add_model_options(p)
    p.add_argument("--optimizer", default=None, metavar="'NAME(k=v)'",
                   help=f"e.g. 'adam(lr=1e-3)'; one of {', '.join(sorted(optimizers()))} "
                        f"(default: the model file's optimizer, else sgd(lr=0.01))")
    p.add_argument("--schedule", default=None, metavar="'NAME(k=v)'",
                   help=f"learning-rate schedule, e.g. 'cosine()' or 'step(drop=0.5, every=2)'; one of "
                        f"{', '.join(SCHEDULES)} (lr0: the optimizer's rate, T: the epochs)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (overrides the optimizer's; the MLP form's default: 0.05)")
    p.add_argument("--checkpoint", metavar="DIR", default=None, help="save a checkpoint there after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR")
    p.add_argument("--plot", metavar="PNG", default=None, help="save the training curves (needs matplotlib)")
    p.add_argument("--save", metavar="OUT", default=None, help="where to save the trained model (default: FILE's name"
                                                                 " with .graphc, in the current directory)")
    p.add_argument("--backend", default=None, help="cpu (the default when available), reference or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", default="128", help="MLP form: hidden layer widths, comma separated (default: 128)")
    p.add_argument("--activation", default="relu", help="MLP form: hidden layers' activation (default: relu)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run as `mpiexec -n N graphc train ... --distributed` (without "
                        "the flag, more than one process under mpiexec is detected too); needs graphc[mpi]")
    p.add_argument("--monitor", action="store_true",
                   help="compute the monitors in the training step, keep them per epoch and flag them")
    p.add_argument("--monitor-plot", metavar="PNG", default=None,
                   help="MLP form, with --monitor: save dead units and update ratios per epoch (needs matplotlib)")
    p.set_defaults(run=_cmd_train)


def _add_eval(sub) -> None:
    p = _subcommand(sub, "eval", "the loss and accuracy of a saved model (or a model file's) on a data set",
                    "Evaluate a saved model (or a model file's model as model() builds it) on the test split of "
                    "--data (default: the model file's `data`): the loss and the accuracy.",
                    "graphc eval mnist_mlp.graphc --data mnist")
    p.add_argument("file", metavar="FILE_OR_SAVED", help="a saved model (graphc.save) or a model file (.py)")
    p.add_argument("--data", default=None, help=f"{DATA_FORMS} (default: the model file's `data`)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="which split (default: test, or val when the data has no test split)")
    p.add_argument("--backend", default=None, help="cpu (the default when available), reference or cuda")
    p.set_defaults(run=_cmd_eval)


def _add_export(sub) -> None:
    p = _subcommand(sub, "export", "export a model as ONNX, or as a C library and executable",
                    "Export a saved model or a model file: --format onnx writes the inference graph (graphc.export_onnx, "
                    "needs pip install 'graphc[onnx]'); --format so|exe compiles it ahead of time with LLVM "
                    "(graphc.export, docs/export.md) into lib<name>.so, <name>.h and the executable <name>, which "
                    "need no Python (both formats write all three; the format says which the command reports).",
                    "graphc export mnist_mlp.graphc --format onnx -o mnist_mlp.onnx\n"
                    "  graphc export examples/mnist_mlp.py --format so --out build --weights mnist_mlp.graphc --train")
    p.add_argument("file", metavar="FILE_OR_SAVED", help="a saved model (graphc.save) or a model file (.py)")
    p.add_argument("--format", choices=("onnx", "so", "exe"), default="onnx", help="default: onnx")
    p.add_argument("-o", "--output", default=None, help="onnx: the file to write (default: FILE's name with .onnx)")
    p.add_argument("--input-shape", default=None, metavar="N,...",
                   help="onnx: the input shape without the batch axis, comma separated (only for a model not built yet)")
    p.add_argument("--out", default=None, metavar="DIR", help="so/exe: the directory to write (default: the current one)")
    p.add_argument("--name", default=None, help="so/exe: the C name prefix and file names (default: FILE's stem)")
    p.add_argument("--target", choices=("native", "generic"), default="native",
                   help="so/exe: native (this CPU's features) or generic (any x86-64); default native")
    p.add_argument("--blas", choices=("generated", "system"), default="generated",
                   help="so/exe: GEMM generated in LLVM IR (no dependency) or the system's CBLAS (-lopenblas)")
    p.add_argument("--batch-size", type=int, default=None, help="so/exe: rows per call of the entries (default 1)")
    p.add_argument("--train", action="store_true",
                   help="so/exe: also export the training step (the model file's optimizer, else SGD 0.01)")
    p.add_argument("--weights", default=None, metavar="SAVED",
                   help="so/exe: take the parameters from this saved model (graphc.save) instead of the file's")
    p.set_defaults(run=_cmd_export)


def _add_bench(sub) -> None:
    p = _subcommand(sub, "bench", "time compiling and training a model file's model",
                    "Compile the training step and the inference graph of a model file's model, then time training "
                    "epochs on --data (default: the file's `data`, else digits): compile times, epoch, step, samples/s.",
                    "graphc bench examples/mnist_mlp.py --epochs 3 --batch-size 128")
    p.add_argument("file", metavar="FILE_OR_SAVED", help="a model file (.py) or a saved model (graphc.save)")
    p.add_argument("--data", default=None, help=f"{DATA_FORMS} (default: the model file's `data`, else digits)")
    p.add_argument("--epochs", type=int, default=2, help="epochs to time; the best is reported (default: 2)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples only")
    p.add_argument("--optimizer", default=None, metavar="'NAME(k=v)'", help="as for graphc train")
    p.add_argument("--backend", default=None, help="cpu (the default when available), reference or cuda")
    p.add_argument("--seed", type=int, default=0)
    _add_model_options(p)
    p.set_defaults(run=_cmd_bench)


def _add_cache(sub) -> None:
    p = _subcommand(sub, "cache", "list, verify or clean the compile cache",
                    "The compile cache ($GRAPHC_CACHE_DIR or ~/.cache/graphc): ls lists its entries (graph, backend, "
                    "date, size, state), verify checks every file against its manifest's SHA-256 (status 1 when "
                    "some are damaged), clean removes the entries (--damaged: only the damaged ones); the datasets "
                    "cached there are kept.",
                    "graphc cache verify")
    p.add_argument("action", choices=("ls", "verify", "clean"))
    p.add_argument("--damaged", action="store_true", help="clean: remove only the entries that fail verification")
    p.set_defaults(run=_cmd_cache)


def _add_doctor(sub) -> None:
    p = _subcommand(sub, "doctor", "versions, BLAS, threads, CUDA/PTX, cache: what graphc runs on",
                    "Report what graphc runs on: versions, the BLAS library and kernel, threads and Numba's threading "
                    "layer, CUDA and PTX availability, the cache's location and health.",
                    "graphc doctor")
    p.set_defaults(run=_cmd_doctor)


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
    from graphc.ir import GraphcError

    try:
        return args.run(args)
    except BrokenPipeError:  # the reader stopped early: main() ends quietly
        raise
    except (CommandError, OSError, ValueError, ImportError, GraphcError) as err:
        # what the user named is missing or wrong (a file, the data, matplotlib): one line, no traceback
        print(f"graphc {args.command}: {err}", file=sys.stderr)
        return 2


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
