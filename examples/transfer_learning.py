"""Transfer learning (deck 002): a LeNet-5 trunk trained on MNIST re-used, frozen, for Fashion-MNIST.

1. LeNet-5 learns MNIST (its checkpoint holds every layer's weights by name);
2. a fresh LeNet-5 gets the MNIST conv trunk by layer name (``load_layers``), the trunk is frozen, and only
   its dense head is trained on Fashion-MNIST: the step has no gradient for the convolutions;
3. the same network trained whole on Fashion-MNIST, from scratch, for the same epochs, for comparison.

Prints both accuracies and the time per epoch saved by freezing. Fashion-MNIST comes from Debian's
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``) or ``--fashion DIR`` (IDX files).
"""
import os
import tempfile
import time

from _common import parser

import graphc
from graphc import datasets, optim
from graphc.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from graphc.train import evaluate, load_layers

TRUNK = ["conv2d_1", "maxpool_1", "conv2d_2", "maxpool_2"]

p = parser(__doc__, epochs=3, batch_size=64)
p.add_argument("--mnist-epochs", type=int, default=3)
p.add_argument("--fashion", default=None, help="directory with Fashion-MNIST IDX files (default: Debian's)")
args = p.parse_args()


def lenet5() -> Sequential:
    return Sequential([
        Conv2D(6, 5, padding=2, activation="relu"), MaxPool2D(2),
        Conv2D(16, 5, activation="relu"), MaxPool2D(2),
        Flatten(), Dense(120, "relu"), Dense(84, "relu"), Dense(10),
    ], input_shape=(1, 28, 28), seed=args.seed)


def train(model: Sequential, data, epochs: int, **kwargs):
    history = graphc.fit(model, data.train, epochs=epochs, batch_size=args.batch_size, optimizer=optim.Adam(1e-3),
                         backend=args.backend, seed=args.seed, verbose=False, **kwargs)
    _, accuracy = evaluate(model, data.test)
    # The first epoch also compiles the step: the steady time per epoch is the later epochs' median.
    steady = sorted(history["seconds"][1:] or history["seconds"])[len(history["seconds"][1:]) // 2]
    return accuracy, steady


mnist, fashion = datasets.mnist(flatten=False), datasets.fashion_mnist(path=args.fashion, flatten=False)
with tempfile.TemporaryDirectory() as scratch:
    checkpoint = os.path.join(scratch, "mnist_lenet5.npz")
    source = lenet5()
    mnist_accuracy, _ = train(source, mnist, args.mnist_epochs, checkpoint=checkpoint)

    started = time.perf_counter()
    model = lenet5()
    copied = load_layers(model, checkpoint, [name for name in TRUNK if name.startswith("conv")])
    for layer in model.layers[:len(TRUNK)]:
        layer.freeze()
    frozen_accuracy, frozen_epoch = train(model, fashion, args.epochs)

scratch_model = lenet5()
scratch_accuracy, scratch_epoch = train(scratch_model, fashion, args.epochs)

print(f"MNIST, LeNet-5 trained whole ({args.mnist_epochs} epochs): test accuracy {mnist_accuracy * 100:.2f}%")
print(f"Fashion-MNIST, MNIST trunk frozen ({', '.join(copied)}), head trained {args.epochs} epochs: "
      f"test accuracy {frozen_accuracy * 100:.2f}%, {frozen_epoch:.2f} s per epoch")
print(f"Fashion-MNIST, trained whole from scratch {args.epochs} epochs: "
      f"test accuracy {scratch_accuracy * 100:.2f}%, {scratch_epoch:.2f} s per epoch")
print(f"freezing the trunk saves {(1 - frozen_epoch / scratch_epoch) * 100:.0f}% of the time per epoch")
