"""The A/B race: two trainers started at once on the same task, seed and data, two clipping set-ups.

`Race` starts both sides (each trainer in its own thread), steers each on its own (threshold,
pause, resume, stop) and reads them into a `RaceSnapshot` for the A/B race tab. Thread-safe.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import pandas as pd

from dashboard.live_run import ACTIVE_STATES, DEFAULT_SPEED, TrainerHost, empty_snapshot_frames
from training import TASK_NAMES, Trainer, TrainerStatus
from training.persistence import RunDatabase
from training.tasks import TASKS
from training.trainer import trainer_from_settings

RACE_LABELS = ("A", "B")


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


class Race(TrainerHost):
    """The latest A/B race: its two trainers, their requested set-ups and legend names; thread-safe.

    `trainers`, `settings` (what was asked of each side) and `number` (0 before the first race)
    are read-only outside this class.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.trainers: tuple[Trainer, ...] = ()
        self.settings: RaceSettings | None = None
        self._names: tuple[str, ...] = ()
        self.number = 0
        self._started_at: float | None = None
        self._cache: dict[str, tuple[tuple, RaceSideSnapshot]] = {}

    @property
    def is_active(self) -> bool:
        return any(trainer.status.state in ACTIVE_STATES for trainer in self.trainers)

    def refuse_start(self, when: str) -> None:
        """RuntimeError while a side is running or paused, e.g. for when="before starting a run"."""
        if self.is_active:
            raise RuntimeError(f"A/B race {self.number} is still on: stop it {when}.")

    def start(self, settings: RaceSettings, database: RunDatabase | None) -> int:
        """Start both sides at once, recorded in `database`; returns the race's number.

        Both trainers get the same task, seed (so the same initial weights and batches) and
        learning rate; each side its own policy and threshold; the two train concurrently.
        Raises RuntimeError while the race is still on and ValueError (naming the side and the
        value) for a bad setting; either way nothing starts.
        """
        if len(settings.sides) != len(RACE_LABELS):
            raise ValueError(
                f"An A/B race has exactly {len(RACE_LABELS)} sides. Received: {len(settings.sides)} sides"
            )
        with self._lock:
            self.refuse_start("before starting a new one")
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            trainers, sides = [], []
            for label, side in zip(RACE_LABELS, settings.sides):
                try:
                    trainer = trainer_from_settings(
                        settings.task, side.policy, side.clip_threshold, settings.learning_rate,
                        settings.seed, side.policy_params, settings.max_steps_per_second,
                        database=database, run_name=f"A/B race {stamp} · {side.name(label)}",
                        **self.trainer_options,
                    )  # fmt: skip
                except ValueError as error:
                    raise ValueError(f"Side {label}: {error}") from error
                trainers.append(trainer)
                sides.append(
                    replace(
                        side,
                        policy_params=trainer.config.policy_params[side.policy],
                        clip_threshold=trainer.config.clip_threshold,
                    )
                )
            for trainer in trainers:  # at once: each has its own thread (they build one at a time)
                trainer.start()
            self.trainers = tuple(trainers)
            self.settings = replace(
                settings, sides=tuple(sides), learning_rate=trainers[0].config.learning_rate
            )
            self._names = tuple(side.name(label) for label, side in zip(RACE_LABELS, sides))
            self.number += 1
            self._started_at = time.time()
            self._cache = {}
            return self.number

    def snapshot(self) -> RaceSnapshot:
        """The latest race as plain data (no sides before the first race)."""
        with self._lock:
            trainers, settings = self.trainers, self.settings
            if not trainers or settings is None:
                return RaceSnapshot(0, None, None, ())
            sides = []
            for label, name, trainer, side in zip(RACE_LABELS, self._names, trainers, settings.sides):
                status = trainer.status
                store = trainer.store
                if store is None:
                    frames = empty_snapshot_frames()
                    sides.append(
                        RaceSideSnapshot(label, name, status, side, frames["metrics_view"], frames["recent"], frames["events"])
                    )
                    continue
                events = store.events()
                key = (self.number, store.total_steps, status.state, len(events), side)  # see live_run
                cached = self._cache.get(label)
                if cached is not None and cached[0] == key:
                    sides.append(replace(cached[1], status=status))
                    continue
                metrics_view, _ = store.view(max_points=self.max_points)
                snapshot = RaceSideSnapshot(
                    label, name, status, side, metrics_view, store.metrics(last=self.recent_steps), events
                )
                self._cache[label] = (key, snapshot)
                sides.append(snapshot)
            return RaceSnapshot(self.number, settings, self._started_at, tuple(sides))

    def _side(self, label: str, command: str) -> tuple[int, Trainer]:
        if label not in RACE_LABELS:
            raise ValueError(f"A race side is one of {', '.join(RACE_LABELS)}. Received: side={label!r}")
        if not self.trainers:
            raise RuntimeError(f"There is no A/B race yet for a {command}: press Start A/B race first.")
        index = RACE_LABELS.index(label)
        trainer = self.trainers[index]
        state = trainer.status.state
        if state not in ACTIVE_STATES:
            raise RuntimeError(
                f"Side {label} of A/B race {self.number} is {state}; a {command} cannot "
                "change it. Press Start A/B race for a new race."
            )
        return index, trainer

    def set_clip_threshold(self, label: str, value: Any) -> None:
        with self._lock:
            index, trainer = self._side(label, "clip threshold change")
            trainer.set_clip_threshold(value)
            sides = list(self.settings.sides)
            sides[index] = replace(sides[index], clip_threshold=float(value))
            self.settings = replace(self.settings, sides=tuple(sides))

    def pause(self, label: str) -> None:
        self._side(label, "pause")[1].pause()

    def resume(self, label: str) -> None:
        self._side(label, "resume")[1].resume()

    def stop(self, label: str | None = None, timeout: float = 2.0) -> None:
        """Stop one side (`label`) or both (None); a no-op for sides that have ended."""
        if label is not None and label not in RACE_LABELS:
            raise ValueError(f"A race side is one of {', '.join(RACE_LABELS)}. Received: side={label!r}")
        trainers = self.trainers
        chosen = trainers if label is None else trainers[RACE_LABELS.index(label) : RACE_LABELS.index(label) + 1]
        for trainer in chosen:  # ask every side first: one still compiling must not hold up the other
            trainer.stop(timeout=0)
        for trainer in chosen:
            trainer.stop(timeout)

