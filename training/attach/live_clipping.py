"""Attach Clipwatch to a Keras training script you already have: live clipping, every step
recorded into the run database, and live control from the page through that database.

    from clipwatch.keras import LiveClipping

    clipping = LiveClipping(policy="global_norm", clip_threshold=1.0,
                            database="runs/clipwatch.db", run_name="my model")
    model.compile(optimizer=clipping.wrap("adam"), loss="mse", metrics=["accuracy"])
    for epoch in range(10):  # a loop of fits is one run; so is one fit
        model.fit(dataset, epochs=1, validation_data=validation, callbacks=[clipping.callback()])
        model.predict(samples)
        if clipping.stopped:  # a `stop` from the page: every later fit returns at once
            break

How it works:

* `wrap(optimizer)` replaces three methods on that one optimizer instance (`apply`, `scale_loss`
  to see the loss, and the TensorFlow optimizer's all-reduce); its class is unchanged, so
  `model.save`, `get_config` and checkpoints behave as before. Clipwatch's variables live on the
  `LiveClipping` object, never on the optimizer, so they stay out of its checkpoint. Under mixed
  precision the `LossScaleOptimizer` hands its inner optimizer the unscaled gradients: those
  are what is clipped and recorded.
* In the graph, every step: one all-reduce carries the replicas' gradients, their losses and the
  first replica's live knobs; the sum is clipped once with the trainer's own policies (one
  `tf.switch_case` over all of them, knobs as variables: no retrace on change); one row of
  metrics goes into a ring-buffer variable. Keras 3 on TensorFlow clips each replica's gradient
  *before* its all-reduce (`BaseOptimizer._backend_apply_gradients` calls `_clip_gradients`,
  then `TFOptimizer._backend_update_step` calls `_all_reduce_sum_gradients`), so with N
  replicas its `global_clipnorm` lets through up to N times the threshold; here the optimizer's
  own all-reduce becomes a pass-through, the gradients being summed already.
* Between batches, the callback (`training.attach.callbacks`, or `sync()` in a custom loop)
  copies the ring out and applies commands (with the engine's `apply_command`); the run's record
  and lifetime are `training.attach.run`'s, its commands `training.attach.commands`'. fit's epoch logs and
  `evaluate()`'s results are recorded as the run's evaluations (`record_evaluation` for a
  custom loop's own).

The training never fails because of Clipwatch's bookkeeping: if the database cannot be opened
or written, a warning is logged once and the steps stay in memory (`metrics()`).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Any

import keras
import tensorflow as tf

from ..clipping import policies
from ..clipping.engine import KNOB, STEP_RECORD, ClipEngine, step_record, variable_name
from .callbacks import LiveClippingCallback
from .run import (  # noqa: F401  (DRAIN_SECONDS, AttachedRunConfig: re-exported)
    DRAIN_SECONDS, POLL_SECONDS, RING_COLUMNS, RING_STEPS, AttachedRun, AttachedRunConfig,
)  # fmt: skip
from ..runs.database import RunDatabase
from ..runs.store import MetricsStore
from ..loop.config import validate_count

_CLIPPING_ARGUMENTS = ("clipnorm", "clipvalue", "global_clipnorm")


class LiveClipping(AttachedRun):
    """Clip a Keras model's gradients with a Clipwatch policy, record every step, obey commands.

    One object is one run, across every `fit`, `evaluate` and custom-loop step it sees; the run
    ends with `close()`, the end of a `with LiveClipping(...) as clipping:` block, the process's
    normal exit, or a `stop` command (then `stopped` is True and later fits train no step).

    Args:
        policy: a name from `training.clipping.policies.POLICY_NAMES`.
        clip_threshold: c, a finite number > 0 (the cap for `zclip`).
        database: a SQLite file's path, a PostgreSQL URL (`postgresql://user@host:port/dbname`)
            or a `RunDatabase` to record into; None takes the app's default (`CLIPWATCH_DB` or
            runs/clipwatch.db); False records in memory only.
        run_name: the run's name in History.
        ring_steps: rows of the in-graph buffer; at least twice `steps_per_execution`.
        poll_seconds: how often the command table is read (a server's NOTIFY wakes it sooner).
        store_window: steps kept in memory at full resolution (see `metrics()`); not autoclip's
            `window`, a policy parameter like the others (issue #22: it had swallowed it).
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
        store_window: int = 100_000,
        **policy_params: Any,
    ):
        # The clipping engine (the same as the trainer's): knobs, policies, their states, the clip.
        self._engine = ClipEngine.with_defaults(policy, clip_threshold, **policy_params)
        if isinstance(ring_steps, bool) or not isinstance(ring_steps, int) or ring_steps < 2:
            raise ValueError(f"`ring_steps` must be an integer >= 2. Received: ring_steps={ring_steps!r}")
        self._ring_steps = ring_steps
        self._store_window = validate_count("store_window", store_window)
        self._optimizer = None
        self._strategy = None
        self._built = False
        self._seen_loss = threading.local()  # MirroredStrategy traces each replica in a thread
        self._store: MetricsStore | None = None
        self._init_run(database, run_name, poll_seconds)

    # --- public API -------------------------------------------------------------------------

    def wrap(self, optimizer):
        """Make `optimizer` clip with this policy (and record every step); returns it.

        Takes a Keras optimizer, its name or config (`"adam"`, as `keras.optimizers.get` reads
        it), or a `LossScaleOptimizer` (its inner optimizer clips the unscaled gradients).
        Refuses an optimizer that clips already (`clipnorm`, `clipvalue`, `global_clipnorm`):
        gradients must never be clipped twice.
        """
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"LiveClipping needs Keras' TensorFlow backend. Received: backend="
                f"{keras.backend.backend()!r}"
            )
        if isinstance(optimizer, (str, dict)):
            optimizer = keras.optimizers.get(optimizer)  # its ValueError names what it received
        outer = optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                "`wrap` takes a Keras optimizer, its name (e.g. 'adam') or a LossScaleOptimizer. "
                f"Received: optimizer={outer!r}"
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
            clipped, finite = self._clip_step(list(gradients), variables, self._take_loss())
            _apply_if_finite(original_apply, clipped, variables, finite)

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
        self._watch_loss_scale(outer)
        return outer

    def _watch_loss_scale(self, optimizer) -> None:
        """A LossScaleOptimizer around the wrapped one (passed to `wrap`, or made by `compile`
        under the "mixed_float16" policy) scales the loss itself: see the loss there, unscaled."""
        if (
            not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            or optimizer.inner_optimizer is not self._optimizer
            or getattr(optimizer, "_clipwatch_wrapped", False)
        ):
            return
        original_scale_loss = optimizer.scale_loss

        def scale_loss(loss):
            self._seen_loss.value = loss
            return original_scale_loss(loss)

        object.__setattr__(optimizer, "scale_loss", scale_loss)
        object.__setattr__(optimizer, "_clipwatch_wrapped", True)

    def callback(self) -> keras.callbacks.Callback:
        """The callback for `model.fit` (and `evaluate`): records every step and the epoch logs,
        applies commands; a `stop` ends this fit and makes every later one return at once."""
        return LiveClippingCallback(self)

    @tf.autograph.experimental.do_not_convert  # plain Python control flow; converting it costs seconds
    def clip(self, gradients, variables, loss=None) -> list:
        """Clip `gradients` (of `variables`) with the policy and record the step.

        For custom `GradientTape` loops that call `optimizer.apply_gradients` themselves (with
        an optimizer that is not wrapped). Called eagerly it also records the step at once;
        inside a `tf.function`, call `sync()` after each step. Pass `loss` to record it.

        A step that is not finite (a NaN or inf gradient norm, or loss) is recorded as skipped
        and its gradients come back as zeros, so applying them never writes NaN into the
        weights (under SGD nothing moves; an optimizer with momentum still takes its momentum
        step: to skip the whole update, as `fit` does, `wrap` the optimizer instead).
        """
        gradients, variables = list(gradients), list(variables)
        if len(gradients) != len(variables):
            raise ValueError(
                "`clip` needs one gradient per variable. Received: "
                f"{len(gradients)} gradients, {len(variables)} variables"
            )
        clipped, finite = self._clip_step(gradients, variables, loss)
        clipped = [_zeros_unless(finite, gradient) for gradient in clipped]
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
        if not self._began:
            return self._stop
        return self._between_batches(None)

    def metrics(self, since: int | None = None):
        """Every recorded step in memory, with the columns of `Trainer.metrics()`: the steps
        trained so far, those not yet drained from the graph's buffer included."""
        self._record_pending()
        return self._require_store().metrics(since)

    def layer_norms(self, since: int | None = None):
        self._record_pending()
        return self._require_store().layer_norms(since)

    def _record_pending(self) -> None:
        # A custom loop's sync() drains every 0.25 s: a read right after its steps saw none.
        if self._built and self._began:
            self._drain(self._steps_done())

    def events(self):
        return self._require_store().events()

    def _require_store(self) -> MetricsStore:
        if self._store is None:
            raise ValueError("Nothing recorded yet: LiveClipping has not seen a training step.")
        return self._store

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
        # The trace in progress, or one it is nested in (a LossScaleOptimizer applies inside a
        # `tf.cond` branch); any other graph is a stale trace.
        current = tf.compat.v1.get_default_graph()
        while current is not None:
            if current is graph:
                return loss
            current = getattr(current, "outer_graph", None)
        return None

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

            self._engine.build(variables, make_variable=variable)
            self._steps = variable(0, "steps", tf.int64)
            self._stop_shared = variable(0.0, "stop")
            self._ring = variable(
                tf.zeros([self._ring_steps, len(RING_COLUMNS) + len(variables)]), "ring"
            )
        self._variable_names = [variable_name(v) for v in variables]
        self._store = self._new_store()
        self._built = True

    def _new_store(self) -> MetricsStore:
        return MetricsStore(self._variable_names, self._engine.policy_names, window=self._store_window)

    def _clip_core(self, dense, kept_values, knobs, loss, learning_rate, states, known_loss, present, count):
        """The engine's clip (one `tf.switch_case` over every policy, as in the trainer) and the
        step's row; tensors in, tensors out. Measured in CPU time on the seed model, the switch
        over seven policies costs about 0.1 ms a step of the ~0.2 ms that Clipwatch adds;
        XLA-compiling this part did not make it cheaper on CPU."""
        step = self._engine.clip(
            dense, kept_values, loss if known_loss else None, knobs, states, spike=knobs[KNOB["spike"]]
        )
        record = step_record(loss, step)
        layer_norms = tf.scatter_nd([[index] for index in present], record["layer_norms"], [count])
        scalars = [tf.cast(record[name], tf.float32) for name in STEP_RECORD]
        row = tf.concat(
            [tf.stack([*scalars, learning_rate, tf.cast(step.policy_index, tf.float32)]), layer_norms], 0
        )
        return step, row

    @tf.autograph.experimental.do_not_convert
    def _clip_step(self, gradients, variables, loss):
        """One step in the graph: sum across replicas, clip once, record a row. Returns the
        clipped gradients (None where a gradient is None) and whether the step was finite."""
        self._ensure_built(variables)
        present = [index for index, gradient in enumerate(gradients) if gradient is not None]
        dense = [tf.convert_to_tensor(gradients[index]) for index in present]
        known_loss = loss is not None
        loss = tf.reshape(tf.cast(loss, tf.float32), []) if known_loss else tf.constant(0.0)
        knobs = tf.identity(self._engine.knobs)
        context = tf.distribute.get_replica_context()
        distributed = context is not None and context.num_replicas_in_sync > 1
        if distributed:
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
        states = self._engine.read_states()
        learning_rate = (
            tf.cast(self._optimizer.learning_rate, tf.float32) if self._optimizer is not None
            else tf.constant(math.nan)
        )  # fmt: skip
        kept_values = [tf.convert_to_tensor(variables[index]) for index in present]
        clip_step, row = self._clip_core(
            dense, kept_values, knobs, loss, learning_rate, states, known_loss, present, len(variables)
        )
        self._engine.write_states(clip_step.states)
        step = self._steps.read_value() + 1
        _scatter(self._ring, (step - 1) % self._ring_steps, row)
        self._steps.assign(step)  # after the row: a reader that sees the count sees the row
        self._stop_shared.assign(knobs[KNOB["stop"]])
        _scatter(self._engine.knobs, KNOB["spike"], 1.0)  # a demo spike hits one step
        result = list(gradients)
        for index, gradient, summed in zip(present, clip_step.clipped, dense):
            sparse = gradients[index]
            if isinstance(sparse, tf.IndexedSlices) and not distributed:
                gradient = _rescaled_slices(sparse, summed, gradient)
            result[index] = gradient
        return result, clip_step.finite


