"""The one shared manager every browser tab watches and steers: the live run, the race, the library.

`get_run_manager()` returns a single `RunManager` through `st.cache_resource`, so every session
(every tab) sees the same run. The manager composes four parts and forwards to them:
`live_run.LiveRun` (the live run), `live_forks.LiveForks` (its branches and sweeps), `race.Race`
(the A/B race) and `run_library.RunLibrary` (the run database, recorded runs and advisor
replays); it adds only what spans them (a run and a race never train at once; the controls'
fingerprint; stop everything). The page never touches a
trainer or TensorFlow: it gets plain snapshots and sends commands.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import streamlit as st

from dashboard.live_forks import LiveForks
from dashboard.live_run import ACTIVE_STATES, LiveRun, RunSettings
from dashboard.race import Race, RaceSettings
from dashboard.run_library import RunLibrary
from dashboard.viewers import ViewerCount
from training.persistence import default_path


class _Forward:
    """A read-only attribute of `RunManager` that is a part's attribute: `pause = _Forward("live")`
    reads `manager.live.pause`, a property or a bound method alike."""

    def __init__(self, part: str, name: str | None = None):
        self.part, self.name = part, name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def __get__(self, manager: "RunManager | None", owner: type) -> Any:
        if manager is None:
            return self
        return getattr(getattr(manager, self.part), self.name)


class RunManager:
    """The live run, the A/B race and the run library behind one thread-safe object.

    Args:
        max_points: rows of the whole-run view that charts draw.
        recent_steps: newest raw rows kept for the histogram and the what-if readout.
        trainer_options: extra keyword arguments for every new `Trainer` (e.g. `store_window`,
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
        self.forks = LiveForks(self.live)
        self.race = Race(max_points, recent_steps, self.trainer_options, self._lock)
        self.library = RunLibrary(
            max_points,
            recent_steps,
            default_path() if database_path is None else database_path,
            live_run_ids=self.live_run_ids,
        )
        self.viewers = ViewerCount()  # the tabs watching the live run (dashboard/viewers.py)

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

    # --- forwarded to the parts ----------------------------------------------------------------

    # The live run (`LiveRun`).
    trainer = _Forward("live")
    run_number = _Forward("live")
    view_range = _Forward("live")
    settings = _Forward("live")
    state = _Forward("live")
    is_active = _Forward("live")
    snapshot = _Forward("live")
    pause = _Forward("live")
    resume = _Forward("live")
    stop = _Forward("live")
    set_clip_threshold = _Forward("live")
    set_learning_rate = _Forward("live")
    set_policy = _Forward("live")
    set_speed = _Forward("live")
    inject_spike = _Forward("live")
    live_metrics = _Forward("live")
    advise_live = _Forward("live")
    live_advice = _Forward("live")
    # Forks of the live run: branches and threshold sweeps (`LiveForks`).
    fork = _Forward("forks")
    sweep = _Forward("forks")
    discard_branch = _Forward("forks")
    adopt_branch = _Forward("forks")
    fork_snapshot = _Forward("forks")
    # The A/B race (`Race`).
    race_number = _Forward("race", "number")
    race_settings = _Forward("race", "settings")
    race_trainers = _Forward("race", "trainers")
    race_is_active = _Forward("race", "is_active")
    race_snapshot = _Forward("race", "snapshot")
    race_set_clip_threshold = _Forward("race", "set_clip_threshold")
    race_pause = _Forward("race", "pause")
    race_resume = _Forward("race", "resume")
    stop_race = _Forward("race", "stop")
    # Recorded runs and the advisor (`RunLibrary`).
    database = _Forward("library")
    database_status = _Forward("library")
    set_database_path = _Forward("library")
    list_runs = _Forward("library")
    recorded_run = _Forward("library")
    recorded_metrics = _Forward("library")
    rename_run = _Forward("library")
    delete_run = _Forward("library")
    recorded_advice = _Forward("library")
    replayed_clip_rate = _Forward("library")
    # Runs other processes record, steered through the database (`RunLibrary`).
    live_runs = _Forward("library")
    attached_run_settings = _Forward("library")
    send_command = _Forward("library")
    last_command = _Forward("library")


@st.cache_resource(show_spinner=False)
def get_run_manager() -> RunManager:
    """The one manager shared by every session of this server (made when the first page loads)."""
    return RunManager()


def warm_up_after_drawing() -> None:
    """Start importing TensorFlow and warming the default task's first steps in the background
    (once per server; never blocks), so a user's first Start costs what later ones do.

    Called once the page is drawn, not before: the import holds the interpreter lock for seconds,
    and started at the top of the server's first script run it made that run take 1.0-1.5 s
    instead of 0.17 s (measured with AppTest), delaying the first paint and the Start button."""
    from training import warmup

    warmup.warm_up()
