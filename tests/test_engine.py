"""One clipping engine, two drivers: a policy registered once runs in `Trainer` and in
`LiveClipping`, and the training state has one home that a snapshot is taken from."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import wait_until
from training import Trainer
from training.clipping import policies
from training.clipping.commands import apply_command, check_command
from training.clipping.engine import KNOB, ClipEngine
from training.keras import LiveClipping


def halve() -> policies.ClipPolicy:
    """A policy written the way the README asks: one factory, one registry line. It halves every
    gradient (its threshold is half the norm), so every step is clipped to exactly norm / 2."""

    def update(gradients, state, settings, variables=None):
        variable_norms = tf.stack([policies.safe_norm(g) for g in gradients])
        grad_norm = policies.safe_norm(variable_norms)
        clipped = [g * 0.5 for g in gradients]
        return clipped, state, policies.ClipStats(grad_norm, grad_norm * 0.5, grad_norm * 0.5, tf.constant(True), variable_norms)

    return policies.ClipPolicy("halve", lambda variables: (), update)


@pytest.fixture
def halving():
    policies.register_policy("halve", halve)
    yield "halve"
    policies.unregister_policy("halve")


def assert_halved(metrics):
    assert len(metrics) > 0 and metrics.clipped.all()
    np.testing.assert_allclose(metrics.clipped_grad_norm, metrics.grad_norm / 2, rtol=1e-6)
    assert set(metrics.policy) == {"halve"}


def test_a_registered_policy_runs_in_the_trainer_from_the_start_and_by_a_switch(halving):
    trainer = Trainer("seed", policy=halving, max_steps=40)
    trainer.start()
    wait_until(lambda: trainer.status.state != "running", timeout=120, what="the run to end")
    assert trainer.status.state == "stopped", trainer.status.error
    assert_halved(trainer.metrics())

    switched = Trainer("seed", policy="global_norm", clip_threshold=100.0)
    switched.start()
    try:
        wait_until(lambda: switched.status.step >= 5, timeout=120, what="5 steps")
        switched.set_policy(halving)
        wait_until(lambda: (switched.metrics().policy == "halve").sum() >= 5, timeout=120, what="halved steps")
    finally:
        switched.stop(timeout=60)
    metrics = switched.metrics()
    assert_halved(metrics[metrics.policy == "halve"])
    assert not metrics[metrics.policy == "global_norm"].clipped.any()  # 100 clips nothing here


def test_a_registered_policy_runs_in_a_users_keras_fit(halving):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(64, 3)).astype("float32")
    targets = inputs.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    clipping = LiveClipping(policy=halving, database=False)
    model.compile(optimizer=clipping.wrap("sgd"), loss="mse")
    model.fit(inputs, targets, batch_size=16, epochs=2, verbose=0, callbacks=[clipping.callback()])
    metrics = clipping.metrics()
    assert len(metrics) == 8
    assert_halved(metrics)


def test_a_policy_registered_after_a_run_was_built_is_refused_by_name_and_changes_nothing():
    engine = ClipEngine.with_defaults("global_norm", 1.0)
    engine.build([])
    policies.register_policy("late", halve)
    try:
        before = engine.knobs.numpy().copy()
        with pytest.raises(ValueError, match=r"Policy 'late' was registered after this run was built.*Received: policy='late'"):
            apply_command(engine, check_command("policy", "late"), [])
        np.testing.assert_array_equal(engine.knobs.numpy(), before)
        assert engine.policy == "global_norm"
        later = ClipEngine("late", 1.0, {})  # an engine built after it offers it, with defaults
        assert "late" in later.policy_names and later.policy_params["late"] == {}
    finally:
        policies.unregister_policy("late")


def test_a_policy_name_is_registered_once_and_built_ins_stay():
    with pytest.raises(ValueError, match=r"'global_norm' is registered already"):
        policies.register_policy("global_norm", halve)
    with pytest.raises(ValueError, match=r"built-in"):
        policies.unregister_policy("zclip")
    with pytest.raises(ValueError, match=r"Received: name='not a name'"):
        policies.register_policy("not a name", halve)


def test_a_registered_policy_that_picks_its_own_threshold_is_not_swept():
    """Found by probing: register_policy could not say a policy ignores the clip threshold, so a
    sweep of one (every branch training alike) was taken and named a "best" threshold."""
    policies.register_policy("halve", halve, reads_clip_threshold=False)
    try:
        trainer = Trainer("seed", policy="halve", max_steps=10)
        with pytest.raises(ValueError, match=r"A threshold sweep needs a policy that reads the clip threshold .*'halve' does not"):
            trainer.sweep([0.1, 1.0])
        assert trainer.branches() == []
    finally:
        policies.unregister_policy("halve")
    with pytest.raises(ValueError, match=r"Received: reads_clip_threshold='no'"):
        policies.register_policy("halve", halve, reads_clip_threshold="no")
    assert "halve" not in policies.REGISTRY


def test_a_command_is_checked_once_and_applied_to_the_engine_knobs():
    engine = ClipEngine.with_defaults("autoclip", 1.0, percentile=20.0)
    engine.build([])
    with pytest.raises(ValueError, match=r"Received: clip_threshold=-1"):
        check_command("clip_threshold", -1)
    with pytest.raises(ValueError, match=r"Unknown command kind 'jump'"):
        check_command("jump")
    applied = apply_command(engine, check_command("clip_threshold", 0.25), [])
    assert [(c.kind, c.old, c.new) for c in applied.changes] == [("clip_threshold", 1.0, 0.25)]
    applied = apply_command(engine, check_command("policy", "zclip", {"z_threshold": 3.0}), [])
    knobs = engine.knobs.numpy()
    assert knobs[KNOB["clip_threshold"]] == np.float32(0.25) and knobs[KNOB["z_threshold"]] == 3.0
    assert knobs[KNOB["policy"]] == policies.POLICY_NAMES.index("zclip") and applied.policy_switched
    # A structural parameter: rebuilt by the trainer, refused (changing nothing) for a script.
    before = engine.knobs.numpy().copy()
    with pytest.raises(ValueError, match=r"`window` of 'autoclip' sets the size of the compiled step"):
        apply_command(engine, check_command("policy", "autoclip", {"window": 7}), [], structural_changes=False)
    np.testing.assert_array_equal(engine.knobs.numpy(), before)
    assert apply_command(engine, check_command("policy", "autoclip", {"window": 7}), []).rebuild


def test_the_training_state_is_snapshotted_and_restored_whole():
    trainer = Trainer("seed", policy="autoclip", max_steps=30, window=8)
    trainer.start()
    wait_until(lambda: trainer.status.state != "running", timeout=120, what="the run to end")
    state = trainer.state
    snapshot = state.snapshot()
    assert snapshot["step"] == state.step == 30
    weights = [w.copy() for w in state.model.get_weights()]
    iterations = int(state.optimizer.iterations.numpy())
    history = state.engine.policy_states[policies.POLICY_NAMES.index("autoclip")][0].numpy().copy()
    assert iterations == 30 and np.count_nonzero(history) == 8
    for variable in state.model.variables + list(state.optimizer.variables):
        variable.assign(tf.zeros_like(variable))
    state.engine.policy_states[policies.POLICY_NAMES.index("autoclip")][0].assign(tf.zeros([8]))
    state.restore(snapshot)
    for restored, kept in zip(state.model.get_weights(), weights):
        np.testing.assert_array_equal(restored, kept)
    assert int(state.optimizer.iterations.numpy()) == iterations
    np.testing.assert_array_equal(state.engine.policy_states[policies.POLICY_NAMES.index("autoclip")][0].numpy(), history)
    assert math.isclose(state.engine.clip_threshold, 1.0)
