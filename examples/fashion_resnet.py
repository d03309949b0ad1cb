"""A small residual CNN with batch norm on Fashion-MNIST (apt-get install dataset-fashion-mnist,
or --idx DIR with the four IDX files)."""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Activation, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Residual, Sequential

p = parser(__doc__, epochs=10, batch_size=64)
p.add_argument("--idx", default=None, help="directory with Fashion-MNIST IDX files")
args = p.parse_args()
data = datasets.fashion_mnist(path=args.idx, flatten=False)


def block(channels):
    return Residual([Conv2D(channels, 3, padding=1), BatchNorm(), Activation("relu"),
                     Conv2D(channels, 3, padding=1), BatchNorm()], activation="relu")


model = Sequential([
    Conv2D(16, 3, padding=1), BatchNorm(), Activation("relu"),
    block(16), MaxPool2D(2),                     # 16 x 14 x 14
    Conv2D(32, 3, padding=1), BatchNorm(), Activation("relu"),
    block(32), MaxPool2D(2),                     # 32 x 7 x 7
    AvgPool2D(7), Flatten(), Dropout(0.2), Dense(10),
], input_shape=(1, 28, 28), seed=args.seed)
print(model.summary())
started = time.perf_counter()
history = graphc.fit(model, data.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optim.Adam(2e-3),
                     schedule=graphc.train.schedules.cosine(2e-3, T=args.epochs), validation_data=data.val,
                     backend=args.backend, seed=args.seed)
report("residual CNN on Fashion-MNIST", history, *graphc.train.evaluate(model, data.test), started)
