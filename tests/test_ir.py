"""The IR: the text form (golden file), DOT export, structural hash, parameter counts."""
from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import graphc
from graphc.ir import dot as dot_module


# Keep this builder at the top of the file: the golden text pins its line numbers.
def build_mlp(prefix: str = "", scale: float = 0.5, alpha: float = 0.1, hidden: int = 16, seed: int = 0) -> graphc.Graph:
    rng = np.random.default_rng(seed)
    with graphc.Graph("mlp") as g:
        x = graphc.input(prefix + "x", (8, 4))
        labels = graphc.input(prefix + "labels", (8,), "int64")
        w1 = graphc.param(prefix + "W1", rng.standard_normal((4, hidden)).astype(np.float32))
        b1 = graphc.param(prefix + "b1", np.zeros(hidden, np.float32))
        w2 = graphc.param(prefix + "W2", rng.standard_normal((hidden, 3)).astype(np.float32))
        b2 = graphc.param(prefix + "b2", np.zeros(3, np.float32))
        h = graphc.leaky_relu(graphc.dense(x * scale, w1, b1), alpha=alpha)
        logits = graphc.dense(h, w2, b2)
        loss = graphc.softmax_cross_entropy(logits, labels)
        g.output(loss, graphc.argmax(logits, axis=1))
    return g


# -- text form -----------------------------------------------------------------------------------------------

def test_mlp_text_matches_golden(golden):
    golden("mlp_forward.txt", build_mlp().text())


def test_text_lines_are_one_node_each_with_type_source_and_name():
    g = build_mlp()
    lines = g.text().splitlines()
    assert lines[0] == f"graph mlp  # {len(g.nodes)} nodes, {4 * 16 + 16 + 16 * 3 + 3} parameters"
    assert lines[-1] == f"return %{len(g.nodes) - 2}, %{len(g.nodes) - 1}"
    body = lines[1:-1]
    assert len(body) == len(g.nodes)
    pattern = re.compile(r"^%(\d+):(f32|f64|i32|i64|bool)\[([\d,]*)\] = (\w+)(\[[^\]]*\])?((?: %\d+,?)*)( \S+)?\s+# (\S+)(?: (\S+))?$")
    for k, (line, node) in enumerate(zip(body, g.nodes)):
        m = pattern.match(line)
        assert m, line
        assert int(m.group(1)) == k
        assert m.group(3) == ",".join(map(str, node.shape)) and m.group(2) == node.dtype.short
        assert m.group(4) == node.op
        assert [int(a) for a in re.findall(r"%(\d+)", m.group(6))] == [g.nodes.index(i) for i in node.inputs]
        assert m.group(8) == f"test_ir.py:{node.loc.line}"
        assert m.group(9) == node.name
    # attributes and scalar constants are shown
    assert any(re.search(r"= leaky_relu\[alpha=0\.1\] %\d+", line) for line in body)
    assert any(re.search(r"= constant 0\.5\b", line) for line in body)


def test_nodes_are_in_topological_order():
    g = build_mlp()
    position = {id(n): k for k, n in enumerate(g.nodes)}
    for k, n in enumerate(g.nodes):
        assert all(position[id(i)] < k for i in n.inputs)


# -- DOT ---------------------------------------------------------------------------------------------------------

def parse_dot(text: str) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
    """A small structural DOT parser: graph name, node id -> attribute text, edges.

    Fails (AssertionError) on unbalanced braces/brackets, unterminated strings, or statements it
    does not understand.
    """
    # tokenize: quoted strings (with escapes), ->, punctuation, identifiers
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|->|[{}\[\];=,]|[A-Za-z_][\w.]*|-?\d+(?:\.\d+)?|\S', text)
    assert "".join(tokens).count('"') % 2 == 0, "unterminated string"
    depth, max_depth = 0, 0
    for t in tokens:
        if t in "{[":
            depth += 1
            max_depth = max(max_depth, depth)
        elif t in "}]":
            depth -= 1
            assert depth >= 0, "unbalanced closing brace/bracket"
    assert depth == 0, "unbalanced braces/brackets"
    assert tokens[0] == "digraph" and tokens[2] == "{" and tokens[-1] == "}"
    name = tokens[1].strip('"')
    statements, current, depth = [], [], 0
    for t in tokens[3:-1]:
        depth += t == "["
        depth -= t == "]"
        if t == ";" and depth == 0:
            statements.append(current)
            current = []
        else:
            current.append(t)
    assert not current, f"statement without ';': {current}"
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for st in statements:
        if st[0] in ("node", "edge", "graph") and st[1] == "[" and st[-1] == "]":
            continue
        if len(st) == 3 and st[1] == "=":             # rankdir=TB
            continue
        if len(st) >= 3 and st[1] == "->":
            assert len(st) == 3 or (st[3] == "[" and st[-1] == "]"), st
            edges.append((st[0], st[2]))
            continue
        assert re.fullmatch(r"[A-Za-z_]\w*", st[0]) and st[1] == "[" and st[-1] == "]", st
        nodes[st[0]] = " ".join(st[2:-1])
    return name, nodes, edges


