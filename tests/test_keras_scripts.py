"""`LiveClipping` attached to Keras scripts as people write them: a loop of `fit(epochs=1)` with
validation and `predict` between fits, Keras' own callbacks beside it, optimizers passed by name,
with a schedule or under mixed precision. Each test is such a script on a small model.
"""

import json
import re
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from support import wait_until
from test_keras import ENVIRONMENT, EXAMPLES, acknowledged, running_run

from training.keras import LiveClipping
from training.persistence import RunDatabase

BATCHES = 8  # per epoch: 128 samples in batches of 16


def problem(seed=0):
    """A small classification problem with validation data, and its model."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(192, 4)).astype("float32")
    targets = (inputs @ np.array([[1.0], [-2.0], [0.5], [3.0]]) > 0).astype("float32")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    return model, (inputs[:128], targets[:128]), (inputs[128:], targets[128:])


def compiled(clipping, optimizer=None, **compile_arguments):
    model, train, validation = problem()
    model.compile(optimizer=clipping.wrap(optimizer or keras.optimizers.Adam(1e-2)),
                  loss="binary_crossentropy", metrics=["accuracy"], **compile_arguments)  # fmt: skip
    return model, train, validation


def fit_epoch(model, clipping, train, validation, epoch, callbacks=()):
    """One turn of the loop-of-fits pattern: fit one epoch, then predict a few samples."""
    history = model.fit(*train, batch_size=16, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                        validation_data=validation, verbose=0, callbacks=[*callbacks, clipping.callback()])  # fmt: skip
    model.predict(validation[0][:4], verbose=0)
    return history


def received_by_the_process(clipping):
    """The poller has read the commands sent (they wait in memory for the next step)."""
    return wait_until(lambda: not clipping._incoming.empty(), timeout=30, what="the poller to read the command")


# --- one run per attachment -----------------------------------------------------------------


def test_a_loop_of_fits_is_one_run_with_every_epochs_logs(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    with LiveClipping("global_norm", 0.5, database=database, run_name="loop") as clipping:
        model, train, validation = compiled(clipping)
        histories = [fit_epoch(model, clipping, train, validation, epoch) for epoch in range(3)]
        assert database.run_info(clipping.run_id)["state"] == "running"  # open between fits
        test_loss, test_accuracy = model.evaluate(*validation, verbose=0)  # no callback passed
    assert len(database.list_runs()) == 1
    info = database.run_info(clipping.run_id)
    assert info["state"] == "finished" and info["steps"] == 3 * BATCHES
    assert database.metrics(clipping.run_id).step.tolist() == list(range(1, 3 * BATCHES + 1))

    evaluations = database.evaluations(clipping.run_id)
    for epoch, history in enumerate(histories):
        at_epoch_end = evaluations[evaluations.step == (epoch + 1) * BATCHES].drop_duplicates("name")
        logged = dict(zip(at_epoch_end.name, at_epoch_end.value))
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(logged)
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert logged[name] == pytest.approx(history.history[name][0], rel=1e-6)
    after = evaluations[evaluations.step == 3 * BATCHES].tail(2)  # evaluate(), after the last fit
    assert dict(zip(after.name, after.value)) == pytest.approx({"val_loss": test_loss, "val_accuracy": test_accuracy})
    in_memory = clipping.evaluations()
    assert in_memory[["step", "name", "value"]].values.tolist() == evaluations[["step", "name", "value"]].values.tolist()


def test_two_attachments_are_two_runs_and_a_custom_loop_records_its_own_evaluation(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    first, second = LiveClipping(database=database), LiveClipping(database=database)
    for clipping in (first, second):
        model, train, validation = compiled(clipping)
        fit_epoch(model, clipping, train, validation, 0)
    second.record_evaluation(val_loss=0.25, val_perplexity=np.float32(1.5))

    @given(st.one_of(st.text(), st.booleans(), st.none(), st.lists(st.floats(), min_size=2)))
    @settings(max_examples=50)
    def refused(value):
        with pytest.raises(ValueError, match=f"must be a number.*Received: val_loss={re.escape(repr(value))}"):
            second.record_evaluation(val_loss=value, val_accuracy=0.5)

    recorded = len(second.evaluations())
    refused()
    assert len(second.evaluations()) == recorded  # a refused value records nothing, nor its neighbour
    with pytest.raises(ValueError, match=f"Received: step={BATCHES + 1}"):
        second.record_evaluation(step=BATCHES + 1, val_loss=0.1)
    first.close()
    second.close()
    assert first.run_id != second.run_id and len(database.list_runs()) == 2
    own = database.evaluations(second.run_id).tail(2)
    assert own.step.tolist() == [BATCHES, BATCHES] and dict(zip(own.name, own.value)) == {
        "val_loss": 0.25, "val_perplexity": 1.5,
    }  # fmt: skip
    assert "val_perplexity" not in set(database.evaluations(first.run_id).name)


# --- commands between fits -------------------------------------------------------------------


def test_commands_sent_between_fits_apply_at_the_next_step_and_a_pause_holds_it(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping("global_norm", 0.5, database=database, poll_seconds=0.05)
    model, train, validation = compiled(clipping)
    fit_epoch(model, clipping, train, validation, 0)
    threshold = database.send_command(clipping.run_id, "clip_threshold", 0.01)
    received_by_the_process(clipping)
    fit_epoch(model, clipping, train, validation, 1)
    assert acknowledged(database, threshold)["applied_step"] == BATCHES + 1

    pause = database.send_command(clipping.run_id, "pause")
    received_by_the_process(clipping)
    held = threading.Thread(target=fit_epoch, args=(model, clipping, train, validation, 2))
    held.start()
    try:
        paused = acknowledged(database, pause)
        assert paused["applied_step"] == 2 * BATCHES + 1 and held.is_alive()
        assert int(clipping._steps.numpy()) == 2 * BATCHES  # the next fit's first step waits
        resumed = acknowledged(database, database.send_command(clipping.run_id, "resume"))
        held.join(120)
    finally:
        if held.is_alive():  # a failed assertion: let the fit end
            database.send_command(clipping.run_id, "resume")
            held.join(120)
    assert resumed["applied_step"] == paused["applied_step"]  # no step ran while paused
    clipping.close()
    frame = database.metrics(clipping.run_id).set_index("step")
    assert frame.index.tolist() == list(range(1, 3 * BATCHES + 1))
    assert (frame.loc[:BATCHES, "clip_threshold"] == np.float32(0.5)).all()
    assert (frame.loc[BATCHES + 1 :, "clip_threshold"] == np.float32(0.01)).all()
    kinds = database.events(clipping.run_id).set_index("kind").step
    assert kinds["clip_threshold"] == BATCHES and kinds["pause"] == kinds["resume"] == 2 * BATCHES


def test_a_command_to_a_closed_run_is_refused_at_once(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database)
    model, train, validation = compiled(clipping)
    fit_epoch(model, clipping, train, validation, 0)
    clipping.close()
    with pytest.raises(ValueError, match="has ended"):
        database.send_command(clipping.run_id, "clip_threshold", 0.1)
    assert len(database.commands(clipping.run_id)) == 0  # refused: nothing queued for nobody

    # Trained again, a closed LiveClipping opens a new run, and what it reads in memory is that
    # run's (found by probing: metrics() kept the closed run's rows, steps 1..n then 1..m again).
    closed_run = clipping.run_id
    fit_epoch(model, clipping, train, validation, 1)
    clipping.close()
    assert clipping.run_id != closed_run
    assert clipping.metrics().step.tolist() == database.metrics(clipping.run_id).step.tolist() == list(range(1, BATCHES + 1))
    assert clipping.events().kind.tolist()[0] == "start" and clipping.events().step.min() == 0


# --- a stop that holds -----------------------------------------------------------------------


def test_a_stop_between_fits_holds_for_every_later_fit(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database, poll_seconds=0.05)
    model, train, validation = compiled(clipping)
    fit_epoch(model, clipping, train, validation, 0)
    stop = database.send_command(clipping.run_id, "stop")
    wait_until(lambda: clipping.stopped, timeout=30, what="`stopped` after the stop command")
    assert database.run_info(clipping.run_id)["state"] == "stopped"
    assert acknowledged(database, stop)["applied_step"] == BATCHES + 1
    weights = model.get_weights()
    for epoch in range(1, 4):  # the script's loop goes on: each fit returns without a step
        history = fit_epoch(model, clipping, train, validation, epoch)
        assert "val_loss" not in history.history  # nor a validation pass
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    assert int(clipping._steps.numpy()) == BATCHES and len(clipping.metrics()) == BATCHES
    assert database.run_info(clipping.run_id)["steps"] == BATCHES and len(database.list_runs()) == 1
    assert clipping.stopped and database.events(clipping.run_id).kind.tolist()[-1] == "stop"


def test_a_stop_during_a_fit_ends_it_at_the_next_step_without_its_validation(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database, poll_seconds=0.05)
    model, train, validation = compiled(clipping)
    histories = []
    fitting = threading.Thread(target=lambda: histories.append(model.fit(
        *train, batch_size=16, epochs=100_000, validation_data=validation, verbose=0,
        callbacks=[clipping.callback()])))  # fmt: skip
    fitting.start()
    try:
        wait_until(lambda: clipping._began and clipping._steps_done() > 2 * BATCHES, timeout=120,
                   what="the fit's first epochs")  # fmt: skip
        stop = acknowledged(database, database.send_command(clipping.run_id, "stop"))
        fitting.join(120)
    finally:
        if fitting.is_alive():
            model.stop_training = True
            fitting.join(120)
    history = histories[0].history
    assert clipping.stopped and database.run_info(clipping.run_id)["state"] == "stopped"
    assert int(clipping._steps.numpy()) == stop["applied_step"] - 1  # no step after the stop
    assert database.run_info(clipping.run_id)["steps"] == stop["applied_step"] - 1
    assert len(history["val_loss"]) == len(history["loss"]) - 1  # the stopped epoch is not validated


def test_a_stop_ends_a_loop_of_fits_and_predicts(tmp_path):
    """The example script's loop, with steps to spare: a stop ends it, with no step after it."""
    database = RunDatabase(tmp_path / "runs.db")
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "attach_fit_loop.py"), "--db", str(database.path),
         "--steps", "100000000", "--steps-per-epoch", "50"],
        cwd=tmp_path, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        run_id = running_run(database, process)
        wait_until(lambda: database.run_info(run_id)["steps"] > 120, timeout=120, what="three fits' steps")
        stop = acknowledged(database, database.send_command(run_id, "stop"))
        stdout, stderr = process.communicate(timeout=60)
        ended = time.time()
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    print(f"the process ended {ended - stop['applied_time']:.2f} s after the stop was applied")
    assert summary["stopped"] and summary["steps"] == stop["applied_step"] - 1  # no step after it
    assert database.run_info(run_id)["state"] == "stopped"
    assert database.run_info(run_id)["steps"] == stop["applied_step"] - 1 and len(database.list_runs()) == 1


