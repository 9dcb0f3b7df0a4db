"""The trainer's compiled chunk of steps, and the swap from the quick step to the full one.

Each call runs a chunk of steps in-graph (gathering batches from tensors in memory, the engine's
clip, the optimizer's update, every step's record written into TensorArrays), so there is one
host sync per chunk, not per step.

The run starts on the quick step (the policy in force alone: fewer ops to trace and compile than
the full step's); the full step (every policy in one `tf.switch_case`) is traced and compiled in
the background (training/loop/step_compiler.py), then swapped in between two chunks. Both read
and write the same variables, so the swap loses nothing, and both are compiled the same way (XLA
when it compiles), so they compute the same bits and the swap step, which the clock sets, never
shows in a run's numbers.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from ..lazy_import import tf  # TensorFlow at first use (training/lazy_import.py)

from ..clipping.engine import KNOB, TrainingState, step_record
from . import xla_cache
from .config import MAX_CHUNK_STEPS
from .step_compiler import BackgroundCompile
from .xla_fallback import FallbackFunction

# What each step writes into the chunk's buffers: (name, dtype, shape; None: one per variable).
# Dtypes by name: this table loads with the module, before TensorFlow does.
BUFFERS = (
    ("loss", "float32", []),
    ("grad_norm", "float32", []),
    ("clipped_grad_norm", "float32", []),
    ("clip_threshold", "float32", []),
    ("clipped", "bool", []),
    ("finite", "bool", []),
    ("layer_norms", "float32", None),
)


class ChunkSteps:
    """The compiled chunk of a `Trainer`'s run, built on the thread that trains.

    Args:
        state: the run's training state (its engine is built).
        loss_function: (targets, predictions) -> loss.
        next_batch: step -> (inputs, targets), traced into the chunk.
        monitoring: record every step's metrics (False: the benchmark's ceiling).
        max_nonfinite_steps: a chunk ends at the step that reaches this many non-finite steps in
            a row (None: no limit).
        jit_compile: XLA for the full step (None: try it, fall back once).
        on_event: (kind, old, new) -> None, records an event (an XLA fallback).
        on_compiling: called with True/False as the full step starts and ends compiling.
    """

    def __init__(self, state: TrainingState, loss_function: Callable, next_batch: Callable, *,
                 monitoring: bool, max_nonfinite_steps: int | None, jit_compile: bool | None,
                 on_event: Callable[[str, Any, Any], None], on_compiling: Callable[[bool], None]):  # fmt: skip
        self._state, self._loss_function, self._next_batch = state, loss_function, next_batch
        self._monitoring = monitoring
        self._nonfinite_limit = max_nonfinite_steps if monitoring else None
        self.jit_compile = jit_compile
        self._on_event, self._on_compiling = on_event, on_compiling
        # Consecutive non-finite steps so far, carried from chunk to chunk: a chunk stops at the
        # step that reaches the limit, so a failed run ends exactly there.
        self.nonfinite_run = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.trace_count = 0
        self.compile_job: BackgroundCompile | None = None
        self._full_step_wanted = False
        self.switched_on_quick_step = False  # the policy was switched before the full step came
        self._fallback_reasons: list[str] = []  # XLA fallbacks of the compile thread, not recorded yet
        self.function: Callable | None = None
        # The steps built for the engine's policies as they are (kept for a later run of this
        # state: training/loop/step_pool.py): the full one once compiled, the quick ones by policy.
        self._full: Callable | None = None
        self._quick: dict[int, FallbackFunction] = {}

    @property
    def state(self) -> TrainingState:
        return self._state

    def reuse(self, on_event: Callable[[str, Any, Any], None], on_compiling: Callable[[bool], None]) -> None:
        """A new run takes these steps over (its values are already in the state's variables):
        it reports to its own callbacks and starts with no traces and no compile of its own. A
        full step whose compile the last run left running (it ended first) is ready by now."""
        job = self.compile_job
        if job is not None and job.function is not None and job.error is None:
            self._full = job.function
        self._on_event, self._on_compiling = on_event, on_compiling
        self.trace_count, self.compile_job, self.function = 0, None, None
        self._full_step_wanted = self.switched_on_quick_step = False
        self._fallback_reasons = []
        self.nonfinite_run.assign(0)

    def release(self) -> None:
        """The run is over: drop its callbacks (they hold the run), keep the compiled steps."""
        self._on_event, self._on_compiling = _ignore, _ignore

    @property
    def reusable(self) -> bool:
        """No compile is under way, and XLA was never given up (a later run must start as this
        one did, XLA included)."""
        if self.jit_compile is False or self._fallback_reasons:
            return False
        if self.compile_job is not None:
            return self.compile_job.ready()
        return self._full is not None or bool(self._quick)

    @property
    def compiling(self) -> bool:
        return self._full_step_wanted or self.compile_job is not None

    def build(self, quick_start: bool) -> None:
        """Build the steps for the engine's policies as they are now: the full step if an
        earlier run of this state compiled it, else the quick one (or the full one, traced anew)."""
        self.compile_job = None  # a compile still running for the old policies is dropped
        self._fallback_reasons = []
        if self._full is not None:
            self.function = self._full
            return
        if not quick_start:
            self.function = self._full = self._full_step()
            return
        self._full_step_wanted = True
        self.function = self._quick_step()
        self._on_compiling(True)

    def rebuild(self, quick_start: bool) -> None:
        """The engine's policies were rebuilt (a structural parameter): every step traces anew."""
        self._full, self._quick = None, {}
        self.build(quick_start)

    def policy_switched(self) -> None:
        """The policy in force changed: a quick step still in use is rebuilt for it."""
        if self.compiling:
            self.function = self._quick_step()
            self.switched_on_quick_step = True

    def __call__(self, num_steps: int, first_step: int) -> dict:
        return self.function(tf.constant(num_steps, tf.int32), tf.constant(first_step, tf.int64))

    def swap_in_full_step(self, steps_done: int, start: bool = True) -> None:
        """Between two chunks: start compiling the full step (unless `start` is False: the run
        will end before it could arrive), or swap it in once it is ready."""
        if self._full_step_wanted and start:
            # Its XLA fallback, if any, happens on the compile thread: keep the reason and record
            # it here, on the training thread, when the step is swapped in.
            def full_step_later_reporting_fallback():
                return self._full_step(on_fallback=self._fallback_reasons.append)

            # Traced and compiled on the compile thread while this one trains on: a trace here
            # stopped the run for 1.1-1.4 s, 2-8 s under load (training/loop/step_compiler.py).
            self.compile_job = BackgroundCompile(
                full_step_later_reporting_fallback,
                (tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int64)),
                lambda: (tf.constant(0, tf.int32), tf.constant(steps_done, tf.int64)),
            )
            self._full_step_wanted = False
        compile_job = self.compile_job
        if compile_job is None or not compile_job.ready():
            return
        if compile_job.error is not None:
            raise compile_job.error
        self.function = self._full = compile_job.function
        self.compile_job = None
        while self._fallback_reasons:
            self._on_xla_fallback(self._fallback_reasons.pop(0))
        self._on_compiling(False)

    def while_paused(self, steps_done: int, asked: bool) -> float:
        """A paused run's look at its full step; returns how long to wait before the next look.
        The full step still arrives while paused (its compile starts if `asked` by a wait for it,
        or after a policy switch on the quick step, as after a chunk) and is swapped in at once,
        so the first chunk after the resume runs on it."""
        self.swap_in_full_step(steps_done, start=asked or self.switched_on_quick_step)
        return 0.05 if self.compiling else 0.5

    def abandon_compile(self) -> None:
        """The run ended: a full step still being traced is not compiled (training/step_compiler.py)."""
        if self.compile_job is not None:
            self.compile_job.cancel()

    def finish_compiling(self, steps_done: int) -> None:
        """Swap the full step in now, waiting for its compile if it is still running (a branch
        may switch policy, and only the full step holds every policy)."""
        if not self.compiling:
            return
        self.swap_in_full_step(steps_done)  # traces it and starts its compile, if not yet
        if self.compile_job is not None:
            self.compile_job.wait()
            self.swap_in_full_step(steps_done)

    def _quick_step(self):
        """The policy in force alone, compiled like the full step (XLA when it can be).

        Why XLA here too: XLA and the plain graph compute different last bits, and the swap to
        the full step comes at a step set by the clock (when its compile ends). A quick step
        without XLA made two runs of one command differ from that step on (measured: step
        13,459 of two concurrent 300,000-step runs of seed). With both steps XLA-compiled they
        compute the same bits (tests/test_step_compiler.py), so a run is a function of its seed
        and settings alone. If XLA cannot compile the model, the quick step falls back on its
        first call and the full step is then built without XLA: again one kind for both.
        """
        only_policy = int(self._state.engine.knob_values[KNOB["policy"]])
        if only_policy not in self._quick:
            self._quick[only_policy] = FallbackFunction(functools.partial(self._train_chunk, only_policy=only_policy),
                                                        self.jit_compile, self._on_xla_fallback, self._drop_xla)  # fmt: skip
        return self._quick[only_policy]

    def _full_step(self, on_fallback: Callable[[str], None] | None = None):
        """Every policy in one `tf.switch_case`, XLA-compiled when it can be."""
        return FallbackFunction(self._train_chunk, self.jit_compile, on_fallback or self._on_xla_fallback,
                                self._drop_xla)  # fmt: skip

    def _drop_xla(self) -> None:
        self.jit_compile = False

    def _on_xla_fallback(self, reason: str) -> None:
        self._on_event("xla_fallback", "xla", reason)
        # One of the persistent cache's entries may be what failed: the next run compiles afresh.
        xla_cache.recover()

    def _train_chunk(self, num_steps, first_step, only_policy: int | None = None):
        """Run `num_steps` (<= MAX_CHUNK_STEPS) steps; return every step's record and `steps_run`:
        fewer than `num_steps` when the limit's non-finite step came first (the chunk ends there).

        `only_policy`: the quick step, which applies that policy alone instead of switching.
        """
        if only_policy is None:
            self.trace_count += 1  # Python side effect: runs once per trace of the full step
        state, engine = self._state, self._state.engine
        model, optimizer, variables = state.model, state.optimizer, state.variables
        knobs, states = engine.knobs.read_value(), engine.read_states()
        static_size = self.jit_compile is not False
        # XLA needs a static size; without it, a buffer of the chunk's own size is cheaper to
        # stack (a 1-step chunk of a heavy task would stack 2,048 empty slots).
        buffers = {
            name: tf.TensorArray(tf.as_dtype(dtype), size=MAX_CHUNK_STEPS if static_size else num_steps,
                                 element_shape=[len(variables)] if shape is None else shape)
            for name, dtype, shape in BUFFERS
            if self._monitoring
        }  # fmt: skip
        limit = self._nonfinite_limit

        def one_step(i, nonfinite_run, states, buffers):
            inputs, targets = self._next_batch(first_step + tf.cast(i, tf.int64))
            with tf.GradientTape() as tape:
                loss = self._loss_function(targets, model(inputs, training=True))
            gradients = tape.gradient(loss, variables)
            spike = tf.where(tf.equal(i, 0), knobs[KNOB["spike"]], 1.0)  # a demo spike hits one step
            step = engine.clip(gradients, variables, loss, knobs, states, spike, only_policy)
            # A non-finite step changes nothing: no update (and the engine kept the history).
            tf.cond(step.finite, lambda: optimizer.apply(step.clipped, variables), lambda: None)
            nonfinite_run = tf.where(step.finite, tf.constant(0, tf.int64), nonfinite_run + 1)
            record = step_record(loss, step)
            buffers = {name: buffers[name].write(i, record[name]) for name in buffers}
            return i + 1, nonfinite_run, step.states, buffers

        def more_steps(i, nonfinite_run, states, buffers):
            if limit is None:
                return i < num_steps
            return tf.logical_and(i < num_steps, nonfinite_run < limit)

        steps_run, nonfinite_run, states, buffers = tf.while_loop(
            more_steps,
            one_step,
            (tf.constant(0), self.nonfinite_run.read_value(), states, buffers),
            maximum_iterations=MAX_CHUNK_STEPS,
        )

        def write_back_states():
            engine.write_states(states)
            self.nonfinite_run.assign(nonfinite_run)

        # A zero-step call (the background compile) must not write back states it read while the
        # quick step was updating them.
        tf.cond(num_steps > 0, write_back_states, lambda: None)
        return {"steps_run": steps_run, **{name: buffer.stack() for name, buffer in buffers.items()}}


