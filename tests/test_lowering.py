"""Lowering against the reference backend, before any renderer: every op's Program, training steps and
hypothesis random graphs (gradients, SGD and momentum updates) run by the kernel-IR interpreter
(graphc/backends/lowering/interpret.py) compute what the reference backend computes; label checks raise
the cpu backend's error; a lowering bug (an index outside a buffer, a race, a read of memory no kernel
wrote) is caught by the interpreter; the printed Program of the MLP step is pinned (golden file).

No Numba compile here except the one tiny graph that compares the label errors with the cpu backend's.
"""
from __future__ import annotations

import dataclasses
import doctest
import importlib
import re

import numpy as np
import pytest
import sympy
from fuzzgraphs import build_case, compare, expected, floor, tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_numba_cpu import ELEMENTWISE_SKIP, GRAPHS, TOL, assert_same, mlp_step, rng

import graphc
from graphc.backends.lowering import Program, lower
from graphc.backends.lowering.interpret import Interpreter, InterpretError, interpret
from graphc.backends.lowering.ir import (
    Assign,
    Buffer,
    Call,
    Draw,
    Gemm,
    Load,
    Loop,
    Ref,
    Seed,
    Store,
    index_var,
    nest,
    scalar_var,
)
from graphc.ir.rewrite import clone
from graphc.ops import registry
from graphc.ops.elementwise import derivative_op
from graphc.passes import DEFAULT_LEVEL, optimize

#: The optimization levels Programs are lowered at: the graph as written, and the cpu backend's default.
LEVELS = [None, DEFAULT_LEVEL]


def lowered(outputs, inputs, level: int | None = None, **options) -> Program:
    """The Program of ``outputs`` as ``graphc.compile`` lowers it: the graph cut to what the outputs and
    updates need, optimized at ``level`` (None: as written)."""
    graph, mapping = clone(outputs[0].graph, [t.node for t in outputs])
    names = [mapping[id(t.node)].name for t in inputs]
    if level is not None:
        graph = optimize(graph, level).graph
    by_name = {n.name: n for n in graph.inputs}
    return lower(graph, [by_name[n] for n in names], **options)


def level_id(level: int | None) -> str:
    return "as-written" if level is None else f"O{level}"


# -- every op -------------------------------------------------------------------------------------------------

OP_CASES = [(name, dtype, level, conv) for name in GRAPHS for dtype in ("float64", "float32") for level in LEVELS
            for conv in (("im2col", "direct") if name == "conv" else (None,))]


@pytest.mark.parametrize("name, dtype, level, conv", OP_CASES,
                         ids=["-".join(filter(None, (c[0], c[1], level_id(c[2]), c[3]))) for c in OP_CASES])
def test_program_of_every_op_equals_reference(name, dtype, level, conv):
    outputs, inputs, feeds, names = GRAPHS[name](dtype)
    choose = None if conv is None else (lambda node, geometry: conv)
    program = lowered(outputs, inputs, level, choose_conv=choose)
    if conv is not None:
        assert set(program.options["conv_methods"]) == {conv}
    got, _ = interpret(program, *feeds)
    assert_same(got, graphc.compile(outputs, inputs=inputs)(*feeds), names, dtype)


def elementwise_rest_graph(dtype: str, ops: list):
    """``ops`` (elementwise, with an expression: derivative ops, ops other tests defined) on positive operands
    (every op's domain: log, sqrt, pow), broadcast against each other, each with its default parameters."""
    r = rng(7)
    with graphc.Graph(f"elementwise_rest_{dtype}") as g:
        x = graphc.input("x", (3, 4), dtype)
        y = graphc.input("y", (4,), dtype)
        z = graphc.input("z", (3, 1), dtype)
        operands = [x, y, z]
        outs = [graphc.apply(op.name, operands[:len(op.symbols)], {k: float(v) for k, v in op.params.items()})
                for op in ops]
        g.output(*outs)
    used = max(len(op.symbols) for op in ops)
    feeds = [r.uniform(0.5, 2, s).astype(dtype) for s in ((3, 4), (4,), (3, 1))]
    return outs, operands[:used], feeds[:used], [op.name for op in ops]


