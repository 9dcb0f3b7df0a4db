"""Clipping policies against TensorFlow's own clipping ops and hand-worked examples."""

import math

import numpy as np
import pytest
import tensorflow as tf

from training import policies
from training.policies import default_settings, make_policy

SHAPES = [(3, 4), (4,), (2, 3, 5), (1,)]


def random_gradients(rng, scale):
    return [tf.constant(rng.normal(size=shape) * scale, tf.float32) for shape in SHAPES]


def reference_global_norm(gradients):
    # float64 so 1e30-sized entries do not overflow: the trusted reference.
    return float(tf.linalg.global_norm([tf.cast(g, tf.float64) for g in gradients]))


def run(name, gradients, clip_threshold=1.0, state=None, variables=None, **live):
    policy = make_policy(name)
    state = policy.init(variables or []) if state is None else state
    return policy.update(gradients, state, default_settings(clip_threshold, **live), variables)


CASES = [("normal", 1.0), ("zeros", 0.0), ("huge", 1e30), ("tiny", 1e-30), ("small", 1e-3)]
THRESHOLDS = [1e-3, 0.5, 1.0, 7.0, 1e4]


def case_gradients(seed, scale, threshold_share):
    """Gradients of a case (fixed seed: a failure reproduces) and a threshold at a share of its scale."""
    return random_gradients(np.random.default_rng(seed), scale), (threshold_share * scale if scale else 1.0)


@pytest.mark.parametrize("case,scale", CASES)
@pytest.mark.parametrize("clip_threshold", THRESHOLDS)
def test_global_norm_matches_tf_clip_by_global_norm(case, scale, clip_threshold):
    # A fixed seed per (case, threshold), never hash(): string hashes change per process.
    rng = np.random.default_rng([CASES.index((case, scale)), THRESHOLDS.index(clip_threshold)])
    gradients = random_gradients(rng, scale)
    clipped, _, stats = run("global_norm", gradients, clip_threshold)
    expected, expected_norm = tf.clip_by_global_norm(
        [tf.cast(g, tf.float64) for g in gradients], clip_threshold
    )
    for ours, theirs in zip(clipped, expected):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=2e-6, atol=1e-37)
    assert float(stats.grad_norm) == pytest.approx(float(expected_norm), rel=2e-6, abs=1e-37)
    assert float(stats.grad_norm) == pytest.approx(reference_global_norm(gradients), rel=2e-6, abs=1e-37)
    assert bool(stats.clipped) == (float(expected_norm) > clip_threshold)
    # The invariant: after clipping at c the global norm is at most c (to rounding), and it is
    # reported truthfully.
    after = reference_global_norm(clipped)
    assert after <= clip_threshold * (1 + 1e-6)
    assert float(stats.clipped_grad_norm) == pytest.approx(after, rel=2e-6, abs=1e-37)


@pytest.mark.parametrize("case,scale", CASES)
def test_per_tensor_norm_matches_tf_clip_by_norm(case, scale):
    gradients, clip_threshold = case_gradients(7, scale, 0.8)
    clipped, _, stats = run("per_tensor_norm", gradients, clip_threshold)
    for ours, gradient in zip(clipped, gradients):
        theirs = tf.clip_by_norm(tf.cast(gradient, tf.float64), clip_threshold)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=2e-6, atol=1e-37)
        assert reference_global_norm([ours]) <= clip_threshold * (1 + 1e-6)
    norms = [reference_global_norm([g]) for g in gradients]
    np.testing.assert_allclose(stats.variable_norms.numpy(), norms, rtol=2e-6, atol=1e-37)
    assert bool(stats.clipped) == any(n > clip_threshold for n in norms)


@pytest.mark.parametrize("case,scale", CASES)
def test_value_matches_tf_clip_by_value(case, scale):
    gradients, clip_threshold = case_gradients(11, scale, 0.5)
    clipped, _, stats = run("value", gradients, clip_threshold)
    for ours, gradient in zip(clipped, gradients):
        theirs = tf.clip_by_value(gradient, -clip_threshold, clip_threshold)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert float(stats.clipped_grad_norm) == pytest.approx(reference_global_norm(clipped), rel=2e-6, abs=1e-37)
    assert bool(stats.clipped) == any(bool(np.any(np.abs(g.numpy()) > clip_threshold)) for g in gradients)


def test_none_measures_but_never_clips():
    gradients = [tf.constant([30.0, 40.0])]
    clipped, _, stats = run("none", gradients, 1.0)
    assert clipped[0].numpy().tolist() == [30.0, 40.0]
    assert float(stats.grad_norm) == 50.0 and not bool(stats.clipped)
    assert math.isinf(float(stats.clip_threshold))


