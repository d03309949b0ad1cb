"""A small residual CNN with batch norm on Fashion-MNIST (apt-get install dataset-fashion-mnist,
or --idx DIR with the four IDX files).

A model file too (`graphc train examples/fashion_resnet.py`): it defines model(), loss, optimizer and data.
"""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Activation, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Residual, Sequential

loss = "softmax_cross_entropy"
optimizer = optim.Adam(2e-3)


def block(channels):
    return Residual([Conv2D(channels, 3, padding=1), BatchNorm(), Activation("relu"),
                     Conv2D(channels, 3, padding=1), BatchNorm()], activation="relu")


def model(seed=0):
    """Two stages of conv-BN-ReLU and a residual block, global average pooling, dropout, 10 logits."""
    return Sequential([
        Conv2D(16, 3, padding=1), BatchNorm(), Activation("relu"),
        block(16), MaxPool2D(2),                     # 16 x 14 x 14
        Conv2D(32, 3, padding=1), BatchNorm(), Activation("relu"),
        block(32), MaxPool2D(2),                     # 32 x 7 x 7
        AvgPool2D(7), Flatten(), Dropout(0.2), Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)


def data(path=None):
    """Fashion-MNIST as images [N, 1, 28, 28] (the Debian package's files, or the IDX files in ``path``)."""
    return datasets.fashion_mnist(path=path, flatten=False)


def main():
    p = parser(__doc__, epochs=10, batch_size=64)
    p.add_argument("--idx", default=None, help="directory with Fashion-MNIST IDX files")
    args = p.parse_args()
    splits = data(args.idx)
    net = model(seed=args.seed)
    print(net.summary())
    started = time.perf_counter()
    history = graphc.fit(net, splits.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         loss=loss, schedule=graphc.train.schedules.cosine(2e-3, T=args.epochs),
                         validation_data=splits.val, backend=args.backend, seed=args.seed)
    report("residual CNN on Fashion-MNIST", history, *graphc.train.evaluate(net, splits.test, backend=args.backend), started)


if __name__ == "__main__":
    main()