def graphs_ops() -> set[str]:
    """The ops of the fixed graphs (test_numba_cpu's), as written and optimized, and of the MLP step."""
    ops: set[str] = set()
    for build in GRAPHS.values():
        outputs, *_ = build("float64")
        ops |= {n.op for n in outputs[0].graph.nodes}
        ops |= {n.op for n in optimize(outputs[0].graph, DEFAULT_LEVEL).graph.nodes}
    loss, _ = mlp_step(dtype="float64")
    return ops | {n.op for n in loss.graph.nodes}


def remaining_elementwise_ops() -> list:
    """Elementwise ops with an expression the fixed graphs do not apply: every derivative op (registered
    here for every elementwise op, as autodiff would on first use) and any op another test defined."""
    for op in list(registry.all_ops()):
        if op.is_elementwise and op.name not in ELEMENTWISE_SKIP and op.derivative_of is None:
            for i in range(len(op.symbols)):
                derivative_op(op.name, i)
    covered = graphs_ops()
    return [op for op in registry.all_ops()
            if op.is_elementwise and op.expr is not None and op.name not in covered and op.name != "fused"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_program_of_every_other_elementwise_op_equals_reference(dtype):
    outputs, inputs, feeds, names = elementwise_rest_graph(dtype, remaining_elementwise_ops())
    got, _ = interpret(lowered(outputs, inputs), *feeds)
    assert_same(got, graphc.compile(outputs, inputs=inputs)(*feeds), names, dtype)


def test_allreduce_lowers_and_interprets_as_the_identity_on_one_process():
    # On two ranks: tests/test_distributed.py::test_allreduce_on_two_ranks_is_numpys_sum_and_mean.
    with graphc.Graph("allreduce_one") as g:
        x = graphc.input("x", (3, 4), "float64")
        y = g.output(graphc.allreduce(x * 2.0, "sum"), graphc.allreduce(x, "mean"))
    feed = rng(3).standard_normal((3, 4))
    got, _ = interpret(lowered(list(y), [x]), feed)
    for a, b in zip(got, graphc.compile(list(y), inputs=[x])(feed)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[0], feed * 2.0)


def test_every_registered_op_is_in_a_graph_run_here():
    rest = {op.name for op in remaining_elementwise_ops()} | {"allreduce"}  # the test above
    missing = {op.name for op in registry.all_ops()} - graphs_ops() - rest
    assert not missing, f"ops no test of test_lowering.py lowers and interprets: {sorted(missing)}"


def test_pooling_ties_nan_and_infinity_pick_the_references_maximum():
    # Ties (small integers), a NaN, -inf values and an all -inf window whose first element is padding:
    # max_pool2d's gradient (max_pool_backward) and max_pool2d_gather pick the first maximum, NaN first.
    with graphc.Graph("pool_ties") as g:
        x = graphc.input("x", (2, 2, 5, 6), "float64")
        pooled = graphc.max_pool2d(x, 3, 2, 1)
        gathered = graphc.apply("max_pool2d_gather", [x, x * 2.0 + 1.0],
                                {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)})
        (dx,) = graphc.grad(graphc.sum(pooled * pooled) + graphc.sum(gathered), [x])
        g.output(pooled, gathered, dx)
    feed = rng(11).integers(-2, 2, (2, 2, 5, 6)).astype(np.float64)
    feed[0, 0, 0, 0], feed[1, 1, 2, 3], feed[1, 0, :2, :2] = np.nan, -np.inf, -np.inf
    outputs = [pooled, gathered, dx]
    got, _ = interpret(lowered(outputs, [x]), feed)
    for a, b in zip(got, graphc.compile(outputs, inputs=[x])(feed)):
        np.testing.assert_array_equal(a, b)


# -- training steps: parameters updated in place, by GEMMs that accumulate into them too --------------------------

def assert_steps_equal(program: Program, outputs, inputs, feeds_per_step: list[list[np.ndarray]]) -> Interpreter:
    """Steps run by the interpreter and by the reference backend: every step's outputs, then every
    parameter after the last step (float64 tolerance)."""
    machine = Interpreter(program)
    ref = graphc.compile(outputs, inputs=inputs)
    for feeds in feeds_per_step:
        got, want = machine(*feeds), ref(*feeds)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **TOL["float64"])
    assert set(machine.params) == set(ref.params)
    for k in ref.params:
        np.testing.assert_allclose(machine.params[k], ref.params[k], **TOL["float64"], err_msg=k)
    return machine


