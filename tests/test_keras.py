"""training.keras.LiveClipping: a user's own Keras script, clipped, recorded and steered.

In-process tests use tiny models; the examples, tf.distribute (two logical CPUs must be set up
before TensorFlow starts) and SIGKILL run as subprocesses, as a user would run them.
"""

import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import wait_until

from training.keras import LiveClipping
from training.persistence import RunDatabase

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Stands in for `python -m pip install -e .` (tested on its own below): `training` importable.
ENVIRONMENT = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def small_problem(seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(256, 4)).astype("float32")
    targets = (inputs @ np.array([[1.0], [-2.0], [0.5], [3.0]]) > 0).astype("float32")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    return model, inputs, targets


def fit(clipping, steps_per_execution=1, epochs=2, optimizer=None):
    model, inputs, targets = small_problem()
    optimizer = optimizer or keras.optimizers.Adam(1e-2)
    model.compile(optimizer=clipping.wrap(optimizer), loss="mse", steps_per_execution=steps_per_execution)
    model.fit(inputs, targets, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[clipping.callback()])
    return model


def assert_clipping_invariants(frame):
    """What every recorded step of a global_norm run must satisfy."""
    threshold = frame.clip_threshold
    assert (frame.clipped_grad_norm <= threshold * (1 + 1e-5)).all()
    assert (frame.clipped == (frame.grad_norm > threshold)).all()
    unclipped = frame[~frame.clipped]
    np.testing.assert_allclose(unclipped.clipped_grad_norm, unclipped.grad_norm, rtol=1e-6)
    np.testing.assert_allclose(frame[frame.clipped].clipped_grad_norm, threshold[frame.clipped], rtol=1e-5)


# --- wrap ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["clipnorm", "clipvalue", "global_clipnorm"])
def test_wrap_refuses_an_optimizer_that_already_clips(argument):
    optimizer = keras.optimizers.Adam(1e-3, **{argument: 1.0})
    with pytest.raises(ValueError, match=f"already clips.*Received: .*{argument}=1.0"):
        LiveClipping(database=False).wrap(optimizer)


def test_bad_settings_are_refused_when_built():
    with pytest.raises(ValueError, match="clip_threshold=0"):
        LiveClipping(clip_threshold=0, database=False)
    with pytest.raises(ValueError, match="Unknown clipping policy 'clipall'"):
        LiveClipping(policy="clipall", database=False)
    with pytest.raises(ValueError, match="percentile=150"):
        LiveClipping(policy="autoclip", percentile=150, database=False)


@pytest.mark.parametrize("steps_per_execution", [1, 7])
def test_fit_records_every_step_with_the_clipping_invariants(tmp_path, steps_per_execution):
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping("global_norm", 0.05, database=database, run_name="my model")
    fit(clipping, steps_per_execution=steps_per_execution)
    assert database.run_info(clipping.run_id)["state"] == "running"  # one run until it is closed
    clipping.close()
    frame = database.metrics(clipping.run_id)
    assert frame.step.tolist() == list(range(1, 33))  # 2 epochs x 16 batches, none sampled away
    assert_clipping_invariants(frame)
    assert frame.clipped.any() and frame.finite.all() and (frame.policy == "global_norm").all()
    assert np.isfinite(frame.loss).all() and (frame.learning_rate == np.float32(1e-2)).all()
    layers = database.layer_norms(clipping.run_id)
    np.testing.assert_allclose(
        np.sqrt((layers.drop(columns="step") ** 2).sum(axis=1)), frame.grad_norm, rtol=1e-5
    )
    info = database.run_info(clipping.run_id)
    assert info["state"] == "finished" and info["name"] == "my model" and info["steps"] == 32
    assert info["config"]["attached"] and info["task"] == "attached"
    assert database.events(clipping.run_id).kind.tolist() == ["start", "finished"]


