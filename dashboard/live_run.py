"""The live run: one `Trainer` at a time, its commands, and the plain snapshot the Live tab draws.

`LiveRun` starts a run from `RunSettings`, forwards commands (pause, threshold, policy, speed,
spike) to the trainer, remembers what was asked of it (so every tab shows the same values at
once), reads it into a `RunSnapshot`, and replays its newest norms for the threshold advisor.
Thread-safe: every browser tab's script thread calls it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import pandas as pd

from dashboard.run_library import ADVISOR_STEPS, Advice, advise
from training import Trainer, TrainerStatus
from training.persistence import RunDatabase
from training.policies import validate_policy_params
from training.evaluation import EVALUATION_COLUMNS
from training.lazy_import import tensorflow_ready
from training.store import EVENT_COLUMNS, STEP_COLUMNS, VIEW_COLUMNS
from training.trainer import trainer_from_settings

ACTIVE_STATES = ("idle", "running", "paused")  # a trainer in these states can take commands
DEFAULT_SPEED = 300.0  # steps per second: a pace people can follow in a demo


@dataclass(frozen=True)
class RunSettings:
    """What a run was started with and what has been asked of it since (the requested values).

    The trainer applies a command at its next chunk, so right after a command these lead the
    trainer's own `config` by a few milliseconds; the page shows these so tabs agree at once.
    """

    task: str = "seed"
    policy: str = "global_norm"
    policy_params: Mapping[str, float] = field(default_factory=dict)  # of `policy`, complete
    clip_threshold: float = 1.0
    learning_rate: float | None = None  # None: the task's default
    max_steps_per_second: float | None = DEFAULT_SPEED  # None: full speed
    seed: int = 0


@dataclass(frozen=True)
class RunSnapshot:
    """Everything the page draws, read at one moment. Plain data: safe to keep and share."""

    run_number: int  # 0 before the first run
    status: TrainerStatus | None
    settings: RunSettings | None
    started_at: float | None  # time.time() of Start
    metrics_view: pd.DataFrame  # store.view(): the whole run in at most ~max_points rows
    layer_view: pd.DataFrame
    recent: pd.DataFrame  # the newest raw rows (store.metrics(last=...))
    events: pd.DataFrame
    evaluations: pd.DataFrame  # validation results: step, time_s, name, value
    loading_tensorflow: bool = False  # the run waits for TensorFlow's first import in this server

    @property
    def state(self) -> str:
        return self.status.state if self.status is not None else "idle"

    @property
    def is_active(self) -> bool:
        return self.status is not None and self.status.state in ACTIVE_STATES


def empty_snapshot_frames() -> dict[str, pd.DataFrame]:
    """The frames of a snapshot of a run that has no store yet (no run, or still building)."""
    return {
        "metrics_view": pd.DataFrame(columns=list(VIEW_COLUMNS)),
        "layer_view": pd.DataFrame(columns=["step"]),
        "recent": pd.DataFrame(columns=list(STEP_COLUMNS)),
        "events": pd.DataFrame(columns=list(EVENT_COLUMNS)),
        "evaluations": pd.DataFrame(columns=list(EVALUATION_COLUMNS)),
    }


class TrainerHost:
    """What the live run and the race share: how much they read, the trainers' options, one lock.

    Args:
        max_points: rows of the whole-run view that charts draw.
        recent_steps: newest raw rows kept for the histogram and the what-if readout.
        trainer_options: extra keyword arguments for every new `Trainer`, read at each Start
            (the caller may change the dict between runs).
        lock: shared by the live run and the race, so a run and a race never start at once.
    """

    def __init__(self, max_points: int, recent_steps: int, trainer_options: dict[str, Any], lock: threading.RLock):
        self.max_points = max_points
        self.recent_steps = recent_steps
        self.trainer_options = trainer_options
        self._lock = lock


class LiveRun(TrainerHost):
    """Holds the current `Trainer` and sends it commands; thread-safe (see `TrainerHost`).

    `trainer`, `settings` (what was asked of the run) and `run_number` (0 before the first run)
    are read-only outside this class.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.trainer: Trainer | None = None
        self.settings: RunSettings | None = None
        self.run_number = 0
        self._started_at: float | None = None
        self._snapshot: RunSnapshot | None = None
        self._snapshot_key: tuple | None = None
        self._live_advice: tuple[int, Advice] | None = None

    @property
    def state(self) -> str:
        trainer = self.trainer
        return "idle" if trainer is None else trainer.status.state

    @property
    def is_active(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.status.state in ACTIVE_STATES


    def snapshot(self) -> RunSnapshot:
        """The current run as plain data; shared by tabs until the run moves on."""
        with self._lock:
            trainer, settings = self.trainer, self.settings
            run_number, started_at = self.run_number, self._started_at
            if trainer is None:
                return RunSnapshot(0, None, None, None, **empty_snapshot_frames())
            status = trainer.status
            store = trainer.store
            if store is None:  # the thread is still building the model
                return RunSnapshot(
                    run_number, status, settings, started_at, **empty_snapshot_frames(),
                    loading_tensorflow=not tensorflow_ready(),
                )
            events = store.events()
            evaluations = trainer.evaluations()
            # The store's own count, not status.step: the recorder thread fills the store a chunk
            # or two after the status counts the steps, and a key on the status would keep a view
            # built before those rows landed (an empty chart while the trainer traces its full step).
            key = (run_number, store.total_steps, status.state, len(events), len(evaluations), settings)
            if key == self._snapshot_key and self._snapshot is not None:
                return replace(self._snapshot, status=status)
            metrics_view, layer_view = store.view(max_points=self.max_points)
            recent = store.metrics(last=self.recent_steps)
            snapshot = RunSnapshot(
                run_number, status, settings, started_at, metrics_view, layer_view, recent, events,
                evaluations,
            )
            self._snapshot, self._snapshot_key = snapshot, key
            return snapshot


    def view_range(self, run_number: int, first: int, last: int) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """Steps `first`..`last` of run `run_number` as finely as its store holds them (every step
        the ring still has; `MetricsStore.view_range`), or None once that run is not the current
        one or has no store yet (the caller then crops the snapshot it holds)."""
        with self._lock:
            trainer = self.trainer if self.run_number == run_number else None
        store = trainer.store if trainer is not None else None
        return None if store is None else store.view_range(first, last, max_points=self.max_points)

    # --- commands --------------------------------------------------------------------------

    def refuse_start(self, what: str) -> None:
        """RuntimeError while the run is running or paused, e.g. for what="a new run"."""
        if self.is_active:
            raise RuntimeError(
                f"Run {self.run_number} is still {self.state}: press Stop before starting {what}."
            )

    def start(self, settings: RunSettings, database: RunDatabase | None) -> int:
        """Start a new run with `settings`, recorded in `database`; returns its number.

        Raises RuntimeError while a run is still running or paused, and ValueError (from the
        trainer, naming the value) for a bad setting; either way nothing changes.
        """
        with self._lock:
            self.refuse_start("a new run")
            trainer = trainer_from_settings(
                settings.task, settings.policy, settings.clip_threshold, settings.learning_rate,
                settings.seed, settings.policy_params, settings.max_steps_per_second,
                database=database, **self.trainer_options,
            )  # fmt: skip
            trainer.start()
            config = trainer.config
            self.trainer = trainer
            self.settings = replace(
                settings,
                policy_params=config.policy_params[settings.policy],
                clip_threshold=config.clip_threshold,
                learning_rate=config.learning_rate,
            )
            self.run_number += 1
            self._started_at = time.time()
            self._snapshot = self._snapshot_key = None
            return self.run_number

    def pause(self) -> None:
        self._active_trainer("pause").pause()

    def resume(self) -> None:
        self._active_trainer("resume").resume()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the current run (a no-op if there is none or it has already ended)."""
        trainer = self.trainer
        if trainer is not None:
            trainer.stop(timeout)

    def set_clip_threshold(self, value: Any) -> None:
        with self._lock:
            self._active_trainer("clip threshold change").set_clip_threshold(value)
            self.settings = replace(self.settings, clip_threshold=float(value))

    def set_learning_rate(self, value: Any) -> None:
        with self._lock:
            self._active_trainer("learning rate change").set_learning_rate(value)
            self.settings = replace(self.settings, learning_rate=float(value))

    def set_policy(self, name: str, **params: Any) -> None:
        """Switch to policy `name` or change its parameters; unnamed ones keep their values."""
        with self._lock:
            trainer = self._active_trainer("policy change")
            settings = self.settings
            # Send the complete set: the trainer merges with what it has *applied*, which can
            # lag a command that is still queued.
            known = dict(settings.policy_params) if name == settings.policy else {}
            merged = validate_policy_params(name, {**known, **params})
            trainer.set_policy(name, **merged)
            self.settings = replace(settings, policy=name, policy_params=merged)

    def set_speed(self, steps_per_second: float | None) -> None:
        """Cap the pace at `steps_per_second` (None: full speed)."""
        with self._lock:
            self._active_trainer("speed change").set_max_steps_per_second(steps_per_second)
            value = None if steps_per_second is None else float(steps_per_second)
            self.settings = replace(self.settings, max_steps_per_second=value)

    def inject_spike(self, factor: Any) -> None:
        self._active_trainer("spike").inject_spike(factor)

    def active_trainer(self, command: str) -> Trainer:
        """The trainer of the run that is running or paused; RuntimeError naming `command` otherwise."""
        return self._active_trainer(command)

    def change_settings(self, **changes: Any) -> None:
        """Record what was asked of the run by another part (e.g. an adopted branch's settings)."""
        with self._lock:
            if self.settings is not None:
                self.settings = replace(self.settings, **changes)

    def _active_trainer(self, command: str) -> Trainer:
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError(f"There is no run yet for a {command}: press Start first.")
        state = trainer.status.state
        if state not in ACTIVE_STATES:
            raise RuntimeError(
                f"Run {self.run_number} is {state}; a {command} cannot change it. "
                "Press Start for a new run."
            )
        return trainer

    def live_metrics(self) -> pd.DataFrame:
        """Every step the current run's store holds (its window), for exports."""
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("There is no run yet to export: press Start first.")
        return trainer.metrics()


    def advise_live(self) -> Advice:
        """Replay the current run's newest steps now; the result stays until the next call or run."""
        with self._lock:
            trainer, settings, run_number = self.trainer, self.settings, self.run_number
        if trainer is None or trainer.store is None:
            raise RuntimeError("There is no run yet to replay: press Start first.")
        metrics = trainer.store.metrics(last=ADVISOR_STEPS)
        if len(metrics) == 0:
            raise RuntimeError("The run has no steps yet to replay; wait for its first steps.")
        threshold = settings.clip_threshold if settings is not None else trainer.config.clip_threshold
        key = ("live", run_number, int(metrics["step"].iloc[-1]), float(threshold))
        advice = advise(
            key, metrics["step"].to_numpy(np.int64), metrics["grad_norm"].to_numpy(np.float32),
            metrics["clipped"].to_numpy(bool), metrics["finite"].to_numpy(bool), float(threshold),
        )  # fmt: skip
        with self._lock:
            if self.run_number == run_number:
                self._live_advice = (run_number, advice)
        return advice

    def live_advice(self) -> Advice | None:
        """The last replay of the current run (None if there is none for this run)."""
        live = self._live_advice
        return live[1] if live is not None and live[0] == self.run_number else None

