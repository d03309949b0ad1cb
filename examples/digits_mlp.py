"""An MLP on scikit-learn's 8x8 digits (pip install 'graphc[data]').

A model file too (`graphc train examples/digits_mlp.py`): it defines model(), loss, optimizer and data.
"""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Dense, Sequential

loss = "softmax_cross_entropy"
optimizer = optim.Momentum(0.01, 0.9)


def model(seed=0):
    """64-128-64-10, ReLU."""
    return Sequential([Dense(128, "relu"), Dense(64, "relu"), Dense(10)], input_shape=(64,), seed=seed)


def data(seed=0):
    """The digits, standardized with the training split's mean and standard deviation."""
    splits, _, _ = datasets.standardize(datasets.digits(seed=seed))
    return splits


def main():
    args = parser(__doc__, epochs=60, batch_size=32).parse_args()
    splits = data(seed=args.seed)
    net = model(seed=args.seed)
    print(net.summary())
    started = time.perf_counter()
    history = graphc.fit(net, splits.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         loss=loss, validation_data=splits.val, early_stopping=graphc.train.EarlyStopping(patience=15),
                         backend=args.backend, seed=args.seed)
    report("digits MLP 64-128-64-10", history, *graphc.train.evaluate(net, splits.test, backend=args.backend), started)


if __name__ == "__main__":
    main()