@pytest.mark.parametrize(
    "policy, reference",
    [
        ("global_norm", lambda gradients, c: tf.clip_by_global_norm(gradients, c)[0]),
        ("per_tensor_norm", lambda gradients, c: [tf.clip_by_norm(g, c) for g in gradients]),
        ("value", lambda gradients, c: [tf.clip_by_value(g, -c, c) for g in gradients]),
    ],
)
def test_one_wrapped_sgd_step_equals_the_tensorflow_reference(policy, reference):
    model, inputs, targets = small_problem()
    start = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(inputs[:16]) - targets[:16]))
    expected = [w - 0.1 * g.numpy() for w, g in zip(start, reference(tape.gradient(loss, model.trainable_variables), 0.2))]
    clipping = LiveClipping(policy, 0.2, database=False)
    model.compile(optimizer=clipping.wrap(keras.optimizers.SGD(0.1)), loss="mse")
    model.fit(inputs[:16], targets[:16], batch_size=16, epochs=1, verbose=0, callbacks=[clipping.callback()])
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert clipping.metrics().loss.iloc[0] == pytest.approx(float(loss), rel=1e-5)


def test_checkpoints_load_with_and_without_the_wrap(tmp_path):
    """Clipwatch's variables stay out of the optimizer's checkpoint, both ways."""
    def trained(wrapped):
        model, inputs, targets = small_problem()
        optimizer = keras.optimizers.Adam(1e-2)
        if wrapped:
            clipping = LiveClipping(database=False)
            optimizer = clipping.wrap(optimizer)
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(inputs, targets, batch_size=32, epochs=1, verbose=0,
                  callbacks=[clipping.callback()] if wrapped else [])
        return model, optimizer

    for saved_wrapped in (True, False):
        model, optimizer = trained(saved_wrapped)
        path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / f"ckpt{saved_wrapped}"))
        fresh_model, fresh_optimizer = trained(not saved_wrapped)
        status = tf.train.Checkpoint(model=fresh_model, optimizer=fresh_optimizer).restore(path)
        status.assert_consumed()  # every saved value found a home, and every object got one
        for got, want in zip(fresh_model.get_weights() + [v.numpy() for v in fresh_optimizer.variables],
                             model.get_weights() + [v.numpy() for v in optimizer.variables]):
            np.testing.assert_array_equal(got, want)
        if saved_wrapped:  # Keras' own format: the wrapped optimizer saves as the plain Adam it is
            model.save(tmp_path / "wrapped.keras")
            loaded = keras.models.load_model(tmp_path / "wrapped.keras")
            assert type(loaded.optimizer) is keras.optimizers.Adam
            for got, want in zip(loaded.optimizer.variables, optimizer.variables):
                np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_database_that_cannot_be_written_never_breaks_training(tmp_path, caplog):
    not_a_file = tmp_path / "folder.db"
    not_a_file.mkdir()
    clipping = LiveClipping(database=not_a_file)
    with caplog.at_level(logging.WARNING, logger="training.keras"):
        fit(clipping, epochs=3)
    assert clipping.metrics().step.tolist() == list(range(1, 49))  # kept in memory
    assert clipping.run_id is None and "folder.db" in clipping.warning
    assert len([r for r in caplog.records if "Cannot use the run database" in r.getMessage()]) == 1

    # A database that fails mid-run: the writer's table vanishes under it.
    database = RunDatabase(tmp_path / "runs.db")
    clipping = LiveClipping(database=database, ring_steps=64)
    with sqlite3.connect(database.path) as connection:
        connection.execute("DROP TABLE step_chunks")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.keras"):
        fit(clipping, epochs=3)
        # The writer fails on its own thread: under load, after fit's last batch. The run's end
        # (a script's exit closes it) waits for the writer and says why once.
        clipping.close()
    assert clipping.metrics().step.tolist() == list(range(1, 49))
    assert len([r for r in caplog.records if "step_chunks" in r.getMessage()]) == 1


# --- the command channel ------------------------------------------------------------------


def start_example(name, database_path, *args, cwd):
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "--db", str(database_path), *args],
        cwd=cwd, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def running_run(database, process):
    def found():
        assert process.poll() is None, process.communicate()[1][-3000:]
        runs = database.list_runs()
        runs = runs[(runs.state == "running") & (runs.steps > 0)]
        return int(runs.run_id.iloc[0]) if len(runs) else None
    return wait_until(found, timeout=120, what="the script's run to record steps")


def acknowledged(database, command_id, timeout=30):
    def done():
        command = database.command(command_id)
        return command if command["applied_time"] is not None else None
    return wait_until(done, timeout=timeout, what=f"command {command_id} to be acknowledged")


