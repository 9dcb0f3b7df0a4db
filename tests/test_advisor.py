"""The threshold advisor replays recorded norms through the real policies."""

import math

import numpy as np
import pytest
from support import wait_until

from training import Trainer
from training.advisor import replay


def test_replay_matches_the_hand_worked_autoclip_example():
    result = replay([4.0, 2.0, 6.0, 10.0, 1.0], "autoclip", percentile=50, window=3)
    assert math.isinf(result["thresholds"][0])
    assert result["thresholds"][1:].tolist() == [4.0, 3.0, 4.0, 6.0]
    assert result["clipped"].tolist() == [False, False, True, True, False]
    assert result["clip_rate"] == pytest.approx(0.4)


def test_replay_of_a_fixed_threshold_is_the_share_of_norms_above_it():
    norms = np.random.default_rng(0).exponential(size=5000)
    result = replay(norms, "global_norm", clip_threshold=2.0)
    assert result["clip_rate"] == pytest.approx(float((norms.astype(np.float32) > 2.0).mean()))
    assert (result["clipped_grad_norms"] <= 2.0 * (1 + 1e-6)).all()


@pytest.mark.parametrize("policy, params", [("autoclip", {"percentile": 20}), ("zclip", {"z_threshold": 2.0})])
def test_replaying_a_run_reproduces_its_recorded_thresholds(policy, params):
    trainer = Trainer(task="seed", policy=policy, clip_threshold=5.0, max_steps=3000, **params)
    trainer.start()
    wait_until(lambda: trainer.status.state != "running", what='trainer.status.state != "running"')
    metrics = trainer.metrics()
    assert len(metrics) == 3000
    result = replay(metrics.grad_norm.to_numpy(), policy, clip_threshold=5.0, **params)
    np.testing.assert_allclose(result["thresholds"], metrics.clip_threshold.to_numpy(), rtol=1e-5)
    assert result["clipped"].tolist() == metrics.clipped.tolist()


def test_non_finite_norms_are_skipped_and_policies_needing_weights_are_refused():
    result = replay([1.0, math.nan, 3.0], "global_norm", clip_threshold=2.0)
    assert result["clipped"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="policy='agc'"):
        replay([1.0], "agc")
    with pytest.raises(ValueError, match="clip_threshold=0"):
        replay([1.0], "global_norm", clip_threshold=0)


def test_replay_is_compiled_once_per_policy_setting():
    from training.advisor import _replayer

    norms = np.random.default_rng(2).exponential(size=2000)
    replay(norms, "autoclip", percentile=10, window=100)
    function = _replayer("autoclip", (("window", 100),))  # percentile is a live input
    traces = function.experimental_get_tracing_count()
    for percentile in (20, 30):
        replay(norms[:1500], "autoclip", percentile=percentile, window=100)
    assert function.experimental_get_tracing_count() == traces == 1
