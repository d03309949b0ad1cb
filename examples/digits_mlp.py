"""An MLP on scikit-learn's 8x8 digits (pip install 'graphc[data]')."""
import time

from _common import parser, report

import graphc
from graphc import datasets, optim
from graphc.nn import Dense, Sequential

args = parser(__doc__, epochs=60, batch_size=32).parse_args()
data, _, _ = datasets.standardize(datasets.digits(seed=args.seed))
model = Sequential([Dense(128, "relu"), Dense(64, "relu"), Dense(10)], input_shape=(64,), seed=args.seed)
print(model.summary())
started = time.perf_counter()
history = graphc.fit(model, data.train, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Momentum(0.01, 0.9), validation_data=data.val,
                     early_stopping=graphc.train.EarlyStopping(patience=15), backend=args.backend, seed=args.seed)
report("digits MLP 64-128-64-10", history, *graphc.train.evaluate(model, data.test), started)
