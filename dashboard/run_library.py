"""Recorded runs: the run database setting, runs read back for History and Compare, advisor replays.

`RunLibrary` opens the run database (`training.persistence.RunDatabase`) every new run is
recorded in, reads recorded runs back into a `MetricsStore` so the same chart builders draw them
(`recorded_run`), renames and deletes them, and replays their pre-clip norms through other
policies (`training.advisor.replay`), cached because a replay of 100,000 steps takes seconds.
Thread-safe; it hands out plain snapshots.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from training import POLICY_NAMES
from training.advisor import replay
from training.page_paths import page_database_path
from training.persistence import RUN_LIST_COLUMNS, DatabaseError, RunDatabase, is_server_location, redacted
from training.policies import validate_clip_threshold
from training.store import STEP_COLUMNS, MetricsStore

ADVISOR_STEPS = 100_000  # the newest steps a replay covers: a replay of 100k steps takes seconds
RECORDED_CACHE_SIZE = 8  # recorded runs kept loaded (each a store of at most ~100k steps)
LOAD_CHUNK_STEPS = 65_536  # rows per append when a recorded run is loaded into a store


@dataclass(frozen=True)
class DatabaseStatus:
    """Where runs are recorded, or why they are not."""

    path: str  # as it may be shown: a server URL's password is hidden (`redacted`)
    error: str | None  # why the database cannot be used; None: every new run is recorded
    generation: int  # counts path changes, so the settings control can follow them
    server: bool = False  # a PostgreSQL server set by the operator: the page cannot change it

    @property
    def available(self) -> bool:
        return self.error is None


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
    evaluations: pd.DataFrame  # validation results: step, time_s, name, value


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


class RunLibrary:
    """The run database and what has been read back from it; thread-safe.

    Args:
        max_points, recent_steps: as for the live run (rows of the view; newest raw rows).
        database_path: the run database. If it cannot be opened, runs are kept in memory only
            and `database_status().error` says why.
        live_run_ids: ids of recorded runs still training here (they cannot be deleted).
    """

    def __init__(
        self,
        max_points: int,
        recent_steps: int,
        database_path: str | os.PathLike,
        live_run_ids: Callable[[], set[int]] = set,
    ):
        self.max_points = max_points
        self.recent_steps = recent_steps
        self._live_run_ids = live_run_ids
        self._lock = threading.RLock()
        self._database: RunDatabase | None = None
        self._database_path = ""
        self._database_error: str | None = None
        self._database_generation = 0
        self._cache_lock = threading.Lock()  # loading a recorded run must not block the live view
        self._recorded: collections.OrderedDict[tuple, tuple[tuple, RecordedRun]] = collections.OrderedDict()
        self._advice: collections.OrderedDict[tuple, Advice] = collections.OrderedDict()
        self._replayed_clip_rates: collections.OrderedDict[tuple, float] = collections.OrderedDict()
        self._open_database(database_path)

    def _open_database(self, path: str | os.PathLike) -> None:
        try:
            database = RunDatabase(path)
        except DatabaseError as error:
            self._database, self._database_error = None, str(error)
        else:
            self._database, self._database_error = database, None
        self._database_path = redacted(path)  # shown on the page: never a password
        self._database_is_server = is_server_location(path)
        self._database_generation += 1

    def database_status(self) -> DatabaseStatus:
        with self._lock:
            return DatabaseStatus(
                self._database_path, self._database_error, self._database_generation, self._database_is_server
            )

    def set_database_path(self, path: Any) -> DatabaseStatus:
        """Record new runs in the database at `path` from now on (the page's Settings).

        The current run (and race) keep writing where they started. If the database cannot be
        opened, new runs are kept in memory only and the returned status says why. The page may
        only choose a file inside the runs folder (`training.page_paths`): anything else (not
        text, empty, outside, `..`, a symbolic link leading out) is refused with ValueError.
        """
        if self._database_is_server:
            raise ValueError(
                f"The run database is the server {self._database_path!r}, set by the operator "
                "(--db or CLIPWATCH_DB): the page cannot change it. Received: path="
                f"{redacted(path) if isinstance(path, str) else path!r}"
            )
        resolved = page_database_path(path)
        with self._lock:
            self._open_database(resolved)
            return self.database_status()

    @property
    def database(self) -> RunDatabase | None:
        return self._database

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
            return pd.DataFrame(columns=list(RUN_LIST_COLUMNS))
        return database.list_runs()

    def recorded_run(self, run_id: int) -> RecordedRun:
        """A recorded run, loaded into a store and reduced for drawing; cached until it changes.

        Raises RuntimeError without a database and ValueError for an unknown run.
        """
        database = self._require_database("open a recorded run")
        info = database.run_info(int(run_id))
        version = (info["steps"], info["state"], info["updated_at"], info["name"])
        key = (database.location, int(run_id))
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
            evaluations=database.evaluations(run_id),
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
        if run_id in self._live_run_ids():
            raise RuntimeError(f"Run {run_id} is still training: stop it before deleting it.")
        database.run_info(run_id)
        database.delete_run(run_id)
        with self._cache_lock:
            self._recorded.pop((database.location, run_id), None)


    def recorded_advice(self, run_id: int) -> Advice:
        """What autoclip and zclip would have chosen over a recorded run's newest steps."""
        recorded = self.recorded_run(run_id)
        key = ("recorded", self._database_path, recorded.run_id, len(recorded.advisor_steps),
               int(recorded.advisor_steps[-1]) if len(recorded.advisor_steps) else 0, recorded.clip_threshold)  # fmt: skip
        with self._cache_lock:
            cached = self._advice.get(key)
        if cached is not None:
            return cached
        advice = advise(
            key, recorded.advisor_steps, recorded.advisor_grad_norms, recorded.advisor_clipped,
            recorded.advisor_finite, recorded.clip_threshold,
        )  # fmt: skip
        with self._cache_lock:
            self._advice[key] = advice
            while len(self._advice) > RECORDED_CACHE_SIZE:
                self._advice.popitem(last=False)
        return advice


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

    # --- runs another process records (a user's script with training.keras.LiveClipping) ------

    def live_runs(self) -> pd.DataFrame:
        """The database's live runs (newest first) with `attached`: True when another process
        records it. Runs whose process died are marked interrupted first, so they drop out."""
        database = self._database
        if database is not None:
            database.mark_interrupted()
        runs = self.list_runs()
        runs = runs[runs["state"].isin(("running", "paused"))].copy()
        runs["attached"] = ~runs["run_id"].isin(self._live_run_ids())
        return runs.reset_index(drop=True)

    def attached_run_settings(self, run_id: int) -> dict[str, Any]:
        """An attached run's clip threshold, learning rate and policy now (after its commands)."""
        recorded = self.recorded_run(run_id)
        events, info = recorded.events, recorded.info

        def last(kind: str, default: Any) -> Any:
            changes = events[events["kind"] == kind] if len(events) else events
            return changes["new"].iloc[-1] if len(changes) else default

        return {
            "clip_threshold": recorded.clip_threshold,
            "learning_rate": float(last("learning_rate", info["learning_rate"])),
            "policy": str(last("policy", info["policy"])),
        }

    def send_command(self, run_id: int, kind: str, value: Any = None, **params: Any) -> int:
        """Send a command to an attached run through the database; returns the command's id.

        `RunDatabase.send_command` checks the value with the trainer's validators, and a run that
        has ended, first: either raises ValueError and sends nothing (the script checks again: it
        knows which parameters it can change).
        """
        database = self._require_database("steer an attached run")
        return database.send_command(int(run_id), kind, value, **params)

    def last_command(self, run_id: int) -> dict[str, Any] | None:
        """The run's latest command, from any page: `applied_step` and `applied_time` once
        applied, or `error`; None if it never had one."""
        return self._require_database("read a command").last_command(int(run_id))


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


def advise(
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

