"""`exploding_rnn`: the adding problem with a SimpleRNN whose recurrent weights are too large.

Inputs are sequences of (value, marker) pairs; the target is the sum of the two marked values
(Hochreiter & Schmidhuber 1997). The recurrent kernel starts as an orthogonal matrix times
`RECURRENT_GAIN` with a ReLU activation, so gradients grow geometrically through time: without
clipping, plain SGD blows up within the first hundred steps (seed 0: NaN, and the run stopped
by step 77); global-norm clipping keeps it training.
This is the demo of why clipping matters.
"""

from __future__ import annotations

import numpy as np

from .base import Task

SEQUENCE_LENGTH = 40
SAMPLES = 4096
UNITS = 32
RECURRENT_GAIN = 1.5


def make_adding_problem(seed: int, samples: int = SAMPLES, length: int = SEQUENCE_LENGTH):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(samples, length))
    markers = np.zeros((samples, length))
    first = rng.integers(0, length // 2, size=samples)
    second = rng.integers(length // 2, length, size=samples)
    markers[np.arange(samples), first] = 1.0
    markers[np.arange(samples), second] = 1.0
    inputs = np.stack([values, markers], axis=-1).astype(np.float32)
    targets = (values * markers).sum(axis=1, keepdims=True).astype(np.float32)
    return inputs, targets


def build_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(SEQUENCE_LENGTH, 2)),
            keras.layers.SimpleRNN(
                UNITS,
                activation="relu",
                recurrent_initializer=keras.initializers.Orthogonal(gain=RECURRENT_GAIN, seed=seed),
                name="rnn",
            ),
            keras.layers.Dense(1, name="output"),
        ]
    )


TASK = Task(
    name="exploding_rnn",
    description="Adding problem, ReLU SimpleRNN with large recurrent weights, SGD (explodes unclipped)",
    build_model=build_model,
    make_data=make_adding_problem,
    build_loss=lambda: __import__("keras").losses.MeanSquaredError(),
    optimizer="sgd",
    learning_rate=0.01,
    batch_size=32,
    clip_threshold=1.0,
)
