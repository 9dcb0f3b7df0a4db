"""The cost of attaching to a user's own `fit` (issue #10), and how fast it obeys commands.

Speed: steps per second of

* `fit` with Keras' own `global_clipnorm` and no monitoring (what the user had), against
* the same `fit` with `LiveClipping.wrap` and its callback, every step recorded into a run
  database in a temporary directory,

on the seed model and on a mid-size model (the `examples/tasks/char_lstm.py` plug-in: a
character LSTM language model, 64 time steps, 128 units, batch 32, ~80-100 ms a step), each with
`steps_per_execution` 1 and 10. Measured interleaved (the order alternates per repeat); the
ratio is the median of the per-repeat ratios. A window is timed by a callback from the end of
its first batch (the compile and the first execution are outside) to the end of its last.

Command latency: `examples/attach_fit.py` runs in a subprocess (as a user's script would);
clip-threshold commands are sent through its database one at a time, and two delays measured
from each command's `created` time: until the script applied it (`applied_time`, its
acknowledgement) and until the first step using it is committed to the database (what the
page's live view can draw; the view then redraws within its refresh interval).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

KERAS_CLIPPING = "fit, Keras global_clipnorm, no monitoring"
ATTACHED = "fit, LiveClipping wrap + callback (every step recorded)"
MID_SIZE = "char LSTM"
MODELS = ("seed", MID_SIZE)
STEPS_PER_EXECUTION = (1, 10)
MAX_SLOWDOWN_MID_SIZE = 0.05
MAX_APPLIED_P95_SECONDS = 1.0
MAX_VISIBLE_P95_SECONDS = 2.0
LATENCY_POLL_SECONDS = 0.005
ROOT = Path(__file__).resolve().parent.parent
Log = Callable[[str], None]


def _seed_problem():
    import tensorflow as tf

    from training.tasks.seed import build_model, make_moons

    inputs, targets = make_moons(seed=0, samples=4096)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).repeat().batch(32).prefetch(4)
    return (lambda: build_model(0)), dataset, "binary_crossentropy"


def _lstm_problem():
    """The `examples/tasks/char_lstm.py` plug-in (issue #9's own-model task): its model, loss and
    first 1,024 windows, batch 32, with Adam (the wrap and Keras' clipping take any optimizer)."""
    import tensorflow as tf

    from training.plugins import load_task

    task = load_task(str(ROOT / "examples" / "tasks" / "char_lstm.py"))
    inputs, targets = task.make_data(0)
    dataset = (
        tf.data.Dataset.from_tensor_slices((inputs[:1024], targets[:1024]))
        .repeat()
        .batch(task.batch_size, drop_remainder=True)
        .prefetch(4)
    )
    return (lambda: task.build_model(0)), dataset, task.build_loss()


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

    def close(self) -> None:
        if self.clipping is not None:
            self.clipping.close()


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
                for contender in contenders:  # its run ends and its writer lets go before the folder goes
                    contender.close()
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


def run_attach_section(repeats: int, window_seconds: float, latency_trials: int, log: Log) -> dict:
    """Speed and command latency, one results dict."""
    results = run_attach(repeats, window_seconds, log)
    results["latency"] = run_command_latency(latency_trials, log)
    return results


def _percentiles(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "max": float(values.max())}


def _wait(read, timeout: float, what: str):
    """`read()` every LATENCY_POLL_SECONDS until it returns something truthy, which it returns."""
    for _ in range(int(timeout / LATENCY_POLL_SECONDS)):
        if value := read():
            return value
        time.sleep(LATENCY_POLL_SECONDS)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


def run_command_latency(trials: int, log: Log) -> dict:
    """Send `trials` clip-threshold commands to a running `examples/attach_fit.py`."""
    from training.persistence import RunDatabase

    with tempfile.TemporaryDirectory(prefix="clipwatch-latency-") as folder:
        database = RunDatabase(Path(folder) / "latency.db")
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "attach_fit.py"), "--steps", "100000000",
             "--db", str(database.path)],
            cwd=folder, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            def running():
                assert process.poll() is None, "examples/attach_fit.py ended early"
                runs = database.list_runs()
                runs = runs[(runs.state == "running") & (runs.steps > 0)]
                return int(runs.run_id.iloc[0]) if len(runs) else None

            run_id = _wait(running, 180, "the example's first steps")
            applied, visible = [], []
            for trial in range(trials):
                command_id = database.send_command(run_id, "clip_threshold", 0.5 + 0.01 * trial)
                command = _wait(lambda: (c := database.command(command_id))["applied_time"] and c, 30, "an acknowledgement")
                _wait(lambda: database.run_info(run_id)["steps"] >= command["applied_step"], 30, "the step in the database")
                visible.append(time.time() - command["created"])
                applied.append(command["applied_time"] - command["created"])
                time.sleep(0.1 + 0.2 * (trial % 3) / 2)  # not in step with the poller's period
            database.send_command(run_id, "stop")
            process.wait(timeout=60)
        finally:
            process.kill()
            process.wait()
    log(f"attach latency: {trials} commands")
    return {"trials": trials, "applied_ms": _percentiles(applied), "visible_ms": _percentiles(visible)}


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
    latency = attach["latency"]
    return [
        f"Attaching to fit ({KERAS_CLIPPING!r} vs {ATTACHED!r}; {attach['repeats']} interleaved "
        f"repeats x {attach['window_seconds']:g} s; the ratio is the median of per-repeat ratios)",
        *table(header, rows, right={1, 2, 3, 4, 5}),
        f"  Commands to a running examples/attach_fit.py through its database ({latency['trials']} "
        f"clip thresholds): applied by the script median {latency['applied_ms']['median']:.0f} ms, "
        f"p95 {latency['applied_ms']['p95']:.0f} ms; first step with it in the database median "
        f"{latency['visible_ms']['median']:.0f} ms, p95 {latency['visible_ms']['p95']:.0f} ms.",
    ]


def targets(attach: dict, target) -> list[dict]:
    found = []
    for key, limit, what in (
        ("applied_ms", MAX_APPLIED_P95_SECONDS, "applied by the script"),
        ("visible_ms", MAX_VISIBLE_P95_SECONDS, "in the database for the charts"),
    ):
        p95 = attach["latency"][key]["p95"] / 1000
        found.append(
            target(
                f"attached run: a threshold command {what} within {limit:g} s (p95)",
                f"{p95 * 1000:.0f} ms p95 of {attach['latency']['trials']}",
                p95 <= limit,
                f"{(limit - p95) * 1000:.0f} ms to spare" if p95 <= limit else f"over by {(p95 - limit) * 1000:.0f} ms",
                p95,
            )
        )
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
