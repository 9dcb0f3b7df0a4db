"""The trainer: one background thread that trains a task, clips every step and records it.

The thread owns the model, the optimizer, the data and the compiled step. Other threads talk to
it only through thread-safe methods: commands go into a queue that the thread drains between
chunks (so a command takes effect at most one chunk later), and metrics come out through the
store as snapshots.

Speed: each compiled call runs a chunk of steps in-graph (gathering batches from tensors in
memory, clipping, applying, and writing every step's metrics into TensorArrays), so there is one
host sync per chunk, not per step. Chunks are sized to stay near `TARGET_CHUNK_SECONDS` so
commands stay responsive. Live knobs are `tf.Variable`s, so changing them never retraces.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import queue
import threading
import time
import traceback
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..lazy_import import tf  # TensorFlow at first use (training/lazy_import.py)

from ..clipping import policies
from ..clipping.commands import Command
from ..clipping.engine import KNOB, ClipEngine, TrainingState, variable_name
from ..runs.evaluation import Evaluator
from ..runs.recorder import Recorder
from ..runs.store import MetricsStore
from ..tasks import Task, check_data_matches_model, get_task, streaming
from ..tasks.base import make_optimizer, model_build, resolve_loss
from .config import (  # noqa: F401  (the constants and checks are re-exported: their old home)
    DEFAULT_MAX_NONFINITE_STEPS, MAX_BATCH_SIZE, MAX_CHUNK_STEPS, MAX_SEED, MAX_STEPS_PER_SECOND, STATES,
    TARGET_CHUNK_SECONDS, RunConfig, Sink, TrainerStatus, validate_count, validate_learning_rate,
    validate_optional_run_name,
)  # fmt: skip
from .branches import DEFAULT_MIN_SNAPSHOT_SECONDS, DEFAULT_SNAPSHOT_EVERY, DEFAULT_SNAPSHOTS_KEPT, Forks
from .forking import ForkDriving, RunForking, start_from_lineage
from .reading import RunReading
from .pacing import Pacer
from .steering import RunSteering
from . import step_pool
from .step_compiler import wait_for_running_compiles
from .steps import ChunkSteps, chunk_rows, gather_batch

if TYPE_CHECKING:
    from ..runs.database import RunDatabase

_LIVE_TRAINERS: "weakref.WeakSet[Trainer]" = weakref.WeakSet()


class Trainer(RunSteering, RunReading, RunForking, ForkDriving):
    """Trains `task` in a background thread with live-steerable gradient clipping.

    Args:
        task: a name from `training.tasks.TASK_NAMES`, a `Task`, or the name of a plug-in
            loaded earlier (`training.plugins.load_task`).
        policy: a name from `training.policies.POLICY_NAMES`.
        clip_threshold: c, a finite number > 0 (the cap for `zclip`).
        learning_rate, batch_size: None takes the task's default.
        seed: seeds the model's initial weights and the batch order.
        max_steps: stop after this many steps (None: run until stopped).
        max_nonfinite_steps: fail after this many consecutive non-finite steps.
        store_window: steps the in-memory store keeps at full resolution (`metrics()` returns
            these; the store's summary and the database cover the whole run). Not autoclip's
            `window`, which is a policy parameter like the others.
        data: None takes the data as the task gives it: arrays stay in memory and batches
            are gathered in-graph (fast); a `tf.data.Dataset` is streamed. "stream" sends a
            task's arrays through the same streamed pipeline (to compare the two).
        jit_compile: XLA-compile the chunk; None takes the task's default (whose None tries
            XLA and falls back once, recording an `xla_fallback` event, if it cannot compile).
        sinks: callables that get every chunk's rows, in order, on the recorder thread (e.g. a CSV
            writer; training/recorder.py). A sink that raises fails the run.
        monitoring: False runs the same compiled loop but records no per-step metrics (the
            benchmark's ceiling); the store then stays empty.
        database: a `persistence.RunDatabase` or a location to open one at (None: memory only).
        run_name: the run's name in the database (default: "run N: task / policy").
        quick_start: start on the quick step (the policy in force alone) while the full step
            compiles in the background (training/step_compiler.py); False waits for the full
            step before the first step (the benchmark's side-by-side baseline).
        snapshot_every, snapshots_kept: keep an in-memory snapshot of the training state every
            this many steps, the last this many (`fork` and `sweep` start branches from them;
            training/loop/branches.py). None: every 2,000 steps, at most four a second (a fast
            run's snapshots would cost it several percent); a number given is kept exactly.
        snapshot_folder, persist_every: also write snapshot files there every this many steps.
        start_from: (snapshot, parent run id): start as a branch of that run from that snapshot
            (`--fork-from`); this trainer's settings win over the snapshot's knobs.
        **policy_params: parameters of the policy (see `policies.POLICY_PARAMETERS`).
    """

    def __init__(
        self,
        task: "str | Task" = "seed",
        policy: str = "global_norm",
        clip_threshold: float = 1.0,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        *,
        max_steps: int | None = None,
        max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS,
        store_window: int = 100_000,
        data: str | None = None,
        jit_compile: bool | None = None,
        sinks: tuple[Sink, ...] = (),
        monitoring: bool = True,
        database: RunDatabase | None = None,
        run_name: str | None = None,
        quick_start: bool = True,
        snapshot_every: int | None = None,
        snapshots_kept: int = DEFAULT_SNAPSHOTS_KEPT,
        snapshot_folder: str | None = None,
        persist_every: int | None = None,
        start_from: "tuple[dict, int] | None" = None,
        **policy_params: Any,
    ):
        task_spec = get_task(task)
        policies.validate_policy_name(policy)
        all_params = {name: policies.validate_policy_params(name, {}) for name in policies.POLICY_NAMES}
        all_params[policy] = policies.validate_policy_params(policy, policy_params)
        if not (data is None or (isinstance(data, str) and data == "stream")):
            raise ValueError(f"`data` must be None or 'stream'. Received: data={data!r}")
        self._task = task_spec
        self._data = data
        # None: try XLA, fall back once if the model does not compile (xla_fallback.py).
        self._jit_compile = task_spec.jit_compile if jit_compile is None else checked_flag("jit_compile", jit_compile)
        self._evaluator = None
        self._max_nonfinite_steps = validate_count("max_nonfinite_steps", max_nonfinite_steps)
        self._sinks = tuple(sinks)
        self._monitoring = bool(monitoring)
        self._database, self._run_name = opened_database(database), validate_optional_run_name(run_name)
        self._requested_policy_params: dict[str, dict[str, float]] = {}
        self._writer = None
        self._config = RunConfig(
            task=task_spec.name,
            policy=policy,
            clip_threshold=policies.validate_clip_threshold(clip_threshold),
            learning_rate=task_spec.learning_rate
            if learning_rate is None
            else validate_learning_rate(learning_rate),
            batch_size=task_spec.batch_size
            if batch_size is None
            else validate_count("batch_size", batch_size, maximum=MAX_BATCH_SIZE),
            seed=validate_count("seed", seed, minimum=0, maximum=MAX_SEED),
            policy_params=all_params,
            max_steps=None if max_steps is None else validate_count("max_steps", max_steps),
        )
        self._store_window = validate_count("store_window", store_window)
        default_cadence = snapshot_every is None
        self._forks = Forks(DEFAULT_SNAPSHOT_EVERY if default_cadence else validate_count("snapshot_every", snapshot_every),
                            validate_count("snapshots_kept", snapshots_kept),
                            DEFAULT_MIN_SNAPSHOT_SECONDS if default_cadence else 0.0)  # fmt: skip
        self._persisting = self._checked_persisting(snapshot_folder, persist_every)
        if self._persisting is not None:  # a file needs a snapshot in memory at least as often
            self._forks.ring.every = min(self._forks.ring.every, self._persisting[1])
            self._forks.ring.min_seconds = 0.0
        self._start_from = start_from
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._commands: queue.SimpleQueue[tuple[Command, Any]] = queue.SimpleQueue()  # (command, on_applied)
        self._wake = threading.Event()
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = TrainerStatus(state="idle", step=0, steps_per_second=0.0, config=self._config)
        self._store: MetricsStore | None = None
        self._store_ready = threading.Event()  # the model, store and steps are built
        self._quick_start = bool(quick_start)
        # The run's state (model, optimizer, the engine's knobs and policy states, step) and its
        # compiled chunk: built on the training thread (`_build`).
        self._state: TrainingState | None = None
        self._steps: ChunkSteps | None = None
        self._pooling: tuple | None = None  # (key, data) of the compiled steps (training/loop/step_pool.py)
        self._steps_done = 0  # steps the training thread has run (status.step shows them)
        # The last step the recorder thread has filed: `metrics()` waits until it reaches the
        # `status.step` it was called at, so a reader that saw step N finds step N.
        self._recorded_step = 0
        self._recorded = threading.Condition()
        self._recorder: Recorder | None = None
        _LIVE_TRAINERS.add(self)

    # --- commands (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Start the training thread; a no-op if it is already running or paused."""
        with self._lock:
            if self._thread is not None:
                if self._status.state in ("stopped", "failed"):
                    raise RuntimeError(
                        f"This run is {self._status.state}; create a new Trainer for a new run."
                    )
                return
            self._set_status(state="running")
            self._thread = threading.Thread(target=self._run, name="clipwatch-trainer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and wait for it (at most `timeout` seconds)."""
        self._stop_requested.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            if self._status.state in ("idle", "running", "paused"):
                self._set_status(state="stopped")

    # --- the training thread ---------------------------------------------------------------------

    def _set_status(self, **changes: Any) -> None:
        # Two threads update the status (the trainer's, and stop() after a timed-out join):
        # serialise the read-modify-write so neither loses the other's change.
        with self._status_lock:
            self._status = replace(self._status, **changes)

    def _run(self) -> None:
        trace = None
        try:
            self._build()
            state, error = self._loop()
        except Exception as exception:  # kept for the UI, never lost
            state, error = "failed", f"{type(exception).__name__}: {exception}"
            trace = traceback.format_exc()
        self._forks.close(state)  # its branches end with it (a failed run's too), and no new one starts
        if self._steps is not None:
            self._steps.abandon_compile()  # a stopped run never swaps its full step in
        self._store_ready.set()
        if self._recorder is not None:
            self._recorder.close()  # every step is in the store, the writer's queue and the sinks
            with self._recorded:
                self._recorded.notify_all()
            if self._recorder.error is not None:  # the sink's own error, not the hand-off's wrapper
                state, error = "failed", f"{type(self._recorder.error).__name__}: {self._recorder.error}"
        warning = self._status.warning
        if self._writer is not None:
            # the record is complete before the state shows; stopped before its first step: no row
            self._writer.finish(state, error, discard_if_empty=True)
            warning = self._writer.status.warning
        if self._pooling is not None and self._steps is not None and trace is None:  # before a waiter sees the end
            step_pool.keep(*self._pooling, self._task, self, self._steps)
        self._set_status(state=state, error=error, traceback=trace, steps_per_second=0.0, warning=warning)

    def _build(self) -> None:
        config, task = self._config, self._task
        with model_build():  # a task seeds the global RNGs (its data may draw on them): put back after
            model, data = task.build_model(config.seed), task.make_data(config.seed)
        optimizer = make_optimizer(task.optimizer, config.learning_rate)
        variables = model.trainable_variables
        optimizer.build(variables)
        check_data_matches_model(task, model, data)

        engine = ClipEngine(config.policy, config.clip_threshold, config.policy_params)
        engine.build(variables)
        data_seed = tf.Variable(config.seed, dtype=tf.int64, trainable=False, name="clipwatch_data_seed")
        self._state = TrainingState(engine, model, optimizer, data_seed=data_seed)
        self._variable_names = [variable_name(v) for v in variables]
        self._store = MetricsStore(self._variable_names, engine.policy_names, window=self._store_window)
        if self._database is not None and self._monitoring:
            parent, fork_step = start_from_lineage(self._start_from)
            self._writer = self._database.start_run(config, self._variable_names, self._run_name, engine.policy_names,
                                                    parent_run_id=parent, fork_step=fork_step)  # fmt: skip
            self._set_status(run_id=self._writer.run_id)
        if self._monitoring:
            writer = (self._writer.append,) if self._writer is not None else ()
            self._recorder = Recorder((self._store.append, *writer, *self._sinks, self._publish_recorded))
        jit_compile = self._jit_compile
        on_compiling = lambda compiling: self._set_status(compiling=compiling)  # noqa: E731
        if streaming.is_dataset(data) or self._data == "stream":
            batches = iter(
                streaming.training_batches(streaming.as_dataset(data), config.seed, config.batch_size, task.shuffle_buffer)
            )
            next_batch = lambda step: next(batches)  # noqa: E731
            jit_compile = False  # the iterator's ops have no XLA kernels
            self._forks.refusal = (
                f"Forking needs replayable data: task {task.name!r} streams a tf.data pipeline, whose "
                "batches cannot be drawn again by step, so a branch would train on other batches "
                "than its parent. Give the task in-memory arrays (make_data returning (inputs, targets))."
            )
        else:  # an earlier run's compiled steps, if one of this configuration ended (step_pool.py)
            key = step_pool.pool_key(
                config, monitoring=self._monitoring, max_nonfinite_steps=self._max_nonfinite_steps, jit_compile=jit_compile
            )
            self._pooling = (key, data)
            self._steps = step_pool.take(*self._pooling, task, self._state, self._record, on_compiling)
            self._state = self._steps.state if self._steps is not None else self._state
            if self._steps is None:  # kept steps captured their own copy of the data
                inputs, targets = data
                next_batch = functools.partial(gather_batch, tf.constant(inputs), tf.constant(targets), data_seed, config.batch_size)
        if task.make_validation_data is not None:
            validation = task.make_validation_data(config.seed)
            check_data_matches_model(task, model, validation, "make_validation_data")
            self._evaluator = Evaluator(task, self._state.model, resolve_loss(task.build_loss), validation, config.batch_size)
        if self._steps is None:
            self._steps = ChunkSteps(
                self._state, resolve_loss(task.build_loss), next_batch, monitoring=self._monitoring,
                max_nonfinite_steps=self._max_nonfinite_steps, jit_compile=jit_compile, on_event=self._record, on_compiling=on_compiling,
            )  # fmt: skip
            self._state.loop_variables = [self._steps.nonfinite_run]
        self._prepare_forking()  # a start from a snapshot, snapshot files
        if not self._monitoring:
            self._forks.refusal = "Forking needs a monitored run (monitoring=False records no steps to compare)."
        self._steps.build(self._quick_start)
        self._store_ready.set()

    def _loop(self) -> tuple[str, str | None]:
        """Train until stopped, finished or failed; return (final state, error)."""
        chunk_steps = 16
        branch_steps = chunk_steps  # a branch's chunk: the parent's last one, so both lines keep pace
        pacer = Pacer()
        recent: collections.deque = collections.deque(maxlen=64)  # (time, step) per chunk
        nonfinite_total, nonfinite_run = 0, 0
        chunks_run, trained_since = 0, None  # chunks done; when the first one ended
        forks = self._forks
        self._record("start", None, self._config.policy)
        forks.take_snapshot(self._state)  # step 0
        while True:
            paced_before = self._config.max_steps_per_second
            steered = self._apply_commands()
            if self._config.max_steps_per_second != paced_before:
                pacer.reset(self._steps_done)
            if self._stop_requested.is_set():
                self._record("stop", None, None)
                return "stopped", None
            step = self._steps_done
            max_steps, pace = self._config.max_steps, self._config.max_steps_per_second
            finished = max_steps is not None and step >= max_steps
            if forks.busy(step):
                alone = finished or self._status.state == "paused"
                round_started = time.perf_counter()
                self._run_branches(chunk_steps if alone else branch_steps)
                if (spent := time.perf_counter() - round_started) > 0.25:
                    pacer.hold_back(spent)  # a branch's start (a compile)
                if alone:
                    continue  # the branches take turns alone, unpaced
            if self._status.state == "paused":
                self._wake.wait(self._steps.while_paused(self._steps_done, asked=self._full_step_asked))
                self._wake.clear()
                pacer.reset(self._steps_done)
                recent.clear()
                continue
            if finished:
                self._evaluate(step)  # once at the end
                self._record("finished", None, step)
                return "stopped", None
            steps = chunk_steps
            if steered:
                steps = max(1, chunk_steps // 4)  # show the effect of a command sooner
            steps = pacer.chunk(pace, step, steps)
            if max_steps is not None:
                steps = min(steps, max_steps - step)
            if self._evaluator is not None:  # a chunk ends exactly where an evaluation is due
                steps = min(steps, self._evaluator.steps_until_due(step))
            # ... and where a branch asked to fork
            steps = min([steps, *(s - step for s in forks.waiting_steps() if s > step)])

            started = time.perf_counter()
            out = self._steps(steps, step)
            steps = int(out.pop("steps_run"))  # the host sync; < steps at the non-finite limit
            branch_steps = max(1, steps)
            if self._monitoring:
                rows = {"finite": out["finite"].numpy()[:steps]}
                # The rest of the rows, the store, the database queue and the sinks: on the
                # recorder thread, overlapping the next chunk (training/recorder.py).
                self._recorder.submit(
                    functools.partial(
                        chunk_rows, out, step, steps, time.time(), time.perf_counter() - started,
                        self._config.learning_rate, self._state.engine.policy_names.index(self._config.policy),
                    )
                )
                if self._writer is not None and self._writer.status.warning != self._status.warning:
                    self._set_status(warning=self._writer.status.warning)  # a fault, or its end
            else:
                rows = {"finite": np.ones(steps, bool)}  # eager calls return when the chunk is done
            elapsed = time.perf_counter() - started
            engine = self._state.engine
            if engine.knob_values[KNOB["spike"]] != 1.0:
                engine.set_knob("spike", 1.0)  # a demo spike hits the chunk's first step only

            # Adapt the chunk so it stays near TARGET_CHUNK_SECONDS (and never over the buffer).
            per_step = elapsed / max(steps, 1)
            chunk_steps = int(min(MAX_CHUNK_STEPS, max(1, TARGET_CHUNK_SECONDS / max(per_step, 1e-9))))
            now = time.perf_counter()
            recent.append((now, step + steps))
            window = [(t, s) for t, s in recent if now - t <= 1.0] or [recent[-1]]
            first_time, first_step = window[0] if len(window) > 1 else (started, step)
            speed = (step + steps - first_step) / max(now - first_time, 1e-9)

            if self._evaluator is not None and self._evaluator.due(step, step + steps):
                self._evaluate(step + steps)
            finite = rows["finite"]
            nonfinite_total += int((~finite).sum())
            longest, nonfinite_run = _nonfinite_runs(finite, nonfinite_run)
            self._steps_done = self._state.step = step + steps
            forks.take_snapshot(self._state)
            self._set_status(
                step=self._steps_done,
                steps_per_second=speed,
                nonfinite_steps=nonfinite_total,
                trace_count=self._steps.trace_count,
                chunk_steps=steps,
            )
            # The chunk is handed over and counted: now (not sooner: it would compete with the first
            # step on screen) the full step may start compiling on its thread, or be swapped in.
            chunks_run, trained_since = chunks_run + 1, trained_since or now
            seconds_per_step = max(per_step, 1.0 / pace) if pace else per_step  # a paced run waits too
            start = full_step_may_arrive(max_steps, self._steps_done, seconds_per_step, chunks_run, now - trained_since,
                                          self._steps.switched_on_quick_step or self._full_step_asked)  # fmt: skip
            self._steps.swap_in_full_step(self._steps_done, start=start)
            if longest >= self._max_nonfinite_steps:
                reason = _nonfinite_failure(longest, self._max_nonfinite_steps)
                self._record("failed", None, reason)
                return "failed", reason
            pacer.wait(pace, step + steps, self._wake, self._stop_requested)

    def _evaluate(self, step: int) -> None:
        if self._evaluator is None:
            return
        rows = self._evaluator.evaluate(step)
        if self._writer is not None and rows:
            self._writer.evaluations(rows)

    def _record(self, kind: str, old: Any, new: Any) -> None:
        if self._store is not None:
            event = self._store.record_event(self._steps_done, kind, old, new)
            if self._writer is not None:
                self._writer.event(*event)


def trainer_from_settings(
    task: "str | Task",
    policy: str,
    clip_threshold: float,
    learning_rate: float | None = None,
    seed: int = 0,
    policy_params: Mapping[str, Any] | None = None,
    max_steps_per_second: float | None = None,
    **options: Any,
) -> Trainer:
    """The one way a run's settings become a `Trainer` (the dashboard's run and race, the CLI).

    `policy_params` are `policy`'s parameters; `max_steps_per_second` caps the pace from step 1
    (None: full speed); `options` are the trainer's other keyword arguments (`database`,
    `run_name`, `max_steps`, `sinks`, ...). ValueError (naming the value) for a bad setting.
    The trainer is not started.
    """
    trainer = Trainer(
        task=task,
        policy=policy,
        clip_threshold=clip_threshold,
        learning_rate=learning_rate,
        seed=seed,
        **options,
        **dict(policy_params or {}),
    )
    if max_steps_per_second is not None:
        trainer.set_max_steps_per_second(max_steps_per_second)  # before step 1
    return trainer


# The full step arrives 3-5 s after its compile starts (seed; more on a busy machine) and costs
# 3-4 s of a core. It pays off only in a run that trains on for at least this many seconds.
FULL_STEP_MIN_REMAINING_SECONDS = 2.0
FULL_STEP_FIRST_CHUNK = 4  # chunks grow about x6 from a step or a few: the fourth's time is the pace


def full_step_may_arrive(max_steps: int | None, steps_done: int, seconds_per_step: float, chunks_run: int,
                          trained_seconds: float, asked: bool) -> bool:  # fmt: skip
    """Whether to start compiling the full step now: when the run will train on for at least
    `FULL_STEP_MIN_REMAINING_SECONDS`. Asked again after every chunk.

    A run without an end (the page's): once it has trained that long since its first chunk (its
    past is the best guess of its future), or at once when `asked`: after a policy switch (its
    user switches policies: the next switch should not retrace) or by `wait_until_compiled`. A
    run stopped sooner never spent 3-4 s of a core on a step it could not use, while its page
    was being drawn.
    A bounded run: not before its fourth chunk (the first one's time holds the quick step's
    compile; the next ones are a step or a few, timed mostly by the call's own overhead) and not
    when the steps left take under that at the last chunk's pace (or the run's cap): the compile
    would not end before the run does, and a short CLI run waited 3.5 s at exit for it (its
    interpreter must not shut down while XLA compiles). A run slowed later (a pace) still gets it.
    Until then a policy switch retraces the quick step, as before the swap."""
    if max_steps is None:
        return asked or trained_seconds >= FULL_STEP_MIN_REMAINING_SECONDS
    # (A run that has just finished has no steps left: never.)
    return chunks_run >= FULL_STEP_FIRST_CHUNK and (max_steps - steps_done) * seconds_per_step >= FULL_STEP_MIN_REMAINING_SECONDS


def checked_flag(name: str, value: Any) -> bool:
    """True or False as given (numpy's too); bool("no") would have been True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True, False or None. Received: {name}={value!r}")


def opened_database(database: Any) -> "RunDatabase | None":
    """`Trainer(database=...)` as given: a RunDatabase, a location to open one at (as `LiveClipping`
    takes it), or None. Anything else is refused now, not when the run starts."""
    from ..runs.database import RunDatabase

    if database is None or isinstance(database, RunDatabase):
        return database
    if isinstance(database, (str, os.PathLike)):
        return RunDatabase(database)  # DatabaseError (a ValueError) naming an unusable location
    raise TypeError(
        "database must be a RunDatabase, a SQLite file's path or a PostgreSQL URL, or None. "
        f"Received: database={database!r}"
    )


def _nonfinite_failure(longest: int, limit: int) -> str:
    return (
        f"Stopped after {longest} consecutive non-finite steps (loss or gradient NaN/inf; limit "
        f"max_nonfinite_steps={limit}). Lower the learning rate or the clip threshold."
    )


def _nonfinite_runs(finite: np.ndarray, carried: int) -> tuple[int, int]:
    """(longest run of non-finite steps, counting `carried` from before; the trailing run)."""
    finite_positions = np.flatnonzero(finite)
    if len(finite_positions) == 0:
        run = carried + len(finite)
        return run, run
    gaps = np.diff(finite_positions) - 1
    longest = max(carried + finite_positions[0], int(gaps.max(initial=0)), len(finite) - 1 - finite_positions[-1])
    return longest, len(finite) - 1 - int(finite_positions[-1])


@atexit.register
def _stop_all_trainers() -> None:
    for trainer in list(_LIVE_TRAINERS):
        trainer.stop(timeout=1.0)
    wait_for_running_compiles()  # a compile still running at shutdown aborts the process
