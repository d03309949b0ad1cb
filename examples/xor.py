"""XOR: not linearly separable, so a perceptron cannot learn it; a 2-layer MLP can."""
import time

import numpy as np
from _common import parser

import graphc
from graphc.nn import Dense, Sequential

args = parser(__doc__, epochs=500, batch_size=4).parse_args()
x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
y = np.array([0, 1, 1, 0], np.int64)

model = Sequential([Dense(8, "tanh"), Dense(2)], input_shape=(2,), seed=args.seed)
print(model.summary())
started = time.perf_counter()
history = graphc.fit(model, (x, y), epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=graphc.optim.SGD(0.5), backend=args.backend, verbose=False)
probs = graphc.train.predict(model, x)
print(f"\nlearned XOR in {args.epochs} epochs ({time.perf_counter() - started:.1f} s): final loss {history['loss'][-1]:.4f}")
for xi, pi in zip(x.astype(int), probs):
    print(f"  {xi[0]} xor {xi[1]} -> {pi}")