def test_commands_reach_a_running_fit_script(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    process = start_example("attach_fit.py", database.path, "--steps", "100000000", cwd=tmp_path)
    try:
        run_id = running_run(database, process)
        # (How fast: `python -m benchmarks --sections attach`; tests assert no durations.)
        threshold = database.send_command(run_id, "clip_threshold", 0.01)
        command = acknowledged(database, threshold)
        assert command["error"] is None and command["applied_step"] > 1

        # A bad value is refused: by `send_command` itself where it checks values (nothing is
        # queued), else by the script, which acknowledges it with the error and no step.
        try:
            refused = acknowledged(database, database.send_command(run_id, "clip_threshold", -1.0))
        except ValueError as error:
            refused = {"error": str(error), "applied_step": None}
        assert "clip_threshold=-1.0" in refused["error"] and refused["applied_step"] is None
        refused_by_the_script = "id" in refused
        structural = acknowledged(database, database.send_command(run_id, "policy", "autoclip", window=10))
        assert "`window`" in structural["error"]
        policy = acknowledged(database, database.send_command(run_id, "policy", "autoclip", percentile=50))
        rate = acknowledged(database, database.send_command(run_id, "learning_rate", 0.001))
        spike = acknowledged(database, database.send_command(run_id, "spike", 1000.0))
        for later in (policy, rate, spike):
            assert later["error"] is None and later["applied_step"] > command["applied_step"]

        wait_until(lambda: database.run_info(run_id)["steps"] > spike["applied_step"] + 5, timeout=60,
                   what="steps after the last command")
        paused = acknowledged(database, database.send_command(run_id, "pause"))
        wait_until(lambda: database.run_info(run_id)["steps"] >= paused["applied_step"] - 1, timeout=30,
                   what="the steps before the pause to be written")
        steps_while_paused = database.run_info(run_id)["steps"]
        resumed = acknowledged(database, database.send_command(run_id, "resume"))
        assert resumed["applied_step"] == paused["applied_step"]  # no step ran while paused
        assert steps_while_paused == paused["applied_step"] - 1
        acknowledged(database, database.send_command(run_id, "stop"))
        assert process.wait(timeout=60) == 0, process.communicate()[1][-3000:]
    finally:
        process.kill()
        process.wait()

    frame = database.metrics(run_id).set_index("step")
    assert frame.index.tolist() == list(range(1, len(frame) + 1))
    changed = command["applied_step"]
    assert (frame.loc[: changed - 1, "clip_threshold"] == 1.0).all()
    assert (frame.loc[changed : policy["applied_step"] - 1, "clip_threshold"] == np.float32(0.01)).all()
    assert (frame.loc[policy["applied_step"] :, "policy"] == "autoclip").all()
    assert (frame.loc[rate["applied_step"] :, "learning_rate"] == np.float32(0.001)).all()
    spiked = frame.loc[spike["applied_step"]]
    assert spiked.grad_norm > 100 * frame.loc[spike["applied_step"] - 1, "grad_norm"]
    events = database.events(run_id)
    kinds = events.kind.tolist()
    assert kinds[:2] == ["start", "clip_threshold"] and "stop" in kinds
    assert {"policy", "autoclip.percentile", "learning_rate", "spike", "pause", "resume"} <= set(kinds)
    assert events[events.kind == "clip_threshold"].step.tolist() == [changed - 1]  # one: -1 refused
    assert database.run_info(run_id)["state"] == "stopped"
    assert database.commands(run_id).error.notna().sum() == 1 + refused_by_the_script


def test_killing_the_script_leaves_an_intact_database_and_an_interrupted_run(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    process = start_example("attach_fit.py", database.path, "--steps", "100000000", cwd=tmp_path)
    try:
        run_id = running_run(database, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    reopened = RunDatabase(database.path)
    with sqlite3.connect(database.path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert reopened.run_info(run_id)["state"] == "interrupted"
    frame = reopened.metrics(run_id)
    assert len(frame) > 0 and frame.step.tolist() == list(range(1, len(frame) + 1))


# --- the examples -----------------------------------------------------------------------------


def run_example(name, tmp_path, *args, timeout=300):
    database_path = tmp_path / "runs.db"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--db", str(database_path), *args],
        cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), RunDatabase(database_path)


@pytest.mark.parametrize(
    "example, args",
    [
        ("attach_fit.py", ["--steps-per-execution", "5"]),
        ("attach_fit_loop.py", ["--steps-per-epoch", "25"]),  # three fits, one run
        ("attach_custom_loop.py", []),
        ("attach_mirrored.py", []),
    ],
)
def test_example_records_every_step(tmp_path, example, args):
    summary, database = run_example(example, tmp_path, "--steps", "60", "--clip-threshold", "0.1", *args)
    frame = database.metrics(summary["run_id"])
    assert frame.step.tolist() == list(range(1, 61)) and summary["steps"] == 60
    assert_clipping_invariants(frame)
    assert frame.clipped.any() and np.isfinite(frame.loss).all()
    assert database.run_info(summary["run_id"])["state"] == "finished"  # closed, or at the exit
    if example == "attach_fit_loop.py":
        assert summary["fits"] == 3 and len(database.list_runs()) == 1
        evaluations = database.evaluations(summary["run_id"])
        assert evaluations[evaluations.name == "val_loss"].step.tolist() == [25, 50, 60]
    if example == "attach_mirrored.py":
        assert summary["replicas"] == 2 and database.run_info(summary["run_id"])["config"]["replicas"] == 2


# --- tf.distribute ----------------------------------------------------------------------------


def test_mirrored_update_equals_the_single_device_reference():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "mirrored_reference.py")],
        env=ENVIRONMENT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["replicas"] == 2
    first, second = numbers["replica_gradients"]
    assert not np.allclose(first, second)  # the replicas' gradients differ
    np.testing.assert_allclose(numbers["ours"], numbers["reference"], rtol=1e-6, atol=1e-7)
    assert numbers["recorded_norm"] == pytest.approx(numbers["reference_norm"], rel=1e-6)
    assert numbers["recorded_norm"] > 0.5 and numbers["recorded_clipped_norm"] == pytest.approx(0.5, rel=1e-6)
    assert numbers["recorded_loss"] == pytest.approx(numbers["reference_loss"], rel=1e-6)
    assert numbers["recorded_steps"] == 1
    # Keras' own global_clipnorm clips each replica's part before the sum: not the reference.
    assert np.abs(np.subtract(numbers["keras_global_clipnorm"], numbers["reference"])).max() > 0.05


def test_two_workers_switch_to_the_chief_threshold_at_the_same_step(tmp_path):
    database = RunDatabase(tmp_path / "runs.db")
    process = start_example(
        "attach_multiworker.py", database.path, "--steps", "100000000", "--json", str(tmp_path / "out.json"),
        cwd=tmp_path,
    )
    try:
        run_id = running_run(database, process)
        changed = acknowledged(database, database.send_command(run_id, "clip_threshold", 0.02), timeout=60)
        wait_until(lambda: database.run_info(run_id)["steps"] > changed["applied_step"] + 20, timeout=60,
                   what="steps with the new threshold")
        acknowledged(database, database.send_command(run_id, "stop"), timeout=60)
        assert process.wait(timeout=120) == 0, process.communicate()[1][-3000:]
    finally:
        process.kill()
        process.wait()
    workers = [json.loads((tmp_path / f"out.json.worker{index}").read_text()) for index in range(2)]
    assert workers[0]["run_id"] == run_id and workers[1]["run_id"] is None  # only the chief writes
    assert workers[0]["weights"] == workers[1]["weights"]
    assert workers[0]["steps"] == workers[1]["steps"] > changed["applied_step"]
    thresholds = [np.asarray(worker["clip_thresholds"]) for worker in workers]
    np.testing.assert_array_equal(thresholds[0], thresholds[1])
    first_new = int(np.argmax(thresholds[0] == np.float32(0.02))) + 1
    assert first_new == changed["applied_step"]
    assert (thresholds[0][: first_new - 1] == 1.0).all() and (thresholds[0][first_new - 1 :] == np.float32(0.02)).all()
    assert len(database.metrics(run_id)) == workers[0]["steps"]


# --- installable ------------------------------------------------------------------------------


def test_pip_install_editable_makes_clipwatch_importable_from_anywhere(tmp_path):
    """Installed, the package's name is `clipwatch` (issue #17: `training` was shadowed by a
    project's own): from a folder with its own `training.py`, the documented imports work."""
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    (tmp_path / "training.py").write_text("OWN = True\n")  # the user's own module of that name
    probe = subprocess.run(
        [python, "-c", "import training; assert training.OWN; from clipwatch.keras import LiveClipping; "
         "import clipwatch.keras, clipwatch.persistence; print(clipwatch.keras.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in ENVIRONMENT.items() if k != "PYTHONPATH"},
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert Path(probe.stdout.strip()) == ROOT / "training" / "attach" / "live_clipping.py"


@pytest.mark.parametrize("optimizer, policy, clip_threshold", [("Adam", "none", 1.0), ("RMSprop", "global_norm", 1e6)])
def test_an_embeddings_sparse_gradient_trains_exactly_as_unwrapped_when_nothing_is_clipped(optimizer, policy, clip_threshold):
    """Found by probing: the wrap densified every gradient, and Adam and RMSprop update an
    Embedding's sparse gradient differently from its dense sum (repeated rows square separately):
    under `none` the weights ended 0.17 (Adam) and 0.28 (RMSprop) away from the unwrapped run's."""
    rng = np.random.RandomState(0)
    tokens, targets = rng.randint(0, 50, (64, 6)), rng.randn(64, 1).astype("float32")  # repeated rows in a batch

    def trained(wrap):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(50, 4),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])  # fmt: skip
        clipping = LiveClipping(policy=policy, clip_threshold=clip_threshold, database=False)
        chosen = getattr(keras.optimizers, optimizer)(0.05)
        model.compile(optimizer=clipping.wrap(chosen) if wrap else chosen, loss="mse")
        model.fit(tokens, targets, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[clipping.callback()] if wrap else [])  # fmt: skip
        if wrap:
            recorded = clipping.metrics()
            assert len(recorded) == 16 and not recorded.clipped.any()
            clipping.close()
        return model.get_weights()

    for plain, wrapped in zip(trained(False), trained(True)):
        np.testing.assert_array_equal(plain, wrapped)


def test_a_custom_loop_reads_every_step_it_has_taken_at_once():
    """Found by probing: after five steps of a custom loop (clip, apply, sync), metrics() had 0
    rows: sync() copies the graph's buffer out only every 0.25 s, and metrics() did not."""
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD(0.01)
    clipping = LiveClipping(clip_threshold=0.5, database=False)
    inputs, targets = np.ones((8, 5), "float32"), np.ones((8, 1), "float32")
    try:
        for taken in range(1, 6):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.mean_squared_error(targets, model(inputs)))
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(clipping.clip(gradients, model.trainable_variables, loss=loss), model.trainable_variables))
            clipping.sync()
            assert clipping.metrics().step.tolist() == list(range(1, taken + 1))
            assert len(clipping.layer_norms()) == taken
    finally:
        clipping.close()