def test_dot_is_structurally_valid():
    g = build_mlp()
    name, nodes, edges = parse_dot(g.to_dot())
    assert name == "mlp"
    assert len(nodes) == len(g.nodes)
    assert len(edges) == sum(len(n.inputs) for n in g.nodes)
    for a, b in edges:
        assert a in nodes and b in nodes, (a, b)
    # every node's label shows its op and type; outputs are drawn with a double border
    for k, n in enumerate(g.nodes):
        attrs = nodes[f"n{k}"]
        assert f"%{k} {n.op}" in attrs and n.type_str in attrs
        assert ("peripheries" in attrs) == any(n is o for o in g.outputs)
    position = {f"n{k}": k for k in range(len(g.nodes))}
    assert sorted((position[a], position[b]) for a, b in edges) == sorted(
        (g.nodes.index(i), k) for k, n in enumerate(g.nodes) for i in n.inputs)


def test_dot_escapes_quotes_in_names():
    with graphc.Graph('my "quoted" net\\') as g:
        x = graphc.input('x "in"', (2,))
        g.output(graphc.relu(x))
    name, nodes, edges = parse_dot(g.to_dot())
    assert 'quoted' in name and len(nodes) == 2 and edges == [("n0", "n1")]


def test_save_dot_renders_svg_when_graphviz_is_installed(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz 'dot' is not installed (the fallback is tested below)")
    g = build_mlp()
    out = g.save_dot(str(tmp_path / "mlp"))
    assert out.endswith(".svg")
    assert (tmp_path / "mlp.dot").read_text() == g.to_dot()
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for op in ("dense", "leaky_relu", "softmax_cross_entropy", "argmax"):
        assert op in text


def test_save_dot_without_graphviz_writes_dot_and_says_how_to_render(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dot_module.shutil, "which", lambda name: None)
    g = build_mlp()
    out = g.save_dot(str(tmp_path / "mlp"), format="png")
    assert out == str(tmp_path / "mlp.dot")
    assert (tmp_path / "mlp.dot").read_text() == g.to_dot()
    err = capsys.readouterr().err
    assert f"dot -Tpng {tmp_path / 'mlp.dot'} -o {tmp_path / 'mlp.png'}" in err
    assert "Graphviz" in err
    assert not (tmp_path / "mlp.png").exists()


# -- structural hash -------------------------------------------------------------------------------------------

def test_hash_is_independent_of_names_and_source_lines():
    a = build_mlp()
    b = build_mlp(prefix="other_")
    with graphc.Graph("another_name") as c_graph:   # the same graph, built here, on other lines
        rng = np.random.default_rng(0)
        x = graphc.input("inp", (8, 4))
        y = graphc.input("lab", (8,), "int64")
        w1 = graphc.param("a", rng.standard_normal((4, 16)).astype(np.float32))
        b1 = graphc.param("b", np.zeros(16, np.float32))
        w2 = graphc.param("c", rng.standard_normal((16, 3)).astype(np.float32))
        b2 = graphc.param("d", np.zeros(3, np.float32))
        logits = graphc.dense(graphc.leaky_relu(graphc.dense(x * 0.5, w1, b1), alpha=0.1), w2, b2)
        c_graph.output(graphc.softmax_cross_entropy(logits, y), graphc.argmax(logits, 1))
    assert a.structural_hash() == b.structural_hash() == c_graph.structural_hash()
    assert a.text() != b.text()


def test_hash_ignores_parameter_values():
    # parameters are run-time data (trained weights), so the compile-cache key does not depend on them
    assert build_mlp(seed=0).structural_hash() == build_mlp(seed=1).structural_hash()


@pytest.mark.parametrize("change", [
    dict(hidden=17),        # shapes
    dict(alpha=0.2),        # an attribute
    dict(scale=0.25),       # a constant's value
])
def test_hash_sees_shapes_attributes_and_constants(change):
    assert build_mlp().structural_hash() != build_mlp(**change).structural_hash()


def _small(op="relu", dtype="float32", swap=False, out_twice=False, const=1.0):
    with graphc.Graph() as g:
        a, b = graphc.input("a", (3,), dtype), graphc.input("b", (3,), dtype)
        z = (b - a) if swap else (a - b)
        y = getattr(graphc, op)(z + const)
        g.output(y, y) if out_twice else g.output(y)
    return g


@pytest.mark.parametrize("change", [dict(op="tanh"), dict(dtype="float64"), dict(swap=True), dict(out_twice=True),
                                    dict(const=2.0)])
def test_hash_sees_ops_dtypes_topology_and_outputs(change):
    assert _small().structural_hash() == _small().structural_hash()
    assert _small().structural_hash() != _small(**change).structural_hash()


# -- parameter count ------------------------------------------------------------------------------------------

def test_course_mnist_mlp_parameter_count():
    sizes = [784, 512, 256, 10]
    with graphc.Graph("mnist_mlp") as g:
        h = graphc.input("x", (1, 784))
        for k, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            w = graphc.param(f"W{k}", np.zeros((n_in, n_out), np.float32))
            b = graphc.param(f"b{k}", np.zeros(n_out, np.float32))
            h = graphc.dense(h, w, b)
            h = graphc.relu(h) if k < 2 else h
        g.output(h)
    weights = sum(p.size for p in g.params if p.ndim == 2)
    assert weights == 784 * 512 + 512 * 256 + 256 * 10 == 535_040        # the course's count
    assert g.parameter_count() == 535_040 + 512 + 256 + 10 == 535_818
    assert g.text().splitlines()[0].endswith("535818 parameters")
    assert g.nodes[-1].type_str == "f32[1,10]"
