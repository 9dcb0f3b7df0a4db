"""The host side of an attached run (`training.keras.LiveClipping`): its record and lifetime.

One `LiveClipping` is one run for as long as it lives: the record opens at its first training
step, takes every later `fit`, `evaluate` and custom-loop step, and closes when the object is
closed (or exits its `with` block, or the process exits normally: "finished"), or when a `stop`
command has ended it ("stopped"). A killed process leaves "interrupted", as the database marks
runs whose process died.

Between batches, `_between_batches` copies the graph's ring into the `MetricsStore` and the
run's `RunWriter`, and applies the commands a poller thread reads from the database
(`training.attach_commands`); the poller lives as long as the run, so a command sent while no fit runs waits in memory and takes
effect at the next step (or at once for `stop`, through `LiveClipping.stopped`).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..clipping import policies
from .commands import CommandApplier, variable_learning_rate
from ..clipping.engine import STEP_RECORD
from ..runs.evaluation import EVALUATION_COLUMNS, empty_evaluations
from ..runs.database import DatabaseError, RunDatabase, default_path
from ..loop.config import RunConfig, validate_optional_run_name

logger = logging.getLogger("training.keras")

# Five polls a second: one indexed SELECT each (about 0.1 ms), from a thread of its own.
POLL_SECONDS = 0.2
# The ring is copied out at most this often (and whenever it is half full): reading it costs a
# host sync, which per batch would show in a fast model's speed.
DRAIN_SECONDS = 0.25
RING_STEPS = 1024
# Columns of the in-graph ring, then one per trainable variable (its pre-clip norm).
RING_COLUMNS = (*STEP_RECORD, "learning_rate", "policy")
# Runs that are open: held here (not only weakly) so that the exit hook can close them.
_OPEN_RUNS: set = set()


@dataclass(frozen=True)
class AttachedRunConfig(RunConfig):
    """A `RunConfig` for a run that a user's own script records (`task` is "attached")."""

    attached: bool = True
    model: str = ""
    replicas: int = 1


