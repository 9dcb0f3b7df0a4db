"""The quick start: a run trains on the quick step at once and hands over to the full step
(every policy, XLA) without losing a step, the optimizer's state or a command."""

import threading

import numpy as np
import pytest
from support import wait_until

from training.policies import POLICY_NAMES

# Each run compiles its own steps; the bit tests' full runs share one compile per task (below).
fresh_compile = pytest.mark.usefixtures("fresh_compile")


@fresh_compile
def test_commands_sent_while_compiling_survive_the_hand_over(trainers):
    trainer = trainers(task="seed", policy="global_norm", clip_threshold=1.0)
    trainer.start()
    wait_until(lambda: trainer.status.step > 0, what="the first step")
    assert trainer.status.compiling  # the first steps ran on the quick step
    trainer.set_clip_threshold(0.3)
    trainer.set_policy("autoclip", percentile=20)  # another policy: a new quick step, no wait
    assert trainer.wait_until_compiled()
    assert not trainer.status.compiling and trainer.trace_count == 1
    wait_until(lambda: trainer.status.step > 500, what="steps on the full step")
    trainer.pause()
    wait_until(lambda: trainer.status.state == "paused", what="the pause")
    metrics, step = trainer.metrics(), trainer.status.step
    # Every step, once, in order, across the hand-over (the store keeps the newest 100,000: an
    # idle machine's full step passes that before the pause lands).
    assert len(metrics) == min(step, 100_000)
    assert metrics.step.tolist() == list(range(step - len(metrics) + 1, step + 1))
    kinds = trainer.events().kind.tolist()
    assert "clip_threshold" in kinds and "policy" in kinds and "autoclip.percentile" in kinds
    assert (metrics.policy.iloc[-100:] == "autoclip").all()
    # The optimizer's state carried over: Adam counted every applied (finite) step.
    assert int(trainer.state.optimizer.iterations.numpy()) == step - trainer.status.nonfinite_steps


@pytest.fixture(scope="module")
def full_steps_by_task():
    """The bit tests' full runs of one task share one compile of the full step (every policy in
    one `switch_case`; the policy in force is a live knob): each takes the last one's from the
    step pool, its state reset to step 0 (tests/test_step_pool.py proves that bit for bit). The
    quick runs compile their own and stay held until the module ends, so no full run takes a
    quick run's state. Measured alone: the module's CPU 129 -> 103-112 s."""
    from training.loop import step_pool

    step_pool.clear()  # nothing kept by an earlier test: every quick run compiles its own
    held = {"full": {}, "quick": []}
    yield held
    held["quick"].clear()


@pytest.mark.parametrize(
    "task, policy, steps",
    [("seed", policy, 400) for policy in POLICY_NAMES] + [("exploding_rnn", "global_norm", 200), ("exploding_rnn", "zclip", 200)],
)
def test_the_quick_step_computes_the_same_bits_as_the_full_step(trainers, full_steps_by_task, task, policy, steps):
    """Same seed, same batches: a run that starts on the quick step (and swaps to the full step
    whenever its compile ends) and one on the full step from the start record bit-identical
    losses and norms. This is what makes a run's numbers independent of the clock: the swap
    step depends on the machine's load, the numbers must not (issue #21)."""
    earlier = [*full_steps_by_task["full"].values(), *(run.steps for run in full_steps_by_task["quick"])]
    full = trainers(task=task, policy=policy, clip_threshold=0.5, max_steps=steps, quick_start=False)
    full.start()  # it takes the last full run's steps on its thread: the quick run starts after, with none left
    wait_until(lambda: full.steps is not None or full.status.state == "failed", what="the full run's steps")
    quick = trainers(task=task, policy=policy, clip_threshold=0.5, max_steps=steps)
    full_steps_by_task["quick"].append(quick)
    quick.start()
    ended = ("stopped", "failed")
    wait_until(lambda: quick.status.state in ended and full.status.state in ended, timeout=300, what="both runs")
    assert quick.status.state == full.status.state and quick.status.error == full.status.error
    shared = full.steps is full_steps_by_task["full"].get(task)
    assert full.trace_count == (0 if shared else 1)  # traced once, by this run or the one it took it from
    # The quick run compiled its own quick step (it took no earlier run's steps) and never the full one.
    assert all(quick.steps is not other for other in (full.steps, *earlier)) and quick.trace_count == 0
    full_steps_by_task["full"][task] = full.steps
    ours, reference = quick.metrics(), full.metrics()
    assert len(ours) == len(reference) > 0
    for column in ("loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped", "finite"):
        np.testing.assert_array_equal(ours[column].to_numpy(), reference[column].to_numpy(), err_msg=column)


