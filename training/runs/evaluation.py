"""Validation: a task's validation data evaluated with its loss and metrics during a run.

The trainer calls `Evaluator.evaluate(step)` in the training thread between chunks, every
`Task.evaluation_interval` steps and once at the end of a run with a step limit. Evaluation is a
`tf.function` of its own, so it never retraces the training step; its results are plain Python
floats (`val_loss`, `val_<metric>`), kept here and handed to the run database.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pandas as pd

from ..lazy_import import tf  # TensorFlow at first use (training/lazy_import.py)

from ..tasks.streaming import as_dataset, is_endless

EVALUATION_COLUMNS = ("step", "time_s", "name", "value")

# What "accuracy" means depends on the loss, as in Keras' compile(): loss class -> metric class.
_ACCURACY_FOR_LOSS = {
    "SparseCategoricalCrossentropy": "SparseCategoricalAccuracy",
    "CategoricalCrossentropy": "CategoricalAccuracy",
    "BinaryCrossentropy": "BinaryAccuracy",
    "sparse_categorical_crossentropy": "SparseCategoricalAccuracy",
    "categorical_crossentropy": "CategoricalAccuracy",
    "binary_crossentropy": "BinaryAccuracy",
}


def empty_evaluations() -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series(dtype="int64"), "time_s": pd.Series(dtype="float64"),
                         "name": pd.Series(dtype="object"), "value": pd.Series(dtype="float64")})  # fmt: skip


def resolve_metric(metric: Any, loss_function: Any):
    """A fresh Keras metric object for a name or an object (objects are copied: runs that
    share a task must not share metric state)."""
    import keras

    if isinstance(metric, str):
        name = metric
        if metric in ("accuracy", "acc"):
            loss_name = getattr(loss_function, "__name__", type(loss_function).__name__)
            class_name = _ACCURACY_FOR_LOSS.get(loss_name, "Accuracy")
            return getattr(keras.metrics, class_name)(name=name)
        found = keras.metrics.get(metric)
        if isinstance(found, keras.metrics.Metric):
            return type(found).from_config({**found.get_config(), "name": name})
        return keras.metrics.MeanMetricWrapper(found, name=name)
    if isinstance(metric, keras.metrics.Metric):
        return type(metric).from_config(metric.get_config())
    return keras.metrics.MeanMetricWrapper(metric, name=getattr(metric, "__name__", "metric"))


class Evaluator:
    """Evaluates one run's validation data; keeps every result (thread-safe reads)."""

    def __init__(self, task, model, loss_function, data: Any, batch_size: int):
        import keras

        dataset = as_dataset(data)
        if task.validation_steps is None and is_endless(dataset):
            raise ValueError(
                f"Task {task.name!r}: make_validation_data returned an endless dataset; set "
                "the task's `validation_steps` to how many batches to evaluate"
            )
        dataset = dataset.batch(batch_size)
        if task.validation_steps is not None:
            dataset = dataset.take(task.validation_steps)
        self.interval = task.evaluation_interval
        self._loss_mean = keras.metrics.Mean(name="loss")
        self._metrics = [resolve_metric(metric, loss_function) for metric in task.metrics]
        self._rows: list[tuple[int, float, str, float]] = []
        self._lock = threading.Lock()
        self._evaluated_step = None

        @tf.function
        def evaluate_all():
            for inputs, targets in dataset:
                predictions = model(inputs, training=False)
                self._loss_mean.update_state(
                    loss_function(targets, predictions), sample_weight=tf.shape(targets)[0]
                )
                for metric in self._metrics:
                    metric.update_state(targets, predictions)

        self._evaluate_all = evaluate_all

    def due(self, step_before: int, step_after: int) -> bool:
        return step_after // self.interval > step_before // self.interval

    def steps_until_due(self, step: int) -> int:
        return self.interval - step % self.interval

    def evaluate(self, step: int) -> list[tuple[int, float, str, float]]:
        """Evaluate now (at most once per step) and return the new rows."""
        if step == self._evaluated_step:
            return []
        for metric in (self._loss_mean, *self._metrics):
            metric.reset_state()
        self._evaluate_all()
        now = time.time()
        rows = [(step, now, "val_loss", float(self._loss_mean.result()))]
        rows += [(step, now, f"val_{metric.name}", float(metric.result())) for metric in self._metrics]
        with self._lock:
            self._rows.extend(rows)
        self._evaluated_step = step
        return rows

    def frame(self) -> pd.DataFrame:
        with self._lock:
            rows = list(self._rows)
        if not rows:
            return empty_evaluations()
        return pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS))

    def latest(self) -> dict[str, float]:
        """The last evaluation's values by name."""
        with self._lock:
            rows = list(self._rows)
        if not rows:
            return {}
        last_step = rows[-1][0]
        return {name: value for step, _, name, value in rows if step == last_step}