def mlp_batches(steps: int, seed: int = 5) -> list[list[np.ndarray]]:
    r = rng(seed)
    return [[r.standard_normal((8, 4)), r.integers(0, 3, 8)] for _ in range(steps)]


def gemms(program: Program) -> list[Gemm]:
    found: list[Gemm] = []

    def walk(body):
        for s in body:
            if isinstance(s, Gemm):
                found.append(s)
            elif isinstance(s, Loop):
                walk(s.body)
    for kernel in program.kernels:
        walk(kernel.body)
    return found


@pytest.mark.parametrize("level", LEVELS, ids=level_id)
def test_mlp_training_steps_equal_reference(level):
    loss, inputs = mlp_step(dtype="float64", sizes=(4, 6, 5, 3), name="lowering_mlp")
    program = lowered([loss], inputs, level)
    start = {p.name: p.value.copy() for p in program.graph.params}
    machine = assert_steps_equal(program, [loss], inputs, mlp_batches(3))
    assert all(not np.allclose(machine.params[k], v) for k, v in start.items())
    if level is not None:
        # The first layer's weight gradient is read by its update only: its GEMM adds -lr * x^T @ g into W0.
        assert "accumulate" in program.plan.values()
        assert any(not g.beta.is_zero for g in gemms(program))


def test_given_parameters_replace_the_initial_values_and_come_back_updated():
    loss, inputs = mlp_step(dtype="float64", name="lowering_given_params")
    program = lowered([loss], inputs, DEFAULT_LEVEL)
    r = rng(12)
    start = {p.name: r.standard_normal(p.shape) for p in program.graph.params}
    x, y = mlp_batches(1, 13)[0]
    (got,), params = interpret(program, x, y, params=start)
    ref = graphc.compile(loss, inputs=inputs)
    ref.set_params(start)
    np.testing.assert_allclose(got, ref(x, y), **TOL["float64"])
    for k in ref.params:
        np.testing.assert_allclose(params[k], ref.params[k], **TOL["float64"], err_msg=k)
    with pytest.raises(graphc.InputError, match=r"no parameter\(s\) \['nope'\]; parameters are \['W0', 'b0'"):
        interpret(program, x, y, params={"nope": 1.0})


def optimizer_step(kind: str):
    """An MLP step with a learning-rate input: SGD with weight decay (alpha = -lr, beta = 1 - lr * wd, both
    expressions of the input) or momentum (the velocity accumulated by the gradient's GEMM)."""
    r = rng(3)
    with graphc.Graph(f"lowering_{kind}") as g:
        x, y = graphc.input("x", (8, 4), "float64"), graphc.input("y", (8,), "int64")
        lr = graphc.input("lr", (), "float64")
        sizes = [(4, 6), (6, 5), (5, 3)]
        ws = [graphc.param(f"W{k}", r.standard_normal(s) * 0.5) for k, s in enumerate(sizes)]
        bs = [graphc.param(f"b{k}", np.zeros(s[1])) for k, s in enumerate(sizes)]
        h = x
        for k in range(3):
            h = graphc.dense(h, ws[k], bs[k])
            h = graphc.relu(h) if k < 2 else h
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        if kind == "sgd_weight_decay":
            graphc.optim.SGD(weight_decay=0.05).minimize(loss, ws + bs, lr=lr)
        else:
            graphc.optim.Momentum(0.1, 0.9).minimize(loss, ws + bs, lr=lr)
    return loss, [x, y, lr]


@pytest.mark.parametrize("kind", ["sgd_weight_decay", "momentum"])
def test_updates_accumulated_by_gemms_with_learning_rate_input_equal_reference(kind):
    loss, inputs = optimizer_step(kind)
    program = lowered([loss], inputs, DEFAULT_LEVEL)
    assert "accumulate" in program.plan.values()
    if kind == "sgd_weight_decay":  # alpha and beta are computed from the lr input inside the kernel
        assert any(not g.alpha.is_number and not g.beta.is_number for g in gemms(program))
    rates = [0.1, 0.05, 0.02]
    assert_steps_equal(program, [loss], inputs, [b + [np.float64(lr)] for b, lr in zip(mlp_batches(3, 8), rates)])


# -- hypothesis random graphs (tests/fuzzgraphs.py): gradients, SGD or momentum updates, NaN/Inf inputs ---------