def compile_threads():
    return [thread for thread in threading.enumerate() if thread.name == "clipwatch-compile"]


@fresh_compile
def test_a_short_bounded_run_never_compiles_a_full_step_it_could_not_use_and_a_paced_one_does(trainers):
    """A CLI run of 300 steps ends in a fraction of a second on the quick step; starting the full
    step's compile then only made its process wait 3.5 s at exit (an interpreter must not shut
    down while XLA compiles). A bounded run with seconds left still gets its full step."""
    assert not compile_threads()  # the conftest joins every earlier test's compiles
    short = trainers(task="seed", max_steps=300)
    short.start()
    wait_until(lambda: short.status.state in ("stopped", "failed"), timeout=120, what="the short run's end")
    assert short.status.state == "stopped" and short.status.step == 300, short.status.error
    assert not compile_threads() and short.trace_count == 0  # the full step was never traced

    paced = trainers(task="seed", max_steps=2_000)
    paced.set_max_steps_per_second(200)  # 10 s of steps: time enough for the full step
    paced.start()
    assert paced.wait_until_compiled()
    assert paced.status.state == "running" and not paced.status.compiling  # swapped in mid-run


@fresh_compile
def test_a_compile_cancelled_while_tracing_is_never_compiled_or_called():
    """A run stopped while its full step is still being traced (0.6-3 s) does not go on to
    compile it: the XLA compile would cost 2-3 s of a core for a function nobody calls."""
    import tensorflow as tf

    from training.loop.step_compiler import BackgroundCompile

    tracing, release = threading.Event(), threading.Event()
    calls = tf.Variable(0)

    def make_function():
        @tf.function(jit_compile=True)
        def step(amount):
            tracing.set()  # Python: runs while tracing only
            release.wait(60)
            calls.assign_add(amount)
            return amount

        return step

    job = BackgroundCompile(make_function, (tf.TensorSpec([], tf.int32),), lambda: (tf.constant(1),))
    assert tracing.wait(60)
    job.cancel()
    release.set()
    assert job.wait(60)
    assert job.function is None and job.error is None and int(calls.numpy()) == 0

    tracing.clear()
    kept = BackgroundCompile(make_function, (tf.TensorSpec([], tf.int32),), lambda: (tf.constant(1),))
    assert kept.wait(60) and kept.function is not None and int(calls.numpy()) == 1  # not cancelled: compiled and called


@fresh_compile
def test_the_full_step_is_compiled_for_a_run_that_trains_on_for_two_seconds_or_switches_policy():
    """The rule, as a function of what the loop knows after each chunk (training/loop/trainer.py)."""
    from training.loop.trainer import FULL_STEP_MIN_REMAINING_SECONDS as SECONDS
    from training.loop.trainer import full_step_may_arrive

    # A run without an end: once it has trained SECONDS, or at once after a policy switch.
    assert not full_step_may_arrive(None, 5_000, 1e-5, 9, SECONDS * 0.99, False)
    assert full_step_may_arrive(None, 5_000, 1e-5, 9, SECONDS, False)
    assert full_step_may_arrive(None, 16, 1e-3, 1, 0.0, True)
    # A bounded run: from its fourth chunk, when its steps left take SECONDS at its pace; a policy
    # switch does not change that (a short CLI run must not wait at exit for a compile).
    assert not full_step_may_arrive(300, 100, 1e-5, 9, 10.0, True)
    assert not full_step_may_arrive(1_000_000, 100, 1e-5, 3, 0.0, False)
    assert full_step_may_arrive(1_000_000, 100, 1e-5, 4, 0.0, False)
    assert not full_step_may_arrive(1_000_000, 1_000_000, 1.0, 9, 10.0, False)  # finished


