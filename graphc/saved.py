"""Saved models: a graphc.nn model or a Graph as one file that needs none of the source that built it.

``graphc.save(model_or_graph, path)`` writes, atomically, one ``.npz`` archive (the checkpoints' house
format, see :mod:`graphc.train.checkpoint`) holding every array and a JSON manifest:

- a model: every layer's class and configuration (units, kernel, stride, activation, frozen flag, the
  line that created it, ...), its parameters and its state (batch-norm statistics): enough to rebuild it;
- a Graph: every node (op, inputs, attributes, shape, dtype, name, source location, provenance), its
  outputs and in-place updates, and the values of its constants and parameters;
- either: the definition (SymPy ``srepr``) of every elementwise op it uses, so that a user's SymPy
  activation comes back with its gradient and code generation, and a checked built-in stays the same op.

The manifest carries the format's name and version, graphc's version, each array's SHA-256 and its own
SHA-256. ``graphc.load(path)`` verifies all of them before rebuilding anything, and refuses a file from a
newer format version, a damaged file (truncated, a flipped byte, a wrong checksum) or a file that is not
a graphc saved model with a :class:`SavedModelError` naming the path and what is wrong.

A saved file holds no Python code: a layer whose activation is a Python function (not a graphc op) or a
layer class defined outside graphc.nn cannot be saved as a model (save its Graph instead), and SymPy
expressions are read back by an evaluator that accepts nothing but SymPy constructors.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import os
from typing import Any, Callable

import numpy as np
import sympy as sp

from ._version import __version__
from .io import atomic_write
from .ir import DType, Graph, GraphcError, Node, as_dtype
from .ir.errors import line_text
from .ir.node import Attrs, Provenance
from .ir.source import SourceLoc, user_location
from .nn import init as initializers
from .nn import layers
from .nn.layers import Module
from .ops import elementwise as ew
from .ops import registry
from .train.checkpoint import FORMAT as CHECKPOINT_FORMAT
from .train.checkpoint import _digest as array_sha256  # one definition of an array's checksum

FORMAT = "graphc-saved"
#: The format version this graphc writes; it reads every version up to this one.
VERSION = 1
MANIFEST = "__manifest__"

#: Attributes of a layer that are not its configuration: the graphs it was declared in, fit's trainer.
_NOT_SAVED = frozenset({"_graph_params", "_trainer"})


class SavedModelError(GraphcError, ValueError):
    """A model or graph that cannot be saved, or a file that cannot be loaded (missing, damaged, from a
    newer graphc, or not a graphc saved model)."""


# ===================================================================================================
# save
# ===================================================================================================

def save(model_or_graph: Module | Graph, path: str) -> str:
    """Write ``model_or_graph`` (a graphc.nn model, or a Graph) to ``path`` as one versioned, checksummed
    file, atomically (readers see the old file or the new one whole). Returns ``path``.

    >>> import graphc, os, tempfile
    >>> from graphc.nn import Dense, Sequential
    >>> model = Sequential([Dense(3, "relu"), Dense(2)], input_shape=(4,))
    >>> path = graphc.save(model, os.path.join(tempfile.mkdtemp(), "m.graphc"))
    >>> loaded = graphc.load(path)
    >>> loaded.summary() == model.summary()
    True
    """
    encoder = _Encoder()
    if isinstance(model_or_graph, Module):
        kind, content = "module", encoder.module(model_or_graph)
    elif isinstance(model_or_graph, Graph):
        kind, content = "graph", encoder.graph(model_or_graph)
    else:
        raise SavedModelError(f"graphc.save: expected a graphc.nn model or a Graph, got "
                              f"{type(model_or_graph).__name__}{line_text(user_location())}")
    manifest = {
        "format": FORMAT, "version": VERSION, "graphc": __version__, "kind": kind, "content": content,
        "ops": encoder.ops,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": array_sha256(v)}
                   for k, v in encoder.arrays.items()},
    }
    manifest["sha256"] = _manifest_digest(manifest)
    text = json.dumps(manifest, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **encoder.arrays, **{MANIFEST: np.frombuffer(text, np.uint8)})
    atomic_write(path, buf.getvalue())
    return path


def _manifest_digest(manifest: dict) -> str:
    """The SHA-256 of the manifest without its own checksum (canonical JSON: sorted keys)."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