def test_clipping_twice_changes_nothing():
    rng = np.random.default_rng(3)
    gradients = random_gradients(rng, 10.0)
    for name in ("global_norm", "per_tensor_norm", "value"):
        once, _, _ = run(name, gradients, 0.7)
        twice, _, stats = run(name, once, 0.7)
        for a, b in zip(once, twice):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_nan_or_inf_gradients_give_a_non_finite_norm():
    for bad in (math.nan, math.inf):
        _, _, stats = run("global_norm", [tf.constant([1.0, bad])], 1.0)
        assert not math.isfinite(float(stats.grad_norm))


BESIDE_ZEROS = [[0.0, math.nan], [0.0, 0.0, math.inf], [math.nan], [1e-30, -math.inf], [2.0, 0.0, math.nan]]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_nan_or_inf_among_zeros_gives_a_non_finite_norm_under_xla_too(jit_compile):
    """XLA's max drops a NaN: [0, NaN] once measured 0 (finite), so the step was applied and its
    NaN update reached the weights. Every policy, compiled as the trainer compiles its step; each
    variable below holds one NaN or inf beside zeros (or alone), and the last one only zeros."""
    gradients = [tf.constant(values, tf.float32) for values in BESIDE_ZEROS] + [tf.zeros([3])]
    variables = [tf.Variable(tf.ones_like(g)) for g in gradients]
    for name in policies.POLICY_NAMES:
        policy = make_policy(name)
        state = policy.init(variables)

        @tf.function(jit_compile=jit_compile)
        def norms(gradients):
            _, _, stats = policy.update(gradients, state, default_settings(1.0), variables)
            return stats.grad_norm, stats.variable_norms

        grad_norm, variable_norms = norms(gradients)
        assert not math.isfinite(float(grad_norm)), (name, float(grad_norm))
        assert not np.isfinite(variable_norms.numpy()[:-1]).any() and float(variable_norms[-1]) == 0.0, (name, variable_norms)


# --- autoclip: hand-worked ---------------------------------------------------------------------


def test_autoclip_first_step_unclipped_then_percentile_of_previous_norms():
    policy = make_policy("autoclip", window=3)
    state = policy.init([])
    settings = default_settings(1.0, percentile=50.0)
    thresholds, outputs = [], []
    for norm in [4.0, 2.0, 6.0, 10.0, 1.0]:
        clipped, state, stats = policy.update([tf.constant([norm, 0.0])], state, settings)
        thresholds.append(float(stats.clip_threshold))
        outputs.append(float(clipped[0][0]))
    # step 1: no history -> not clipped; then the median of the previous (at most 3) norms:
    # [4] -> 4; [4, 2] -> 3; [4, 2, 6] -> 4; window of 3: [2, 6, 10] -> 6.
    assert math.isinf(thresholds[0])
    assert thresholds[1:] == [4.0, 3.0, 4.0, 6.0]
    assert outputs == [4.0, 2.0, 3.0, 4.0, 1.0]  # 6 clipped at 3, 10 at 4


def test_autoclip_percentile_matches_numpy():
    rng = np.random.default_rng(5)
    values = rng.exponential(size=40).astype(np.float32)
    for count in (1, 2, 17, 40):
        for percentile in (0.5, 10.0, 50.0, 90.0, 100.0):
            ours = float(policies.percentile_of(tf.constant(values), count, percentile))
            assert ours == pytest.approx(np.percentile(values[:count], percentile), rel=1e-5)


# --- agc: hand-worked -----------------------------------------------------------------------------


def test_agc_clips_each_output_unit_relative_to_its_weight():
    # Kernel [in=2, out=2]: unit 0 has weight norm 5 (3, 4), unit 1 has weight norm 0 (-> eps).
    kernel = tf.Variable([[3.0, 0.0], [4.0, 0.0]])
    bias = tf.Variable([1.0, 0.0])  # 1-D: one unit, norm 1
    gradients = [tf.constant([[6.0, 0.003], [8.0, 0.004]]), tf.constant([0.0, 0.5])]
    clipped, _, stats = run("agc", gradients, variables=[kernel, bias], clip_factor=0.1)
    # unit 0: max = 0.1 * 5 = 0.5, ||G_0|| = 10 -> scaled by 0.05 -> (0.3, 0.4)
    # unit 1: max = 0.1 * max(0, 1e-3) = 1e-4, ||G_1|| = 0.005 -> scaled by 0.02 -> (6e-5, 8e-5)
    # bias: max = 0.1 * 1 = 0.1, ||G|| = 0.5 -> scaled by 0.2 -> (0, 0.1)
    np.testing.assert_allclose(clipped[0].numpy(), [[0.3, 6e-5], [0.4, 8e-5]], rtol=1e-5)
    np.testing.assert_allclose(clipped[1].numpy(), [0.0, 0.1], rtol=1e-5)
    assert bool(stats.clipped)
    assert float(stats.clip_threshold) == pytest.approx(0.1)