class AttachedRun(CommandApplier):
    """The run record of a `LiveClipping` and its lifetime (a mixin: it reads the graph side's
    `_steps`, `_ring` and `_store`, which `LiveClipping` builds, and `_new_store()`)."""

    def _init_run(self, database, run_name, poll_seconds: float) -> None:
        self._poll_seconds = policies.validate_positive("poll_seconds", poll_seconds)
        if not (database is None or isinstance(database, (bool, str, os.PathLike, RunDatabase))):
            raise TypeError(
                "database must be a SQLite file's path, a PostgreSQL URL, a RunDatabase, None (the "
                f"default database) or False (none). Received: database={database!r}"
            )
        self._database_setting = database
        self._run_name = validate_optional_run_name(run_name)  # as Trainer and rename_run check it
        self._warned: set[str] = set()
        self.warning: str | None = None  # the last warning (e.g. the database is not written)
        self._writer = None
        self._database: RunDatabase | None = None
        self._began = self._stop = self._paused = False
        self._steps_before_run = 0
        self._evaluation_rows: list[tuple[int, float, str, float]] = []
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()  # commands read by the poller
        self._acknowledgements: queue.SimpleQueue = queue.SimpleQueue()
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()
        self._drain_lock = threading.Lock()

    # --- opening and closing ------------------------------------------------------------------

    def _begin(self, model=None) -> None:
        """Open the run (once per LiveClipping): the record in the database and the poller."""
        if self._began or self._stop:  # a stopped attachment takes no more steps
            return
        self._began, self._paused = True, False
        strategy = self._strategy
        extended = strategy.extended
        self._is_chief = bool(getattr(extended, "should_checkpoint", True))
        replicas = strategy.num_replicas_in_sync
        self._multi_worker = replicas > 1 and replicas > len(extended.worker_devices)
        self._step_offset = self._steps_before_run  # the graph's count when a closed run ended
        if self._steps_before_run and self._store is not None:
            # A new run after close(): metrics() and events() are its own, numbered from 1 (found
            # by probing: the closed run's rows stayed, and steps 1..16 were followed by 1..8).
            self._store = self._new_store()
        self._drained = 0
        self._marks = [(0, time.time())]
        self._last_drain = time.monotonic()
        self._learning_rate_seen = self._current_learning_rate()
        self._closing.clear()
        self._writer = None
        if self._is_chief and self._database_setting is not False:
            self._open_run(model)
        _OPEN_RUNS.add(self)
        self._record(0, "start", None, self._engine.policy)

    def _open_run(self, model) -> None:
        setting = self._database_setting
        try:
            if self._database is None:
                self._database = setting if isinstance(setting, RunDatabase) else RunDatabase(
                    default_path() if setting is None else setting
                )
            learning_rate = self._current_learning_rate()
            config = AttachedRunConfig(
                task="attached",
                policy=self._engine.policy,
                clip_threshold=self._engine.clip_threshold,
                learning_rate=0.0 if learning_rate is None else learning_rate,
                batch_size=0,  # not known to the optimizer
                seed=0,
                policy_params=self._engine.policy_params,
                model=getattr(model, "name", "") or "",
                replicas=self._strategy.num_replicas_in_sync,
            )
            self._writer = self._database.start_run(
                config, self._variable_names, self._run_name, self._engine.policy_names
            )
        except (DatabaseError, OSError, *getattr(self._database, "errors", ())) as error:
            self._warn_once("database", f"{error} The run is kept in memory only.")
            return
        self._poller = threading.Thread(
            target=self._poll, args=(self._database, self._writer.run_id),
            name="clipwatch-commands", daemon=True,
        )  # fmt: skip
        self._poller.start()

    def close(self, state: str | None = None) -> None:
        """End the run: record the last steps and the final state ("stopped" after a `stop`
        command, else "finished"), stop polling. Idempotent; a closed LiveClipping that was not
        stopped opens a new run if it trains again."""
        if not self._began:
            return
        self._began = False
        _OPEN_RUNS.discard(self)
        state = state or ("stopped" if self._stop else "finished")
        steps_done = self._steps_done()
        self._drain(steps_done)
        self._steps_before_run += steps_done
        if not self._stop:
            self._record(steps_done, "finished", None, steps_done)
        self._closing.set()
        if self._poller is not None:
            self._poller.join(2 * self._poll_seconds + 1.0)  # it writes the last acknowledgements
            self._poller = None
        if self._writer is not None:
            self._writer.finish(state)
            self._warn_on_writer_error()

    def __enter__(self):
        return self

    def __exit__(self, exception_type, exception, traceback) -> None:
        self.close()

    @property
    def run_id(self) -> int | None:
        return None if self._writer is None else self._writer.run_id

    @property
    def stopped(self) -> bool:
        """True once a `stop` command has ended this attachment: every later `fit` returns at
        once, and a script's own loop can end (`if clipping.stopped: break`). Between fits it
        applies the commands that arrived meanwhile, so a stop sent during `predict` shows."""
        if self._began and not self._stop and not self._incoming.empty():
            steps_done = self._steps_done()
            self._drain(steps_done)
            self._apply_commands(steps_done)
        if self._stop and self._began and not self._multi_worker:
            self.close()
        return self._stop

    @property
    def stop_requested(self) -> bool:
        return self._began and self._stop

    # --- evaluations --------------------------------------------------------------------------

    def record_evaluation(self, step: int | None = None, **metrics: Any) -> None:
        """Record evaluation results (`val_loss=0.3, val_accuracy=0.9`) at `step` (default: the
        last step taken). `fit`'s epoch logs and `evaluate()` are recorded this way already; a
        custom loop calls it itself. Names as Keras logs them; `val_loss` is drawn beside the
        training loss."""
        if not self._built:
            raise ValueError("`record_evaluation` needs a training step first: nothing is recorded yet.")
        rows = []
        now = time.time()
        for name, value in metrics.items():
            try:
                if isinstance(value, (str, bytes, bool, np.bool_)):
                    raise TypeError  # float("0.5") would pass: a value is a number, not a text
                number = float(value)  # a Python or NumPy number, a scalar tensor
            except (TypeError, ValueError):
                raise ValueError(
                    f"An evaluation's value must be a number (a float, an int or a scalar tensor). "
                    f"Received: {name}={value!r}"
                ) from None
            rows.append((name, number))
        self._begin()
        if not self._began:
            return  # stopped: the run is closed
        steps_done = self._steps_done()
        if step is None:
            step = steps_done
        elif isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= steps_done:
            raise ValueError(
                f"`step` must be an integer from 0 to the last step taken ({steps_done}). Received: step={step!r}"
            )
        rows = [(int(step), now, name, number) for name, number in rows]
        self._evaluation_rows.extend(rows)
        if self._writer is not None and rows:
            self._drain(steps_done)  # the steps before the evaluation are in the record first
            self._writer.evaluations(rows)

    def evaluations(self):
        """Every recorded evaluation: `step, time_s, name, value`."""
        if not self._evaluation_rows:
            return empty_evaluations()
        import pandas as pd

        return pd.DataFrame(self._evaluation_rows, columns=list(EVALUATION_COLUMNS))

    # --- between batches ----------------------------------------------------------------------

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

    def _current_learning_rate(self) -> float | None:
        if not variable_learning_rate(self._optimizer):
            return None
        return float(np.float32(self._optimizer.learning_rate.numpy()))

    def _between_batches(self, steps_done: int | None) -> bool:
        """Record, apply commands, wait while paused; True once the training should stop."""
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
        """Copy the steps the graph wrote since the last drain into the store and the writer
        (from the training thread, or a reader asking for the steps so far: one at a time)."""
        with self._drain_lock:
            self._drain_unlocked(steps_done)

    def _drain_unlocked(self, steps_done: int) -> None:
        self._last_drain = time.monotonic()
        # Never past the graph's own count: the callback counts batches, and a fit whose
        # optimizer was not wrapped clips none (found by probing: its empty ring slots were
        # recorded as steps of zeros).
        steps_done = min(steps_done, self._steps_done())
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
        self._record_learning_rate_changes(steps, columns["learning_rate"])
        self._store.append(rows)
        if self._writer is not None:
            self._writer.append(rows)
            self._warn_on_writer_error()

    def _record_learning_rate_changes(self, steps: np.ndarray, rates: np.ndarray) -> None:
        """A Keras callback (ReduceLROnPlateau, LearningRateScheduler) set the learning rate:
        an event at the step before the first one that used it, as a command's event is. The
        rates come from the ring, so this costs no read of the optimizer."""
        if self._learning_rate_seen is None:
            return  # a schedule: it changes every step, by design
        changed = np.flatnonzero(rates != np.float32(self._learning_rate_seen))
        while len(changed):
            index = int(changed[0])
            new = float(rates[index])
            self._record(int(steps[index]) - 1, "learning_rate", self._learning_rate_seen, new)
            self._learning_rate_seen = new
            changed = index + 1 + np.flatnonzero(rates[index + 1 :] != np.float32(new))

    def _record(self, step: int, kind: str, old: Any, new: Any) -> None:
        event = self._store.record_event(step, kind, old, new)
        if self._writer is not None:
            self._writer.event(*event)


@atexit.register
def _close_all() -> None:
    """A process that ends normally ends its runs as "finished" (or "stopped" after a stop)."""
    for run in list(_OPEN_RUNS):
        try:
            run.close()
        except Exception:  # at exit, a broken TF runtime must not hide the user's own output
            logger.debug("Clipwatch: closing a run at exit failed", exc_info=True)