@pytest.mark.parametrize("policy", ["global_norm", "value"])
def test_a_non_finite_step_of_a_fit_is_skipped_as_its_record_says(policy):
    """Found by probing: the wrap applied a non-finite step's update while its record said it
    was skipped (the trainer skips it): under `global_norm` an inf input made every weight -inf,
    under `value` the inf gradients were clipped to +-c and applied."""
    finite_batch = (np.ones((1, 2), "float32"), np.zeros((1, 1), "float32"))

    def fitted(batches):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="ones")])
        clipping = LiveClipping(policy=policy, clip_threshold=1.0, database=False)
        model.compile(optimizer=clipping.wrap(keras.optimizers.SGD(0.1)), loss="mse")
        inputs, targets = (np.concatenate(arrays) for arrays in zip(*batches))
        model.fit(inputs, targets, batch_size=1, shuffle=False, verbose=0, callbacks=[clipping.callback()])
        return model, clipping.metrics()

    model, recorded = fitted([(np.array([[np.inf, 1.0]], "float32"), np.zeros((1, 1), "float32")), finite_batch])
    assert recorded.finite.tolist() == [False, True]
    assert int(model.optimizer.iterations.numpy()) == 1  # the finite step alone was applied
    reference, _ = fitted([finite_batch])
    for weights, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(weights, expected)