def _ignore(*_: Any) -> None:
    pass


def gather_batch(inputs, targets, data_seed: tf.Variable, batch_size: int, step):
    """The batch of `step`: stateless sampling keyed on (data seed, step), so any step's batch can
    be drawn again (a branch replays its parent's), and XLA compiles it."""
    seed = tf.stack([data_seed.read_value(), tf.cast(step, tf.int64)])
    index = tf.random.stateless_uniform([batch_size], seed=seed, maxval=tf.shape(inputs)[0], dtype=tf.int32)
    return tf.gather(inputs, index), tf.gather(targets, index)


def chunk_rows(
    out, first_step: int, steps: int, now: float, duration: float, learning_rate: float, policy_code: int
) -> dict[str, np.ndarray]:
    """One chunk's per-step columns (runs on the recorder thread; arguments as of the chunk)."""
    rows = {name: tensor.numpy()[:steps] for name, tensor in out.items()}
    rows["step"] = np.arange(first_step + 1, first_step + steps + 1, dtype=np.int64)
    # Steps inside a chunk are not timed one by one: spread the chunk's wall time evenly.
    rows["time_s"] = now - duration + duration * np.arange(1, steps + 1) / steps
    rows["learning_rate"] = np.full(steps, learning_rate, np.float32)
    rows["policy"] = np.full(steps, policy_code, np.int8)
    return rows
