"""Threshold advisor: replay a run's pre-clip gradient norms through a clipping policy.

Given the global norms a run recorded before clipping, `replay` answers "what would this
policy have done?": the threshold at every step, whether it would have clipped, and the clip
rate. It runs the very policies of `training.policies` (compiled once over the whole sequence),
so the answer for the policy a run actually used reproduces its recorded thresholds.

Caveat: a different threshold would have changed the training itself, and so the later norms;
the replay keeps the recorded norms fixed. It is an estimate, not a counterfactual run.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from .lazy_import import tf  # TensorFlow at first use: History and the page import the replay

from .clipping import policies

REPLAYABLE = ("none", "global_norm", "autoclip", "zclip")  # policies defined by the global norm


def replay(grad_norms, policy: str, clip_threshold: float = 1.0, **params: Any) -> dict[str, Any]:
    """Replay `grad_norms` (1-D, pre-clip global norms, in step order) through `policy`.

    Returns thresholds, clipped (bool per step), clipped_grad_norms and clip_rate. Non-finite
    norms are skipped as the trainer skips them (no clip, no change to adaptive state).
    """
    if policy not in REPLAYABLE:
        raise ValueError(
            f"Only policies that act on the global norm can be replayed from recorded norms: "
            f"{', '.join(REPLAYABLE)}. Received: policy={policy!r}"
        )
    clip_threshold = policies.validate_clip_threshold(clip_threshold)
    checked = policies.validate_policy_params(policy, params)
    live = {key: value for key, value in checked.items() if key in policies.LIVE_PARAMETERS}
    norms = np.asarray(grad_norms, np.float32).reshape(-1)
    if len(norms) == 0:
        empty = np.zeros(0, np.float32)
        return {"thresholds": empty, "clipped": empty.astype(bool), "clipped_grad_norms": empty, "clip_rate": math.nan}
    structural = tuple(sorted((k, v) for k, v in checked.items() if k not in live))
    settings = policies.default_settings(clip_threshold, **live)
    thresholds, clipped, after = _replayer(policy, structural)(tf.constant(norms), *settings)
    clipped = clipped.numpy()
    return {
        "thresholds": thresholds.numpy(),
        "clipped": clipped,
        "clipped_grad_norms": after.numpy(),
        "clip_rate": float(clipped[np.isfinite(norms)].mean()) if np.isfinite(norms).any() else math.nan,
    }


@functools.lru_cache(maxsize=32)
def _replayer(policy: str, structural: tuple):
    """One compiled replay per policy and structural setting; the live knobs are inputs, so a
    new threshold or percentile reuses the same trace."""
    clip_policy = policies.make_policy(policy, **dict(structural))
    initial = clip_policy.init([])
    scalar = tf.TensorSpec([], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), scalar, scalar, scalar, scalar])
    def run(norms, clip_threshold, percentile, clip_factor, z_threshold):
        settings = policies.ClipSettings(clip_threshold, percentile, clip_factor, z_threshold)

        def step(carry, norm):
            state = carry[0]
            _, new_state, stats = clip_policy.update([tf.reshape(norm, [1])], state, settings)
            finite = tf.math.is_finite(norm)
            new_state = tf.nest.map_structure(lambda new, old: tf.where(finite, new, old), new_state, state)
            threshold = tf.cast(stats.clip_threshold, tf.float32)
            return (new_state, threshold, tf.logical_and(finite, stats.clipped), stats.clipped_grad_norm)

        zero = tf.constant(0.0)
        _, thresholds, clipped, after = tf.scan(step, norms, initializer=(initial, zero, tf.constant(False), zero))
        return thresholds, clipped, after

    return run
