"""Validation during a run: `Trainer.evaluations()`, exact against a hand computation, without
retracing the training step, stored in the run database."""

import dataclasses
import sqlite3

import keras
import numpy as np
import pytest
from support import wait_until, write_plugin

from training import Trainer, plugins, xla_cache
from training.evaluation import EVALUATION_COLUMNS, resolve_metric
from training.persistence import RunDatabase


def validation_rows(seed):
    inputs = np.random.default_rng(100 + seed).normal(size=(100, 4)).astype("float32")
    return inputs, inputs.sum(axis=1, keepdims=True)


def test_validation_is_evaluated_every_interval_and_at_the_end(tmp_path):
    task = plugins.load_task(str(write_plugin(tmp_path, "tiny.py")))
    task = dataclasses.replace(
        task, make_validation_data=validation_rows, metrics=["mean_absolute_error"], evaluation_interval=100
    )
    database = RunDatabase(tmp_path / "runs.db")
    # On the full step from the start: a run this short never compiles one otherwise (it would
    # end first), and the full step's trace count is what says evaluating never retraced it.
    trainer = Trainer(task=task, max_steps=250, database=database, quick_start=False)
    recoveries = xla_cache.recoveries
    trainer.start()
    wait_until(lambda: trainer.status.state == "stopped", what="the run to finish")
    evaluations = trainer.evaluations()
    assert list(evaluations.columns) == list(EVALUATION_COLUMNS)
    assert evaluations.step.tolist() == [100, 100, 200, 200, 250, 250]
    assert evaluations.name.tolist() == ["val_loss", "val_mean_absolute_error"] * 3
    # Evaluating never retraced the training step. The one retrace allowed is by design: when the
    # suite's shared persistent XLA cache held an entry that failed to load (another test's
    # process, stopped mid-write, can leave one), the compile clears the cache and traces afresh.
    assert trainer.trace_count == 1 + (xla_cache.recoveries - recoveries)
    # The last evaluation used the final weights: compare with the loss computed by hand
    # (100 rows in batches of 32: a weighted mean over the last partial batch).
    inputs, targets = validation_rows(0)
    predictions = trainer.state.model(inputs, training=False).numpy()
    last = evaluations[evaluations.step == 250].set_index("name").value
    assert last["val_loss"] == pytest.approx(np.mean((predictions - targets) ** 2), rel=1e-5)
    assert last["val_mean_absolute_error"] == pytest.approx(np.mean(np.abs(predictions - targets)), rel=1e-5)
    assert evaluations.value.iloc[0] > last["val_loss"]  # it learned
    stored = database.evaluations(trainer.status.run_id)
    np.testing.assert_allclose(stored.value, evaluations.value, rtol=1e-6)
    assert stored.name.tolist() == evaluations.name.tolist() and stored.step.tolist() == evaluations.step.tolist()
    database.delete_run(trainer.status.run_id)
    with pytest.raises(ValueError, match=f"No run with run_id={trainer.status.run_id}"):
        database.evaluations(trainer.status.run_id)
    connection = sqlite3.connect(tmp_path / "runs.db")  # no orphaned evaluation rows either
    assert connection.execute("SELECT COUNT(*) FROM evaluations").fetchone() == (0,)
    connection.close()


def test_a_task_without_validation_data_has_no_evaluations(tmp_path):
    trainer = Trainer(task="seed", max_steps=50)
    trainer.start()
    wait_until(lambda: trainer.status.state == "stopped", what="the run to finish")
    assert trainer.evaluations().empty and list(trainer.evaluations().columns) == list(EVALUATION_COLUMNS)


def test_accuracy_means_what_the_loss_implies():
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert isinstance(resolve_metric("accuracy", sparse), keras.metrics.SparseCategoricalAccuracy)
    assert isinstance(resolve_metric("accuracy", keras.losses.BinaryCrossentropy()), keras.metrics.BinaryAccuracy)
    assert resolve_metric("accuracy", sparse).name == "accuracy"
    shared = keras.metrics.MeanSquaredError(name="mse")
    copy = resolve_metric(shared, sparse)
    assert copy is not shared and copy.name == "mse"  # runs sharing a task do not share state