def test_a_non_finite_step_records_no_clip_under_any_policy():
    """Found by probing: `per_tensor_norm` and `value` recorded a skipped inf step as clipped
    (and `value` a clipped norm of 1.73), `global_norm` not: clip rates depended on the policy.
    And `clip()` gave a custom loop the step's NaN gradients (global_norm: inf * c / inf) while
    recording it as skipped: applied, they made the weights NaN for good."""
    from training.clipping.policies import POLICY_NAMES

    for policy in POLICY_NAMES:
        clipping = LiveClipping(policy=policy, clip_threshold=1.0, database=False)
        variables = [tf.Variable([1.0, 1.0]), tf.Variable([1.0, 1.0]), tf.Variable([[1.0], [1.0]])]
        sparse = tf.IndexedSlices(tf.constant([[np.nan]]), tf.constant([1]), tf.constant([2, 1]))
        returned = clipping.clip([tf.constant([np.inf, 0.0]), tf.constant([3.0, 4.0]), sparse], variables, loss=tf.constant(1.0))
        row = clipping.metrics().iloc[-1]
        assert not row.finite and not row.clipped and math.isnan(row.clipped_grad_norm), (policy, row.to_dict())
        assert isinstance(returned[2], tf.IndexedSlices), policy
        for gradient in returned:
            assert (tf.convert_to_tensor(gradient).numpy() == 0).all(), (policy, gradient)
        keras.optimizers.SGD(0.1).apply_gradients(zip(returned, variables))
        assert all((variable.numpy() == 1.0).all() for variable in variables), policy  # nothing moved