def test_agc_leaves_small_gradients_alone():
    kernel = tf.Variable([[3.0], [4.0]])
    gradients = [tf.constant([[0.03], [0.04]])]  # ||G|| = 0.05 < 0.1 * 5
    clipped, _, stats = run("agc", gradients, variables=[kernel], clip_factor=0.1)
    np.testing.assert_allclose(clipped[0].numpy(), [[0.03], [0.04]])
    assert not bool(stats.clipped)


def test_agc_without_variables_fails_loudly():
    with pytest.raises(ValueError, match="needs the model's variables"):
        run("agc", [tf.constant([1.0])], variables=None)


# --- zclip: hand-worked ----------------------------------------------------------------------------


def test_zclip_warmup_then_adaptive_scaling():
    policy = make_policy("zclip", warmup_steps=2, alpha=0.5, eps=1e-12)
    state = policy.init([])
    settings = default_settings(100.0, z_threshold=2.0)
    steps = []
    for norm in [1.0, 3.0, 2.0, 10.0]:
        clipped, state, stats = policy.update([tf.constant([norm])], state, settings)
        steps.append((float(stats.clip_threshold), float(clipped[0][0]), [float(x) for x in state[:2]]))
    # Warm-up (2 steps): clipped at the cap (100) only; then mean = 2, var = 1.
    assert steps[0][:2] == (100.0, 1.0)
    assert steps[1][:2] == (100.0, 3.0) and steps[1][2] == [2.0, 1.0]
    # Step 3: norm 2, z = 0 -> no spike; EMA: mean = 0.5*2 + 0.5*2 = 2, var = 0.5*1 + 0.5*0 = 0.5.
    assert steps[2][:2] == (100.0, 2.0)
    assert steps[2][2] == pytest.approx([2.0, 0.5])
    # Step 4: norm 10, std = sqrt(0.5), z = 8 / std = 11.31 > 2 -> spike;
    # threshold = mean + z_thr^2 * std / z = 2 + 4 * 0.5 / 8 = 2.25.
    assert steps[3][0] == pytest.approx(2.25)
    assert steps[3][1] == pytest.approx(2.25)
    # The EMA takes the adaptive threshold: mean = 0.5*2 + 0.5*2.25 = 2.125;
    # var = 0.5*0.5 + 0.5*(2.25 - 2.125)^2 = 0.2578125.
    assert steps[3][2] == pytest.approx([2.125, 0.2578125])


def test_zclip_is_capped_by_the_clip_threshold():
    policy = make_policy("zclip", warmup_steps=1)
    state = policy.init([])
    clipped, state, stats = policy.update([tf.constant([5.0])], state, default_settings(2.0))
    assert float(stats.clip_threshold) == 2.0 and float(clipped[0][0]) == pytest.approx(2.0)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.nan, math.inf, -math.inf, "1.0", None, True])
def test_clip_threshold_validation_names_the_value(bad):
    with pytest.raises(ValueError, match="clip_threshold=") as info:
        policies.validate_clip_threshold(bad)
    assert repr(bad) in str(info.value)


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="global_norm, per_tensor_norm"):
        make_policy("clip_everything")


def test_unknown_or_out_of_range_parameters_are_refused():
    with pytest.raises(ValueError, match="Valid: percentile, window"):
        make_policy("autoclip", percentil=5)
    with pytest.raises(ValueError, match=r"percentile=0"):
        make_policy("autoclip", percentile=0)
    with pytest.raises(ValueError, match=r"window=2.5"):
        make_policy("autoclip", window=2.5)
    with pytest.raises(ValueError, match=r"alpha=1"):
        make_policy("zclip", alpha=1)


def test_autoclip_sliding_window_matches_numpy_over_a_long_run():
    rng = np.random.default_rng(9)
    norms = np.round(rng.exponential(size=300), 2).astype(np.float32)  # ties included
    policy = make_policy("autoclip", window=25)
    state = policy.init([])
    settings = default_settings(1.0, percentile=30.0)
    for step, norm in enumerate(norms):
        _, state, stats = policy.update([tf.constant([norm])], state, settings)
        previous = norms[max(0, step - 25) : step]
        if step:
            assert float(stats.clip_threshold) == pytest.approx(np.percentile(previous, 30.0), rel=1e-6)