@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2 ** 20), level=st.sampled_from([0, DEFAULT_LEVEL, 3]))
def test_random_graphs_with_updates_equal_reference(seed, level):
    case = build_case(seed, 0)
    want, largest = expected(case, case.graph)
    program = lower(optimize(case.graph, level).graph)
    machine = Interpreter(program)
    outputs = machine(*(case.feeds[n.name] for n in program.inputs))
    got = list(outputs) + [machine.params[p.name] for p, _ in case.updates]
    for name, g, w in zip(case.root_names(), got, want):
        diff = compare(g, w, tolerance(case), floor(case, largest))
        assert diff is None, f"{case.name} at level {level}: {name}: {diff}\n{case.graph}"


# -- label checks: the cpu backend's error ------------------------------------------------------------------------

def label_graph():
    """``y`` checked against 3 classes before anything runs (it feeds the loss straight from the input);
    ``2 * z`` is computed, so one_hot checks it in its kernel."""
    with graphc.Graph("lowering_labels") as g:
        logits = graphc.input("logits", (4, 3), "float64")
        y, z = graphc.input("y", (4,), "int64"), graphc.input("z", (4,), "int64")
        w = graphc.param("w", np.ones(3))
        loss = graphc.softmax_cross_entropy(logits * w, y) + graphc.sum(graphc.one_hot(z * 2, 5, "float64"))
        g.output(loss)
        g.update(w, w - 0.1 * graphc.grad(loss, [w])[0])
    return loss, [logits, y, z]


@pytest.fixture(scope="module")
def label_executables(graphc_cache_dir):
    loss, inputs = label_graph()
    program = lowered([loss], inputs, DEFAULT_LEVEL)
    cpu = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=graphc_cache_dir)
    return Interpreter(program), cpu


@pytest.mark.parametrize("bad, pattern", [
    ("y", r"input 'y': label 3 at index 2 is out of range \[0, 3\) for softmax_cross_entropy "
          r"\(%\d+ at test_lowering\.py:\d+\); 1 of 4 labels are out of range"),
    ("z", r"the labels of %\d+: label 6 at index 2 is out of range \[0, 5\) for one_hot "
          r"\(%\d+ at test_lowering\.py:\d+\)$"),
])
def test_labels_out_of_range_raise_the_cpu_backends_error(label_executables, bad, pattern):
    machine, cpu = label_executables
    feeds = {"logits": rng(1).standard_normal((4, 3)), "y": np.array([0, 1, 2, 1]), "z": np.array([0, 1, 2, 1])}
    feeds[bad] = np.array([0, 1, 3, 1])
    before = machine.params["w"].copy()
    with pytest.raises(graphc.InputError, match=pattern) as ours:
        machine(*feeds.values())
    with pytest.raises(graphc.InputError) as theirs:
        cpu(*feeds.values())
    assert str(ours.value) == str(theirs.value)
    if bad == "y":  # checked before anything is computed: the parameters are untouched
        np.testing.assert_array_equal(machine.params["w"], before)


# -- the interpreter catches lowering bugs -------------------------------------------------------------------------

def double_relu(level: int | None = None) -> tuple[Program, np.ndarray]:
    with graphc.Graph("double") as g:
        x = graphc.input("x", (4,))
        y = g.output(graphc.relu(x * 2.0) + 1.0)
    return lowered([y], [x], level), np.array([-1.0, 0.5, 2.0, -3.0], np.float32)


def replace_stores(body: list, change) -> list:
    """``body`` with every Store replaced by ``change(store)`` (loops rebuilt around it)."""
    out = []
    for s in body:
        if isinstance(s, Loop):
            out.append(dataclasses.replace(s, body=replace_stores(s.body, change)))
        elif isinstance(s, Store):
            out.append(change(s))
        else:
            out.append(s)
    return out


def with_last_kernel_stores(program: Program, change) -> Program:
    last = program.kernels[-1]
    kernels = program.kernels[:-1] + [dataclasses.replace(last, body=replace_stores(last.body, change))]
    return dataclasses.replace(program, kernels=kernels)


def test_an_index_outside_its_buffer_is_a_lowering_error():
    program, x = double_relu(DEFAULT_LEVEL)
    shifted = with_last_kernel_stores(program, lambda s: dataclasses.replace(s, index=s.index + 1))
    with pytest.raises(InterpretError, match=r"kernel %\d+ .*: writes o0\[4\], outside its 4 elements"):
        interpret(shifted, x)


