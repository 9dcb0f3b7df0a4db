"""The quick start: a run trains on the quick step at once and hands over to the full step
(every policy, XLA) without losing a step, the optimizer's state or a command."""

import numpy as np
from support import wait_until


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
    metrics = trainer.metrics()
    # Every step, once, in order, across the hand-over.
    assert metrics.step.tolist() == list(range(1, trainer.status.step + 1))
    kinds = trainer.events().kind.tolist()
    assert "clip_threshold" in kinds and "policy" in kinds and "autoclip.percentile" in kinds
    assert (metrics.policy.iloc[-100:] == "autoclip").all()
    # The optimizer's state carried over: Adam counted every applied (finite) step.
    assert int(trainer.state.optimizer.iterations.numpy()) == int(metrics.finite.sum())


def test_the_quick_step_trains_exactly_like_the_full_step(trainers):
    """Same seed, same batches: a run that starts on the quick step and one that waits for the
    full step record the same losses and norms (to float32 rounding: XLA fuses differently)."""
    steps = 300
    quick = trainers(task="seed", policy="global_norm", clip_threshold=0.5, max_steps=steps)
    full = trainers(task="seed", policy="global_norm", clip_threshold=0.5, max_steps=steps, quick_start=False)
    for trainer in (quick, full):
        trainer.start()
    wait_until(lambda: quick.status.state == "stopped" and full.status.state == "stopped", timeout=300, what="both runs")
    assert full.trace_count == 1
    ours, reference = quick.metrics(), full.metrics()
    assert len(ours) == len(reference) == steps
    for column in ("loss", "grad_norm", "clipped_grad_norm"):
        np.testing.assert_allclose(ours[column], reference[column], rtol=2e-4, atol=1e-6)
    assert (ours.clipped == reference.clipped).mean() > 0.99
