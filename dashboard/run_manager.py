"""The glue between the page and the training engine: one shared run for every browser tab.

`get_run_manager()` returns a single `RunManager` through `st.cache_resource`, so every session
(every tab) watches and steers the same `Trainer`. The manager is thread-safe: Streamlit runs
each session's script in its own thread. It hands the page plain snapshots (DataFrames and
frozen dataclasses) and takes commands; the page never touches the trainer or TensorFlow.

It also holds what the page shows besides the live run, all as plain snapshots:

* the run database (`training.persistence.RunDatabase`): every run it starts is recorded there,
  and the History and Compare tabs read recorded runs back (`recorded_run`), loaded into a
  `MetricsStore` so the same chart builders draw them;
* the A/B race: two trainers started at once on the same task, seed and data with two clipping
  set-ups, each steerable on its own (`start_race`, `race_snapshot`, `race_set_clip_threshold`);
* the threshold advisor: a run's recorded pre-clip norms replayed through other policies
  (`training.advisor.replay`), cached because a replay of 100,000 steps takes seconds.

This is the only module of `dashboard/` that imports `training` (and so TensorFlow).
"""

from __future__ import annotations

import collections
import datetime
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import streamlit as st

from training import POLICY_NAMES, TASK_NAMES, Trainer, TrainerStatus
from training.advisor import replay
from training.persistence import DatabaseError, RunDatabase, default_path
from training.policies import (
    POLICY_PARAMETERS,
    Parameter,
    validate_clip_threshold,
    validate_policy_params,
    validate_positive,
)
from training.store import STEP_COLUMNS, MetricsStore
from training.tasks import TASKS

__all__ = [
    "ACTIVE_STATES",
    "ADVISOR_STEPS",
    "Advice",
    "DatabaseStatus",
    "POLICY_NAMES",
    "POLICY_PARAMETERS",
    "Parameter",
    "RACE_LABELS",
    "RaceSettings",
    "RaceSide",
    "RaceSideSnapshot",
    "RaceSnapshot",
    "RecordedRun",
    "RunManager",
    "RunSettings",
    "RunSnapshot",
    "default_race_settings",
    "TASKS",
    "TASK_NAMES",
    "get_run_manager",
    "validate_clip_threshold",
    "validate_learning_rate",
    "validate_policy_params",
]

ACTIVE_STATES = ("idle", "running", "paused")  # a trainer in these states can take commands
DEFAULT_SPEED = 300.0  # steps per second: a pace people can follow in a demo
RACE_LABELS = ("A", "B")
ADVISOR_STEPS = 100_000  # the newest steps a replay covers: a replay of 100k steps takes seconds
RECORDED_CACHE_SIZE = 8  # recorded runs kept loaded (each a store of at most ~100k steps)
LOAD_CHUNK_STEPS = 65_536  # rows per append when a recorded run is loaded into a store


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