def test_parallel_iterations_writing_one_element_is_a_lowering_error():
    program, x = double_relu(DEFAULT_LEVEL)
    racing = with_last_kernel_stores(program, lambda s: dataclasses.replace(s, index=sympy.Integer(0), reduce="add"))
    with pytest.raises(InterpretError, match="parallel iterations write the same element of o0"):
        interpret(racing, x)


def test_memory_no_kernel_wrote_reads_as_nan():
    program, x = double_relu()  # as written: relu(x * 2) in the workspace, then + 1 into the output
    assert len(program.kernels) == 3
    (out,), _ = interpret(program, x)
    np.testing.assert_array_equal(out, np.maximum(x * 2, 0) + 1)  # independent of the reference
    (skipped,), _ = interpret(dataclasses.replace(program, kernels=program.kernels[1:]), x)
    assert np.isnan(skipped).all()


def test_inputs_are_read_only_and_kept_by_the_caller():
    program, x = double_relu()
    kept = x.copy()
    interpret(program, x)
    np.testing.assert_array_equal(x, kept)
    broken = with_last_kernel_stores(program, lambda s: dataclasses.replace(
        s, buffer=dataclasses.replace(s.buffer, store="input", arg=0)))
    with pytest.raises(InterpretError, match="writes into o0, an input"):
        interpret(broken, x)


def vector_program(size: int) -> tuple[Program, Buffer, Buffer]:
    """A lowered program of x [size] -> x * 2 (float32), with its input and output buffers, whose kernels a
    test replaces by statements of its own."""
    with graphc.Graph("vector") as g:
        x = graphc.input("x", (size,))
        y = g.output(x * 2.0)
    program = lowered([y], [x])
    return program, program.buffers[0], program.outputs[0]


def run_kernel(program: Program, body: list, *inputs) -> np.ndarray:
    """The output of ``program`` with ``body`` as its only kernel."""
    kernel = dataclasses.replace(program.kernels[-1], body=body)
    (out,), _ = interpret(dataclasses.replace(program, kernels=[kernel]), *inputs)
    return out


def test_a_gemm_or_call_writing_over_its_operand_is_a_lowering_error():
    # Targets write while they read (BLAS, the library kernels): a result over an operand would read values
    # already overwritten, though NumPy, which reads copies, would compute the right numbers.
    program, x, out = vector_program(8)
    zero = sympy.Float(0.0)
    gemm = Gemm(2, 2, 2, sympy.Float(1.0), Ref(out), False, 2, Ref(x), False, 2, zero, Ref(out, sympy.Integer(2)), 2)
    with pytest.raises(InterpretError, match=r"GEMM writes C \(o0\) over its operand A \(o0\)"):
        run_kernel(program, [gemm], np.ones(8, np.float32))
    pool = Call("avg_pool", (Ref(out), 1, 2, 2, 1, 1, 1, 1, 0, 0, 2, 2, Ref(out, sympy.Integer(2))))
    with pytest.raises(InterpretError, match="avg_pool writes o0 over its operand o0"):
        run_kernel(program, [pool], np.ones(8, np.float32))
    apart = [Call("avg_pool", (Ref(x), 1, 2, 2, 1, 1, 1, 1, 0, 0, 2, 2, Ref(out, sympy.Integer(4))))]
    np.testing.assert_array_equal(run_kernel(program, apart, np.arange(8, dtype=np.float32))[4:], [0, 1, 2, 3])


