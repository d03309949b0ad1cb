"""XOR: not linearly separable, so a perceptron cannot learn it; a 2-layer MLP can.

A model file too (`graphc train examples/xor.py`): it defines model(), optimizer and data.
"""
import time

import numpy as np
from _common import parser

import graphc
from graphc.datasets import Splits
from graphc.nn import Dense, Sequential

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
Y = np.array([0, 1, 1, 0], np.int64)

optimizer = graphc.optim.SGD(0.5)


def model(seed=0):
    """2-8-2: one tanh hidden layer, two logits."""
    return Sequential([Dense(8, "tanh"), Dense(2)], input_shape=(2,), seed=seed)


def data():
    """The four points of XOR, for training and testing alike."""
    return Splits(train=(X, Y), val=None, test=(X, Y), classes=2, name="xor")


def main():
    args = parser(__doc__, epochs=500, batch_size=4).parse_args()
    net = model(seed=args.seed)
    print(net.summary())
    started = time.perf_counter()
    history = graphc.fit(net, data().train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         backend=args.backend, verbose=False)
    probs = graphc.train.predict(net, X)
    print(f"\nlearned XOR in {args.epochs} epochs ({time.perf_counter() - started:.1f} s): "
          f"final loss {history['loss'][-1]:.4f}")
    for xi, pi in zip(X.astype(int), probs):
        print(f"  {xi[0]} xor {xi[1]} -> {pi}")


if __name__ == "__main__":
    main()
