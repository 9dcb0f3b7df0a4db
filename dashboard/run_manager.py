"""The one shared manager every browser tab watches and steers: the live run, the race, the library.

`get_run_manager()` returns a single `RunManager` through `st.cache_resource`, so every session
(every tab) sees the same run. The manager composes three parts and forwards to them:
`live_run.LiveRun` (the live run), `race.Race` (the A/B race) and `run_library.RunLibrary` (the
run database, recorded runs and advisor replays); it adds only what spans them (a run and a race
never train at once; the controls' fingerprint; stop everything). The page never touches a
trainer or TensorFlow: it gets plain snapshots and sends commands.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import pandas as pd
import streamlit as st

from dashboard.live_run import ACTIVE_STATES, LiveRun, RunSettings, RunSnapshot
from dashboard.race import Race, RaceSettings, RaceSnapshot
from dashboard.run_library import Advice, DatabaseStatus, RecordedRun, RunLibrary
from training import Trainer
from training.persistence import RunDatabase, default_path


class RunManager:
    """The live run, the A/B race and the run library behind one thread-safe object.

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
        self._lock = threading.RLock()  # one lock: a run and a race never start at once
        self.live = LiveRun(max_points, recent_steps, self.trainer_options, self._lock)
        self.race = Race(max_points, recent_steps, self.trainer_options, self._lock)
        self.library = RunLibrary(
            max_points,
            recent_steps,
            default_path() if database_path is None else database_path,
            live_run_ids=self.live_run_ids,
        )

    # --- what spans the parts -------------------------------------------------------------------

    def fingerprint(self) -> tuple:
        """Changes whenever what the controls should show changes (run, race, states, settings)."""
        with self._lock:
            race_states = tuple(trainer.status.state for trainer in self.race.trainers)
            return (
                self.live.run_number, self.live.state, self.live.settings,
                self.race.number, race_states, self.race.settings,
                self.library.database_status().generation,
            )  # fmt: skip

    def start(self, settings: RunSettings) -> int:
        """Start a new run with `settings`; returns its number (see `LiveRun.start`).

        Also refused (RuntimeError) while an A/B race is on.
        """
        with self._lock:
            self.live.refuse_start("a new run")
            self.race.refuse_start("(A/B race tab) before starting a run")
            return self.live.start(settings, self.library.database)

    def start_race(self, settings: RaceSettings) -> int:
        """Start both sides of an A/B race at once (see `Race.start`); refused while a run is on."""
        with self._lock:
            self.live.refuse_start("an A/B race")
            return self.race.start(settings, self.library.database)

    def live_run_ids(self) -> set[int]:
        """Ids of recorded runs that are still training here (they cannot be deleted)."""
        trainers = (self.live.trainer, *self.race.trainers)
        return {
            trainer.status.run_id
            for trainer in trainers
            if trainer is not None
            and trainer.status.run_id is not None
            and trainer.status.state in ACTIVE_STATES
        }

    def stop_all(self, timeout: float = 2.0) -> None:
        """Stop the current run and both sides of the race (e.g. when a test ends)."""
        self.live.stop(timeout)
        self.race.stop(timeout=timeout)

    # --- the live run (`LiveRun`) ------------------------------------------------------------------

    @property
    def trainer(self) -> Trainer | None:
        return self.live.trainer

    @property
    def run_number(self) -> int:
        return self.live.run_number

    @property
    def settings(self) -> RunSettings | None:
        return self.live.settings

    @property
    def state(self) -> str:
        return self.live.state

    @property
    def is_active(self) -> bool:
        return self.live.is_active

    def snapshot(self) -> RunSnapshot:
        return self.live.snapshot()

    def pause(self) -> None:
        self.live.pause()

    def resume(self) -> None:
        self.live.resume()

    def stop(self, timeout: float = 2.0) -> None:
        self.live.stop(timeout)

    def set_clip_threshold(self, value: Any) -> None:
        self.live.set_clip_threshold(value)

    def set_learning_rate(self, value: Any) -> None:
        self.live.set_learning_rate(value)

    def set_policy(self, name: str, **params: Any) -> None:
        self.live.set_policy(name, **params)

    def set_speed(self, steps_per_second: float | None) -> None:
        self.live.set_speed(steps_per_second)

    def inject_spike(self, factor: Any) -> None:
        self.live.inject_spike(factor)

    def live_metrics(self) -> pd.DataFrame:
        return self.live.live_metrics()

    def advise_live(self) -> Advice:
        return self.live.advise_live()

    def live_advice(self) -> Advice | None:
        return self.live.live_advice()

    # --- the A/B race (`Race`) ---------------------------------------------------------------------

    @property
    def race_number(self) -> int:
        return self.race.number

    @property
    def race_settings(self) -> RaceSettings | None:
        return self.race.settings

    @property
    def race_trainers(self) -> tuple[Trainer, ...]:
        return self.race.trainers

    @property
    def race_is_active(self) -> bool:
        return self.race.is_active

    def race_snapshot(self) -> RaceSnapshot:
        return self.race.snapshot()

    def race_set_clip_threshold(self, label: str, value: Any) -> None:
        self.race.set_clip_threshold(label, value)

    def race_pause(self, label: str) -> None:
        self.race.pause(label)

    def race_resume(self, label: str) -> None:
        self.race.resume(label)

    def stop_race(self, label: str | None = None, timeout: float = 2.0) -> None:
        self.race.stop(label, timeout)

    # --- recorded runs and the advisor (`RunLibrary`) ----------------------------------------------

    @property
    def database(self) -> RunDatabase | None:
        return self.library.database

    def database_status(self) -> DatabaseStatus:
        return self.library.database_status()

    def set_database_path(self, path: Any) -> DatabaseStatus:
        return self.library.set_database_path(path)

    def list_runs(self) -> pd.DataFrame:
        return self.library.list_runs()

    def recorded_run(self, run_id: int) -> RecordedRun:
        return self.library.recorded_run(run_id)

    def recorded_metrics(self, run_id: int) -> pd.DataFrame:
        return self.library.recorded_metrics(run_id)

    def rename_run(self, run_id: int, name: Any) -> None:
        self.library.rename_run(run_id, name)

    def delete_run(self, run_id: int) -> None:
        self.library.delete_run(run_id)

    def recorded_advice(self, run_id: int) -> Advice:
        return self.library.recorded_advice(run_id)

    def replayed_clip_rate(self, advice: Advice, clip_threshold: Any) -> float:
        return self.library.replayed_clip_rate(advice, clip_threshold)


@st.cache_resource(show_spinner=False)
def get_run_manager() -> RunManager:
    """The one manager shared by every session of this server."""
    return RunManager()
