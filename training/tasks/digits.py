"""`digits`: scikit-learn's bundled 8x8 handwritten digits (read from disk), a small CNN.

The heavier task: real data, convolutions, steps of several milliseconds.
"""

from __future__ import annotations

import numpy as np

from .base import Task


def load_digits(seed: int):
    from sklearn.datasets import load_digits as sklearn_load_digits  # ships the data, no download

    data = sklearn_load_digits()
    inputs = (data.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    targets = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(targets))
    return inputs[order], targets[order]


def build_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="dense"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


TASK = Task(
    name="digits",
    description="scikit-learn's 8x8 digits (shipped on disk), a small CNN, Adam",
    build_model=build_model,
    make_data=load_digits,
    build_loss=lambda: __import__("keras").losses.SparseCategoricalCrossentropy(from_logits=True),
    optimizer="adam",
    learning_rate=1e-3,
    batch_size=128,
    clip_threshold=1.0,
    # XLA on CPU runs this conv net ~60x slower inside the compiled while loop (and compiles
    # for a minute): measured by the benchmark, so the plain graph it is.
    jit_compile=False,
)
