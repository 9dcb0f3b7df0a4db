"""Throughput: steps per second of Keras `fit` and of Clipwatch's trainer, measured interleaved.

Every contender trains the same task (same model, data, batch size and seed, clipping the global
norm at 1.0) and is warmed up first, so compile time is never counted. Each repeat measures every
contender once, in a rotating order, so a noisy neighbour on a shared machine hits them alike.
Only one contender runs at a time: the trainers wait paused while the others are measured.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

from training import POLICY_NAMES, Trainer
from training.lazy_import import tf  # at the first measurement: `--help` and `--from-json` need none
from training.tasks import get_task

CLIP_NORM = 1.0
TUNED_STEPS_PER_EXECUTION = 50
MIN_HEAVY_STEP_SECONDS = 0.005  # a lighter "heavier task" step would measure overhead again
HEAVY_BATCH_SIZE = 512
POLL_SECONDS = 0.001
SETTLE_SECONDS = 0.1  # after a resume, before the window opens

KERAS_DEFAULT = "Keras fit, default"
KERAS_TUNED = "Keras fit, tuned"
CEILING = "Clipwatch, monitoring off (ceiling)"
MONITORED = "Clipwatch, full monitoring"

Log = Callable[[str], None]


def summarize(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": list(values),
    }


class KerasFit:
    """`model.fit` with the optimizer's `global_clipnorm`, as people write it, or tuned.

    Default: numpy arrays, `batch_size`, epochs, `compile()` defaults. Tuned: `steps_per_execution`
    of 50 and `jit_compile=True`, fed the same arrays as a shuffled, repeated, prefetched
    `tf.data` pipeline, because with arrays each epoch of a small data set (32 steps for `seed`)
    ends an execution early and tuning would change nothing.
    """

    def __init__(self, label: str, task_name: str, batch_size: int, seed: int, tuned: bool):
        import keras

        task = get_task(task_name)
        self.label = label
        self._inputs, self._targets = task.make_data(seed)
        self._batch_size = batch_size
        self._tuned = tuned
        self._steps_per_epoch = math.ceil(len(self._inputs) / batch_size)
        optimizer_class = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[task.optimizer]
        self._model = task.build_model(seed)
        self._model.compile(
            optimizer=optimizer_class(learning_rate=task.learning_rate, global_clipnorm=CLIP_NORM),
            loss=task.build_loss(),
            steps_per_execution=TUNED_STEPS_PER_EXECUTION if tuned else 1,
            jit_compile=True if tuned else "auto",
        )
        if tuned:
            self._dataset = (
                tf.data.Dataset.from_tensor_slices((self._inputs, self._targets))
                .shuffle(len(self._inputs), seed=seed)
                .repeat()
                .batch(batch_size, drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE)
            )
        self._steps_per_second = 0.0  # from the last run; sizes the next one

    def _fit(self, steps: float) -> int:
        """Train about `steps` steps; return how many ran."""
        if self._tuned:
            executions = max(1, round(steps / TUNED_STEPS_PER_EXECUTION))
            steps = executions * TUNED_STEPS_PER_EXECUTION
            self._model.fit(self._dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
            return steps
        epochs = max(1, round(steps / self._steps_per_epoch))
        self._model.fit(
            self._inputs, self._targets, batch_size=self._batch_size, epochs=epochs, verbose=0
        )
        return epochs * self._steps_per_epoch  # the last, partial batch of an epoch is a step too

    def _timed_fit(self, steps: float) -> float:
        started = time.perf_counter()
        ran = self._fit(steps)
        self._steps_per_second = ran / (time.perf_counter() - started)
        return self._steps_per_second

    def warm_up(self, seconds: float, timeout: float) -> float:
        """Compile (the first `fit`), then train about `seconds`; return the step time."""
        self._timed_fit(1)
        self._timed_fit(max(1.0, self._steps_per_second * seconds / 2))
        self._timed_fit(max(1.0, self._steps_per_second * seconds / 2))
        return 1.0 / self._steps_per_second

    def measure(self, seconds: float) -> float:
        return self._timed_fit(max(1.0, self._steps_per_second * seconds))

    def close(self) -> None:
        pass


class TrainerRun:
    """A Clipwatch `Trainer` measured from `status.step` deltas between chunk boundaries."""

    def __init__(
        self,
        label: str,
        task_name: str,
        batch_size: int | None,
        seed: int,
        monitoring: bool = True,
        policy: str = "global_norm",
        sinks: tuple = (),
        database=None,
    ):
        self.label = label
        self.trainer = Trainer(
            task=task_name,
            policy=policy,
            clip_threshold=CLIP_NORM,
            batch_size=batch_size,
            seed=seed,
            monitoring=monitoring,
            sinks=sinks,
            database=database,
        )
        self.compile_seconds: float | None = None
        self.min_chunks = 1
        self.settle_seconds = SETTLE_SECONDS
        self._started = 0.0

    def start(self) -> None:
        """Start the run paused: it compiles when its warm-up comes, one contender at a time.
        (Started together, each run trained on its quick step at full speed while the others
        compiled: a core spent on steps nobody measured, taken from the compiles.)"""
        self.trainer.start()
        self.trainer.pause()

    def warm_up(self, seconds: float, timeout: float) -> float:
        """Resume; wait for the first chunk (the quick step's compile); stay paused while the full
        step (every policy, XLA: the one measured) compiles; train `seconds` on it, pause; return
        the step time."""
        self._started = time.perf_counter()
        self.trainer.resume()
        self._wait(lambda status: status.step > 0, timeout, "the first chunk")
        self.compile_seconds = time.perf_counter() - self._started
        self._pause(timeout)
        if not self.trainer.wait_until_compiled(timeout):  # swapped in while paused
            raise TimeoutError(f"{self.label}: the full step did not compile in {timeout:g} s")
        self.trainer.resume()
        self._wait(lambda status: status.state == "running", timeout, "the resume")
        time.sleep(seconds)
        status = self.trainer.status  # before the pause, which zeroes its rate
        self._pause(timeout)
        return 1.0 / max(status.steps_per_second, 1e-9)

    def measure(self, seconds: float, timeout: float = 600.0) -> float:
        """Steps per second over at least `seconds` and at least `min_chunks` chunks."""
        self.trainer.resume()
        self._wait(lambda status: status.state == "running", timeout, "the resume")
        settle_until = time.perf_counter() + self.settle_seconds
        self.next_chunk_boundary(timeout)
        while time.perf_counter() < settle_until:
            self.next_chunk_boundary(timeout)
        opened, first_step = self.next_chunk_boundary(timeout)
        time.sleep(seconds)
        closed, last_step = self.next_chunk_boundary(timeout)
        # Slow chunks (a heavy step each) would leave a window of one or two: count a few more.
        while last_step - first_step < self.min_chunks * max(self.trainer.status.chunk_steps, 1):
            closed, last_step = self.next_chunk_boundary(timeout)
        self._pause(timeout)
        return (last_step - first_step) / (closed - opened)

    def next_chunk_boundary(self, timeout: float = 600.0) -> tuple[float, int]:
        """(time, step) just after the next chunk's steps are counted."""
        step = self.trainer.status.step
        status = self._wait(lambda status: status.step != step, timeout, "a chunk")
        return time.perf_counter(), status.step

    def _pause(self, timeout: float) -> None:
        self.trainer.pause()
        self._wait(lambda status: status.state == "paused", timeout, "the pause")

    def _wait(self, done, timeout: float, what: str):
        deadline = time.perf_counter() + timeout
        while True:
            status = self.trainer.status
            if status.state in ("failed", "stopped"):
                raise RuntimeError(f"{self.label}: the run is {status.state} ({status.error})")
            if done(status):
                return status
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.label}: no {what} within {timeout:g} s")
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        self.trainer.stop()


