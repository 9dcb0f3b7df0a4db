"""Attach Clipwatch to a Keras training script you already have: live clipping, every step
recorded into the run database, and live control from the page through that database.

    from training.keras import LiveClipping

    clipping = LiveClipping(policy="global_norm", clip_threshold=1.0,
                            database="runs/clipwatch.db", run_name="my model")
    model.compile(optimizer=clipping.wrap(keras.optimizers.Adam(1e-3)), loss="mse")
    model.fit(dataset, epochs=5, callbacks=[clipping.callback()])

How it works:

* `wrap(optimizer)` replaces three methods on that one optimizer instance (`apply`, `scale_loss`
  to see the loss, and the TensorFlow optimizer's all-reduce); its class is unchanged, so
  `model.save`, `get_config` and checkpoints behave as before. Clipwatch's variables live on the
  `LiveClipping` object, never on the optimizer, so they stay out of its checkpoint.
* In the graph, every step: one all-reduce carries the replicas' gradients, their losses and the
  first replica's live knobs; the sum is clipped once with the trainer's own policies (one
  `tf.switch_case` over all of them, knobs as variables: no retrace on change); one row of
  metrics goes into a ring-buffer variable. Keras 3 on TensorFlow clips each replica's gradient
  *before* its all-reduce (`BaseOptimizer._backend_apply_gradients` calls `_clip_gradients`,
  then `TFOptimizer._backend_update_step` calls `_all_reduce_sum_gradients`), so with N
  replicas its `global_clipnorm` lets through up to N times the threshold; here the optimizer's
  own all-reduce becomes a pass-through, the gradients being summed already.
* Between batches, the callback (or `sync()` in a custom loop) copies the ring out into a
  `MetricsStore` and the run's `RunWriter` (the writer of the app's own runs), and applies the
  commands a background thread reads from the database's `commands` table.

The training never fails because of Clipwatch's bookkeeping: if the database cannot be opened
or written, a warning is logged once and the steps stay in memory (`metrics()`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training import policies
from training.persistence import DatabaseError, RunDatabase, default_path
from training.store import MetricsStore
from training.trainer import RunConfig, _short_name

logger = logging.getLogger(__name__)

# Five polls a second: one indexed SELECT each (about 0.1 ms), from a thread of its own.
POLL_SECONDS = 0.2
# The ring is copied out at most this often (and whenever it is half full): reading it costs a
# host sync, which per batch would show in a fast model's speed.
DRAIN_SECONDS = 0.25
RING_STEPS = 1024
# Columns of the in-graph ring, then one per trainable variable (its pre-clip norm).
RING_COLUMNS = (
    "loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped", "finite",
    "learning_rate", "policy",
)  # fmt: skip
# The live knobs, one float32 vector, so one read (and one broadcast) serves a step.
KNOBS = ("clip_threshold", "percentile", "clip_factor", "z_threshold", "policy", "spike", "stop")
_KNOB = {name: index for index, name in enumerate(KNOBS)}
_CLIPPING_ARGUMENTS = ("clipnorm", "clipvalue", "global_clipnorm")
_LIVE_CLIPPINGS: "weakref.WeakSet[LiveClipping]" = weakref.WeakSet()


@dataclass(frozen=True)
class AttachedRunConfig(RunConfig):
    """A `RunConfig` for a run that a user's own script records (`task` is "attached")."""

    attached: bool = True
    model: str = ""
    replicas: int = 1


