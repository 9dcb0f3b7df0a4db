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
import queue
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from training import plugins, policies, streaming, xla_cache
from training.evaluation import Evaluator, empty_evaluations
from training.recorder import Recorder
from training.step_compiler import BackgroundCompile
from training.store import EVENT_COLUMNS, STEP_COLUMNS, MetricsStore
from training.xla_fallback import FallbackFunction
from training.persistence import RunDatabase, validate_run_name
from training.tasks import Task, get_task
from training.tasks.base import make_optimizer, resolve_loss

STATES = ("idle", "running", "paused", "stopped", "failed")
TARGET_CHUNK_SECONDS = 0.02  # keeps control latency to a few tens of milliseconds
MAX_CHUNK_STEPS = 2048  # the size of the in-graph metric buffers
DEFAULT_MAX_NONFINITE_STEPS = 50
MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed seeds numpy, whose seeds stop here
MAX_BATCH_SIZE = 65_536
# Above this the pace cannot be told from full speed, and pace x seconds would overflow to inf.
MAX_STEPS_PER_SECOND = 1e9
Sink = Callable[[dict[str, np.ndarray]], None]

_LIVE_TRAINERS: "weakref.WeakSet[Trainer]" = weakref.WeakSet()
_BUILD_LOCK = threading.Lock()

# Commands that, before the thread starts, just change the configuration of the run.
_CONFIG_FIELDS = {
    "clip_threshold": lambda config, value, params: {"clip_threshold": value},
    "learning_rate": lambda config, value, params: {"learning_rate": value},
    "max_steps_per_second": lambda config, value, params: {"max_steps_per_second": value},
    "policy": lambda config, value, params: {
        "policy": value,
        "policy_params": {**config.policy_params, value: params},
    },
}


@dataclass(frozen=True)
class RunConfig:
    """The settings in force (as applied by the training thread)."""

    task: str
    policy: str
    clip_threshold: float
    learning_rate: float
    batch_size: int
    seed: int
    policy_params: dict[str, dict[str, float]]  # per policy, all its parameters
    max_steps_per_second: float | None = None
    max_steps: int | None = None


@dataclass(frozen=True)
class TrainerStatus:
    state: str  # one of STATES
    step: int  # steps completed
    steps_per_second: float
    error: str | None = None  # why the run failed
    traceback: str | None = None
    nonfinite_steps: int = 0
    trace_count: int = 0  # how many times the compiled chunk was traced
    config: RunConfig | None = None
    chunk_steps: int = 0  # size of the last chunk
    run_id: int | None = None  # the run's id in the database, when it is persisted
    warning: str | None = None  # e.g. the database could not be written (the run goes on)
    # The full step (every policy, XLA) is still compiling in the background; meanwhile the run
    # trains on the quick step (the policy in force only, no XLA). See training/step_compiler.py.
    compiling: bool = False


@dataclass
class _Command:
    kind: str
    value: Any
    params: dict = field(default_factory=dict)


def validate_learning_rate(value: Any) -> float:
    """A learning rate: a finite number > 0 (ValueError naming the value otherwise)."""
    return policies.validate_positive("learning_rate", value)


def _validate_pace(value: Any) -> float | None:
    if value is None:
        return None
    pace = policies.validate_positive("max_steps_per_second", value)
    if pace > MAX_STEPS_PER_SECOND:
        raise ValueError(
            f"`max_steps_per_second` must be None (full speed) or a number in (0, "
            f"{MAX_STEPS_PER_SECOND:g}]. Received: max_steps_per_second={value!r}"
        )
    return pace


def _validate_count(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    whole = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))
    if not whole or value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be an integer {allowed}. Received: {name}={value!r}")
    return int(value)


def _validate_run_name(value: Any) -> str | None:
    """None or "" (the default name), or a name History can show as typed (as `rename_run`)."""
    if value is None or (isinstance(value, str) and value == ""):
        return value
    return validate_run_name(value)