def measure_interleaved(contenders: list, repeats: int, seconds: float, log: Log) -> dict[str, list[float]]:
    """Steps per second of every contender, `repeats` times each, in a rotating order."""
    samples: dict[str, list[float]] = {contender.label: [] for contender in contenders}
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            samples[contender.label].append(contender.measure(seconds))
        log(
            f"  repeat {repeat + 1}/{repeats}: "
            + ", ".join(f"{label} {values[-1]:,.0f}" for label, values in samples.items())
        )
    return samples


def warm_up_all(contenders: list, seconds: float, timeout: float, log: Log) -> dict[str, float]:
    """Warm each contender up in turn (a started trainer waits paused, compiling nothing, for its turn)."""
    step_seconds = {}
    for contender in contenders:
        step_seconds[contender.label] = contender.warm_up(seconds, timeout)
        compile_seconds = getattr(contender, "compile_seconds", None)
        compiled = f", first chunk after {compile_seconds:.1f} s" if compile_seconds else ""
        log(f"  warmed up {contender.label}{compiled}")
    return step_seconds


def _keras_default_at_a_sane_batch(
    task_name: str, seed: int, heavy: bool, warm_up_seconds: float, log: Log
) -> tuple[KerasFit, dict]:
    """The warmed-up default `fit` contender, at the task's batch size or, if a heavier task's
    step is too light to tell overhead from work, at HEAVY_BATCH_SIZE."""
    batch_size = get_task(task_name).batch_size
    keras_default = KerasFit(KERAS_DEFAULT, task_name, batch_size, seed, tuned=False)
    step_seconds = keras_default.warm_up(warm_up_seconds, timeout=600.0)
    batch = {"batch_size": batch_size, "reason": "the task's default", "fit_step_ms": step_seconds * 1000}
    if heavy and step_seconds >= MIN_HEAVY_STEP_SECONDS:
        batch["reason"] = (
            f"the task's default: a step takes {step_seconds * 1000:.1f} ms in Keras fit "
            f"(>= {MIN_HEAVY_STEP_SECONDS * 1000:g} ms)"
        )
    elif heavy:
        batch["reason"] = (
            f"raised from {batch_size}: a step took only {step_seconds * 1000:.1f} ms in Keras fit "
            f"(< {MIN_HEAVY_STEP_SECONDS * 1000:g} ms)"
        )
        batch["batch_size"] = HEAVY_BATCH_SIZE
        keras_default = KerasFit(KERAS_DEFAULT, task_name, HEAVY_BATCH_SIZE, seed, tuned=False)
        keras_default.warm_up(warm_up_seconds, timeout=600.0)
    log(f"  batch size {batch['batch_size']}: {batch['reason']}")
    return keras_default, batch


