"""The course's perceptron, worked by graphc: a graph, its value, and its symbolic gradient.

    inputs (2, 3, -1, 5), weights (0.1, 0.5, 2.5, 0.2), bias 3.0
    pre-activation 2*0.1 + 3*0.5 - 1*2.5 + 5*0.2 + 3.0 = 3.2, sigmoid(3.2) = 0.9608
"""
import numpy as np

import graphc

with graphc.Graph("perceptron") as g:
    x = graphc.input("x", (4,), "float64")
    w = graphc.param("w", np.array([0.1, 0.5, 2.5, 0.2]))
    b = graphc.param("b", np.array(3.0))
    pre = x @ w + b
    out = g.output(graphc.sigmoid(pre))
    dw, db = graphc.grad(out, [w, b])

print(g)
values = graphc.evaluate([pre, out, dw, db], {"x": np.array([2.0, 3.0, -1.0, 5.0])})
print(f"pre-activation {values[0]:.4f}, sigmoid {values[1]:.4f}")
print(f"d out/d w = {np.round(values[2], 4)} = sigmoid'(3.2) * x, d out/d b = {values[3]:.4f}")

# The second slide: g(1 + 3 x1 - 2 x2) at x = (-1, 2) is sigmoid(-6).
with graphc.Graph("two_inputs"):
    x2 = graphc.input("x", (2,), "float64")
    y2 = graphc.sigmoid(1.0 + x2 @ graphc.constant(np.array([3.0, -2.0])))
print(f"g(1 + 3*x1 - 2*x2) at (-1, 2) = {graphc.evaluate(y2, {'x': np.array([-1.0, 2.0])}):.4f}")
