"""The glue between the page and the training engine: one shared run for every browser tab.

`get_run_manager()` returns a single `RunManager` through `st.cache_resource`, so every session
(every tab) watches and steers the same `Trainer`. The manager is thread-safe: Streamlit runs
each session's script in its own thread. It hands the page plain snapshots (DataFrames and
frozen dataclasses) and takes commands; the page never touches the trainer or TensorFlow.

This is the only module of `dashboard/` that imports `training` (and so TensorFlow).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import pandas as pd
import streamlit as st

from training import POLICY_NAMES, TASK_NAMES, Trainer, TrainerStatus
from training.policies import (
    POLICY_PARAMETERS,
    Parameter,
    validate_clip_threshold,
    validate_policy_params,
    validate_positive,
)
from training.store import STEP_COLUMNS
from training.tasks import TASKS

__all__ = [
    "ACTIVE_STATES",
    "POLICY_NAMES",
    "POLICY_PARAMETERS",
    "Parameter",
    "RunManager",
    "RunSettings",
    "RunSnapshot",
    "TASKS",
    "TASK_NAMES",
    "get_run_manager",
    "validate_clip_threshold",
    "validate_learning_rate",
    "validate_policy_params",
]

ACTIVE_STATES = ("idle", "running", "paused")  # a trainer in these states can take commands
DEFAULT_SPEED = 300.0  # steps per second: a pace people can follow in a demo


def validate_learning_rate(value: Any) -> float:
    """The trainer's own check: a finite number > 0 (ValueError naming the value otherwise)."""
    return validate_positive("learning_rate", value)


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

    @property
    def state(self) -> str:
        return self.status.state if self.status is not None else "idle"

    @property
    def is_active(self) -> bool:
        return self.status is not None and self.status.state in ACTIVE_STATES


def _empty_snapshot_frames() -> dict[str, pd.DataFrame]:
    return {
        "metrics_view": pd.DataFrame(
            columns=[
                "step", "steps", "loss", "grad_norm", "grad_norm_min", "grad_norm_mean",
                "clipped_grad_norm", "clipped_grad_norm_mean", "clip_threshold", "clipped",
                "nonfinite", "learning_rate", "policy",
            ]
        ),
        "layer_view": pd.DataFrame(columns=["step"]),
        "recent": pd.DataFrame(columns=list(STEP_COLUMNS)),
        "events": pd.DataFrame(columns=["step", "time_s", "kind", "old", "new"]),
    }