def test_an_embeddings_sparse_gradient_is_clipped_as_its_dense_sum_under_every_policy():
    """Found by probing: a sparse gradient's rows were scaled by one factor, the ratio of the
    norms, which is the rule of the scaling policies only: under `value` (c=1) an element stayed
    at 1.005 and another shrank tenfold, and `agc` shrank a unit under its limit 70-fold. Summed
    by index, the returned rows must equal the policy's clip of the dense sum, whatever the policy;
    index 0 appears twice, as repeated tokens of a batch do."""
    from training.clipping.policies import POLICY_NAMES

    values = tf.constant([[10.0, 0.1], [-4.0, 0.05], [0.2, 0.3]])
    sparse = tf.IndexedSlices(values, tf.constant([0, 0, 1]), tf.constant([3, 2]))
    weights = tf.Variable([[1.0, 1.0], [1.0, 1.0], [0.5, 2.0]])
    for policy in POLICY_NAMES:
        settings = {"clip_factor": 0.1} if policy == "agc" else {}
        dense_reference = LiveClipping(policy=policy, clip_threshold=1.0, database=False, **settings)
        expected = dense_reference.clip([tf.convert_to_tensor(sparse)], [weights])[0]
        returned = LiveClipping(policy=policy, clip_threshold=1.0, database=False, **settings).clip([sparse], [weights])[0]
        assert isinstance(returned, tf.IndexedSlices), policy
        np.testing.assert_allclose(tf.convert_to_tensor(returned).numpy(), expected.numpy(), rtol=1e-6, err_msg=policy)


def test_a_fit_whose_optimizer_was_not_wrapped_says_so(caplog):
    """Found by probing: `callback()` without `wrap(...)` trained unclipped and recorded nothing,
    silently (a run of 0 steps, its epoch losses all at step 0)."""
    model, inputs, targets = small_problem()
    clipping = LiveClipping(database=False)
    model.compile(optimizer="adam", loss="mse")  # wrap(...) forgotten
    with caplog.at_level(logging.WARNING):
        model.fit(inputs[:64], targets[:64], batch_size=32, epochs=2, verbose=0, callbacks=[clipping.callback()])
    assert len(clipping.metrics()) == 0
    expected = "fit took 4 step(s) and none was clipped or recorded: compile the model with optimizer=clipping.wrap(...)"
    assert clipping.warning.startswith(expected) and "Received: optimizer=Adam" in clipping.warning
    assert expected in caplog.text
    wrapped = LiveClipping(database=False)  # and a wrapped one stays quiet
    model.compile(optimizer=wrapped.wrap("adam"), loss="mse")
    model.fit(inputs[:64], targets[:64], batch_size=32, epochs=2, verbose=0, callbacks=[wrapped.callback()])
    assert len(wrapped.metrics()) == 4 and wrapped.warning is None