class LiveClipping:
    """Clip a Keras model's gradients with a Clipwatch policy, record every step, obey commands.

    Args:
        policy: a name from `training.policies.POLICY_NAMES`.
        clip_threshold: c, a finite number > 0 (the cap for `zclip`).
        database: a path (or a `RunDatabase`) to record into; None takes the app's default
            (`CLIPWATCH_DB` or runs/clipwatch.db); False records in memory only.
        run_name: the run's name in History.
        ring_steps: rows of the in-graph buffer; at least twice `steps_per_execution`.
        poll_seconds: how often the command table is read.
        window: steps kept in memory at full resolution (see `metrics()`).
        **policy_params: parameters of the policy (see `policies.POLICY_PARAMETERS`).
    """

    def __init__(
        self,
        policy: str = "global_norm",
        clip_threshold: float = 1.0,
        database: "str | os.PathLike | RunDatabase | None | bool" = None,
        run_name: str | None = None,
        *,
        ring_steps: int = RING_STEPS,
        poll_seconds: float = POLL_SECONDS,
        window: int = 100_000,
        **policy_params: Any,
    ):
        policies.validate_policy_name(policy)
        self._policy_params = {name: policies.validate_policy_params(name, {}) for name in policies.POLICY_NAMES}
        self._policy_params[policy] = policies.validate_policy_params(policy, policy_params)
        self._policy = policy
        self._knob_values = np.array(
            [
                policies.validate_clip_threshold(clip_threshold),
                self._policy_params["autoclip"]["percentile"],
                self._policy_params["agc"]["clip_factor"],
                self._policy_params["zclip"]["z_threshold"],
                policies.POLICY_NAMES.index(policy),
                1.0,  # spike factor
                0.0,  # stop
            ],
            np.float32,
        )
        if isinstance(ring_steps, bool) or not isinstance(ring_steps, int) or ring_steps < 2:
            raise ValueError(f"`ring_steps` must be an integer >= 2. Received: ring_steps={ring_steps!r}")
        self._ring_steps = ring_steps
        self._poll_seconds = policies.validate_positive("poll_seconds", poll_seconds)
        self._window = window
        self._database_setting = database
        self._run_name = run_name
        self._optimizer = None
        self._strategy = None
        self._built = False
        self._seen_loss = threading.local()  # MirroredStrategy traces each replica in a thread
        self._warned: set[str] = set()
        self.warning: str | None = None  # the last warning (e.g. the database is not written)
        self._store: MetricsStore | None = None
        self._writer = None
        self._database: RunDatabase | None = None
        self._began = self._stop = self._paused = False
        self._steps_before_run = 0
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()  # commands read by the poller
        self._acknowledgements: queue.SimpleQueue = queue.SimpleQueue()
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()
        _LIVE_CLIPPINGS.add(self)

    # --- public API -------------------------------------------------------------------------

    def wrap(self, optimizer):
        """Make `optimizer` clip with this policy (and record every step); returns it.

        Refuses an optimizer that clips already (`clipnorm`, `clipvalue`, `global_clipnorm`):
        gradients must never be clipped twice.
        """
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"LiveClipping needs Keras' TensorFlow backend. Received: backend="
                f"{keras.backend.backend()!r}"
            )
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            raise ValueError(
                "`wrap` takes a Keras optimizer (not a LossScaleOptimizer). "
                f"Received: optimizer={optimizer!r}"
            )
        clipping = {name: getattr(optimizer, name, None) for name in _CLIPPING_ARGUMENTS}
        if any(value is not None for value in clipping.values()):
            received = ", ".join(f"{name}={value}" for name, value in clipping.items())
            raise ValueError(
                "`wrap` refuses an optimizer that already clips: the gradients would be clipped "
                f"twice. Received: {received}. Create the optimizer without them; the Clipwatch "
                "policy does the clipping (`global_norm` is global_clipnorm, `per_tensor_norm` "
                "is clipnorm, `value` is clipvalue)."
            )
        if getattr(optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "`wrap` does not support gradient accumulation. Received: "
                f"gradient_accumulation_steps={optimizer.gradient_accumulation_steps}"
            )
        if getattr(optimizer, "_clipwatch_wrapped", False) or self._optimizer is not None:
            raise ValueError("This optimizer (or this LiveClipping) is already wrapped: wrap once.")

        original_apply, original_scale_loss = optimizer.apply, optimizer.scale_loss

        @tf.autograph.experimental.do_not_convert
        def apply(gradients, trainable_variables=None):
            variables = list(
                optimizer._trainable_variables if trainable_variables is None else trainable_variables
            )
            clipped = self._clip_step(list(gradients), variables, self._take_loss())
            return original_apply(clipped, variables)

        def scale_loss(loss):
            self._seen_loss.value = loss  # the loss of the step being traced, for the record
            return original_scale_loss(loss)

        def already_summed(grads_and_vars):
            return list(grads_and_vars)  # `apply` summed them across replicas, before clipping

        # object.__setattr__: the optimizer's trackers must not see these (nor checkpoint them).
        for name, function in (
            ("apply", apply),
            ("scale_loss", scale_loss),
            ("_all_reduce_sum_gradients", already_summed),
            ("_clipwatch_wrapped", True),
        ):
            object.__setattr__(optimizer, name, function)
        self._optimizer = optimizer
        self._strategy = getattr(optimizer, "_distribution_strategy", None)
        return optimizer

    def callback(self) -> keras.callbacks.Callback:
        """The callback for `model.fit`: records every step, applies commands, ends the run."""
        return _LiveClippingCallback(self)

    @tf.autograph.experimental.do_not_convert  # plain Python control flow; converting it costs seconds
    def clip(self, gradients, variables, loss=None) -> list:
        """Clip `gradients` (of `variables`) with the policy and record the step.

        For custom `GradientTape` loops that call `optimizer.apply_gradients` themselves (with
        an optimizer that is not wrapped). Called eagerly it also records the step at once;
        inside a `tf.function`, call `sync()` after each step. Pass `loss` to record it.
        """
        gradients, variables = list(gradients), list(variables)
        if len(gradients) != len(variables):
            raise ValueError(
                "`clip` needs one gradient per variable. Received: "
                f"{len(gradients)} gradients, {len(variables)} variables"
            )
        clipped = self._clip_step(gradients, variables, loss)
        if tf.executing_eagerly():
            self.sync()
        return clipped

    def sync(self) -> bool:
        """Between steps: record the buffered steps, apply commands (wait while paused).

        Returns True once a `stop` command asks the training to end. The callback calls it
        after every batch; custom loops call it after every step (or `clip` does, eagerly).
        """
        if not self._built:
            return False
        self._begin()
        return self._between_batches(None)

    def close(self, state: str = "stopped") -> None:
        """End the run: record the last steps, the final state, stop polling. Idempotent."""
        if not self._began:
            return
        self._began = False
        steps_done = self._steps_done()
        self._drain(steps_done)
        self._steps_before_run += steps_done
        if not self._stop:
            self._record(steps_done, "finished", None, steps_done)
        self._closing.set()
        if self._poller is not None:
            self._poller.join(2 * self._poll_seconds + 1.0)
            self._poller = None
        if self._writer is not None:
            self._writer.finish(state)
            self._warn_on_writer_error()

    @property
    def run_id(self) -> int | None:
        return None if self._writer is None else self._writer.run_id

    @property
    def stop_requested(self) -> bool:
        return self._began and self._stop

    def metrics(self, since: int | None = None):
        """Every recorded step in memory, with the columns of `Trainer.metrics()`."""
        return self._require_store().metrics(since)

    def layer_norms(self, since: int | None = None):
        return self._require_store().layer_norms(since)

    def events(self):
        return self._require_store().events()

    # --- the graph side ---------------------------------------------------------------------

    def _take_loss(self):
        loss = getattr(self._seen_loss, "value", None)
        self._seen_loss.value = None
        if loss is None:
            return None
        try:
            graph = loss.graph
        except AttributeError:  # an eager tensor
            return loss
        return loss if graph is tf.compat.v1.get_default_graph() else None  # not a stale trace

    def build(self, variables) -> None:
        """Create Clipwatch's variables for the model's trainable `variables`.

        The callback does this for `fit`; a custom loop under a tf.distribute strategy calls it
        once, in the strategy's scope and outside `strategy.run`.
        """
        self._ensure_built(list(variables))

    def _ensure_built(self, variables) -> None:
        """Create Clipwatch's variables (outside any trace) for `variables`; once."""
        if self._built:
            if len(variables) != len(self._variable_names):
                raise ValueError(
                    f"LiveClipping was built for {len(self._variable_names)} variables. Received: "
                    f"{len(variables)} variables; use one LiveClipping per model."
                )
            return
        strategy = self._strategy or tf.distribute.get_strategy()
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.strategy is strategy and strategy.num_replicas_in_sync > 1:
            raise ValueError(
                "LiveClipping cannot create its variables inside a replica: pass "
                "`clipping.callback()` to fit (or call clip once outside strategy.run)."
            )
        self._strategy = strategy
        with tf.init_scope(), _scope(strategy):
            # ON_READ + ONLY_FIRST_REPLICA: each replica keeps (and writes) a copy of its own;
            # they stay equal because every replica clips the same summed gradient.
            def variable(value, name, dtype=tf.float32):
                return tf.Variable(
                    value,
                    dtype=dtype,
                    trainable=False,
                    name=f"clipwatch_{name}",
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )

            self._knobs = variable(self._knob_values, "knobs")
            self._steps = variable(0, "steps", tf.int64)
            self._stop_shared = variable(0.0, "stop")
            self._ring = variable(
                tf.zeros([self._ring_steps, len(RING_COLUMNS) + len(variables)]), "ring"
            )
            self._policies = [
                policies.make_policy(name, **self._policy_params[name]) for name in policies.POLICY_NAMES
            ]
            self._policy_states = [
                tuple(variable(value, f"{policy.name}_state", tf.as_dtype(tf.convert_to_tensor(value).dtype))
                      for value in policy.init(variables))
                for policy in self._policies
            ]  # fmt: skip
        self._variable_names = [_short_name(v) for v in variables]
        self._store = MetricsStore(self._variable_names, policies.POLICY_NAMES, window=self._window)
        self._built = True


    def _clip_core(self, dense, kept_values, knobs, loss, learning_rate, states, known_loss, present, count):
        """Clip with the active policy (one `tf.switch_case` over all of them, as in the trainer)
        and build the step's row; tensors in, tensors out. Measured in CPU time on the seed
        model, the switch over seven policies costs about 0.1 ms a step of the ~0.2 ms that
        Clipwatch adds; XLA-compiling this part did not make it cheaper on CPU."""
        settings = policies.ClipSettings(*(knobs[_KNOB[name]] for name in KNOBS[:4]))
        policy_index = tf.cast(knobs[_KNOB["policy"]], tf.int32)
        dense = [gradient * tf.cast(knobs[_KNOB["spike"]], gradient.dtype) for gradient in dense]

        def apply_policy(index):
            clipped, new, stats = self._policies[index].update(dense, states[index], settings, kept_values)
            finite = tf.math.is_finite(stats.grad_norm)
            if known_loss:
                finite = tf.logical_and(finite, tf.math.is_finite(loss))
            # A non-finite step leaves the adaptive history alone (as in the trainer).
            new = tuple(tf.where(finite, n, o) for n, o in zip(new, states[index]))
            return clipped, states[:index] + (new,) + states[index + 1 :], stats, finite

        branches = [lambda index=index: apply_policy(index) for index in range(len(self._policies))]
        clipped, new_states, stats, finite = tf.switch_case(policy_index, branches)
        layer_norms = tf.scatter_nd([[index] for index in present], stats.variable_norms, [count])
        row = tf.concat(
            [
                tf.stack([
                    loss, stats.grad_norm, stats.clipped_grad_norm,
                    tf.cast(stats.clip_threshold, tf.float32), tf.cast(stats.clipped, tf.float32),
                    tf.cast(finite, tf.float32), learning_rate, tf.cast(policy_index, tf.float32),
                ]),  # fmt: skip
                layer_norms,
            ],
            0,
        )
        return clipped, new_states, row

    @tf.autograph.experimental.do_not_convert
    def _clip_step(self, gradients, variables, loss):
        """One step in the graph: sum across replicas, clip once, record a row. Returns the
        clipped gradients (None where a gradient is None)."""
        self._ensure_built(variables)
        present = [index for index, gradient in enumerate(gradients) if gradient is not None]
        dense = [tf.convert_to_tensor(gradients[index]) for index in present]
        known_loss = loss is not None
        loss = tf.reshape(tf.cast(loss, tf.float32), []) if known_loss else tf.constant(0.0)
        knobs = tf.identity(self._knobs)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # One all-reduce: the gradients (each replica's loss is already divided by the
            # replica count, so the sum is the gradient of the whole batch), the loss, and the
            # first replica's knobs (zeros elsewhere): the chief's values, on every worker.
            first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float32)
            summed = context.all_reduce(
                tf.distribute.ReduceOp.SUM, [*dense, loss, knobs * first]
            )
            dense, loss, knobs = summed[:-2], summed[-2], summed[-1]
        if not known_loss:
            loss = tf.constant(math.nan)
        states = tuple(tuple(v.read_value() for v in state) for state in self._policy_states)
        learning_rate = (
            tf.cast(self._optimizer.learning_rate, tf.float32) if self._optimizer is not None
            else tf.constant(math.nan)
        )  # fmt: skip
        kept_values = [tf.convert_to_tensor(variables[index]) for index in present]
        clipped, new_states, row = self._clip_core(
            dense, kept_values, knobs, loss, learning_rate, states, known_loss, present, len(variables)
        )
        for state_variables, values in zip(self._policy_states, new_states):
            for variable, value in zip(state_variables, values):
                variable.assign(value)
        step = self._steps.read_value() + 1
        _scatter(self._ring, (step - 1) % self._ring_steps, row)
        self._steps.assign(step)  # after the row: a reader that sees the count sees the row
        self._stop_shared.assign(knobs[_KNOB["stop"]])
        _scatter(self._knobs, _KNOB["spike"], 1.0)  # a demo spike hits one step
        result = list(gradients)
        for index, gradient in zip(present, clipped):
            result[index] = gradient
        return result

    # --- the host side: between batches -----------------------------------------------------

    def _require_store(self) -> MetricsStore:
        if self._store is None:
            raise ValueError("Nothing recorded yet: LiveClipping has not seen a training step.")
        return self._store

    def _warn_once(self, key: str, message: str) -> None:
        self.warning = message
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("Clipwatch: %s", message)

    def _warn_on_writer_error(self) -> None:
        if self._writer is not None and self._writer.error:
            self._warn_once("writer", f"{self._writer.error} Steps are kept in memory.")

    def _steps_done(self) -> int:
        return int(self._steps.numpy()) - self._step_offset

    def _begin(self, model=None) -> None:
        """Start a run (once per fit): the record in the database and the command poller."""
        if self._began:
            return
        self._began, self._stop, self._paused = True, False, False
        strategy = self._strategy
        extended = strategy.extended
        self._is_chief = bool(getattr(extended, "should_checkpoint", True))
        replicas = strategy.num_replicas_in_sync
        self._multi_worker = replicas > 1 and replicas > len(extended.worker_devices)
        self._step_offset = self._steps_before_run  # the graph's count when the last run closed
        self._drained = 0
        self._marks = [(0, time.time())]
        self._last_drain = time.monotonic()
        self._closing.clear()
        self._writer = None
        if self._is_chief and self._database_setting is not False:
            self._open_run(model)
        self._record(0, "start", None, self._policy)

    def _open_run(self, model) -> None:
        setting = self._database_setting
        try:
            if self._database is None:
                self._database = setting if isinstance(setting, RunDatabase) else RunDatabase(
                    default_path() if setting is None else setting
                )
            learning_rate = 0.0
            if self._optimizer is not None and isinstance(self._optimizer._learning_rate, keras.Variable):
                learning_rate = float(self._optimizer.learning_rate.numpy())
            config = AttachedRunConfig(
                task="attached",
                policy=self._policy,
                clip_threshold=float(self._knob_values[_KNOB["clip_threshold"]]),
                learning_rate=learning_rate,
                batch_size=0,  # not known to the optimizer
                seed=0,
                policy_params=self._policy_params,
                model=getattr(model, "name", "") or "",
                replicas=self._strategy.num_replicas_in_sync,
            )
            self._writer = self._database.start_run(
                config, self._variable_names, self._run_name, policies.POLICY_NAMES
            )
        except (DatabaseError, sqlite3.Error, OSError) as error:
            self._warn_once("database", f"{error} The run is kept in memory only.")
            return
        self._poller = threading.Thread(
            target=self._poll, args=(self._database, self._writer.run_id),
            name="clipwatch-commands", daemon=True,
        )  # fmt: skip
        self._poller.start()

    def _between_batches(self, steps_done: int | None) -> bool:
        now = time.time()
        if steps_done is None:
            steps_done = self._steps_done()
        self._marks.append((steps_done, now))
        has_commands = not self._incoming.empty()
        due = (
            steps_done - self._drained >= self._ring_steps // 2
            or time.monotonic() - self._last_drain >= DRAIN_SECONDS
        )
        if due or has_commands:
            self._drain(steps_done)
        if has_commands:
            self._apply_commands(steps_done)
        while self._paused and not self._stop:
            try:
                command = self._incoming.get(timeout=self._poll_seconds)
            except queue.Empty:
                self._drain(steps_done)
                continue
            self._apply_commands(steps_done, [command])
        if self._multi_worker and float(self._stop_shared.numpy()) > 0:
            self._stop = True  # every worker sees the chief's stop after the same step
        return self._stop

    def _drain(self, steps_done: int) -> None:
        """Copy the steps the graph wrote since the last drain into the store and the writer."""
        self._last_drain = time.monotonic()
        new = steps_done - self._drained
        if new <= 0:
            return
        first = self._drained
        if new > self._ring_steps:
            lost = new - self._ring_steps
            self._warn_once(
                "ring",
                f"{lost} steps ran without a drain and were overwritten in the ring of "
                f"{self._ring_steps}: pass clipping.callback() to fit, or call sync() every step.",
            )
            first = steps_done - self._ring_steps
        steps = np.arange(first + 1, steps_done + 1, dtype=np.int64)
        ring = self._ring.numpy()[(steps + self._step_offset - 1) % self._ring_steps]
        mark_steps, mark_times = zip(*self._marks)
        columns = {name: ring[:, index] for index, name in enumerate(RING_COLUMNS)}
        rows = {
            "step": steps,
            # Steps inside one execution are not timed one by one: spread its time evenly.
            "time_s": np.interp(steps, mark_steps, mark_times),
            "loss": columns["loss"],
            "grad_norm": columns["grad_norm"],
            "clipped_grad_norm": columns["clipped_grad_norm"],
            "clip_threshold": columns["clip_threshold"],
            "clipped": columns["clipped"] > 0.5,
            "finite": columns["finite"] > 0.5,
            "learning_rate": columns["learning_rate"],
            "policy": columns["policy"].astype(np.int8),
            "layer_norms": np.ascontiguousarray(ring[:, len(RING_COLUMNS) :]),
        }
        self._drained = steps_done
        self._marks = self._marks[-1:]
        self._store.append(rows)
        if self._writer is not None:
            self._writer.append(rows)
            self._warn_on_writer_error()

    def _record(self, step: int, kind: str, old: Any, new: Any) -> None:
        event = self._store.record_event(step, kind, old, new)
        if self._writer is not None:
            self._writer.event(*event)

    # --- commands -------------------------------------------------------------------------

    def _poll(self, database: RunDatabase, run_id: int) -> None:
        """The poller thread: read new commands, write acknowledgements; never the graph."""
        last_id = 0
        while True:
            closing = self._closing.wait(self._poll_seconds)
            acknowledgements = []
            while not self._acknowledgements.empty():
                acknowledgements.append(self._acknowledgements.get())
            try:
                if acknowledgements:
                    database.acknowledge_commands(acknowledgements)
                if closing:
                    return
                for command in database.pending_commands(run_id, last_id):
                    last_id = command["id"]
                    self._incoming.put(command)
            except sqlite3.Error as error:
                self._warn_once("commands", f"Reading commands from {str(database.path)!r} failed: {error}")
                if closing:
                    return

    def _apply_commands(self, steps_done: int, commands: list | None = None) -> None:
        if commands is None:
            commands = []
            while not self._incoming.empty():
                commands.append(self._incoming.get())
        for command in commands:
            try:
                self._apply(command["kind"], command["value"], command["parameters"], steps_done)
                acknowledgement = (command["id"], steps_done + 1, time.time(), None)
            except (ValueError, TypeError) as error:
                acknowledgement = (command["id"], None, time.time(), str(error))
            self._acknowledgements.put(acknowledgement)

    def _apply(self, kind: str, value: Any, params: dict, steps_done: int) -> None:
        """Apply one command (ValueError for a bad value, before anything changes)."""
        knobs = self._knob_values.copy()
        if kind == "clip_threshold":
            knobs[_KNOB["clip_threshold"]] = policies.validate_clip_threshold(value)
            self._record(steps_done, kind, float(self._knob_values[_KNOB["clip_threshold"]]), float(knobs[0]))
        elif kind == "policy":
            self._apply_policy(value, params, knobs, steps_done)
        elif kind == "spike":
            knobs[_KNOB["spike"]] = policies.validate_positive("factor", value)
            self._record(steps_done, kind, None, float(knobs[_KNOB["spike"]]))
        elif kind == "learning_rate":
            self._set_learning_rate(value, steps_done)
        elif kind in ("pause", "resume"):
            if self._multi_worker:
                raise ValueError(f"`{kind}` is not supported across workers (the others would time out).")
            if self._paused != (kind == "pause"):
                self._paused = kind == "pause"
                self._record(steps_done, kind, None, None)
        elif kind == "stop":
            knobs[_KNOB["stop"]] = 1.0
            self._record(steps_done, kind, None, None)
            if not self._multi_worker:
                self._stop = True  # workers stop together, once the flag went through the graph
        else:
            raise ValueError(f"Unknown command kind {kind!r}.")
        if not np.array_equal(knobs, self._knob_values):
            self._knobs.assign(knobs)
            knobs[_KNOB["spike"]] = 1.0  # the graph resets it after one step
            self._knob_values = knobs

    def _apply_policy(self, name: Any, params: dict, knobs: np.ndarray, steps_done: int) -> None:
        policies.validate_policy_name(name)
        old_params = self._policy_params[name]
        checked = policies.validate_policy_params(name, {**old_params, **params})
        spec = policies.POLICY_PARAMETERS[name]
        structural = [key for key in checked if not spec[key].live and checked[key] != old_params[key]]
        if structural:
            raise ValueError(
                f"`{structural[0]}` of {name!r} sets the size of the compiled step, so it cannot change "
                f"while the script runs. Received: {structural[0]}={checked[structural[0]]!r}; "
                f"it is {old_params[structural[0]]!r}. Live: "
                f"{', '.join(k for k in spec if spec[k].live) or 'none'}"
            )
        index = policies.POLICY_NAMES.index(name)
        for key in checked:
            if key in _KNOB:
                knobs[_KNOB[key]] = checked[key]
        knobs[_KNOB["policy"]] = index
        if name != self._policy:
            fresh = self._policies[index].init([])
            for variable, value in zip(self._policy_states[index], fresh):
                variable.assign(value)  # a policy switched to starts with an empty history
            self._record(steps_done, "policy", self._policy, name)
        for key in checked:
            if checked[key] != old_params[key]:
                self._record(steps_done, f"{name}.{key}", old_params[key], checked[key])
        self._policy, self._policy_params = name, {**self._policy_params, name: checked}

    def _set_learning_rate(self, value: Any, steps_done: int) -> None:
        learning_rate = policies.validate_positive("learning_rate", value)
        optimizer = self._optimizer
        if optimizer is None or not isinstance(optimizer._learning_rate, keras.Variable):
            raise ValueError(
                "The learning rate can change only on an optimizer passed to `wrap` and created "
                "with a number as its learning rate (not a schedule)."
            )
        if self._multi_worker:
            raise ValueError("The learning rate cannot change across workers mid-run.")
        old = float(optimizer.learning_rate.numpy())
        optimizer.learning_rate = learning_rate
        self._record(steps_done, "learning_rate", old, learning_rate)