# --- Keras' callbacks beside it --------------------------------------------------------------


class _FailAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("the machine went away")


def test_keras_callbacks_work_beside_it_and_a_reloaded_model_trains_on(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database)
    model, train, validation = compiled(clipping)
    checkpoint = tmp_path / "best.keras"
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10.0, patience=1),  # stops at epoch 2
        keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss"),
    ]
    history = model.fit(*train, batch_size=16, epochs=50, validation_data=validation, verbose=0,
                        callbacks=[*callbacks, clipping.callback()])  # fmt: skip
    assert len(history.history["loss"]) == 2 and checkpoint.exists()

    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="went away"):
        model.fit(*train, batch_size=16, epochs=4, verbose=0, callbacks=[backup, _FailAtEpoch(3), clipping.callback()])
    resumed = model.fit(*train, batch_size=16, epochs=4, verbose=0, callbacks=[backup, clipping.callback()])
    assert len(resumed.history["loss"]) == 1  # BackupAndRestore resumed at the failed epoch
    clipping.close()
    assert len(database.list_runs()) == 1
    assert database.metrics(clipping.run_id).step.tolist() == list(range(1, (2 + 3 + 1) * BATCHES + 1))
    val_loss = database.evaluations(clipping.run_id).query("name == 'val_loss'")
    assert val_loss.step.tolist() == [BATCHES, 2 * BATCHES]

    reloaded = keras.models.load_model(checkpoint)
    again = LiveClipping(database=database, run_name="reloaded")
    reloaded.compile(optimizer=again.wrap(reloaded.optimizer), loss="binary_crossentropy")
    first_batch_loss = reloaded.evaluate(train[0][:16], train[1][:16], verbose=0, return_dict=True)["loss"]
    reloaded.fit(*train, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[again.callback()])
    again.close()
    frame = database.metrics(again.run_id)
    assert frame.step.tolist() == list(range(1, BATCHES + 1)) and np.isfinite(frame.loss).all()
    assert frame.loss.iloc[0] == pytest.approx(first_batch_loss, rel=1e-5)  # from the saved weights on


