"""`seed`: two interleaved moons, Dense(10, relu) -> Dense(1, sigmoid), Adam.

The reference setup of the original design: tiny and fast, so the loop's overhead shows.
"""

from __future__ import annotations

import numpy as np

from .base import Task


def make_moons(seed: int, samples: int = 1000, noise: float = 0.2):
    rng = np.random.default_rng(seed)
    half = samples // 2
    angle_outer = np.linspace(0.0, np.pi, half)
    angle_inner = np.linspace(0.0, np.pi, samples - half)
    outer = np.stack([np.cos(angle_outer), np.sin(angle_outer)], axis=1)
    inner = np.stack([1.0 - np.cos(angle_inner), 0.5 - np.sin(angle_inner)], axis=1)
    inputs = np.concatenate([outer, inner]) + rng.normal(0.0, noise, size=(samples, 2))
    targets = np.concatenate([np.zeros(half), np.ones(samples - half)])[:, None]
    return inputs.astype(np.float32), targets.astype(np.float32)


def build_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(2,)),
            keras.layers.Dense(10, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="output"),
        ]
    )
    return model


TASK = Task(
    name="seed",
    description="Two moons, a 2-10-1 MLP, Adam (tiny and fast)",
    build_model=build_model,
    make_data=make_moons,
    build_loss=lambda: __import__("keras").losses.BinaryCrossentropy(),
    optimizer="adam",
    learning_rate=0.01,
    batch_size=32,
    clip_threshold=1.0,
)