class RunManager:
    """Holds the current `Trainer` and sends it commands; thread-safe.

    Args:
        max_points: rows of the whole-run view that charts draw.
        recent_steps: newest raw rows kept for the histogram and the what-if readout.
        trainer_options: extra keyword arguments for every new `Trainer` (e.g. `window`,
            `sinks`); kept as the public dict `trainer_options`, read at each Start.
    """

    def __init__(
        self,
        max_points: int = 2000,
        recent_steps: int = 2000,
        trainer_options: Mapping[str, Any] | None = None,
    ):
        self.max_points = max_points
        self.recent_steps = recent_steps
        self.trainer_options = dict(trainer_options or {})
        self._lock = threading.RLock()
        self._trainer: Trainer | None = None
        self._settings: RunSettings | None = None
        self._run_number = 0
        self._started_at: float | None = None
        self._snapshot: RunSnapshot | None = None
        self._snapshot_key: tuple | None = None

    # --- reading ---------------------------------------------------------------------------

    @property
    def trainer(self) -> Trainer | None:
        return self._trainer

    @property
    def run_number(self) -> int:
        return self._run_number

    @property
    def settings(self) -> RunSettings | None:
        return self._settings

    @property
    def state(self) -> str:
        trainer = self._trainer
        return "idle" if trainer is None else trainer.status.state

    @property
    def is_active(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.status.state in ACTIVE_STATES

    def fingerprint(self) -> tuple:
        """Changes whenever what the controls should show changes (run, state, settings)."""
        with self._lock:
            return (self._run_number, self.state, self._settings)

    def snapshot(self) -> RunSnapshot:
        """The current run as plain data; shared by tabs until the run moves on."""
        with self._lock:
            trainer, settings = self._trainer, self._settings
            run_number, started_at = self._run_number, self._started_at
            if trainer is None:
                return RunSnapshot(0, None, None, None, **_empty_snapshot_frames())
            status = trainer.status
            store = trainer.store
            if store is None:  # the thread is still building the model
                return RunSnapshot(
                    run_number, status, settings, started_at, **_empty_snapshot_frames()
                )
            events = store.events()
            key = (run_number, status.step, status.state, len(events), settings)
            if key == self._snapshot_key and self._snapshot is not None:
                return replace(self._snapshot, status=status)
            metrics_view, layer_view = store.view(max_points=self.max_points)
            recent = store.metrics(last=self.recent_steps)
            snapshot = RunSnapshot(
                run_number, status, settings, started_at, metrics_view, layer_view, recent, events
            )
            self._snapshot, self._snapshot_key = snapshot, key
            return snapshot

    # --- commands --------------------------------------------------------------------------

    def start(self, settings: RunSettings) -> int:
        """Start a new run with `settings`; returns its number.

        Raises RuntimeError while a run is still running or paused, and ValueError (from the
        trainer, naming the value) for a bad setting; either way nothing changes.
        """
        with self._lock:
            if self.is_active:
                raise RuntimeError(
                    f"Run {self._run_number} is still {self.state}: press Stop before starting "
                    "a new run."
                )
            params = validate_policy_params(settings.policy, dict(settings.policy_params))
            trainer = Trainer(
                task=settings.task,
                policy=settings.policy,
                clip_threshold=settings.clip_threshold,
                learning_rate=settings.learning_rate,
                seed=settings.seed,
                **self.trainer_options,
                **params,
            )
            if settings.max_steps_per_second is not None:
                trainer.set_max_steps_per_second(settings.max_steps_per_second)  # before step 1
            trainer.start()
            config = trainer.config
            self._trainer = trainer
            self._settings = replace(
                settings,
                policy_params=params,
                clip_threshold=config.clip_threshold,
                learning_rate=config.learning_rate,
            )
            self._run_number += 1
            self._started_at = time.time()
            self._snapshot = self._snapshot_key = None
            return self._run_number

    def pause(self) -> None:
        self._active_trainer("pause").pause()

    def resume(self) -> None:
        self._active_trainer("resume").resume()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the current run (a no-op if there is none or it has already ended)."""
        trainer = self._trainer
        if trainer is not None:
            trainer.stop(timeout)

    def set_clip_threshold(self, value: Any) -> None:
        with self._lock:
            self._active_trainer("clip threshold change").set_clip_threshold(value)
            self._settings = replace(self._settings, clip_threshold=float(value))

    def set_learning_rate(self, value: Any) -> None:
        with self._lock:
            self._active_trainer("learning rate change").set_learning_rate(value)
            self._settings = replace(self._settings, learning_rate=float(value))

    def set_policy(self, name: str, **params: Any) -> None:
        """Switch to policy `name` or change its parameters; unnamed ones keep their values."""
        with self._lock:
            trainer = self._active_trainer("policy change")
            settings = self._settings
            # Send the complete set: the trainer merges with what it has *applied*, which can
            # lag a command that is still queued.
            known = dict(settings.policy_params) if name == settings.policy else {}
            merged = validate_policy_params(name, {**known, **params})
            trainer.set_policy(name, **merged)
            self._settings = replace(settings, policy=name, policy_params=merged)

    def set_speed(self, steps_per_second: float | None) -> None:
        """Cap the pace at `steps_per_second` (None: full speed)."""
        with self._lock:
            self._active_trainer("speed change").set_max_steps_per_second(steps_per_second)
            value = None if steps_per_second is None else float(steps_per_second)
            self._settings = replace(self._settings, max_steps_per_second=value)

    def inject_spike(self, factor: Any) -> None:
        self._active_trainer("spike").inject_spike(factor)

    def _active_trainer(self, command: str) -> Trainer:
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError(f"There is no run yet for a {command}: press Start first.")
        state = trainer.status.state
        if state not in ACTIVE_STATES:
            raise RuntimeError(
                f"Run {self._run_number} is {state}; a {command} cannot change it. "
                "Press Start for a new run."
            )
        return trainer


@st.cache_resource(show_spinner=False)
def get_run_manager() -> RunManager:
    """The one manager shared by every session of this server."""
    return RunManager()