def test_the_tensorboard_callback_works_beside_it(tmp_path):
    # Keras' TensorBoard callback needs the tensorboard package (requirements-dev.txt).
    clipping = LiveClipping(database=RunDatabase(tmp_path / "runs.db"))
    model, train, validation = compiled(clipping)
    tensorboard = keras.callbacks.TensorBoard(log_dir=tmp_path / "logs", update_freq="batch")
    for epoch in range(2):
        fit_epoch(model, clipping, train, validation, epoch, callbacks=[tensorboard])
    clipping.close()
    assert len(list((tmp_path / "logs").rglob("*tfevents*"))) >= 2  # train and validation
    assert clipping.metrics().step.tolist() == list(range(1, 2 * BATCHES + 1))
    assert clipping.evaluations().query("name == 'val_loss'").step.tolist() == [BATCHES, 2 * BATCHES]


# --- the learning rate: Keras' callbacks and the page both write it ---------------------------


def test_reduce_lr_on_plateau_is_recorded_and_a_command_is_the_last_writer(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database, poll_seconds=0.05)
    model, train, validation = compiled(clipping, keras.optimizers.Adam(0.04))
    # min_delta: no epoch improves on the first, so each later one halves the rate (the
    # callback starts afresh with every fit, so it gets one fit of three epochs).
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, min_delta=10.0)
    model.fit(*train, batch_size=16, epochs=3, shuffle=False, validation_data=validation, verbose=0,
              callbacks=[plateau, clipping.callback()])  # fmt: skip
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)  # no step used it yet
    command = database.send_command(clipping.run_id, "learning_rate", 0.5)
    received_by_the_process(clipping)
    fit_epoch(model, clipping, train, validation, 3, callbacks=[plateau])
    clipping.close()
    assert acknowledged(database, command)["applied_step"] == 3 * BATCHES + 1
    rates = database.metrics(clipping.run_id).learning_rate.to_numpy().reshape(4, BATCHES)
    np.testing.assert_array_equal(rates[:, 0], np.float32([0.04, 0.04, 0.02, 0.5]))
    assert (rates == rates[:, :1]).all()
    events = database.events(clipping.run_id).query("kind == 'learning_rate'")
    assert events.step.tolist() == [2 * BATCHES, 3 * BATCHES, 3 * BATCHES]
    # Keras' two writes (the second one no step used before the page's replaced it), the page's.
    assert [float(value) for value in events.new] == pytest.approx([0.02, 0.01, 0.5])
    assert [float(value) for value in events.old] == pytest.approx([0.04, 0.02, 0.01])