def test_integer_division_in_kernels_is_exact():
    # floor(j/49) printed as NumPy code is floor((1/49)*j), which is 0 at j = 49: the interpreter divides
    # integers exactly, as the target's integer code does.
    program, _, out = vector_program(64)
    j = index_var("j")
    got = run_kernel(program, nest([64], ["j"], [Store(out, j, sympy.floor(j / 49))]), np.zeros(64, np.float32))
    np.testing.assert_array_equal(got, np.arange(64) // 49)


def test_a_reduction_marked_parallel_is_a_lowering_error():
    program, x, out = vector_program(4)
    j, v, acc = index_var("j"), scalar_var("v"), scalar_var("acc")
    summed = [Assign(acc, sympy.Float(0.0), "float32"),
              Loop(j, 4, [Load(v, x, j), Assign(acc, acc + v, "float32")], parallel=False),
              Store(out, sympy.Integer(0), acc)]
    feed = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    assert run_kernel(program, summed, feed)[0] == 10.0
    summed[1] = dataclasses.replace(summed[1], parallel=True)
    with pytest.raises(InterpretError, match="parallel loop j are not independent: it updates acc, defined before"):
        run_kernel(program, summed, feed)


def test_an_iteration_reading_what_another_writes_is_a_lowering_error():
    # out[j + 1] = out[j] in place: run in order, every element becomes out[0]; as NumPy lanes (all loads
    # before any store) it would be a shift. A parallel target races: the interpreter says so.
    program, x, out = vector_program(4)
    j, v = index_var("j"), scalar_var("v")
    copy = nest([4], ["j"], [Load(v, x, j), Store(out, j, v)])
    spread = Loop(j, 3, [Load(v, out, j), Store(out, j + 1, v)], parallel=False)
    feed = np.array([5.0, 6.0, 7.0, 8.0], np.float32)
    np.testing.assert_array_equal(run_kernel(program, copy + [spread], feed), [5.0, 5.0, 5.0, 5.0])
    with pytest.raises(InterpretError, match=r"parallel loop j are not independent: one writes o0\[1\], another"):
        run_kernel(program, copy + [dataclasses.replace(spread, parallel=True)], feed)


def test_random_draws_in_a_parallel_loop_are_a_lowering_error():
    program, _, out = vector_program(4)
    j, u = index_var("j"), scalar_var("u")
    draws = [Seed(sympy.Integer(7)), Loop(j, 4, [Draw(u), Store(out, j, u)], parallel=False)]
    got = run_kernel(program, draws, np.zeros(4, np.float32))
    np.testing.assert_array_equal(got, np.random.RandomState(7).random_sample(4).astype(np.float32))
    draws[1] = dataclasses.replace(draws[1], parallel=True)
    with pytest.raises(InterpretError, match="parallel loop j are not independent: it seeds or draws random"):
        run_kernel(program, draws, np.zeros(4, np.float32))


def test_the_interpreters_doctests_pass():
    for name in ("graphc.backends.lowering.interpret", "graphc.backends.lowering.status"):
        module = importlib.import_module(name)  # the module, even if the package exports a function so named
        assert doctest.testmod(module).failed == 0, name


# -- the printed Program ----------------------------------------------------------------------------------------

def test_program_text_of_mlp_training_step_is_pinned(golden):
    loss, inputs = mlp_step(batch=4, sizes=(3, 5, 2), name="golden_mlp")
    program = lowered([loss], inputs, DEFAULT_LEVEL)  # what graphc.compile(..., backend="cpu") lowers
    # Locations are test_numba_cpu.py's lines (mlp_step's): keep the file name only.
    golden("lowering_mlp_step.txt", re.sub(r"test_numba_cpu\.py:\d+", "test_numba_cpu.py:N", str(program)) + "\n")


def test_inputs_given_as_tensors_lower_as_their_nodes_and_a_foreign_input_is_named():
    """``lower(graph, inputs)`` takes the call order as nodes or as the user's Tensors (the same Program, run by
    the interpreter against NumPy); a node of another graph, or anything else, is a GraphcError naming it (it
    was a bare KeyError from the layout)."""
    with graphc.Graph("tensor_inputs") as g:
        a = graphc.input("a", (3,))
        b = graphc.input("b", (3,))
        g.output(a * 2.0 - b)
    with graphc.Graph("elsewhere"):
        c = graphc.input("c", (3,))
    x, y = np.arange(3.0), np.ones(3)
    for inputs in ([b, a], [b.node, a.node]):
        program = lower(g, inputs)
        assert [n.name for n in program.inputs] == ["b", "a"]
        np.testing.assert_array_equal(interpret(program, y, x)[0][0], x * 2.0 - y)
    with pytest.raises(graphc.GraphcError, match=r"lower: input 1 \(node %\d+ input 'c'\) is not a node of graph "
                                                 r"'tensor_inputs'"):
        lower(g, [a, c])
    with pytest.raises(graphc.GraphcError, match=r"input 0 \(str\) is not a node"):
        lower(g, ["a"])