#: The layer classes a saved file may name: graphc.nn's own (a file never names code to import).
LAYER_CLASSES: dict[str, type] = {name: cls for name, cls in vars(layers).items()
                                  if isinstance(cls, type) and issubclass(cls, Module)}


class _Encoder:
    """Turns a model or a graph into JSON-able values, collecting arrays and the elementwise ops used."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.ops: dict[str, dict] = {}

    # -- models ------------------------------------------------------------------------------------
    def module(self, module: Module) -> dict:
        """A layer: its class and every attribute of its configuration, its values as array names."""
        cls = type(module)
        if LAYER_CLASSES.get(cls.__name__) is not cls:
            raise SavedModelError(
                f"graphc.save: layer {module.name!r} is a {cls.__module__}.{cls.__qualname__}, not a graphc.nn layer: "
                f"a saved model rebuilds graphc.nn layers only (a file holds no code); save a graph built from it "
                f"instead (graphc.save(graph, path)){line_text(user_location())}")
        state = {}
        for attr, value in vars(module).items():
            if attr in _NOT_SAVED:
                continue
            if attr == "values":
                state[attr] = {"values": [[k, self.array(f"{module.name}.{k}", v, module)] for k, v in value.items()]}
            else:
                state[attr] = self.value(value, f"layer {module.name!r}: {attr}")
        return {"class": cls.__name__, "state": state}

    def array(self, key: str, value: np.ndarray, module: Module | None = None) -> str:
        if key in self.arrays:
            raise SavedModelError(f"graphc.save: two parameters are called {key!r}: layer names must be unique "
                                  f"in a model{line_text(module.loc if module is not None else user_location())}")
        self.arrays[key] = np.array(value, order="C")  # a copy; np.ascontiguousarray would make a 0-d array 1-d
        return key

    def value(self, value: Any, where: str) -> Any:
        """A configuration value as JSON: plain numbers and strings as they are, everything else tagged."""
        if value is None or isinstance(value, (bool, str)) or type(value) in (int, float):
            return value
        if isinstance(value, np.generic):
            return {"scalar": [value.dtype.name, value.item()]}
        if isinstance(value, tuple):
            return {"tuple": [self.value(v, where) for v in value]}
        if isinstance(value, list):
            return {"list": [self.value(v, where) for v in value]}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            # pairs, not a JSON object: the manifest is written with sorted keys, and order is meaning here
            # (a layer's parameters in order are the graph's parameters in order)
            return {"dict": [[k, self.value(v, f"{where}[{k!r}]")] for k, v in value.items()]}
        if isinstance(value, np.dtype):
            return {"numpy_dtype": value.name}
        if isinstance(value, DType):
            return {"dtype": value.name}
        if isinstance(value, SourceLoc):
            return {"loc": [value.file, value.line]}
        if isinstance(value, Module):
            return {"module": self.module(value)}
        if isinstance(value, sp.Basic):
            return {"sympy": sp.srepr(value)}
        if callable(value):
            return self.function(value, where)
        raise SavedModelError(f"graphc.save: {where} is a {type(value).__name__}, which a saved file cannot hold"
                              f"{line_text(user_location())}")

    def function(self, fn: Callable, where: str) -> dict:
        """An activation (a graphc op, by name) or an initializer (by name); other Python functions refused."""
        name = getattr(fn, "__name__", "")
        if _table_activation(name) is fn:
            return {"activation": name}
        if _is_op_builder(fn):
            self.op(name)
            return {"activation": name, "op": True}
        for init_name, init in _INITIALIZERS.items():
            if init is fn:
                return {"initializer": init_name}
        if getattr(fn, "__qualname__", "") == "normal.<locals>.init" and name.startswith("normal("):
            return {"initializer": "normal", "std": float(name[len("normal("):-1])}
        if where.endswith("init"):  # a user's initializer: only build() uses it, and the weights are saved
            return {"initializer": None, "name": name}
        raise SavedModelError(
            f"graphc.save: {where} is the Python function {name or fn!r}, which a saved file cannot hold (it holds no "
            f"code); define an activation as a SymPy expression with graphc.elementwise(name, lambda x: ...) and "
            f"it is saved with the model{line_text(user_location())}")

    # -- ops -----------------------------------------------------------------------------------------
    def op(self, name: str) -> None:
        """Record the definition of elementwise op ``name`` (and of what it is the derivative of)."""
        if name in self.ops or name == "fused":
            return
        op = registry.get(name)
        if op.derivative_of is not None:
            base, i = op.derivative_of
            self.ops[name] = {"derivative_of": [base, i]}
            self.op(base)
        elif op.expr is not None:
            self.ops[name] = {"expr": sp.srepr(op.expr), "symbols": [str(s) for s in op.symbols],
                              "params": [[p, float(v)] for p, v in op.params.items()]}

    # -- graphs --------------------------------------------------------------------------------------
    def graph(self, graph: Graph) -> dict:
        """Every node in order, then the nodes outside the graph that provenance or fusion still names."""
        index = {id(n): k for k, n in enumerate(graph.nodes)}
        order = list(graph.nodes)

        def ref(node: Node | None) -> int | None:
            if node is None:
                return None
            if id(node) not in index:  # a forward node rewritten away, a node a fusion absorbed
                index[id(node)] = len(order)
                order.append(node)
            return index[id(node)]

        records = []
        k = 0
        while k < len(order):  # `order` grows while walking: the ghosts' own references join it
            node, in_graph = order[k], k < len(graph.nodes)
            records.append(self.node(node, k, in_graph, ref))
            k += 1
        return {"name": graph.name, "nodes": records, "outputs": [index[id(o)] for o in graph.outputs],
                "updates": [[index[id(p)], index[id(v)]] for p, v in graph.updates]}

    def node(self, node: Node, k: int, in_graph: bool, ref: Callable[[Node | None], int | None]) -> dict:
        where = f"node %{k} ({node.op})"
        self.op(node.op)
        p = node.provenance
        return {
            "op": node.op, "inputs": [ref(i) for i in node.inputs] if in_graph else [],
            "attrs": {a: self.value(v, f"{where} attribute {a}") for a, v in node.attrs.items()},
            "shape": list(node.shape), "dtype": node.dtype.name, "name": node.name,
            "loc": [node.loc.file, node.loc.line] if node.loc is not None else None,
            "value": self.array(f"n{k}", node.value) if node.value is not None and in_graph else None,
            "provenance": [ref(p.forward), p.rule, ref(p.wrt)] if p is not None else None,
            "absorbed": [ref(a) for a in node.absorbed], "in_graph": in_graph,
        }


def _table_activation(name: str) -> Callable | None:
    """The activation the layers know by ``name`` ('relu', 'softmax', ...), or None."""
    try:
        return layers._activation(name) if name else None
    except (ValueError, GraphcError):
        return None


def _is_op_builder(fn: Callable) -> bool:
    """Whether ``fn`` is the builder of a registered elementwise op (what graphc.elementwise returns)."""
    name = getattr(fn, "__name__", "")
    return (getattr(fn, "__qualname__", "") == "_builder.<locals>.build" and registry.is_registered(name)
            and registry.get(name).expr is not None)


_INITIALIZERS: dict[str, Callable] = {name: fn for name, fn in initializers._BY_NAME.items() if name != "normal"}


# ===================================================================================================
# load
# ===================================================================================================

def load(path: str) -> Module | Graph:
    """Read a file written by :func:`save`: the model (built, with its weights, frozen flags and
    configuration) or the Graph. The file is verified first (format, version, every checksum); a file from
    a newer graphc, a damaged one or one that is not a graphc saved model raise :class:`SavedModelError`."""
    manifest, arrays = _read_verified(path)
    decoder = _Decoder(path, arrays)
    if manifest["kind"] not in ("module", "graph"):
        raise decoder.error(f"it holds a {manifest['kind']!r}, which this graphc cannot load")
    try:
        decoder.define_ops(manifest.get("ops", {}))
        if manifest["kind"] == "module":
            model = decoder.module(manifest["content"])
            decoder.check_weights_fit(model, manifest["content"])
            return model
        return decoder.graph(manifest["content"])
    except (KeyError, IndexError, TypeError, AttributeError) as err:  # a whole file whose content is malformed
        raise decoder.error(f"its content is malformed ({type(err).__name__}: {err}): not written by graphc.save"
                            ) from None


def _read_verified(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and arrays of ``path``, after every check: archive, format, version, checksums."""
    if not os.path.exists(path):
        raise SavedModelError(f"graphc.load: {path} does not exist{line_text(user_location())}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise SavedModelError(f"graphc.load: {path} is not a graphc saved model (not an .npz archive: it starts "
                              f"with {magic!r}){line_text(user_location())}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001  a damaged zip raises anything from BadZipFile to NotImplementedError
        raise SavedModelError(f"graphc.load: {path} is truncated or corrupt ({type(err).__name__}: {err})"
                              f"{line_text(user_location())}") from None
    if MANIFEST not in arrays:
        raise SavedModelError(f"graphc.load: {path} has no manifest: an .npz archive, but not a graphc saved model"
                              f"{line_text(user_location())}")
    manifest = _parse_manifest(path, arrays.pop(MANIFEST))
    _check_arrays(path, manifest, arrays)
    return manifest, arrays


def _parse_manifest(path: str, raw: np.ndarray) -> dict:
    where = line_text(user_location())
    try:
        manifest = json.loads(raw.tobytes())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise SavedModelError(f"graphc.load: {path}: its manifest is corrupt (not a JSON object){where}")
    if manifest.get("format") == CHECKPOINT_FORMAT:
        raise SavedModelError(f"graphc.load: {path} is a training checkpoint, not a saved model: resume it with "
                              f"fit(..., checkpoint=PATH, resume=True), or copy its layers with "
                              f"graphc.train.checkpoint.load_layers{where}")
    if manifest.get("format") != FORMAT:
        raise SavedModelError(f"graphc.load: {path} is not a graphc saved model (format {manifest.get('format')!r}, "
                              f"expected {FORMAT!r}){where}")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SavedModelError(f"graphc.load: {path}: its format version {version!r} is not a version{where}")
    if version > VERSION:
        raise SavedModelError(f"graphc.load: {path} was written by graphc {manifest.get('graphc', '?')} in format "
                              f"version {version}; this graphc ({__version__}) reads versions up to {VERSION}: "
                              f"upgrade graphc to load it{where}")
    if manifest.get("sha256") != _manifest_digest(manifest):
        raise SavedModelError(f"graphc.load: {path}: its manifest does not match its checksum (the file was "
                              f"altered or damaged){where}")
    missing = sorted({"kind", "content", "arrays"} - set(manifest))
    if missing or not isinstance(manifest["arrays"], dict):
        raise SavedModelError(f"graphc.load: {path}: its manifest lacks {missing or ['arrays']}{where}")
    return manifest


def _check_arrays(path: str, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """The archive holds exactly the arrays the manifest lists, each with its shape, dtype and checksum."""
    where = line_text(user_location())
    expected = manifest["arrays"]
    dropped, added = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if dropped or added:
        raise SavedModelError(f"graphc.load: {path}: array(s) {dropped} listed in the manifest are missing, "
                              f"{added} in the file are not listed{where}")
    for k, v in arrays.items():
        entry = expected[k]
        if not isinstance(entry, dict) or not {"shape", "dtype", "sha256"} <= set(entry):
            raise SavedModelError(f"graphc.load: {path}: the manifest's entry for array {k!r} is corrupt{where}")
        if list(v.shape) != entry["shape"] or str(v.dtype) != entry["dtype"] or array_sha256(v) != entry["sha256"]:
            raise SavedModelError(f"graphc.load: {path}: array {k!r} ({v.dtype}{list(v.shape)}) does not match its "
                                  f"checksum (manifest: {entry['dtype']}{entry['shape']}): the file is damaged{where}")


# -- SymPy expressions: read back without eval of arbitrary code ---------------------------------------

#: The names an srepr may use: SymPy's expression classes and constants (oo, pi, true, ...), not its functions
#: (sympify, var, ...: they parse or run text), and graphc's own scalar functions.
_SYMPY_NAMES: dict[str, Any] = {k: v for k, v in vars(sp).items() if not k.startswith("_") and (
    isinstance(v, sp.Basic) or (isinstance(v, type) and issubclass(v, sp.Basic)))}
_SYMPY_NAMES["ExprCondPair"] = sp.functions.elementary.piecewise.ExprCondPair  # srepr prints it; sympy hides it
_SYMPY_NAMES.update({"IsNaN": ew.IsNaN, **ew.CAST_FUNCTIONS})
_SAFE_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.Tuple, ast.List,
               ast.UnaryOp, ast.USub)
#: The constructors an srepr passes a string to: a name (Symbol('x')) or a decimal (Float('0.1')), never parsed
#: as an expression. Any other SymPy class given a string would parse it (exp('...') calls sympify).
_TAKES_TEXT = frozenset({"Symbol", "Dummy", "Wild", "Function", "Float"})


def parse_srepr(text: str, where: str) -> sp.Basic:
    """The SymPy expression ``text`` (an ``srepr``), accepting only calls of SymPy's constructors on literals:
    a saved file is data, and reading it must not run code hidden in it."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise SavedModelError(f"{where}: {text[:80]!r} is not a SymPy expression") from None
    texts = {id(arg) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in _TAKES_TEXT for arg in n.args[:1]}
    for n in ast.walk(tree):
        if not isinstance(n, _SAFE_NODES) or (isinstance(n, ast.Name) and n.id not in _SYMPY_NAMES):
            what = n.id if isinstance(n, ast.Name) else type(n).__name__
            raise SavedModelError(f"{where}: the expression uses {what!r}, which is not a SymPy constructor")
        if isinstance(n, ast.Constant) and not isinstance(n.value, (bool, int, float)) and id(n) not in texts:
            raise SavedModelError(f"{where}: the expression passes the text {n.value!r:.40} where SymPy would parse "
                                  f"it; only {sorted(_TAKES_TEXT)} take text")
    try:
        return eval(compile(tree, "<saved expression>", "eval"), {"__builtins__": {}}, dict(_SYMPY_NAMES))  # noqa: S307
    except Exception as err:  # noqa: BLE001  a well-formed call SymPy refuses (wrong arguments)
        raise SavedModelError(f"{where}: {text[:80]!r} is not a valid SymPy expression ({type(err).__name__}: "
                              f"{err})") from None


#: The tags of :meth:`_Encoder.value`'s JSON objects (each object has one; "activation" and "initializer" may
#: come with more keys).
_TAGS = ("tuple", "list", "dict", "scalar", "numpy_dtype", "dtype", "loc", "module", "sympy", "activation",
         "initializer")


class _Decoder:
    """Rebuilds models and graphs from a verified manifest's content and arrays."""

    def __init__(self, path: str, arrays: dict[str, np.ndarray]):
        self.path, self.arrays = path, arrays

    def error(self, text: str) -> SavedModelError:
        return SavedModelError(f"graphc.load: {self.path}: {text}{line_text(user_location())}")

    # -- ops -----------------------------------------------------------------------------------------
    def define_ops(self, ops: dict[str, dict]) -> None:
        """Register the file's elementwise ops this process lacks (a user's SymPy activation, a derivative op),
        and check that those it has are the same ops."""
        for name, entry in ops.items():
            if "expr" in entry:
                self.define_op(name, entry)
        for name, entry in ops.items():
            if "derivative_of" in entry:
                base, i = entry["derivative_of"]
                if ew.derivative_op(base, i) != name:
                    raise self.error(f"op {name!r} is the derivative of {base!r} by input {i}, which this graphc "
                                     f"names {ew.derivative_op(base, i)!r}")

    def define_op(self, name: str, entry: dict) -> None:
        expr = parse_srepr(entry["expr"], f"graphc.load: {self.path}: op {name!r}")
        params = {p: float(v) for p, v in entry["params"]}
        if not registry.is_registered(name):
            ew.define(name, lambda *_: expr, len(entry["symbols"]), params, input_names=entry["symbols"],
                      doc=f"{name}: {expr} (loaded from {os.path.basename(self.path)})")
            return
        op = registry.get(name)
        if op.expr != expr or {p: float(v) for p, v in op.params.items()} != params:
            raise self.error(f"op {name!r} is {expr} (parameters {params}) in the file, but {op.expr} (parameters "
                             f"{op.params}) in this process: a saved model keeps its ops' definitions; rename one")

    # -- values --------------------------------------------------------------------------------------
    def value(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            return value
        tag = next((t for t in _TAGS if t in value), None)  # by name: a tagged value may carry more keys
        body = value.get(tag)
        if tag == "tuple":
            return tuple(self.value(v, where) for v in body)
        if tag == "list":
            return [self.value(v, where) for v in body]
        if tag == "dict":
            return {k: self.value(v, where) for k, v in body}
        if tag == "scalar":
            return np.dtype(body[0]).type(body[1])
        if tag == "numpy_dtype":
            return np.dtype(body)
        if tag == "dtype":
            return as_dtype(body)
        if tag == "loc":
            return SourceLoc(body[0], int(body[1]))
        if tag == "module":
            return self.module(body)
        if tag == "sympy":
            return parse_srepr(body, f"graphc.load: {self.path}: {where}")
        if tag == "activation":
            return self.activation(body, where)
        if tag == "initializer":
            return self.initializer(value)
        raise self.error(f"{where}: unknown value tag {tag!r}")

    def activation(self, name: str, where: str) -> Callable:
        fn = _table_activation(name)
        if fn is not None:
            return fn
        if not registry.is_registered(name) or registry.get(name).expr is None:
            raise self.error(f"{where}: activation {name!r} is not an elementwise op of this graphc")
        op = registry.get(name)
        return ew.elementwise(name, lambda *_: op.expr, len(op.symbols), dict(op.params))

    def initializer(self, entry: dict) -> Callable:
        name = entry["initializer"]
        if name == "normal":
            return initializers.normal(entry["std"])
        if name in _INITIALIZERS:
            return _INITIALIZERS[name]
        return _unknown_initializer(entry.get("name", "?"), self.path)

    # -- models --------------------------------------------------------------------------------------
    def module(self, record: dict) -> Module:
        """A layer rebuilt from its class and attributes, without running its constructor or build():
        the file has the values both would compute, and the weights build() would re-initialize."""
        cls = LAYER_CLASSES.get(record.get("class"))
        if cls is None:
            raise self.error(f"layer class {record.get('class')!r} is not a graphc.nn layer of this graphc")
        module = cls.__new__(cls)
        state = record["state"]
        for attr, value in state.items():
            if attr == "values":
                setattr(module, attr, {k: self.arrays[key].copy() for k, key in value["values"]})
            else:
                setattr(module, attr, self.value(value, f"layer {state.get('name')!r}: {attr}"))
        return module

    def check_weights_fit(self, model: Module, record: dict) -> None:
        """Every layer's weights have the names, shapes and dtypes its configuration gives when built: a sealed
        file whose weights and configuration disagree (not written by graphc.save) is refused, not half used."""
        if model.in_shape is None:  # never built: it has no weights
            return
        fresh = self.module(record)  # the same configuration, built again from random initial values
        dtype = getattr(model, "dtype", None) or next((v.dtype for v in model.named_values().values()), np.float32)
        try:
            fresh.build(model.in_shape, np.random.default_rng(0), dtype)
        except SavedModelError:  # an initializer the file could only name: nothing to build with
            return
        except GraphcError as err:
            raise self.error(f"its model does not build for its input shape {list(model.in_shape)}: {err}") from None
        for saved, built in zip(model.modules(), fresh.modules()):
            have = {k: f"{v.dtype}{list(v.shape)}" for k, v in saved.values.items()}
            want = {k: f"{v.dtype}{list(v.shape)}" for k, v in built.values.items()}
            if have != want or saved.out_shape != built.out_shape:
                raise self.error(f"layer {saved.name!r} ({saved.describe()}) holds {have or 'no weights'}, but its "
                                 f"configuration gives {want or 'no weights'}: weights and configuration disagree")

    # -- graphs --------------------------------------------------------------------------------------
    def graph(self, content: dict) -> Graph:
        graph = Graph(content["name"])
        nodes: list[Node] = []
        for k, rec in enumerate(content["nodes"]):
            node = self.node(k, rec, nodes)
            nodes.append(node)
            if rec["in_graph"]:
                self.check_type(k, node)
                graph.add(node)
        for node, rec in zip(nodes, content["nodes"]):  # references may point forward: set once all exist
            if rec["provenance"] is not None:
                forward, rule, wrt = rec["provenance"]
                node.provenance = Provenance(nodes[forward], rule, nodes[wrt] if wrt is not None else None)
            node.absorbed = tuple(nodes[a] for a in rec["absorbed"])
        graph.output(*(nodes[k] for k in content["outputs"]))
        for p, v in content["updates"]:
            graph.update(nodes[p], nodes[v])
        return graph

    def node(self, k: int, rec: dict, nodes: list[Node]) -> Node:
        where = f"node %{k} ({rec['op']})"
        if not registry.is_registered(rec["op"]):
            raise self.error(f"{where}: this graphc has no op {rec['op']!r}")
        node = Node(
            op=rec["op"], inputs=tuple(nodes[i] for i in rec["inputs"]),
            attrs=Attrs({a: self.value(v, f"{where} attribute {a}") for a, v in rec["attrs"].items()}),
            shape=tuple(rec["shape"]), dtype=as_dtype(rec["dtype"]), name=rec["name"],
            loc=SourceLoc(rec["loc"][0], rec["loc"][1]) if rec["loc"] is not None else None,
            value=self.arrays[rec["value"]].copy() if rec["value"] is not None else None,
        )
        stored = node.op in ("param", "constant") and rec["in_graph"]
        if stored and (node.value is None or (node.value.shape, node.value.dtype) != (node.shape, node.dtype.np)):
            held = "no value" if node.value is None else f"a value {node.value.dtype}{list(node.value.shape)}"
            raise self.error(f"{where} {node.name or ''} is {node.type_str} but holds {held}")
        return node

    def check_type(self, k: int, node: Node) -> None:
        """The node's shape and dtype are what this graphc's rule for its op gives (ops do not change meaning
        between the graphc that saved the file and this one)."""
        if registry.get(node.op).source:
            return
        shape, dtype = registry.get(node.op).shape_rule(node.inputs, node.attrs)
        if (tuple(shape), dtype) != (node.shape, node.dtype):
            raise self.error(f"node %{k} ({node.op}) is {node.type_str} in the file, but this graphc's rule for "
                             f"{node.op} gives {dtype.short}[{','.join(map(str, shape))}]")


def _unknown_initializer(name: str, path: str) -> Callable:
    """A stand-in for an initializer the file could only name: the weights are loaded, so only rebuilding
    the layer (build()) needs it, and then it says so."""
    def init(shape, fan_in, fan_out, rng):
        raise SavedModelError(f"initializer {name!r} of a model loaded from {path} was a Python function, which a "
                              f"saved file does not hold: build() cannot re-initialize this layer; pass init=")
    init.__name__ = name
    return init
