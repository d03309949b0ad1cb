"""A user-defined activation written as a SymPy expression (swish, x * sigmoid(x)) trained end to end.

graphc derives its reference implementation, its derivative and its generated code from the
one expression; the gradient graph below shows the SymPy-derived derivative op.

A model file too (`graphc train examples/custom_activation.py`): it defines model(), optimizer and data;
a model saved with graphc.save keeps swish's expression, so graphc.load brings it back anywhere.
"""
import time

import numpy as np
from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Activation, Dense, Sequential

swish = graphc.elementwise("swish", lambda x: x * graphc.sympy_sigmoid(x))
optimizer = optim.Adam(3e-3)


def model(seed=0):
    """64-64-10 with swish."""
    return Sequential([Dense(64), Activation(swish), Dense(10)], input_shape=(64,), seed=seed)


def data(seed=0):
    """scikit-learn's 8x8 digits, standardized (pip install 'graphc[data]')."""
    splits, _, _ = datasets.standardize(datasets.digits(seed=seed))
    return splits


def main():
    print("swish'(x) =", graphc.ops.elementwise._derivative_expr("swish", 0))

    # The gradient graph of one swish unit, printed with the provenance of each backward node.
    with graphc.Graph("swish_unit"):
        x = graphc.input("x", (3,), "float64")
        y = graphc.sum(swish(x))
        (dx,) = graphc.grad(y, [x])
    print(graphc.autodiff.gradient_text(dx))
    print("gradient at (-1, 0, 2):", graphc.evaluate(dx, {"x": np.array([-1.0, 0.0, 2.0])}))

    args = parser(__doc__, epochs=40, batch_size=32).parse_args()
    splits = data(seed=args.seed)
    net = model(seed=args.seed)
    started = time.perf_counter()
    history = graphc.fit(net, splits.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         validation_data=splits.val, backend=args.backend, seed=args.seed, verbose=False)
    report("digits MLP with swish", history, *graphc.train.evaluate(net, splits.test, backend=args.backend), started)


if __name__ == "__main__":
    main()