@fresh_compile
def test_an_unbounded_run_stopped_within_two_seconds_never_compiles_its_full_step_and_a_switch_starts_it(trainers):
    """A page run stopped soon after Start (a wrong task, a demo of the first steps) never spent
    3-4 s of a core on the full step; a policy switch on the quick step asks for it at once."""
    from training.loop.trainer import FULL_STEP_MIN_REMAINING_SECONDS

    assert not compile_threads()  # the conftest joins every earlier test's compiles
    brief = trainers(task="seed")
    brief.start()
    wait_until(lambda: brief.status.step > 0, what="the first step")
    brief.stop(timeout=120)
    times = brief.metrics().time_s
    if times.iloc[-1] - times.iloc[0] < FULL_STEP_MIN_REMAINING_SECONDS:  # the stop landed in time (not on a stalled machine)
        assert not compile_threads() and brief.trace_count == 0, "the full step was traced"

    switched = trainers(task="seed", policy="global_norm")
    switched.start()
    wait_until(lambda: switched.status.step > 0, what="the first step")
    switched.set_policy("autoclip")
    # The switch, applied on the quick step, is what the loop passes as `asked` (the rule above);
    # `wait_until_compiled` below would ask on its own, so the flag is checked here.
    wait_until(lambda: switched.steps.switched_on_quick_step, what="the switch noted on the quick step")
    assert switched.wait_until_compiled(timeout=120)
    switched.pause()
    wait_until(lambda: switched.status.state == "paused", what="the pause")
    assert switched.trace_count == 1 and not switched.status.compiling


@fresh_compile
def test_a_run_paused_on_its_quick_step_swaps_in_its_full_step_while_paused(trainers):
    """`wait_until_compiled()` on a paused run used to wait out its timeout: the swap only came
    after a chunk. Now the full step is compiled and swapped in while the run stays paused, no
    step is trained meanwhile, and the first chunk after the resume runs on it."""
    trainer = trainers(task="seed")
    trainer.start()
    wait_until(lambda: trainer.status.step > 0, what="the first step")
    trainer.pause()
    wait_until(lambda: trainer.status.state == "paused", what="the pause")
    assert trainer.status.compiling  # still on the quick step: less than 2 s trained
    paused_at = trainer.status.step
    assert trainer.wait_until_compiled(timeout=120)
    assert trainer.status.state == "paused" and not trainer.status.compiling and trainer.trace_count == 1
    assert trainer.status.step == paused_at  # compiled and swapped without a step
    trainer.resume()
    wait_until(lambda: trainer.status.step > paused_at + 100, what="steps after the resume")
    assert trainer.trace_count == 1 and not trainer.status.compiling
    trainer.stop(timeout=60)  # not training on beside the next run's compile

    # A policy switched while paused on the quick step asks for the full step too, as it does
    # after a chunk (nothing here calls wait_until_compiled, which would ask on its own).
    switched = trainers(task="seed", policy="global_norm")
    switched.start()
    wait_until(lambda: switched.status.step > 0, what="the first step")
    switched.pause()
    wait_until(lambda: switched.status.state == "paused", what="the pause")
    paused_at = switched.status.step
    switched.set_policy("autoclip")
    wait_until(lambda: not switched.status.compiling, timeout=120, what="the full step, swapped in while paused")
    assert switched.status.state == "paused" and switched.status.step == paused_at and switched.trace_count == 1
