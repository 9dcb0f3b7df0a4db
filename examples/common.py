"""What the attach examples share: their flags, a small data set and a small model.

The examples stand for a user's own script; only the lines marked `# Clipwatch` are the
integration.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:  # installed (`python -m pip install -e .`): a name a project's own `training` cannot shadow
    import clipwatch  # noqa: E402,F401
except ImportError:  # the checkout on PYTHONPATH: its `training` also answers to `clipwatch`
    import training  # noqa: E402,F401
from clipwatch.policies import POLICY_NAMES  # noqa: E402
from clipwatch.tasks.seed import make_moons  # noqa: E402

BATCH_SIZE = 64


def parse_arguments(description: str, argv=None, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--db", default=None, help="run database (default: CLIPWATCH_DB or runs/clipwatch.db)")
    parser.add_argument("--run-name", default=None, help="the run's name in History")
    parser.add_argument("--policy", default="global_norm", choices=POLICY_NAMES)
    parser.add_argument("--clip-threshold", type=float, default=1.0)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def moons_dataset(batch_size: int = BATCH_SIZE) -> tf.data.Dataset:
    inputs, targets = make_moons(seed=0, samples=4096)
    return (
        tf.data.Dataset.from_tensor_slices((inputs, targets))
        .shuffle(4096, seed=0)
        .repeat()
        .batch(batch_size, drop_remainder=True)
    )


def small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(shape=(2,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="output"),
        ]
    )


def report(clipping, model, path: str | None, **extra) -> None:
    """Print (and optionally write) a one-line JSON summary of what was recorded."""
    metrics = clipping.metrics()
    summary = {
        "run_id": clipping.run_id,
        "steps": int(len(metrics)),
        "clip_rate": float(metrics.clipped.mean()) if len(metrics) else 0.0,
        "final_loss": float(metrics.loss.iloc[-1]) if len(metrics) else None,
        "weights": [np.asarray(w).ravel().tolist() for w in model.get_weights()],
        "clip_thresholds": metrics.clip_threshold.astype(float).tolist(),
        **extra,
    }
    line = json.dumps(summary)
    if path:
        with open(path, "w") as handle:
            handle.write(line)
    print(json.dumps({key: value for key, value in summary.items() if key not in ("weights", "clip_thresholds")}))