class Trainer:
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
        database: a `persistence.RunDatabase` to write the run to (None: memory only).
        run_name: the run's name in the database (default: "run N: task / policy").
        quick_start: start on the quick step (the policy in force, no XLA) while the full step
            compiles in the background (training/step_compiler.py); False waits for the full
            step before the first step (the benchmark's side-by-side baseline).
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
        self._jit_compile = task_spec.jit_compile if jit_compile is None else bool(jit_compile)
        self._evaluator = None
        self._max_nonfinite_steps = _validate_count("max_nonfinite_steps", max_nonfinite_steps)
        self._sinks = tuple(sinks)
        self._monitoring = bool(monitoring)
        self._database, self._run_name = database, _validate_run_name(run_name)
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
            else _validate_count("batch_size", batch_size, maximum=MAX_BATCH_SIZE),
            seed=_validate_count("seed", seed, minimum=0, maximum=MAX_SEED),
            policy_params=all_params,
            max_steps=None if max_steps is None else _validate_count("max_steps", max_steps),
        )
        self._store_window = _validate_count("store_window", store_window)
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = TrainerStatus(state="idle", step=0, steps_per_second=0.0, config=self._config)
        self._store: MetricsStore | None = None
        self._store_ready = threading.Event()  # the model, store and steps are built
        self._trace_count = 0
        self._full_step_compile: BackgroundCompile | None = None
        self._full_step_wanted = False
        self._quick_start = bool(quick_start)
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

    def pause(self) -> None:
        self._send("pause", None)

    def resume(self) -> None:
        self._send("resume", None)

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

    def set_clip_threshold(self, value: Any) -> None:
        self._send("clip_threshold", policies.validate_clip_threshold(value))

    def set_learning_rate(self, value: Any) -> None:
        self._send("learning_rate", validate_learning_rate(value))

    def set_policy(self, name: str, **params: Any) -> None:
        """Switch policy (or change its parameters); missing parameters keep their values."""
        policies.validate_policy_name(name)
        with self._lock:
            # Merge with what was last *requested*, so two quick calls do not undo each other.
            current = self._requested_policy_params.get(name, self._config.policy_params[name])
            merged = policies.validate_policy_params(name, {**current, **params})
            self._requested_policy_params[name] = merged
        self._send("policy", name, merged)

    def inject_spike(self, factor: Any) -> None:
        """Multiply the next step's gradients by `factor` (before clipping), for demos."""
        self._send("spike", policies.validate_positive("factor", factor))

    def set_max_steps_per_second(self, value: Any) -> None:
        """Cap the pace (None: full speed), so a demo unfolds at a speed people can follow."""
        self._send("max_steps_per_second", _validate_pace(value))

    def _send(self, kind: str, value: Any, params: dict | None = None) -> None:
        with self._lock:
            state = self._status.state
            if state in ("stopped", "failed"):
                raise RuntimeError(f"The run is {state}; a {kind} command cannot change it.")
            if self._thread is None and kind in _CONFIG_FIELDS:
                # Before start, a setting simply configures the run the thread will build.
                self._config = replace(self._config, **_CONFIG_FIELDS[kind](self._config, value, params))
                self._set_status(config=self._config)
                return
            self._commands.put(_Command(kind, value, params or {}))
            self._wake.set()

    # --- reading (any thread) --------------------------------------------------------------------

    @property
    def status(self) -> TrainerStatus:
        return self._status

    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def writer(self):
        """The run's `persistence.RunWriter` (its `status` says what reached the database), or None."""
        return self._writer

    @property
    def trace_count(self) -> int:
        return self._trace_count

    @property
    def store(self) -> MetricsStore | None:
        """The run's store, once the thread has built the model (None before)."""
        return self._store

    def wait_until_ready(self, timeout: float = 60.0) -> bool:
        return self._store_ready.wait(timeout)

    def wait_until_compiled(self, timeout: float = 300.0) -> bool:
        """Wait until the run trains on its full step (every policy, XLA), or, if it ended
        before swapping it in, until that step's compile is over; True unless timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, compile_job = self._status, self._full_step_compile
            if not status.compiling and self._store_ready.is_set():
                return True
            if status.state not in ("idle", "running", "paused"):
                return compile_job is None or compile_job.wait(max(0.0, deadline - time.monotonic()))
            time.sleep(0.01)
        return False

    def metrics(self, since: int | None = None):
        return self._read("metrics", since)

    def layer_norms(self, since: int | None = None):
        return self._read("layer_norms", since)

    def evaluations(self):
        """Validation results: `step, time_s, name, value` (`val_loss`, `val_<metric>`)."""
        evaluator = self._evaluator
        return empty_evaluations() if evaluator is None else evaluator.frame()

    def events(self):
        store = self._store
        if store is None:
            import pandas as pd

            return pd.DataFrame(columns=list(EVENT_COLUMNS))
        return store.events()

    def _read(self, what: str, since):
        store = self._store
        if store is None:
            import pandas as pd

            columns = list(STEP_COLUMNS) if what == "metrics" else ["step"]
            return pd.DataFrame(columns=columns)
        self._wait_until_recorded(self._status.step)
        return getattr(store, what)(since)

    def _wait_until_recorded(self, step: int, timeout: float = 10.0) -> None:
        """Until the recorder has filed `step` (a chunk or two behind the training thread)."""
        recorder = self._recorder
        if recorder is None:
            return
        with self._recorded:
            self._recorded.wait_for(
                lambda: self._recorded_step >= step or recorder.error is not None or recorder.closed, timeout
            )

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
        self._set_status(state=state, error=error, traceback=trace, steps_per_second=0.0, warning=warning)

    def _build(self) -> None:
        import keras

        config, task = self._config, self._task
        with _BUILD_LOCK:  # tasks seed Keras' global RNG: two runs must not build at once
            model = task.build_model(config.seed)
        optimizer = make_optimizer(task.optimizer, config.learning_rate)
        variables = model.trainable_variables
        optimizer.build(variables)
        data = task.make_data(config.seed)
        plugins.check_data_matches_model(task, model, data)

        self._model, self._optimizer, self._variables = model, optimizer, variables
        self._variable_names = [_short_name(v) for v in variables]
        self._store = MetricsStore(self._variable_names, policies.POLICY_NAMES, window=self._store_window)
        if self._database is not None and self._monitoring:
            self._writer = self._database.start_run(
                config, self._variable_names, self._run_name, policies.POLICY_NAMES
            )
            self._set_status(run_id=self._writer.run_id)
        if self._monitoring:
            writer = (self._writer.append,) if self._writer is not None else ()
            self._recorder = Recorder((self._store.append, *writer, *self._sinks, self._publish_recorded))
        self._clip_threshold = tf.Variable(config.clip_threshold, dtype=tf.float32, trainable=False)
        live = config.policy_params
        self._percentile = tf.Variable(live["autoclip"]["percentile"], dtype=tf.float32, trainable=False)
        self._clip_factor = tf.Variable(live["agc"]["clip_factor"], dtype=tf.float32, trainable=False)
        self._z_threshold = tf.Variable(live["zclip"]["z_threshold"], dtype=tf.float32, trainable=False)
        self._policy_index = tf.Variable(
            policies.POLICY_NAMES.index(config.policy), dtype=tf.int32, trainable=False
        )
        self._spike = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        # Consecutive non-finite steps so far, carried from chunk to chunk: a chunk stops at the
        # step that reaches max_nonfinite_steps, so a failed run ends exactly at the limit.
        self._nonfinite_run = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._spike_pending = False
        if streaming.is_dataset(data) or self._data == "stream":
            self._iterator = iter(
                streaming.training_batches(
                    streaming.as_dataset(data), config.seed, config.batch_size, task.shuffle_buffer
                )
            )
            self._next_batch = lambda step: next(self._iterator)
            self._jit_compile = False  # the iterator's ops have no XLA kernels
        else:
            inputs, targets = data
            self._inputs, self._targets = tf.constant(inputs), tf.constant(targets)
            self._next_batch = self._gather_batch
        if task.make_validation_data is not None:
            validation = task.make_validation_data(config.seed)
            plugins.check_data_matches_model(task, model, validation, "make_validation_data")
            self._evaluator = Evaluator(
                task, model, resolve_loss(task.build_loss), validation, config.batch_size
            )
        self._build_policies()
        self._store_ready.set()

    def _build_policies(self) -> None:
        """Build every policy (for the in-graph switch) and the steps; traces anew.

        The run starts on the quick step at once; the full step compiles in the background
        after the quick step's first chunk (see `_swap_in_full_step`).
        """
        params = self._config.policy_params
        self._policies = [policies.make_policy(name, **params[name]) for name in policies.POLICY_NAMES]
        self._policy_states = [self._state_variables(policy) for policy in self._policies]
        self._full_step_compile = None  # a compile still running for the old policies is dropped
        self._fallback_reasons: list[str] = []  # XLA fallbacks of the compile thread, not yet recorded
        if not self._quick_start:
            self._chunk = self._full_step()
            return
        self._full_step_wanted = True
        self._chunk = self._quick_step()
        self._set_status(compiling=True)

    def _quick_step(self):
        """The step for the policy in force alone, not XLA-compiled: it traces and runs its first
        chunk in ~0.4 s where the full step takes 1.3-3.5 s (training/step_compiler.py)."""
        only_policy = int(self._policy_index.numpy())
        return tf.function(functools.partial(self._train_chunk, only_policy=only_policy))

    def _swap_in_full_step(self) -> None:
        """Between two chunks: start compiling the full step, or swap it in once it is ready."""
        if self._full_step_wanted:
            # Its XLA fallback, if any, happens on the compile thread: keep the reason and record
            # it here, on the training thread, when the step is swapped in.
            def full_step_later_reporting_fallback():
                return self._full_step(on_fallback=self._fallback_reasons.append)

            full_step = full_step_later_reporting_fallback()
            # Trace here, between two chunks (0.6-0.9 s): a trace on another thread fights this
            # one for the GIL. The XLA compile then runs in the background (GIL released); if
            # XLA cannot compile the step, its fallback runs there too (training/xla_fallback.py).
            full_step.get_concrete_function(tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int64))
            self._full_step_compile = BackgroundCompile(
                full_step,
                full_step_later_reporting_fallback,
                lambda: (tf.constant(0, tf.int32), tf.constant(self._steps_done, tf.int64)),
            )
            self._full_step_wanted = False
        compile_job = self._full_step_compile
        if compile_job is None or not compile_job.ready():
            return
        if compile_job.error is not None:
            raise compile_job.error
        self._chunk = compile_job.function
        self._full_step_compile = None
        while self._fallback_reasons:
            self._on_xla_fallback(self._fallback_reasons.pop(0))
        self._set_status(compiling=False)

    def _full_step(self, on_fallback: Callable[[str], None] | None = None):
        """Every policy in one `tf.switch_case`, XLA-compiled when it can be."""
        on_fallback = on_fallback or self._on_xla_fallback
        return FallbackFunction(self._train_chunk, self._jit_compile, on_fallback, self._drop_xla)

    def _drop_xla(self) -> None:
        self._jit_compile = False

    def _on_xla_fallback(self, reason: str) -> None:
        self._record("xla_fallback", "xla", reason)
        # One of the persistent cache's entries may be what failed: the next run compiles afresh.
        xla_cache.recover()

    def _state_variables(self, policy) -> tuple:
        return tuple(tf.Variable(value, trainable=False) for value in policy.init(self._variables))

    def _reset_policy_state(self, index: int) -> None:
        fresh = self._policies[index].init(self._variables)
        for variable, value in zip(self._policy_states[index], fresh):
            variable.assign(value)

    def _gather_batch(self, step):
        # Stateless sampling keyed on the step: reproducible, and XLA-friendly.
        count = tf.shape(self._inputs)[0]
        seed = tf.stack([tf.constant(self._config.seed, tf.int64), tf.cast(step, tf.int64)])
        index = tf.random.stateless_uniform(
            [self._config.batch_size], seed=seed, maxval=count, dtype=tf.int32
        )
        return tf.gather(self._inputs, index), tf.gather(self._targets, index)

    def _train_chunk(self, num_steps, first_step, only_policy: int | None = None):
        """Run `num_steps` (<= MAX_CHUNK_STEPS) training steps; return every step's metrics and
        `steps_run`: fewer than `num_steps` when the max_nonfinite_steps-th consecutive
        non-finite step came first (the chunk ends there).

        `only_policy`: the quick step, which applies that policy alone instead of switching.
        """
        if only_policy is None:
            self._trace_count += 1  # Python side effect: runs once per trace of the full step
        model, optimizer, variables = self._model, self._optimizer, self._variables
        loss_function = resolve_loss(self._task.build_loss)
        settings = policies.ClipSettings(
            self._clip_threshold.read_value(),
            self._percentile.read_value(),
            self._clip_factor.read_value(),
            self._z_threshold.read_value(),
        )
        states = tuple(tuple(v.read_value() for v in state) for state in self._policy_states)
        policy_index = self._policy_index.read_value()
        buffer_size = num_steps if self._jit_compile is False or only_policy is not None else MAX_CHUNK_STEPS
        buffers = {
            # XLA needs a static size; without it, a buffer of the chunk's own size is cheaper
            # to stack (a 1-step chunk of a heavy task would stack 2,048 empty slots).
            name: tf.TensorArray(dtype, size=buffer_size, element_shape=shape)
            for name, dtype, shape in (
                ("loss", tf.float32, []),
                ("grad_norm", tf.float32, []),
                ("clipped_grad_norm", tf.float32, []),
                ("clip_threshold", tf.float32, []),
                ("clipped", tf.bool, []),
                ("finite", tf.bool, []),
                ("layer_norms", tf.float32, [len(variables)]),
            )
            if self._monitoring
        }
        # Without monitoring nothing reads `finite`, so nothing fails the run: no limit either.
        nonfinite_limit = self._max_nonfinite_steps if self._monitoring else None

        def one_step(i, nonfinite_run, states, buffers):
            inputs, targets = self._next_batch(first_step + tf.cast(i, tf.int64))
            with tf.GradientTape() as tape:
                loss = loss_function(targets, model(inputs, training=True))
            gradients = tape.gradient(loss, variables)
            spike = tf.where(tf.equal(i, 0), self._spike, 1.0)  # a demo spike hits one step
            gradients = [g * spike for g in gradients]

            def apply_policy(index):
                clipped, state, stats = self._policies[index].update(
                    gradients, states[index], settings, variables
                )
                return clipped, states[:index] + (state,) + states[index + 1 :], stats

            if only_policy is None:
                branches = [lambda index=index: apply_policy(index) for index in range(len(states))]
                clipped, new_states, stats = tf.switch_case(policy_index, branches)
            else:
                clipped, new_states, stats = apply_policy(only_policy)

            # A non-finite step changes nothing: no update, and no adaptive history either.
            finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(stats.grad_norm))
            tf.cond(finite, lambda: optimizer.apply(clipped, variables), lambda: None)
            nonfinite_run = tf.where(finite, tf.constant(0, tf.int64), nonfinite_run + 1)
            states = tf.nest.map_structure(
                lambda new, old: tf.where(finite, new, old), new_states, states
            )
            record = {
                "loss": loss,
                "grad_norm": stats.grad_norm,
                "clipped_grad_norm": stats.clipped_grad_norm,
                "clip_threshold": tf.cast(stats.clip_threshold, tf.float32),
                "clipped": stats.clipped,
                "finite": finite,
                "layer_norms": stats.variable_norms,
            }
            buffers = {name: buffers[name].write(i, record[name]) for name in buffers}
            return i + 1, nonfinite_run, states, buffers

        def more_steps(i, nonfinite_run, states, buffers):
            if nonfinite_limit is None:
                return i < num_steps
            return tf.logical_and(i < num_steps, nonfinite_run < nonfinite_limit)

        steps_run, nonfinite_run, states, buffers = tf.while_loop(
            more_steps,
            one_step,
            (tf.constant(0), self._nonfinite_run.read_value(), states, buffers),
            maximum_iterations=MAX_CHUNK_STEPS,
        )

        def write_back_states():
            for variables_of_policy, state in zip(self._policy_states, states):
                for variable, value in zip(variables_of_policy, state):
                    variable.assign(value)
            self._nonfinite_run.assign(nonfinite_run)

        # A zero-step call (the background compile) must not write back states it read while the
        # quick step was updating them.
        tf.cond(num_steps > 0, write_back_states, lambda: None)
        return {"steps_run": steps_run, **{name: buffer.stack() for name, buffer in buffers.items()}}

    def _loop(self) -> tuple[str, str | None]:
        """Train until stopped, finished or failed; return (final state, error)."""
        chunk_steps = 16
        pace_start_time, pace_start_step = time.perf_counter(), 0
        recent: collections.deque = collections.deque(maxlen=64)  # (time, step) per chunk
        nonfinite_total, nonfinite_run = 0, 0
        self._record("start", None, self._config.policy)
        while True:
            paced_before = self._config.max_steps_per_second
            steered = self._apply_commands()
            if self._config.max_steps_per_second != paced_before:
                pace_start_time, pace_start_step = time.perf_counter(), self._steps_done
            if self._stop_requested.is_set():
                self._record("stop", None, None)
                return "stopped", None
            if self._status.state == "paused":
                self._wake.wait(0.5)
                self._wake.clear()
                pace_start_time, pace_start_step = time.perf_counter(), self._steps_done
                recent.clear()
                continue
            step = self._steps_done
            max_steps, pace = self._config.max_steps, self._config.max_steps_per_second
            if max_steps is not None and step >= max_steps:
                self._evaluate(step)  # once at the end
                self._record("finished", None, step)
                return "stopped", None
            steps = chunk_steps
            if steered:
                steps = max(1, chunk_steps // 4)  # show the effect of a command sooner
            if pace is not None:
                # ~10 updates a second; a chunk that fell behind (the UI took the CPU) catches up.
                behind = int((time.perf_counter() - pace_start_time) * pace) - (step - pace_start_step)
                steps = min(steps, max(1, int(pace * 0.1), behind))
            if max_steps is not None:
                steps = min(steps, max_steps - step)
            if self._evaluator is not None:  # a chunk ends exactly where an evaluation is due
                steps = min(steps, self._evaluator.steps_until_due(step))

            started = time.perf_counter()
            out = self._chunk(tf.constant(steps, tf.int32), tf.constant(step, tf.int64))
            steps = int(out.pop("steps_run"))  # the host sync; < steps at the non-finite limit
            if self._monitoring:
                rows = {"finite": out["finite"].numpy()[:steps]}
                # The rest of the rows, the store, the database queue and the sinks: on the
                # recorder thread, overlapping the next chunk (training/recorder.py).
                self._recorder.submit(
                    functools.partial(
                        self._rows, out, step, steps, time.time(), time.perf_counter() - started,
                        self._config.learning_rate, self._config.policy,
                    )
                )
                if self._writer is not None and self._writer.status.warning != self._status.warning:
                    self._set_status(warning=self._writer.status.warning)  # a fault, or its end
            else:
                rows = {"finite": np.ones(steps, bool)}  # eager calls return when the chunk is done
            elapsed = time.perf_counter() - started
            if self._spike_pending:
                self._spike.assign(1.0)
                self._spike_pending = False

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
            self._steps_done = step + steps
            self._set_status(
                step=self._steps_done,
                steps_per_second=speed,
                nonfinite_steps=nonfinite_total,
                trace_count=self._trace_count,
                chunk_steps=steps,
            )
            # The chunk is handed over and counted: now start compiling the full step (its trace
            # holds this thread 0.6-0.9 s, which must not delay the first step on screen), or swap
            # it in for the next chunk. Not for a run that has just finished: a short CLI run
            # would wait for a compile.
            if max_steps is None or self._steps_done < max_steps:
                self._swap_in_full_step()
            if longest >= self._max_nonfinite_steps:
                reason = (
                    f"Stopped after {longest} consecutive non-finite steps (loss or gradient "
                    f"NaN/inf; limit max_nonfinite_steps={self._max_nonfinite_steps}). "
                    "Lower the learning rate or the clip threshold."
                )
                self._record("failed", None, reason)
                return "failed", reason
            if pace is not None:
                due = pace_start_time + (step + steps - pace_start_step) / pace
                if due < time.perf_counter() - 1.0:  # far behind (a compile): no catch-up burst
                    pace_start_time, pace_start_step = time.perf_counter(), step + steps
                    due = pace_start_time
                while (delay := due - time.perf_counter()) > 0 and not self._stop_requested.is_set():
                    if self._wake.wait(min(delay, 0.05)):
                        break  # a command arrived: apply it now

    @staticmethod
    def _rows(
        out, first_step: int, steps: int, now: float, duration: float, learning_rate: float, policy: str
    ) -> dict[str, np.ndarray]:
        """One chunk's per-step columns (runs on the recorder thread; arguments as of the chunk)."""
        rows = {name: tensor.numpy()[:steps] for name, tensor in out.items()}
        rows["step"] = np.arange(first_step + 1, first_step + steps + 1, dtype=np.int64)
        # Steps inside a chunk are not timed one by one: spread the chunk's wall time evenly.
        rows["time_s"] = now - duration + duration * np.arange(1, steps + 1) / steps
        rows["learning_rate"] = np.full(steps, learning_rate, np.float32)
        rows["policy"] = np.full(steps, policies.POLICY_NAMES.index(policy), np.int8)
        return rows

    def _publish_recorded(self, rows: dict[str, np.ndarray]) -> None:
        """The recorder's last consumer: every sink has the chunk, so `metrics()` may return it."""
        with self._recorded:
            self._recorded_step = int(rows["step"][-1])
            self._recorded.notify_all()

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

    def _apply_commands(self) -> bool:
        """Apply every queued command; return whether there was any."""
        self._wake.clear()
        applied = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return applied
            self._apply(command)
            applied = True

    def _apply(self, command: _Command) -> None:
        config, kind, value = self._config, command.kind, command.value
        if kind == "pause" and self._status.state == "running":
            if self._recorder is not None:
                self._recorder.flush()  # a paused run shows every step it trained
            self._set_status(state="paused", steps_per_second=0.0)
            self._record("pause", None, None)
        elif kind == "resume" and self._status.state == "paused":
            self._set_status(state="running")
            self._record("resume", None, None)
        elif kind == "clip_threshold":
            self._clip_threshold.assign(value)
            self._record("clip_threshold", config.clip_threshold, value)
            self._config = replace(config, clip_threshold=value)
        elif kind == "learning_rate":
            self._optimizer.learning_rate.assign(value)
            self._record("learning_rate", config.learning_rate, value)
            self._config = replace(config, learning_rate=value)
        elif kind == "spike":
            self._spike.assign(value)
            self._spike_pending = True
            self._record("spike", None, value)
        elif kind == "max_steps_per_second":
            self._record("max_steps_per_second", config.max_steps_per_second, value)
            self._config = replace(config, max_steps_per_second=value)
        elif kind == "policy":
            self._apply_policy(value, command.params)
        self._set_status(config=self._config)

    def _apply_policy(self, name: str, params: dict) -> None:
        config = self._config
        old_params = config.policy_params[name]
        all_params = {**config.policy_params, name: params}
        self._config = replace(config, policy=name, policy_params=all_params)
        spec = policies.POLICY_PARAMETERS[name]
        structural_changed = any(
            not spec[key].live and params[key] != old_params[key] for key in params
        )
        index = policies.POLICY_NAMES.index(name)
        self._policy_index.assign(index)
        if structural_changed:
            self._build_policies()  # a new buffer size or constant: this one retraces
        elif name != config.policy:
            self._reset_policy_state(index)
            if self._full_step_compile is not None or self._full_step_wanted:
                self._chunk = self._quick_step()  # still on the quick step: now for this policy
        live = {"percentile": self._percentile, "clip_factor": self._clip_factor, "z_threshold": self._z_threshold}
        for key, variable in live.items():
            if key in params:
                variable.assign(params[key])
        if name != config.policy:
            self._record("policy", config.policy, name)
        for key in params:
            if params[key] != old_params[key]:
                self._record(f"{name}.{key}", old_params[key], params[key])


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


def _nonfinite_runs(finite: np.ndarray, carried: int) -> tuple[int, int]:
    """(longest run of non-finite steps, counting `carried` from before; the trailing run)."""
    finite_positions = np.flatnonzero(finite)
    if len(finite_positions) == 0:
        run = carried + len(finite)
        return run, run
    gaps = np.diff(finite_positions) - 1
    longest = max(carried + finite_positions[0], int(gaps.max(initial=0)), len(finite) - 1 - finite_positions[-1])
    return longest, len(finite) - 1 - int(finite_positions[-1])


def _short_name(variable) -> str:
    path = getattr(variable, "path", variable.name)
    parts = path.split("/")
    return "/".join(parts[1:]) if len(parts) > 2 else path


@atexit.register
def _stop_all_trainers() -> None:
    for trainer in list(_LIVE_TRAINERS):
        trainer.stop(timeout=1.0)
    for trainer in list(_LIVE_TRAINERS):
        # A compile still running when the interpreter shuts down aborts the process
        # ("terminate called after throwing"): let it finish first.
        compile_job = trainer._full_step_compile
        if compile_job is not None:
            compile_job.wait(60.0)
