"""A run of a configuration that ran before in this process trains on that run's compiled steps
(training/loop/step_pool.py): no trace, no compile, and bit for bit the run a fresh compile trains."""

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support import REPO, wait_until

from training.loop import step_pool

COLUMNS = ("loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped", "finite")


@pytest.fixture(autouse=True)
def an_empty_pool():
    step_pool.clear()
    yield
    step_pool.clear()


def finished(make, **settings):
    trainer = make(task="seed", **settings)
    trainer.start()
    wait_until(lambda: trainer.status.state in ("stopped", "failed"), timeout=300, what="the run's end")
    trainer.wait_until_compiled()  # a compile the run left running is over, as at a later Start
    return trainer


def run_alone(**settings):
    """A run nothing holds once it is over: its metrics, traces, weights and whether its state is
    the one an earlier run compiled for."""
    from training import Trainer

    trainer = Trainer(task="seed", database=None, **settings)
    trainer.start()
    wait_until(lambda: trainer.status.state in ("stopped", "failed"), timeout=300, what="the run's end")
    trainer.wait_until_compiled()
    seen = {
        "metrics": trainer.metrics(),
        "traces": trainer.trace_count,
        "steps": trainer.steps,
        "weights": [variable.numpy() for variable in trainer.state.model.variables],
        "iterations": int(trainer.state.optimizer.iterations.numpy()),
    }
    del trainer
    return seen


def assert_same_run(ours, reference):
    assert len(ours) == len(reference) > 0
    for column in COLUMNS:
        np.testing.assert_array_equal(ours[column].to_numpy(), reference[column].to_numpy(), err_msg=column)


def test_a_second_run_reuses_the_compiled_steps_and_trains_the_same_bits():
    first = run_alone(max_steps=300, quick_start=False, policy="zclip", clip_threshold=0.5)
    again = run_alone(max_steps=300, policy="zclip", clip_threshold=0.5)
    assert first["traces"] == 1 and again["traces"] == 0  # it started on the full step, compiled
    assert again["steps"] is first["steps"]
    assert_same_run(again["metrics"], first["metrics"])
    assert again["iterations"] == first["iterations"] == 300  # the optimizer started from 0 again


def test_a_reused_run_takes_its_own_settings_as_a_fresh_one_does():
    """Threshold, policy, its live parameter and learning rate differ from the run that compiled:
    the reused run equals a fresh compile of its own settings, bit for bit."""
    settings = dict(max_steps=400, policy="autoclip", percentile=30, clip_threshold=0.2, learning_rate=0.003)
    fresh = run_alone(**settings)
    step_pool.clear()
    compiled = run_alone(max_steps=50, quick_start=False, policy="global_norm", clip_threshold=2.0)
    reused = run_alone(**settings)
    assert reused["steps"] is compiled["steps"] and reused["traces"] == 0
    assert_same_run(reused["metrics"], fresh["metrics"])
    for ours, reference in zip(reused["weights"], fresh["weights"]):
        np.testing.assert_array_equal(ours, reference)


def test_a_run_still_held_keeps_its_state(trainers):
    held = finished(trainers, max_steps=200, quick_start=False)
    weights = [variable.numpy() for variable in held.state.model.variables]
    other = finished(trainers, max_steps=200)
    assert other.state is not held.state and other.steps is not held.steps
    for variable, before in zip(held.state.model.variables, weights):
        np.testing.assert_array_equal(variable.numpy(), before)


def test_another_seed_or_structural_setting_compiles_its_own():
    first = run_alone(max_steps=50, quick_start=False, policy="zclip")
    other_seed = run_alone(max_steps=50, quick_start=False, policy="zclip", seed=1)
    other_structure = run_alone(max_steps=50, quick_start=False, policy="zclip", alpha=0.5)
    assert other_seed["steps"] is not first["steps"] and other_seed["traces"] == 1
    assert other_structure["steps"] is not first["steps"] and other_structure["traces"] == 1


def test_a_command_on_a_reused_run_never_retraces(trainers):
    del_first = run_alone(max_steps=50, quick_start=False)
    gc.collect()
    trainer = trainers(task="seed", clip_threshold=1.0)
    trainer.start()
    wait_until(lambda: trainer.status.step > 100, what="steps")
    assert trainer.steps is del_first["steps"] and not trainer.status.compiling
    trainer.set_clip_threshold(0.01)
    trainer.set_policy("value")
    wait_until(lambda: (trainer.metrics().clip_threshold.iloc[-20:] == np.float32(0.01)).all(), what="the new threshold")
    assert trainer.trace_count == 0
    assert (trainer.metrics().policy.iloc[-20:] == "value").all()


def test_of_two_kept_runs_of_one_configuration_the_one_nobody_holds_is_reused():
    """An A/B race of one configuration leaves two kept runs; a later run takes the one whose
    Trainer is gone and leaves the one still held (found by the benchmark: taking the second
    entry of one key compared the kept arrays with `==` and failed the run)."""
    from training import Trainer

    sides = [Trainer(task="seed", database=None, max_steps=100, quick_start=False) for _ in range(2)]
    for side in sides:
        side.start()
    wait_until(lambda: all(side.status.state == "stopped" for side in sides), timeout=300, what="both sides")
    held, dropped_steps = sides[0], sides[1].steps
    del sides, side
    later = run_alone(max_steps=100)
    assert later["steps"] is dropped_steps and later["traces"] == 0
    assert held.steps is not dropped_steps and held.status.state == "stopped"


def test_a_process_that_drops_its_run_while_the_full_step_compiles_exits_cleanly(tmp_path):
    """Its kept steps may still be compiling when nothing holds the run any more; the exit waits
    for that compile (found by the suite: a compile running at shutdown aborts the process,
    SIGABRT, and waiting for the live runs' compiles no longer covered it)."""
    script = tmp_path / "drop_and_exit.py"
    script.write_text(textwrap.dedent('''
        import time
        from training import Trainer

        trainer = Trainer(task="seed", database=None)
        trainer.start()
        deadline = time.monotonic() + 120
        while (trainer.steps is None or trainer.steps.compile_job is None) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the full step compiles (its compile takes seconds: never missed)
        compiling = trainer.steps is not None and trainer.steps.compile_job is not None
        trainer.stop()
        del trainer
        print("exiting while the full step compiles" if compiling else "the compile was not seen", flush=True)
    '''))
    environment = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting while the full step compiles" in done.stdout
