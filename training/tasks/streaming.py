"""Streamed training data: a task's `tf.data.Dataset` read batch by batch, never materialised.

A task whose `make_data` returns a dataset of `(inputs, targets)` examples trains from it
directly: Clipwatch shuffles it with the run's seed (a bounded buffer, `Task.shuffle_buffer`
examples), repeats it, batches it with the run's batch size and prefetches. Nothing converts it
to numpy or counts it, so a dataset larger than memory, or an endless one, trains. The compiled
chunk pulls one batch per step from the iterator; the in-memory path (arrays gathered in-graph)
stays the fast path for data that fits.
"""

from __future__ import annotations

from typing import Any

from ..lazy_import import tf  # TensorFlow at first use: the page's first paint imports this


def is_dataset(data: Any) -> bool:
    return isinstance(data, tf.data.Dataset)


def as_dataset(data: Any) -> tf.data.Dataset:
    """A dataset as given; `(inputs, targets)` arrays as a dataset of their rows."""
    return data if is_dataset(data) else tf.data.Dataset.from_tensor_slices(tuple(data))


def training_batches(dataset: tf.data.Dataset, seed: int, batch_size: int, shuffle_buffer: int):
    """Shuffled (run seed), repeated, batched (whole batches only), prefetched."""
    return (
        dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)  # one batch shape: one trace
        .prefetch(tf.data.AUTOTUNE)
    )


def is_endless(dataset: tf.data.Dataset) -> bool:
    return int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
