"""Character-level LSTM language model on the Python standard library's own source text.

The text ships with Python itself: the first `TEXT_CHARACTERS` characters of the standard
library's top-level `.py` files (sorted by name), read from disk; nothing is downloaded. Each
example is a window of `SEQUENCE_LENGTH` characters; the target is the same window shifted by
one. Plain SGD at a high learning rate through 64 time steps is the classic setting where
clipping decides whether training survives (Pascanu et al. 2013).

Run it: `python -m training --task examples/tasks/char_lstm.py --policy global_norm --steps 300`
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipwatch.tasks import Task

TEXT_CHARACTERS = 600_000
SEQUENCE_LENGTH = 64
VOCABULARY = 128  # ASCII; any other character becomes 0
UNITS = 128
TRAINING_WINDOWS = 16_384
VALIDATION_WINDOWS = 512
VALIDATION_SHARE = 0.1  # the last tenth of the text is held out


def read_text() -> np.ndarray:
    """The standard library's source as ASCII codes (uint8)."""
    folder = Path(os.path.dirname(os.__file__))
    pieces, total = [], 0
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        pieces.append(text)
        total += len(text)
        if total >= TEXT_CHARACTERS:
            break
    codes = np.frombuffer("".join(pieces)[:TEXT_CHARACTERS].encode("utf-32-le"), np.uint32)
    return np.where(codes < VOCABULARY, codes, 0).astype(np.uint8)


def _windows(codes: np.ndarray, seed: int, count: int):
    starts = np.random.default_rng(seed).integers(0, len(codes) - SEQUENCE_LENGTH - 1, count)
    index = starts[:, None] + np.arange(SEQUENCE_LENGTH + 1)
    windows = codes[index].astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


def _split():
    codes = read_text()
    cut = int(len(codes) * (1 - VALIDATION_SHARE))
    return codes[:cut], codes[cut:]


def make_data(seed: int):
    return _windows(_split()[0], seed, TRAINING_WINDOWS)


def make_validation_data(seed: int):
    return _windows(_split()[1], 12345, VALIDATION_WINDOWS)  # the same windows for every run


def build_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(SEQUENCE_LENGTH,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 32, name="embedding"),
            keras.layers.LSTM(UNITS, return_sequences=True, name="lstm"),
            keras.layers.Dense(VOCABULARY, name="logits"),
        ]
    )


def build_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


TASK = Task(
    name="char_lstm",
    description="Char-level LSTM LM on the Python standard library's source, SGD lr 20",
    build_model=build_model,
    make_data=make_data,
    build_loss=build_loss,
    optimizer="sgd",
    learning_rate=20.0,  # none: loss ~24 after 300 steps (norms to 1e5); global_norm 1.0: ~1.9
    batch_size=32,
    clip_threshold=1.0,
    make_validation_data=make_validation_data,
    metrics=["accuracy"],
    evaluation_interval=200,
    # XLA on CPU ran this LSTM slower (7 vs 10-12 steps/s in the same loaded session).
    jit_compile=False,
)