def _zeros_unless(finite, gradient):
    """`gradient` if the step is finite, else zeros of its shape (None stays None; a sparse
    gradient stays sparse). tf.where, not a product: 0 * NaN is NaN."""
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(_zeros_unless(finite, gradient.values), gradient.indices, gradient.dense_shape)
    return tf.where(finite, gradient, tf.zeros_like(gradient))


def _apply_if_finite(apply, gradients, variables, finite) -> None:
    """`apply(gradients, variables)` unless the step is not finite: its update is skipped, as the
    trainer skips it (one engine rule). Applied, a NaN step had turned every weight NaN, and
    `value` had applied an inf step clipped to +-c, while the record said the step was skipped.

    Under a strategy that needs `merge_call` (the optimizer's update has one), a `cond` in the
    replica context may not hold it: decide in the cross-replica context, as Keras'
    LossScaleOptimizer does. `finite` is the same on every replica (the gradients are summed)."""
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: apply(gradients, variables), lambda: None)
        return

    def cross_replica(distribution, gradients, finite):
        def apply_on_each_replica():
            distribution.extended.call_for_each_replica(apply, args=(gradients, variables))

        tf.cond(distribution.experimental_local_results(finite)[0], apply_on_each_replica, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(gradients, finite))


def _rescaled_slices(sparse: "tf.IndexedSlices", dense, clipped) -> "tf.IndexedSlices":
    """A sparse gradient (an Embedding's) given back sparse, its rows scaled as the policy scaled
    its dense sum: Adam and RMSprop update a sparse gradient differently from its dense sum
    (repeated rows square separately), so densifying it changed training even under `none`.

    Exact when the step left it as it was. Otherwise each element is scaled by its own ratio,
    clipped / dense, so the rows of one index sum to the clipped element whatever the policy:
    one factor for the whole (the ratio of the norms) is right for the scaling policies only, and
    had left `value`'s elements above c and shrunk `agc`'s units under their limit. Where the
    dense sum is 0 (rows that cancel) the rows take the ratio of the norms."""
    unchanged = tf.reduce_all(tf.equal(clipped, dense))
    factor = tf.math.divide_no_nan(policies.safe_norm(clipped), policies.safe_norm(dense))
    rows_dense, rows_clipped = tf.gather(dense, sparse.indices), tf.gather(clipped, sparse.indices)
    ratio = tf.where(tf.equal(rows_dense, 0), tf.cast(factor, rows_dense.dtype),
                     tf.math.divide_no_nan(rows_clipped, rows_dense))  # fmt: skip
    ratio = tf.where(unchanged, tf.ones_like(ratio), ratio)
    return tf.IndexedSlices(sparse.values * tf.cast(ratio, sparse.values.dtype), sparse.indices, sparse.dense_shape)


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
