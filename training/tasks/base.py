"""What a task is: how to build its model and data, and its default training settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    build_model: Callable[[int], "keras.Model"]  # seed -> a built model  # noqa: F821
    make_data: Callable[[int], tuple[np.ndarray, np.ndarray]]  # seed -> (inputs, targets)
    build_loss: Callable[[], "keras.losses.Loss"]  # noqa: F821
    optimizer: str  # "adam" or "sgd"
    learning_rate: float
    batch_size: int
    clip_threshold: float  # the task's suggested threshold for fixed-threshold policies
    # XLA-compile the chunk loop. Off for tasks whose ops XLA on CPU handles poorly.
    jit_compile: bool = True