class _LiveClippingCallback(keras.callbacks.Callback):
    """Drains the ring and applies commands between batches; ends the run with the fit."""

    def __init__(self, clipping: LiveClipping):
        super().__init__()
        self._clipping = clipping
        self._begin_step = 0

    def set_model(self, model):
        super().set_model(model)
        clipping = self._clipping
        if clipping._strategy is None:
            clipping._strategy = model.distribute_strategy
        steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        if clipping._ring_steps < 2 * steps_per_execution:
            raise ValueError(
                f"`ring_steps` must be at least twice steps_per_execution. Received: ring_steps="
                f"{clipping._ring_steps}, steps_per_execution={steps_per_execution}"
            )
        if model.built:
            clipping._ensure_built(model.trainable_variables)

    def on_train_begin(self, logs=None):
        self._clipping._ensure_built(self.model.trainable_variables)
        self._clipping._begin(self.model)
        self._steps_done = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin_step = batch

    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the first and the last step of the execution: no need to read the count.
        self._steps_done += batch - self._begin_step + 1
        if self._clipping._between_batches(self._steps_done):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._clipping.close("stopped")


def _scatter(variable, index, value) -> None:
    """variable[index] = value. A replica's copy of an ON_READ variable takes no scatter, only
    a whole assign (a copy of the ring per step, about 10 µs for an LSTM's 74 kB)."""
    if isinstance(variable, tf.distribute.DistributedValues):
        variable.assign(tf.tensor_scatter_nd_update(variable.read_value(), [[index]], [value]))
    else:
        variable.scatter_nd_update([[index]], [value])


@contextlib.contextmanager
def _scope(strategy):
    if tf.distribute.has_strategy() and tf.distribute.get_strategy() is strategy:
        yield
    else:
        with strategy.scope():
            yield


@atexit.register
def _close_all() -> None:
    for clipping in list(_LIVE_CLIPPINGS):
        try:
            clipping.close("stopped")
        except Exception:  # at exit, a broken TF runtime must not hide the user's own output
            logger.debug("Clipwatch: closing a run at exit failed", exc_info=True)