@dataclass(frozen=True)
class DatabaseStatus:
    """Where runs are recorded, or why they are not."""

    path: str
    error: str | None  # why the database cannot be used; None: every new run is recorded
    generation: int  # counts path changes, so the settings control can follow them

    @property
    def available(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RaceSide:
    """One side of an A/B race: its clipping set-up (the requested values)."""

    policy: str = "none"
    clip_threshold: float = 1.0
    policy_params: Mapping[str, float] = field(default_factory=dict)  # of `policy`

    def name(self, label: str) -> str:
        """The side's name in legends: "A · none", "B · global_norm 1"."""
        uses_threshold = self.policy not in ("none", "autoclip", "agc")
        return f"{label} · {self.policy}" + (f" {self.clip_threshold:g}" if uses_threshold else "")


@dataclass(frozen=True)
class RaceSettings:
    """Two runs started at once: same task, seed and data; two clipping set-ups."""

    task: str = "exploding_rnn"
    sides: tuple[RaceSide, ...] = (RaceSide("none", 1.0), RaceSide("global_norm", 1.0))
    seed: int = 0
    learning_rate: float | None = None  # None: the task's default
    max_steps_per_second: float | None = DEFAULT_SPEED


def default_race_settings(task: str = "exploding_rnn") -> RaceSettings:
    """No clipping against global-norm clipping at the task's own threshold."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(TASK_NAMES)}")
    threshold = float(TASKS[task].clip_threshold)
    return RaceSettings(task=task, sides=(RaceSide("none", threshold), RaceSide("global_norm", threshold)))


@dataclass(frozen=True)
class RaceSideSnapshot:
    """One side of the race, read at one moment."""

    label: str  # "A" or "B"
    name: str  # its legend name, from its set-up at the start
    status: TrainerStatus
    settings: RaceSide  # what has been asked of it (the threshold may have changed since)
    metrics_view: pd.DataFrame
    recent: pd.DataFrame
    events: pd.DataFrame

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def is_active(self) -> bool:
        return self.status.state in ACTIVE_STATES


@dataclass(frozen=True)
class RaceSnapshot:
    """The A/B race (the latest one), read at one moment; no sides before the first race."""

    race_number: int  # 0 before the first race
    settings: RaceSettings | None
    started_at: float | None
    sides: tuple[RaceSideSnapshot, ...]

    @property
    def is_active(self) -> bool:
        return any(side.is_active for side in self.sides)


@dataclass(frozen=True)
class RecordedRun:
    """A run read back from the database, reduced for drawing like a live run's snapshot."""

    run_id: int
    info: Mapping[str, Any]  # `RunDatabase.run_info()`: name, task, policy, config, state, ...
    metrics_view: pd.DataFrame  # store.view(), as for the live run
    layer_view: pd.DataFrame
    recent: pd.DataFrame  # the newest raw rows
    events: pd.DataFrame
    nonfinite_steps: int
    # The newest ADVISOR_STEPS steps, for the threshold advisor.
    advisor_steps: np.ndarray
    advisor_grad_norms: np.ndarray
    advisor_clipped: np.ndarray
    advisor_finite: np.ndarray
    clip_threshold: float  # the threshold in force at its last step (as set, for every policy)


@dataclass(frozen=True)
class Advice:
    """What other clipping set-ups would have done with a run's recorded pre-clip norms.

    The norms stay as recorded: a different threshold would have changed the training and so
    the later norms. An estimate, not a counterfactual run.
    """

    key: tuple  # identifies the replayed norms (run and its length), for caching
    steps: np.ndarray  # the replayed steps
    grad_norms: np.ndarray
    recorded_clip_rate: float  # the share of those steps the run itself clipped
    run_clip_threshold: float  # zclip's cap
    thresholds: Mapping[str, np.ndarray]  # policy -> the threshold it would have used per step
    clip_rates: Mapping[str, float]  # policy -> the share it would have clipped

    @property
    def count(self) -> int:
        return len(self.steps)


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
        database_path: the run database (default: `training.persistence.default_path()`,
            i.e. $CLIPWATCH_DB or runs/clipwatch.db). If it cannot be opened, runs are kept in
            memory only and `database_status().error` says why.
    """

    def __init__(
        self,
        max_points: int = 2000,
        recent_steps: int = 2000,
        trainer_options: Mapping[str, Any] | None = None,
        database_path: str | os.PathLike | None = None,
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
        # The A/B race: two trainers, their requested set-ups and legend names.
        self._race_trainers: tuple[Trainer, ...] = ()
        self._race_settings: RaceSettings | None = None
        self._race_names: tuple[str, ...] = ()
        self._race_number = 0
        self._race_started_at: float | None = None
        self._race_cache: dict[str, tuple[tuple, RaceSideSnapshot]] = {}
        # The run database, and what has been read back from it.
        self._database: RunDatabase | None = None
        self._database_path = ""
        self._database_error: str | None = None
        self._database_generation = 0
        self._cache_lock = threading.Lock()  # loading a recorded run must not block the live view
        self._recorded: collections.OrderedDict[tuple, tuple[tuple, RecordedRun]] = collections.OrderedDict()
        self._advice: collections.OrderedDict[tuple, Advice] = collections.OrderedDict()
        self._replayed_clip_rates: collections.OrderedDict[tuple, float] = collections.OrderedDict()
        self._live_advice: tuple[int, Advice] | None = None
        self._open_database(default_path() if database_path is None else database_path)

    # --- the run database ---------------------------------------------------------------------

    def _open_database(self, path: str | os.PathLike) -> None:
        try:
            database = RunDatabase(path)
        except DatabaseError as error:
            self._database, self._database_error = None, str(error)
        else:
            self._database, self._database_error = database, None
        self._database_path = str(path)
        self._database_generation += 1

    def database_status(self) -> DatabaseStatus:
        with self._lock:
            return DatabaseStatus(self._database_path, self._database_error, self._database_generation)

    def set_database_path(self, path: Any) -> DatabaseStatus:
        """Record new runs in the database at `path` from now on.

        The current run (and race) keep writing where they started. If the database cannot be
        opened, new runs are kept in memory only and the returned status says why; a path that
        is not text (or is empty) is refused with ValueError.
        """
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise ValueError(f"The database path must be a file path. Received: path={path!r}")
        with self._lock:
            self._open_database(Path(str(path).strip()).expanduser())
            return self.database_status()

    @property
    def database(self) -> RunDatabase | None:
        return self._database

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
        """Changes whenever what the controls should show changes (run, race, states, settings)."""
        with self._lock:
            race_states = tuple(trainer.status.state for trainer in self._race_trainers)
            return (
                self._run_number, self.state, self._settings,
                self._race_number, race_states, self._race_settings,
                self._database_generation,
            )  # fmt: skip

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
            if self.race_is_active:
                raise RuntimeError(
                    f"A/B race {self._race_number} is still on: stop it (A/B race tab) before "
                    "starting a run."
                )
            params = validate_policy_params(settings.policy, dict(settings.policy_params))
            trainer = Trainer(
                task=settings.task,
                policy=settings.policy,
                clip_threshold=settings.clip_threshold,
                learning_rate=settings.learning_rate,
                seed=settings.seed,
                database=self._database,
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

    def live_metrics(self) -> pd.DataFrame:
        """Every step the current run's store holds (its window), for exports."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("There is no run yet to export: press Start first.")
        return trainer.metrics()

    def stop_all(self, timeout: float = 2.0) -> None:
        """Stop the current run and both sides of the race (e.g. when a test ends)."""
        self.stop(timeout)
        self.stop_race(timeout=timeout)

    # --- the A/B race ---------------------------------------------------------------------------

    @property
    def race_number(self) -> int:
        return self._race_number

    @property
    def race_settings(self) -> RaceSettings | None:
        return self._race_settings

    @property
    def race_trainers(self) -> tuple[Trainer, ...]:
        return self._race_trainers

    @property
    def race_is_active(self) -> bool:
        return any(trainer.status.state in ACTIVE_STATES for trainer in self._race_trainers)

    def start_race(self, settings: RaceSettings) -> int:
        """Start both sides of an A/B race at once; returns the race's number.

        Both trainers get the same task, seed (so the same initial weights and batches) and
        learning rate; each side its own policy and threshold; the two train concurrently.
        Raises RuntimeError while a run or a race is still on and ValueError (naming the side and
        the value) for a bad setting; either way nothing starts.
        """
        if len(settings.sides) != len(RACE_LABELS):
            raise ValueError(
                f"An A/B race has exactly {len(RACE_LABELS)} sides. Received: {len(settings.sides)} sides"
            )
        with self._lock:
            if self.is_active:
                raise RuntimeError(
                    f"Run {self._run_number} is still {self.state}: press Stop before starting an "
                    "A/B race."
                )
            if self.race_is_active:
                raise RuntimeError(
                    f"A/B race {self._race_number} is still on: stop it before starting a new one."
                )
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            trainers, sides = [], []
            for label, side in zip(RACE_LABELS, settings.sides):
                try:
                    params = validate_policy_params(side.policy, dict(side.policy_params))
                    trainer = Trainer(
                        task=settings.task,
                        policy=side.policy,
                        clip_threshold=side.clip_threshold,
                        learning_rate=settings.learning_rate,
                        seed=settings.seed,
                        database=self._database,
                        run_name=f"A/B race {stamp} · {side.name(label)}",
                        **self.trainer_options,
                        **params,
                    )
                except ValueError as error:
                    raise ValueError(f"Side {label}: {error}") from error
                if settings.max_steps_per_second is not None:
                    trainer.set_max_steps_per_second(settings.max_steps_per_second)
                trainers.append(trainer)
                sides.append(
                    replace(side, policy_params=params, clip_threshold=trainer.config.clip_threshold)
                )
            for trainer in trainers:  # at once: each has its own thread (they build one at a time)
                trainer.start()
            self._race_trainers = tuple(trainers)
            self._race_settings = replace(
                settings, sides=tuple(sides), learning_rate=trainers[0].config.learning_rate
            )
            self._race_names = tuple(side.name(label) for label, side in zip(RACE_LABELS, sides))
            self._race_number += 1
            self._race_started_at = time.time()
            self._race_cache = {}
            return self._race_number

    def race_snapshot(self) -> RaceSnapshot:
        """The latest race as plain data (no sides before the first race)."""
        with self._lock:
            trainers, settings = self._race_trainers, self._race_settings
            if not trainers or settings is None:
                return RaceSnapshot(0, None, None, ())
            sides = []
            for label, name, trainer, side in zip(RACE_LABELS, self._race_names, trainers, settings.sides):
                status = trainer.status
                store = trainer.store
                if store is None:
                    frames = _empty_snapshot_frames()
                    sides.append(
                        RaceSideSnapshot(label, name, status, side, frames["metrics_view"], frames["recent"], frames["events"])
                    )
                    continue
                events = store.events()
                key = (self._race_number, status.step, status.state, len(events), side)
                cached = self._race_cache.get(label)
                if cached is not None and cached[0] == key:
                    sides.append(replace(cached[1], status=status))
                    continue
                metrics_view, _ = store.view(max_points=self.max_points)
                snapshot = RaceSideSnapshot(
                    label, name, status, side, metrics_view, store.metrics(last=self.recent_steps), events
                )
                self._race_cache[label] = (key, snapshot)
                sides.append(snapshot)
            return RaceSnapshot(self._race_number, settings, self._race_started_at, tuple(sides))

    def _race_side(self, label: str, command: str) -> tuple[int, Trainer]:
        if label not in RACE_LABELS:
            raise ValueError(f"A race side is one of {', '.join(RACE_LABELS)}. Received: side={label!r}")
        if not self._race_trainers:
            raise RuntimeError(f"There is no A/B race yet for a {command}: press Start A/B race first.")
        index = RACE_LABELS.index(label)
        trainer = self._race_trainers[index]
        state = trainer.status.state
        if state not in ACTIVE_STATES:
            raise RuntimeError(
                f"Side {label} of A/B race {self._race_number} is {state}; a {command} cannot "
                "change it. Press Start A/B race for a new race."
            )
        return index, trainer

    def race_set_clip_threshold(self, label: str, value: Any) -> None:
        with self._lock:
            index, trainer = self._race_side(label, "clip threshold change")
            trainer.set_clip_threshold(value)
            sides = list(self._race_settings.sides)
            sides[index] = replace(sides[index], clip_threshold=float(value))
            self._race_settings = replace(self._race_settings, sides=tuple(sides))

    def race_pause(self, label: str) -> None:
        self._race_side(label, "pause")[1].pause()

    def race_resume(self, label: str) -> None:
        self._race_side(label, "resume")[1].resume()

    def stop_race(self, label: str | None = None, timeout: float = 2.0) -> None:
        """Stop one side (`label`) or both (None); a no-op for sides that have ended."""
        if label is not None and label not in RACE_LABELS:
            raise ValueError(f"A race side is one of {', '.join(RACE_LABELS)}. Received: side={label!r}")
        trainers = self._race_trainers
        chosen = trainers if label is None else trainers[RACE_LABELS.index(label) : RACE_LABELS.index(label) + 1]
        for trainer in chosen:  # ask every side first: one still compiling must not hold up the other
            trainer.stop(timeout=0)
        for trainer in chosen:
            trainer.stop(timeout)

    # --- recorded runs (History, Compare) -------------------------------------------------------

    def _require_database(self, action: str) -> RunDatabase:
        database = self._database
        if database is None:
            reason = f" ({self._database_error})" if self._database_error else ""
            raise RuntimeError(f"There is no run database to {action}{reason}.")
        return database

    def list_runs(self) -> pd.DataFrame:
        """Every recorded run, newest first (`RunDatabase.list_runs()`); empty without a database."""
        database = self._database
        if database is None:
            return pd.DataFrame(
                columns=["run_id", "name", "task", "policy", "clip_threshold", "learning_rate",
                         "steps", "final_loss", "clip_rate", "state", "error", "created_at"]
            )  # fmt: skip
        return database.list_runs()

    def live_run_ids(self) -> set[int]:
        """Ids of recorded runs that are still training here (they cannot be deleted)."""
        trainers = (self._trainer, *self._race_trainers)
        return {
            trainer.status.run_id
            for trainer in trainers
            if trainer is not None and trainer.status.run_id is not None and trainer.status.state in ACTIVE_STATES
        }

    def recorded_run(self, run_id: int) -> RecordedRun:
        """A recorded run, loaded into a store and reduced for drawing; cached until it changes.

        Raises RuntimeError without a database and ValueError for an unknown run.
        """
        database = self._require_database("open a recorded run")
        info = database.run_info(int(run_id))
        version = (info["steps"], info["state"], info["updated_at"], info["name"])
        key = (str(database.path), int(run_id))
        with self._cache_lock:
            cached = self._recorded.get(key)
            if cached is not None and cached[0] == version:
                self._recorded.move_to_end(key)
                return cached[1]
        recorded = self._load_recorded(database, info)
        with self._cache_lock:
            self._recorded[key] = (version, recorded)
            while len(self._recorded) > RECORDED_CACHE_SIZE:
                self._recorded.popitem(last=False)
        return recorded

    def _load_recorded(self, database: RunDatabase, info: Mapping[str, Any]) -> RecordedRun:
        run_id = int(info["run_id"])
        metrics = database.metrics(run_id)
        layers = database.layer_norms(run_id)
        events = database.events(run_id)
        names = list(info["variable_names"])
        store = MetricsStore(names, POLICY_NAMES, window=ADVISOR_STEPS)
        codes = {name: index for index, name in enumerate(POLICY_NAMES)}
        policy_codes = metrics["policy"].map(codes).fillna(0).to_numpy(np.int8)
        layer_values = layers[names].to_numpy(np.float32) if names else np.zeros((len(metrics), 0), np.float32)
        for start in range(0, len(metrics), LOAD_CHUNK_STEPS):
            part = slice(start, start + LOAD_CHUNK_STEPS)
            rows = {
                name: metrics[name].to_numpy(dtype)[part]
                for name, dtype in STEP_COLUMNS.items()
                if name != "policy"
            }
            rows["policy"] = policy_codes[part]
            rows["layer_norms"] = layer_values[part]
            store.append(rows)
        metrics_view, layer_view = store.view(max_points=self.max_points)
        newest = metrics.tail(ADVISOR_STEPS)
        finite = newest["finite"].to_numpy(bool)
        return RecordedRun(
            run_id=run_id,
            info=dict(info),
            metrics_view=metrics_view,
            layer_view=layer_view,
            recent=metrics.tail(self.recent_steps).reset_index(drop=True),
            events=events,
            nonfinite_steps=int((~metrics["finite"].to_numpy(bool)).sum()),
            advisor_steps=newest["step"].to_numpy(np.int64),
            advisor_grad_norms=newest["grad_norm"].to_numpy(np.float32),
            advisor_clipped=newest["clipped"].to_numpy(bool),
            advisor_finite=finite,
            clip_threshold=_last_threshold(info, events),
        )

    def recorded_metrics(self, run_id: int) -> pd.DataFrame:
        """Every recorded step of a run (for exports)."""
        return self._require_database("export a recorded run").metrics(int(run_id))

    def rename_run(self, run_id: int, name: Any) -> None:
        """Rename a recorded run (ValueError for an empty name or an unknown run)."""
        database = self._require_database("rename a run")
        database.run_info(int(run_id))  # ValueError naming the id if there is no such run
        database.rename_run(int(run_id), name)

    def delete_run(self, run_id: int) -> None:
        """Delete a recorded run and its steps; refused (RuntimeError) while it still trains."""
        database = self._require_database("delete a run")
        run_id = int(run_id)
        if run_id in self.live_run_ids():
            raise RuntimeError(f"Run {run_id} is still training: stop it before deleting it.")
        database.run_info(run_id)
        database.delete_run(run_id)
        with self._cache_lock:
            self._recorded.pop((str(database.path), run_id), None)

    # --- the threshold advisor --------------------------------------------------------------------

    def recorded_advice(self, run_id: int) -> Advice:
        """What autoclip and zclip would have chosen over a recorded run's newest steps."""
        recorded = self.recorded_run(run_id)
        key = ("recorded", self._database_path, recorded.run_id, len(recorded.advisor_steps),
               int(recorded.advisor_steps[-1]) if len(recorded.advisor_steps) else 0, recorded.clip_threshold)  # fmt: skip
        with self._cache_lock:
            cached = self._advice.get(key)
        if cached is not None:
            return cached
        advice = _advise(
            key, recorded.advisor_steps, recorded.advisor_grad_norms, recorded.advisor_clipped,
            recorded.advisor_finite, recorded.clip_threshold,
        )  # fmt: skip
        with self._cache_lock:
            self._advice[key] = advice
            while len(self._advice) > RECORDED_CACHE_SIZE:
                self._advice.popitem(last=False)
        return advice

    def advise_live(self) -> Advice:
        """Replay the current run's newest steps now; the result stays until the next call or run."""
        with self._lock:
            trainer, settings, run_number = self._trainer, self._settings, self._run_number
        if trainer is None or trainer.store is None:
            raise RuntimeError("There is no run yet to replay: press Start first.")
        metrics = trainer.store.metrics(last=ADVISOR_STEPS)
        if len(metrics) == 0:
            raise RuntimeError("The run has no steps yet to replay; wait for its first steps.")
        threshold = settings.clip_threshold if settings is not None else trainer.config.clip_threshold
        key = ("live", run_number, int(metrics["step"].iloc[-1]), float(threshold))
        advice = _advise(
            key, metrics["step"].to_numpy(np.int64), metrics["grad_norm"].to_numpy(np.float32),
            metrics["clipped"].to_numpy(bool), metrics["finite"].to_numpy(bool), float(threshold),
        )  # fmt: skip
        with self._lock:
            if self._run_number == run_number:
                self._live_advice = (run_number, advice)
        return advice

    def live_advice(self) -> Advice | None:
        """The last replay of the current run (None if there is none for this run)."""
        live = self._live_advice
        return live[1] if live is not None and live[0] == self._run_number else None

    def replayed_clip_rate(self, advice: Advice, clip_threshold: Any) -> float:
        """The share of `advice`'s steps a global-norm clip at `clip_threshold` would have clipped.

        ValueError (naming the value) for a threshold that is not a finite number > 0.
        """
        threshold = validate_clip_threshold(clip_threshold)
        key = (advice.key, threshold)
        with self._cache_lock:
            cached = self._replayed_clip_rates.get(key)
        if cached is not None:
            return cached
        rate = float(replay(advice.grad_norms, "global_norm", clip_threshold=threshold)["clip_rate"])
        with self._cache_lock:
            self._replayed_clip_rates[key] = rate
            while len(self._replayed_clip_rates) > 64:
                self._replayed_clip_rates.popitem(last=False)
        return rate


def _last_threshold(info: Mapping[str, Any], events: pd.DataFrame) -> float:
    """The threshold a recorded run had at its end: its last threshold change, else its start."""
    changes = events[events["kind"] == "clip_threshold"] if len(events) else events
    if len(changes):
        try:
            value = float(changes["new"].iloc[-1])
            if math.isfinite(value) and value > 0:
                return value
        except (TypeError, ValueError):
            pass
    return float(info["clip_threshold"])


def _advise(
    key: tuple,
    steps: np.ndarray,
    grad_norms: np.ndarray,
    clipped: np.ndarray,
    finite: np.ndarray,
    run_clip_threshold: float,
) -> Advice:
    """Replay `grad_norms` through autoclip (its defaults) and zclip (capped at the run's threshold)."""
    thresholds, clip_rates = {}, {}
    for policy, threshold in (("autoclip", 1.0), ("zclip", run_clip_threshold)):
        result = replay(grad_norms, policy, clip_threshold=threshold)
        thresholds[policy] = np.asarray(result["thresholds"], np.float64)
        clip_rates[policy] = float(result["clip_rate"])
    recorded = float(clipped[finite].mean()) if finite.any() else math.nan
    return Advice(
        key=key,
        steps=np.asarray(steps, np.int64),
        grad_norms=np.asarray(grad_norms, np.float32),
        recorded_clip_rate=recorded,
        run_clip_threshold=float(run_clip_threshold),
        thresholds=thresholds,
        clip_rates=clip_rates,
    )


@st.cache_resource(show_spinner=False)
def get_run_manager() -> RunManager:
    """The one manager shared by every session of this server."""
    return RunManager()
