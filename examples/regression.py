"""Regression: fit sin(x) on [-pi, pi] with a small tanh MLP and the mean squared error.

The course's networks classify; the same fit trains a function approximator when the loss is
``"mse"`` and the targets are floats shaped like the outputs ([N, 1] here). Accuracy means nothing
here, so the metric reported besides the loss is the mean absolute error.
"""
import time

import numpy as np
from _common import parser

import graphc
from graphc.nn import Dense, Sequential
from graphc.train.schedules import cosine

args = parser(__doc__, epochs=200, batch_size=32).parse_args()
x = np.linspace(-np.pi, np.pi, 256, dtype=np.float32).reshape(-1, 1)
y = np.sin(x)                                   # targets shaped like the outputs: [256, 1] floats

model = Sequential([Dense(16, "tanh"), Dense(16, "tanh"), Dense(1)], input_shape=(1,), seed=args.seed)
print(model.summary())
started = time.perf_counter()
history = graphc.fit(model, (x, y), epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=graphc.optim.Adam(0.03), schedule=cosine(0.03, T=args.epochs),
                     loss="mse", metrics=("mae",),
                     backend=args.backend, seed=args.seed, verbose=False)
x_test = np.linspace(-np.pi, np.pi, 1001, dtype=np.float32).reshape(-1, 1)  # between the training points too
error = np.abs(graphc.train.predict_outputs(model, x_test)[:, 0] - np.sin(x_test[:, 0].astype(np.float64)))
print(f"\nfitted sin(x) on [-pi, pi] in {args.epochs} epochs ({time.perf_counter() - started:.1f} s)")
print(f"final training loss (mse): {history['loss'][-1]:.6f}   mae: {history['mae'][-1]:.4f}")
print(f"max error on 1001 test points: {error.max():.4f}")
