"""The cost of attaching to a user's own `fit` (issue #10): steps per second of

* `fit` with Keras' own `global_clipnorm` and no monitoring (what the user had), against
* the same `fit` with `LiveClipping.wrap` and its callback, every step recorded into a run
  database in a temporary directory,

on the seed model and on a mid-size model (a character-level LSTM language model on random
tokens: Embedding(64, 32) -> LSTM(128) -> Dense(64), sequences of 32, batch 32), each with
`steps_per_execution` 1 and 10. Measured interleaved (the order alternates per repeat); the
ratio is the median of the per-repeat ratios. A window is timed by a callback from the end of
its first batch (the compile and the first execution are outside) to the end of its last.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

KERAS_CLIPPING = "fit, Keras global_clipnorm, no monitoring"
ATTACHED = "fit, LiveClipping wrap + callback (every step recorded)"
MID_SIZE = "char LSTM"
MODELS = ("seed", MID_SIZE)
STEPS_PER_EXECUTION = (1, 10)
MAX_SLOWDOWN_MID_SIZE = 0.05
Log = Callable[[str], None]


def _seed_problem():
    import tensorflow as tf

    from training.tasks.seed import build_model, make_moons

    inputs, targets = make_moons(seed=0, samples=4096)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).repeat().batch(32).prefetch(4)
    return (lambda: build_model(0)), dataset, "binary_crossentropy"


def _lstm_problem():
    import keras
    import numpy as np
    import tensorflow as tf

    tokens = np.random.default_rng(0).integers(0, 64, size=(2048, 33)).astype("int32")
    dataset = (
        tf.data.Dataset.from_tensor_slices((tokens[:, :-1], tokens[:, -1]))
        .repeat()
        .batch(32, drop_remainder=True)
        .prefetch(4)
    )

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((32,), dtype="int32"),
                keras.layers.Embedding(64, 32),
                keras.layers.LSTM(128),
                keras.layers.Dense(64),
            ]
        )

    return build, dataset, keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _Window:
    """A callback that times the batches after the first one, and counts their steps."""

    def __init__(self):
        import keras

        window = self

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                window.begin = batch

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if window.started is None:
                    window.started = now
                else:
                    window.steps += batch - window.begin + 1
                    window.ended = now

        self.callback = Timer()
        self.started = self.ended = None
        self.steps = 0

    def steps_per_second(self) -> float:
        return self.steps / (self.ended - self.started)


class _Contender:
    def __init__(self, label, problem, steps_per_execution, database_path):
        import keras

        from training.keras import LiveClipping

        build, self.dataset, loss = problem
        self.label, self.model = label, build()
        if label == ATTACHED:
            self.clipping = LiveClipping("global_norm", 1.0, database=database_path, run_name=label)
            optimizer, self.callbacks = self.clipping.wrap(keras.optimizers.Adam(1e-3)), [self.clipping.callback()]
        else:
            self.clipping, optimizer, self.callbacks = None, keras.optimizers.Adam(1e-3, global_clipnorm=1.0), []
        self.model.compile(optimizer=optimizer, loss=loss, steps_per_execution=steps_per_execution)
        self.steps_per_execution = steps_per_execution

    def measure(self, steps: int) -> float:
        window = _Window()
        # The timer goes first: its last batch end comes before the run is closed.
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                       callbacks=[window.callback, *self.callbacks])  # fmt: skip
        return window.steps_per_second()


def run_attach(repeats: int, window_seconds: float, log: Log) -> dict:
    """Measure every model x steps_per_execution pair; return rows and per-pair ratios."""
    problems = {"seed": _seed_problem, MID_SIZE: _lstm_problem}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="clipwatch-attach-") as folder:
        database_path = Path(folder) / "attach.db"
        for model_name in MODELS:
            problem = problems[model_name]()
            for steps_per_execution in STEPS_PER_EXECUTION:
                key = f"{model_name}, steps_per_execution={steps_per_execution}"
                log(f"attach: {key}")
                contenders = [
                    _Contender(label, problem, steps_per_execution, database_path)
                    for label in (KERAS_CLIPPING, ATTACHED)
                ]
                # Warm-up (compiles) and the window's step count, from the slower contender.
                speed = min(c.measure(4 * steps_per_execution) for c in contenders)
                steps = max(3 * steps_per_execution, int(speed * window_seconds))
                steps -= steps % steps_per_execution
                speeds = {c.label: [] for c in contenders}
                for repeat in range(repeats):
                    order = contenders if repeat % 2 == 0 else contenders[::-1]
                    for contender in order:
                        speeds[contender.label].append(contender.measure(steps))
                ratios = [a / k for a, k in zip(speeds[ATTACHED], speeds[KERAS_CLIPPING])]
                rows[key] = {
                    "model": model_name,
                    "steps_per_execution": steps_per_execution,
                    "steps_per_window": steps,
                    "steps_per_second": {
                        label: {"median": statistics.median(values), "min": min(values), "max": max(values)}
                        for label, values in speeds.items()
                    },
                    "ratio": statistics.median(ratios),
                    "ratio_range": [min(ratios), max(ratios)],
                }
    return {"repeats": repeats, "window_seconds": window_seconds, "rows": rows}


def lines(attach: dict, table) -> list[str]:
    header = ["model", "steps/execution", "Keras clipping steps/s", "attached steps/s", "attached / Keras", "repeats"]
    rows = [
        [
            row["model"],
            str(row["steps_per_execution"]),
            f"{row['steps_per_second'][KERAS_CLIPPING]['median']:,.0f}",
            f"{row['steps_per_second'][ATTACHED]['median']:,.0f}",
            f"{row['ratio']:.3f}",
            f"{row['ratio_range'][0]:.2f}..{row['ratio_range'][1]:.2f}",
        ]
        for row in attach["rows"].values()
    ]
    return [
        f"Attaching to fit ({KERAS_CLIPPING!r} vs {ATTACHED!r}; {attach['repeats']} interleaved "
        f"repeats x {attach['window_seconds']:g} s; the ratio is the median of per-repeat ratios)",
        *table(header, rows, right={1, 2, 3, 4, 5}),
    ]


def targets(attach: dict, target) -> list[dict]:
    found = []
    for row in attach["rows"].values():
        if row["model"] != MID_SIZE:
            continue
        slowdown = 1 - row["ratio"]
        points = (MAX_SLOWDOWN_MID_SIZE - slowdown) * 100
        low, high = (1 - ratio for ratio in reversed(row["ratio_range"]))
        found.append(
            target(
                f"{MID_SIZE} (steps_per_execution={row['steps_per_execution']}), attached fit <= 5% slower",
                f"{slowdown:.1%} (repeats {low:.0%}..{high:.0%})",
                slowdown <= MAX_SLOWDOWN_MID_SIZE,
                f"{points:.1f} percentage points to spare" if points >= 0 else f"over by {-points:.1f} percentage points",
                slowdown,
            )
        )
    return found