def paired_ratio(values: list[float], references: list[float]) -> dict:
    """Median (and range) over repeats of value / reference, each pair measured back to back.

    On a shared machine the load drifts between repeats; a ratio within one repeat cancels most
    of that drift, where a ratio of medians would mix different moments.
    """
    ratios = [value / reference for value, reference in zip(values, references)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def ratios(rows: dict[str, dict], references: dict[str, str]) -> None:
    """Add each row's paired ratio against every reference present (None if absent)."""
    for row in rows.values():
        for key, reference in references.items():
            if reference in rows:
                ratio = paired_ratio(row["samples"], rows[reference]["samples"])
                row[key], row[f"{key}_range"] = ratio["median"], [ratio["min"], ratio["max"]]
            else:
                row[key], row[f"{key}_range"] = None, None


def run_task(
    task_name: str,
    repeats: int,
    window_seconds: float,
    warm_up_seconds: float,
    log: Log,
    heavy: bool = False,
    min_chunks: int = 1,
    seed: int = 0,
    timeout: float = 600.0,
) -> dict:
    """Rows 1-4 of the table for one task."""
    task = get_task(task_name)
    keras_default, batch = _keras_default_at_a_sane_batch(task_name, seed, heavy, warm_up_seconds, log)
    batch_size = batch["batch_size"]
    trainers = [
        TrainerRun(CEILING, task_name, batch_size, seed, monitoring=False),
        TrainerRun(MONITORED, task_name, batch_size, seed, monitoring=True),
    ]
    for trainer in trainers:
        trainer.min_chunks = min_chunks
        trainer.start()  # paused until its warm-up
    keras_tuned = KerasFit(KERAS_TUNED, task_name, batch_size, seed, tuned=True)
    contenders = [keras_default, keras_tuned] + trainers
    try:
        warm_up_all(contenders[1:], warm_up_seconds, timeout, log)
        samples = measure_interleaved(contenders, repeats, window_seconds, log)
        compile_seconds = {trainer.label: trainer.compile_seconds for trainer in trainers}
        chunk_steps = {trainer.label: trainer.trainer.status.chunk_steps for trainer in trainers}
        trace_counts = {trainer.label: trainer.trainer.trace_count for trainer in trainers}
    finally:
        for contender in contenders:
            contender.close()
    rows = {label: summarize(values) for label, values in samples.items()}
    ratios(rows, {"vs_fit_default": KERAS_DEFAULT, "vs_fit_tuned": KERAS_TUNED, "vs_ceiling": CEILING})
    for label in rows:
        if label in chunk_steps:
            rows[label].update(
                first_chunk_seconds=compile_seconds[label],
                chunk_steps=chunk_steps[label],
                trace_count=trace_counts[label],
            )
    return {
        "task": task_name,
        "batch_size": batch["batch_size"],
        "batch_size_reason": batch["reason"],
        "fit_step_ms": batch["fit_step_ms"],
        "jit_compile": task.jit_compile,
        "repeats": repeats,
        "window_seconds": window_seconds,
        "rows": rows,
    }


def run_policies(
    repeats: int,
    window_seconds: float,
    warm_up_seconds: float,
    log: Log,
    task_name: str = "seed",
    seed: int = 0,
    timeout: float = 600.0,
) -> dict:
    """Every policy's steps per second against `global_norm`, on one running trainer.

    Switching policy is a live command (every policy is a branch of the one compiled chunk), so
    one trainer serves them all and the trace count should not move.
    """
    run = TrainerRun("policies", task_name, None, seed)
    names = list(POLICY_NAMES)
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        run.start()
        run.warm_up(warm_up_seconds, timeout)
        traces_after_warm_up = run.trainer.trace_count
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                run.trainer.set_policy(name)
                samples[name].append(run.measure(window_seconds, timeout))
                if run.trainer.config.policy != name:
                    raise RuntimeError(f"policy {name!r} was not applied")
            log(
                f"  repeat {repeat + 1}/{repeats}: "
                + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in samples.items())
            )
        retraces = run.trainer.trace_count - traces_after_warm_up
    finally:
        run.close()
    rows = {name: summarize(values) for name, values in samples.items()}
    ratios(rows, {"vs_global_norm": "global_norm"})
    return {
        "task": task_name,
        "repeats": repeats,
        "window_seconds": window_seconds,
        "retraces_while_switching": retraces,
        "rows": rows,
    }