def test_learning_rate_scheduler_is_recorded(tmp_path):
    clipping = LiveClipping(database=RunDatabase(tmp_path / "runs.db"))
    model, train, validation = compiled(clipping)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.1 / (epoch + 1))
    model.fit(*train, batch_size=16, epochs=3, verbose=0, callbacks=[scheduler, clipping.callback()])
    rates = clipping.metrics().learning_rate.to_numpy().reshape(3, BATCHES)
    np.testing.assert_allclose(rates[:, 0], [0.1, 0.05, 0.1 / 3], rtol=1e-6)
    changes = clipping.events().query("kind == 'learning_rate'")
    assert changes.step.tolist() == [0, BATCHES, 2 * BATCHES]
    clipping.close()


def test_a_learning_rate_command_cannot_override_a_schedule(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database, poll_seconds=0.05)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=4, decay_rate=0.5)
    model, train, validation = compiled(clipping, keras.optimizers.Adam(schedule))
    fit_epoch(model, clipping, train, validation, 0)
    command = database.send_command(clipping.run_id, "learning_rate", 0.5)
    received_by_the_process(clipping)
    fit_epoch(model, clipping, train, validation, 1)
    clipping.close()
    refused = acknowledged(database, command)
    assert "cannot override a schedule" in refused["error"] and "learning_rate=0.5" in refused["error"]
    assert refused["applied_step"] is None
    rates = database.metrics(clipping.run_id).learning_rate.to_numpy()
    np.testing.assert_allclose(rates, [schedule(step) for step in range(2 * BATCHES)], rtol=1e-6)
    assert "learning_rate" not in set(database.events(clipping.run_id).kind)  # a schedule's own steps


