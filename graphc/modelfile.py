"""Model files: a Python file that declares a model for the ``graphc`` command (and for Python).

A model file defines, at module level:

- ``model()`` (required): returns a built graphc.nn model (``Sequential(..., input_shape=...)``) or a Graph;
- ``loss`` (optional): a loss name (``"softmax_cross_entropy"``, ``"mse"``, ...) or a function fit accepts;
- ``optimizer`` (optional): a graphc.optim optimizer (``optim.Adam(1e-3)``);
- ``data`` (optional): a dataset name (``"digits"``, ``"mnist"``, ``"fashion-mnist"``) or a function returning
  graphc.datasets.Splits.

What a script does when run (``python examples/NAME.py``) sits under ``if __name__ == "__main__":``, so that
loading the file declares the model and trains nothing. :func:`load_model_file` runs the file (as a module
that is not ``__main__``), calls ``model()`` and checks every name, with errors that point at the file's line.

>>> import os, tempfile, textwrap
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.py")
>>> _ = open(path, "w").write(textwrap.dedent('''
...     from graphc.nn import Dense, Sequential
...     def model():
...         return Sequential([Dense(2)], input_shape=(3,))
...     data = "digits"
... '''))
>>> mf = load_model_file(path)
>>> mf.model.out_shape, mf.data, mf.optimizer
((2,), 'digits', None)
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import itertools
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .datasets import Splits
from .ir import Graph, GraphcError
from .nn import Module
from .optim import Optimizer
from .train import losses

#: The names a model file may define for graphc, and what each must be.
CONVENTION = ("model() -> a graphc.nn model or a Graph; optional: loss (a loss name or function), optimizer "
              "(a graphc.optim optimizer), data (a dataset name or a function returning graphc.datasets.Splits)")


class ModelFileError(GraphcError, ValueError):
    """A model file that cannot be loaded: missing, a syntax error, an exception while it runs, no ``model()``,
    or a name that is not what the convention asks for. The message starts with the file's ``path:line``."""


@dataclass
class ModelFile:
    """What a model file declares. ``model`` is what its ``model()`` returned; ``loss``, ``optimizer`` and
    ``data`` are None when the file does not define them (the caller's defaults apply)."""

    model: Module | Graph
    loss: Any = None
    optimizer: Optimizer | None = None
    data: str | Callable[[], Splits] | None = None
    path: str = ""

    def splits(self) -> Splits | None:
        """The file's data when it is a function (called now), else None (a dataset name the caller loads)."""
        if not callable(self.data):
            return None
        splits = self.data()
        if not isinstance(splits, Splits):
            raise ModelFileError(f"{self.path}:{_first_line(self.data)}: data() returned a {type(splits).__name__}, "
                                 f"not graphc.datasets.Splits")
        return splits


def load_model_file(path: str) -> ModelFile:
    """Run the model file at ``path`` (not as ``__main__``), call its ``model()`` and check what it defines
    (see the module docstring); raise :class:`ModelFileError` with the file's line when something is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        raise ModelFileError(f"{path}:{err.lineno}: syntax error: {err.msg}\n    {(err.text or '').strip()}") from None
    namespace = _run(path, source)
    lines = _top_level_lines(tree)
    with _importable_beside(path):
        built = _call_model(path, namespace, lines)
    return ModelFile(model=built, loss=_loss(path, namespace, lines), optimizer=_optimizer(path, namespace, lines),
                     data=_data(path, namespace, lines), path=path)


_counter = itertools.count()


@contextlib.contextmanager
def _importable_beside(path: str) -> Iterator[None]:
    """The file's directory first on sys.path while it runs, as ``python FILE`` has it (examples import
    their ``_common`` helper from beside them)."""
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def _run(path: str, source: str) -> dict[str, Any]:
    """Execute the file as a fresh module (named ``graphc_model_<n>``, so its main block does not run)."""
    name = f"graphc_model_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import has it: dataclasses and pickle look a class's module up there
    code = compile(source, path, "exec")
    with _importable_beside(path):
        try:
            exec(code, module.__dict__)  # noqa: S102  running the user's model file is the point
        except Exception as err:  # noqa: BLE001  any error of the user's code, reported with its line
            raise ModelFileError(f"{_line_in(path, err)}: running the model file raised {type(err).__name__}: "
                                 f"{err}") from err
    return module.__dict__


def _line_in(path: str, err: BaseException) -> str:
    """``path:line`` of the innermost frame of ``err``'s traceback inside the file (``path`` alone if none)."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    return f"{path}:{line}" if line is not None else path


def _top_level_lines(tree: ast.Module) -> dict[str, int]:
    """name -> the line of its last module-level definition or assignment (for error messages)."""
    lines: dict[str, int] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines[stmt.name] = stmt.lineno
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    lines[t.id] = stmt.lineno
    return lines


def _first_line(fn: Any) -> int | str:
    code = getattr(fn, "__code__", None)
    return code.co_firstlineno if code is not None else "?"


def _call_model(path: str, namespace: dict, lines: dict[str, int]) -> Module | Graph:
    fn = namespace.get("model")
    if fn is None:
        raise ModelFileError(f"{path}:1: the file defines no model(); a model file defines {CONVENTION}")
    where = f"{path}:{lines.get('model', 1)}"
    if isinstance(fn, (Module, Graph)) or not callable(fn):
        raise ModelFileError(f"{where}: model is a {type(fn).__name__}, not a function; write "
                             f"`def model(): return ...` so that each call builds a fresh model")
    try:
        built = fn()
    except Exception as err:  # noqa: BLE001  any error of the user's code, reported with its line
        raise ModelFileError(f"{_line_in(path, err)}: model() raised {type(err).__name__}: {err}") from err
    if isinstance(built, Graph):
        return built
    if not isinstance(built, Module):
        raise ModelFileError(f"{where}: model() returned {built!r:.60} (of type {type(built).__name__}), not a "
                             f"graphc.nn model or a Graph")
    if built.out_shape is None:
        raise ModelFileError(f"{where}: model() returned a {type(built).__name__} that is not built: give its "
                             f"input shape, e.g. Sequential([...], input_shape=(784,))")
    return built


def _loss(path: str, namespace: dict, lines: dict[str, int]) -> Any:
    loss = namespace.get("loss")
    if loss is not None:
        try:
            losses.loss_of(loss)
        except GraphcError as err:
            raise ModelFileError(f"{path}:{lines.get('loss', 1)}: loss: {str(err).split(chr(10))[0]}") from None
    return loss


def _optimizer(path: str, namespace: dict, lines: dict[str, int]) -> Optimizer | None:
    optimizer = namespace.get("optimizer")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise ModelFileError(f"{path}:{lines.get('optimizer', 1)}: optimizer is a {type(optimizer).__name__}, not a "
                             f"graphc.optim optimizer (e.g. optimizer = optim.Adam(1e-3))")
    return optimizer


def _data(path: str, namespace: dict, lines: dict[str, int]) -> str | Callable[[], Splits] | None:
    data = namespace.get("data")
    if data is not None and not isinstance(data, str) and not callable(data):
        raise ModelFileError(f"{path}:{lines.get('data', 1)}: data is a {type(data).__name__}; it must be a dataset "
                             f"name (\"digits\", \"mnist\", \"fashion-mnist\") or a function returning "
                             f"graphc.datasets.Splits")
    return data
