"""jit_compile=None: a model XLA cannot compile falls back once to the plain graph and says why."""

import dataclasses

import numpy as np
import pytest
from support import wait_until, write_plugin

from training import Trainer, plugins

pytestmark = pytest.mark.usefixtures("fresh_compile")  # each run compiles its own steps

NO_XLA_MODEL = '''
import numpy as np
import tensorflow as tf
from training.tasks import Task



def build_model(seed):
    import keras

    keras.utils.set_random_seed(seed)

    class HostSide(keras.layers.Layer):
        """Adds zero computed by numpy on the host: an op (PyFunc) with no XLA kernel."""

        def call(self, inputs):
            zeros = tf.numpy_function(lambda a: np.zeros_like(a), [inputs], tf.float32)
            return inputs + tf.stop_gradient(tf.ensure_shape(zeros, inputs.shape))

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                             HostSide(), keras.layers.Dense(1)])


def make_data(seed):
    inputs = np.random.default_rng(seed).normal(size=(256, 4)).astype("float32")
    return inputs, inputs.sum(axis=1, keepdims=True)


TASK = Task(name="no_xla", description="a model with a numpy op", build_model=build_model,
            make_data=make_data, build_loss="mse", learning_rate=0.05)
'''


def run(task, **kwargs):
    trainer = Trainer(task=task, max_steps=300, **kwargs)
    trainer.start()
    wait_until(lambda: trainer.status.state not in ("idle", "running"), what="the run to end")
    return trainer


def test_a_model_xla_cannot_compile_falls_back_once_runs_and_says_why(tmp_path):
    """On the full step from the first chunk (no quick start): the fallback is step 0's."""
    task = plugins.load_task(str(write_plugin(tmp_path, "no_xla.py", NO_XLA_MODEL)))
    assert task.jit_compile is None
    trainer = run(task, quick_start=False)
    assert trainer.status.state == "stopped", trainer.status.error
    assert len(trainer.metrics()) == 300
    events = trainer.events()
    fallbacks = events[events.kind == "xla_fallback"]
    assert len(fallbacks) == 1
    assert fallbacks.new.iloc[0] == "XLA cannot compile op PyFunc (no XLA_CPU_JIT kernel); running without XLA"
    assert fallbacks.step.iloc[0] == 0  # before the first step
    assert trainer.trace_count == 2  # the XLA attempt, then the plain graph; never again


def test_with_a_quick_start_the_quick_step_falls_back_and_the_full_step_never_tries_xla(tmp_path):
    """The quick step is XLA-compiled like the full step (both must compute the same bits), so it
    meets the unsupported op first: it falls back at step 0 and says why, and the full step is
    then built without XLA, once. One kind of step for the whole run, whenever the swap comes."""
    task = plugins.load_task(str(write_plugin(tmp_path, "no_xla.py", NO_XLA_MODEL)))
    trainer = Trainer(task=task)
    trainer.start()
    try:
        assert trainer.wait_until_compiled()
        swapped_at = trainer.status.step
        wait_until(lambda: trainer.status.step > swapped_at + 100, what="steps on the swapped-in step")
    finally:
        trainer.stop()
    assert trainer.status.state == "stopped", trainer.status.error
    events = trainer.events()
    fallbacks = events[events.kind == "xla_fallback"]
    assert len(fallbacks) == 1 and "PyFunc" in fallbacks.new.iloc[0]
    assert fallbacks.step.iloc[0] == 0  # the quick step's first call
    assert not trainer.steps.function.uses_xla and trainer.trace_count == 1
    assert np.isfinite(trainer.metrics().loss).all()


def test_forcing_xla_on_such_a_model_fails_the_run_with_the_reason(tmp_path):
    task = plugins.load_task(str(write_plugin(tmp_path, "no_xla.py", NO_XLA_MODEL)))
    trainer = run(dataclasses.replace(task, jit_compile=True), quick_start=False)
    assert trainer.status.state == "failed"
    assert "PyFunc" in trainer.status.error
    assert "xla_fallback" not in trainer.events().kind.tolist()


def test_a_model_that_compiles_keeps_xla_and_records_no_fallback(tmp_path):
    task = plugins.load_task(str(write_plugin(tmp_path, "tiny.py")))
    trainer = run(task, quick_start=False)
    assert trainer.status.state == "stopped"
    assert "xla_fallback" not in trainer.events().kind.tolist()
    assert trainer.trace_count == 1 and trainer.steps.function.uses_xla
    assert np.isfinite(trainer.metrics().loss).all()