# --- the ways people pass an optimizer -------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_wrap_takes_a_keras_optimizer_name(tmp_path, name):
    clipping = LiveClipping("global_norm", 0.05, database=False)
    optimizer = clipping.wrap(name)
    assert type(optimizer) is type(keras.optimizers.get(name))
    model, train, validation = problem()
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    model.fit(*train, batch_size=16, epochs=1, verbose=0, callbacks=[clipping.callback()])
    frame = clipping.metrics()
    assert frame.step.tolist() == list(range(1, BATCHES + 1)) and frame.clipped.any()
    assert np.isfinite(frame.loss).all() and (frame.clipped_grad_norm <= 0.05 * (1 + 1e-5)).all()


def test_wrap_refuses_an_unknown_optimizer_name():
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier: adamm"):
        LiveClipping(database=False).wrap("adamm")


@pytest.mark.parametrize("how", ["policy", "loss_scale_optimizer"])
def test_mixed_precision_clips_and_records_the_unscaled_gradients(how):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, (inputs, targets), _ = problem()
        inputs, targets = inputs[:16], targets[:16]
        with tf.GradientTape() as tape:  # the hand computation: the gradient of the plain loss
            predictions = tf.cast(model(inputs, training=True), tf.float32)
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(targets, predictions))
        gradients = tape.gradient(loss, model.trainable_variables)
        norm = float(tf.linalg.global_norm(gradients))
        start = model.get_weights()
        clipping = LiveClipping("global_norm", norm / 4, database=False)
        optimizer = keras.optimizers.SGD(0.1)
        if how == "loss_scale_optimizer":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**10)
        model.compile(optimizer=clipping.wrap(optimizer), loss="binary_crossentropy")
        model.fit(inputs, targets, batch_size=16, epochs=1, verbose=0, callbacks=[clipping.callback()])
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    step = clipping.metrics().iloc[0]
    assert len(clipping.metrics()) == 1
    assert step.grad_norm == pytest.approx(norm, rel=1e-2)  # unscaled: the scale is 1024 or 32768
    assert step.loss == pytest.approx(float(loss), rel=1e-2)
    assert step.clipped and step.clipped_grad_norm == pytest.approx(norm / 4, rel=1e-5)
    for got, weight, gradient in zip(model.get_weights(), start, gradients):
        np.testing.assert_allclose(got, weight - 0.1 * gradient.numpy() / 4, rtol=1e-2, atol=1e-4)
