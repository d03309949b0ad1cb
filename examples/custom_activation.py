"""A user-defined activation written as a SymPy expression (swish, x * sigmoid(x)) trained end to end.

graphc derives its reference implementation, its derivative and its generated code from the
one expression; the gradient graph below shows the SymPy-derived derivative op.
"""
import time

import numpy as np
from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Activation, Dense, Sequential

swish = graphc.elementwise("swish", lambda x: x * graphc.sympy_sigmoid(x))
print("swish'(x) =", graphc.ops.elementwise._derivative_expr("swish", 0))

# The gradient graph of one swish unit, printed with the provenance of each backward node.
with graphc.Graph("swish_unit") as g:
    x = graphc.input("x", (3,), "float64")
    y = graphc.sum(swish(x))
    (dx,) = graphc.grad(y, [x])
print(graphc.autodiff.gradient_text(dx))
print("gradient at (-1, 0, 2):", graphc.evaluate(dx, {"x": np.array([-1.0, 0.0, 2.0])}))

args = parser(__doc__, epochs=40, batch_size=32).parse_args()
data, _, _ = datasets.standardize(datasets.digits(seed=args.seed))
model = Sequential([Dense(64), Activation(swish), Dense(10)], input_shape=(64,), seed=args.seed)
started = time.perf_counter()
history = graphc.fit(model, data.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optim.Adam(3e-3),
                     validation_data=data.val, backend=args.backend, seed=args.seed, verbose=False)
report("digits MLP with swish", history, *graphc.train.evaluate(model, data.test), started)
