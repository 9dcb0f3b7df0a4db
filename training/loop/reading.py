"""How a `Trainer` is read from any thread: its status, its store's snapshots, its waits.

The training thread writes; these only read what it published (the status, the store, the
recorder's last filed step), so the page and the tests never touch TensorFlow objects.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..runs.evaluation import empty_evaluations
from ..runs.store import EVENT_COLUMNS, STEP_COLUMNS, MetricsStore
from .config import RunConfig, TrainerStatus

if TYPE_CHECKING:
    from ..clipping.engine import TrainingState
    from .steps import ChunkSteps


class RunReading:
    """The reading half of `Trainer` (a mixin: the trainer sets the attributes it reads)."""

    _full_step_asked = False  # a wait for the full step asks a run without an end for it at once

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
        steps = self._steps
        return 0 if steps is None else steps.trace_count

    @property
    def steps(self) -> ChunkSteps | None:
        """The run's compiled chunk of steps once built (`steps.function` is the one in use)."""
        return self._steps

    @property
    def state(self) -> TrainingState | None:
        """The run's training state (model, optimizer, engine, step) once built; the training
        thread owns it: read it from another thread only while the run is paused or over."""
        return self._state

    @property
    def store(self) -> MetricsStore | None:
        """The run's store, once the thread has built the model (None before)."""
        return self._store

    def wait_until_ready(self, timeout: float = 60.0) -> bool:
        return self._store_ready.wait(timeout)

    def wait_until_compiled(self, timeout: float = 300.0) -> bool:
        """Wait until the run trains on its full step (every policy, XLA), or, if it ended
        before swapping it in, until that step's compile is over; True unless timed out. A run
        without an end starts that compile now, not once it has trained 2 s (trainer.py)."""
        deadline = time.monotonic() + timeout
        self._full_step_asked = True  # read by the training thread after its next chunk (paused: within 0.5 s)
        while time.monotonic() < deadline:
            status, compile_job = self._status, self._compile_job()
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
        if since is not None and (isinstance(since, bool) or not hasattr(since, "__index__")):
            raise TypeError(f"since must be a step number (an int) or None. Received: since={since!r}")
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

    def _compile_job(self):
        steps = self._steps
        return None if steps is None else steps.compile_job

    def _publish_recorded(self, rows: dict[str, np.ndarray]) -> None:
        """The recorder's last consumer: every sink has the chunk, so `metrics()` may return it."""
        with self._recorded:
            self._recorded_step = int(rows["step"][-1])
            self._recorded.notify_all()
