"""graphc.optimize as a whole: the golden text of the optimized MLP training step, dump directories,
per-pass statistics, the buffer plan (executed in the memory it assigns), whole training steps at
every level, and compile(optimize=...).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_passes_support import assert_close, load_bench, run_with_plan, values

import graphc
from graphc import passes
from graphc.ops import all_ops


# tests/golden/mlp_step_fused.txt holds this function's line numbers: it comes first in the file so that
# edits below it do not move them.
def build_mlp_step(batch=128, layers=(784, 512, 256, 10)):
    """One SGD step (lr 0.01) of the ReLU MLP with softmax cross-entropy; output: the loss."""
    rng = np.random.default_rng(0)
    with graphc.Graph("mlp_step") as g:
        h = graphc.input("x", (batch, layers[0]))
        y = graphc.input("y", (batch,), "int64")
        params = []
        for k, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
            W = graphc.param(f"W{k}", (rng.standard_normal((fan_in, fan_out)) * 0.05).astype(np.float32))
            b = graphc.param(f"b{k}", np.zeros(fan_out, np.float32))
            params += [W, b]
            h = graphc.dense(h, W, b)
            h = graphc.relu(h) if k < len(layers) - 1 else h
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        for p, d in zip(params, graphc.grad(loss, params)):
            g.update(p, p - d * 0.01)
    return g


def test_golden_fused_mlp_step(golden):
    out = graphc.optimize(build_mlp_step(), level=2).graph
    golden("mlp_step_fused.txt", passes.annotated_text(out))


def step_feeds(graph, seed=0):
    rng = np.random.default_rng(seed)
    x = graph.find("x")
    return {"x": rng.random(x.shape, dtype=np.float32), "y": rng.integers(0, 10, x.shape[0])}


# -- the pipeline -----------------------------------------------------------------------------------------

def test_optimize_does_not_modify_its_input():
    g = build_mlp_step(batch=4, layers=(6, 5, 4, 10))
    text, digest, nodes = g.text(), g.structural_hash(), list(g.nodes)
    inputs_before = [n.inputs for n in g.nodes]
    graphc.optimize(g, level=3)
    assert g.text() == text and g.structural_hash() == digest and g.nodes == nodes
    assert [n.inputs for n in g.nodes] == inputs_before


def test_per_pass_statistics_chain_and_count_kernels():
    g = build_mlp_step(batch=4, layers=(6, 5, 4, 10))
    result = graphc.optimize(g, level=3)
    assert [p.name for p in result.passes] == [name for name, _ in passes.LEVELS[3]]
    assert result.passes[0].nodes_before == len(g.nodes)
    for before, after in zip(result.passes, result.passes[1:]):
        assert after.nodes_before == before.nodes_after and after.kernels_before == before.kernels_after
    assert result.passes[-1].nodes_after == len(result.graph.nodes)
    computing = [n for n in result.graph.nodes if n.op not in ("input", "param", "constant", "reshape")]
    assert result.passes[-1].kernels_after == len(computing)
    assert all(p.seconds >= 0 for p in result.passes) and result.seconds >= sum(p.seconds for p in result.passes)
    assert "fuse_elementwise" in result.table() and json.loads(json.dumps(result.to_json()))["level"] == 3
    assert {op.name for op in all_ops() if op.source or op.view} == {"input", "param", "constant", "reshape"}


def test_levels_are_validated():
    g = build_mlp_step(batch=2, layers=(3, 3, 3, 10))
    with pytest.raises(ValueError, match="level must be one of"):
        graphc.optimize(g, level=4)


def test_dump_directory_has_one_readable_file_per_pass(tmp_path):
    g = build_mlp_step(batch=4, layers=(6, 5, 4, 10))
    result = graphc.optimize(g, level=3, dump_dir=str(tmp_path))
    names = [f"{k:02d}_{p.name}" for k, p in enumerate(result.passes, start=1)]
    expected = {"00_input.txt", "00_input.dot", "buffer_plan.txt", "stats.json", "stats.txt"}
    expected |= {n + ".txt" for n in names} | {n + ".dot" for n in names}
    assert set(os.listdir(tmp_path)) == expected
    for k, name in enumerate(names, start=1):
        text = (tmp_path / f"{name}.txt").read_text()
        stats = result.passes[k - 1]
        assert text.startswith(f"# {name}\n# nodes {stats.nodes_before} -> {stats.nodes_after}, ")
        assert f"graph mlp_step  # {stats.nodes_after} nodes" in text
        assert (tmp_path / f"{name}.dot").read_text().startswith('digraph "mlp_step"')
    last = (tmp_path / f"{names[-1]}.txt").read_text()
    assert "# where the fused nodes' pieces came from:" in last and "relu@test_passes_pipeline.py" in last
    assert json.loads((tmp_path / "stats.json").read_text())["arena_bytes"] == result.buffer_plan.arena_bytes


def test_dump_directory_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_DUMP", str(tmp_path / "dumps"))
    g = build_mlp_step(batch=2, layers=(3, 3, 3, 10))
    graphc.optimize(g, level=0)
    assert sorted(os.listdir(tmp_path / "dumps")) == sorted(
        ["00_input.txt", "00_input.dot", "01_dce.txt", "01_dce.dot", "buffer_plan.txt", "stats.json", "stats.txt"])


# -- whole training steps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_mlp_step_equal_at_every_level(level):
    g = build_mlp_step(batch=16, layers=(30, 20, 12, 10))
    feeds = step_feeds(g)
    out = graphc.optimize(g, level=level).graph
    assert_close(values(out, feeds), values(g, feeds), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("level", [0, 2, 3])
def test_lenet_step_equal_at_every_level(level):
    g = load_bench().lenet_step(batch=2)
    feeds = step_feeds(g, 1)
    out = graphc.optimize(g, level=level).graph
    assert_close(values(out, feeds), values(g, feeds), rtol=2e-4, atol=1e-5)
    if level >= 2:
        kinds = [n.op for n in out.nodes]
        assert kinds.count("conv2d_epilogue") == 2 and kinds.count("fused") >= 10


def test_compile_with_optimize_trains_like_the_unoptimized_graph():
    g = build_mlp_step(batch=8, layers=(12, 10, 8, 10))
    loss = graphc.Tensor(g.outputs[0], g)
    plain, fast = graphc.compile(loss), graphc.compile(loss, optimize=3)
    assert fast.stats["optimize"].level == 3 and len(fast.graph.nodes) < len(plain.graph.nodes)
    for step in range(3):
        feeds = step_feeds(g, step)
        np.testing.assert_allclose(fast(**feeds), plain(**feeds), rtol=1e-5)
        for name in plain.params:
            np.testing.assert_allclose(fast.params[name], plain.params[name], rtol=1e-5, atol=1e-7)


# -- the buffer plan -----------------------------------------------------------------------------------------

def test_buffer_plan_reuses_a_chain_in_place():
    with graphc.Graph() as g:
        x = graphc.input("x", (256,))
        g.output(graphc.tanh(graphc.exp(graphc.exp(x))))
    plan = passes.plan_buffers(g)
    assert plan.naive_bytes == 3 * 1024 and plan.arena_bytes == 1024 and len(plan.slot_bytes) == 1
    assert plan.peak_live_bytes == 2 * 1024   # an op's input and output are both live at its step
    assert len(plan.in_place) == 2


def test_buffer_plan_keeps_a_value_until_its_last_reader():
    with graphc.Graph() as g:
        x = graphc.input("x", (16,))
        a = graphc.exp(x)                       # read again by the last node
        b = graphc.tanh(a)
        c = graphc.sqrt(b)
        d = graphc.reshape(c * 2.0, (4, 4))    # a view: shares the storage of c * 2
        g.output(graphc.reshape(a, (4, 4)) + d)
    plan = passes.plan_buffers(g)
    nodes = g.nodes
    a_node = nodes[1]
    slot_a = plan.slot_of[id(a_node)]
    others = [n for n in nodes if n.op in ("tanh", "sqrt", "mul")]
    assert all(plan.slot_of[id(n)] != slot_a for n in others)
    assert plan.storage(d.node) == plan.storage(d.node.inputs[0])
    xv = np.random.default_rng(0).random(16, dtype=np.float32)
    (got,), _ = run_with_plan(g, plan, {"x": xv})
    want = (np.exp(xv) + np.sqrt(np.tanh(np.exp(xv))) * 2).reshape(4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_inplace_updates_only_when_no_one_reads_the_old_value_later():
    with graphc.Graph() as g:
        x = graphc.input("x", (3, 3))
        W = graphc.param("W", np.eye(3, dtype=np.float32))
        V = graphc.param("V", np.eye(3, dtype=np.float32))
        U = graphc.param("U", np.eye(3, dtype=np.float32))
        new_w = W - x * 0.5                   # elementwise, W read only before: in place
        new_v = V * 2.0
        late = graphc.sum(V)                  # V's old value read after new_v: not in place
        new_u = x @ U                         # a GEMM reading U cannot overwrite U as it goes
        g.output(late)
        g.update(W, new_w)
        g.update(V, new_v)
        g.update(U, new_u)
    plan = passes.plan_buffers(g)
    assert plan.storage(new_w.node) == ("param", W.node)
    assert plan.storage(new_v.node)[0] == "slot" and plan.storage(new_u.node)[0] == "slot"
    xv = np.arange(9, dtype=np.float32).reshape(3, 3)
    (total,), params = run_with_plan(g, plan, {"x": xv})
    assert float(total) == 3.0
    np.testing.assert_array_equal(params["W"], np.eye(3) - xv * 0.5)
    np.testing.assert_array_equal(params["V"], np.eye(3) * 2)
    np.testing.assert_array_equal(params["U"], xv)


def test_the_simulator_catches_a_plan_that_shares_live_memory():
    from test_passes_support import PlanViolation

    with graphc.Graph() as g:
        x = graphc.input("x", (8,))
        a = graphc.exp(x)
        b = graphc.tanh(x)
        g.output(a + b)
    plan = passes.plan_buffers(g)
    plan.slot_of[id(b.node)] = plan.slot_of[id(a.node)]   # a broken plan: a is still live
    with pytest.raises(PlanViolation):
        run_with_plan(g, plan, {"x": np.ones(8, np.float32)})


@pytest.mark.parametrize("which", ["mlp", "lenet"])
def test_optimized_training_steps_run_in_their_planned_memory(which):
    g = build_mlp_step(batch=8, layers=(20, 16, 12, 10)) if which == "mlp" else load_bench().lenet_step(batch=2)
    result = graphc.optimize(g, level=2)
    out, plan = result.graph, result.buffer_plan
    assert len(plan.inplace_updates) == len(out.updates)   # every SGD update runs in place
    assert plan.arena_bytes < plan.naive_bytes < result.input_intermediate_bytes
    feeds = step_feeds(g, 3)
    outputs, params = run_with_plan(out, plan, feeds)
    want = values(g, feeds)
    assert_close(outputs, want[:1], rtol=2e-4, atol=1e-6)
    for (p, _), new in zip(g.updates, want[1:]):
        np.testing.assert_allclose(params[p.name], new, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("make_optimizer", [lambda: graphc.optim.Momentum(0.1, 0.9), lambda: graphc.optim.Adam(1e-2),
                                            lambda: graphc.optim.RMSProp(1e-2)], ids=["momentum", "adam", "rmsprop"])
def test_optimizer_state_updates_run_in_place_and_match(make_optimizer):
    rng = np.random.default_rng(0)
    with graphc.Graph("opt_step") as g:
        x = graphc.input("x", (8, 5))
        y = graphc.input("y", (8,), "int64")
        W1 = graphc.param("W1", rng.standard_normal((5, 6)).astype(np.float32))
        b1 = graphc.param("b1", np.zeros(6, np.float32))
        W2 = graphc.param("W2", rng.standard_normal((6, 3)).astype(np.float32))
        b2 = graphc.param("b2", np.zeros(3, np.float32))
        loss = g.output(graphc.softmax_cross_entropy(graphc.dense(graphc.tanh(graphc.dense(x, W1, b1)), W2, b2), y))
        make_optimizer().minimize(loss, [W1, b1, W2, b2])
    feeds = {"x": rng.random((8, 5), dtype=np.float32), "y": rng.integers(0, 3, 8)}
    want = values(g, feeds)
    result = graphc.optimize(g, level=3)
    assert len(result.buffer_plan.inplace_updates) == len(g.updates)   # weights and optimizer state
    outputs, params = run_with_plan(result.graph, result.buffer_plan, feeds)
    assert_close(outputs, want[:1], rtol=1e-6, atol=1e-7)
    for (p, _), new in zip(g.updates, want[1:]):
        np.testing.assert_allclose(params[p.name], new, rtol=1e-6, atol=1e-7)


def test_an_optimized_graph_can_be_differentiated_again():
    """The fused and epilogue ops have VJPs: grad of the optimized forward graph equals grad of the original."""
    rng = np.random.default_rng(5)
    with graphc.Graph("forward") as g:
        x = graphc.input("x", (1, 2, 6, 6), "float64")
        w = graphc.param("w", rng.standard_normal((3, 2, 3, 3)) * 0.5)
        c = graphc.param("c", rng.standard_normal(3) * 0.1)
        W = graphc.param("W", rng.standard_normal((27, 4)) * 0.3)
        b = graphc.param("b", rng.standard_normal(4) * 0.1)
        h = graphc.tanh(graphc.conv2d(x, w, padding=1) + graphc.reshape(c, (1, 3, 1, 1)))
        h = graphc.max_pool2d(h, 2)
        z = graphc.sigmoid(graphc.dense(graphc.reshape(h, (1, 27)), W, b)) * 2.0 - 1.0
        g.output(graphc.sum(graphc.square(z)))
    out = graphc.optimize(g, level=3).graph
    assert {"conv2d_epilogue", "matmul_epilogue"} <= {n.op for n in out.nodes}
    feeds = {"x": rng.standard_normal((1, 2, 6, 6))}

    def gradients(graph):
        loss = graphc.Tensor(graph.outputs[0], graph)
        params = [graphc.Tensor(graph.find(name), graph) for name in ("w", "c", "W", "b")]
        return graphc.evaluate(graphc.grad(loss, params), feeds)

    for got, want in zip(gradients(out), gradients(g)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_optimizing_twice_changes_nothing_more():
    for g in (build_mlp_step(batch=8, layers=(20, 16, 12, 10)), load_bench().lenet_step(batch=2)):
        once = graphc.optimize(g, level=3).graph
        twice = graphc.optimize(once, level=3).graph
        assert twice.text() == once.text()
        assert [len(n.absorbed) for n in twice.nodes] == [len(n.absorbed) for n in once.nodes]
