"""The commands of an attached run (`training.keras.LiveClipping`): read, applied, acknowledged.

A poller thread reads the run's new commands from the database five times a second and writes
the acknowledgements; the training thread applies them between steps (`_apply_commands`), each
checked before anything changes: a refused one is acknowledged with its error and no step.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import keras
import numpy as np

from training import policies
from training.persistence import RunDatabase

logger = logging.getLogger("training.keras")

# The live knobs, one float32 vector, so one read (and one broadcast) serves a step.
KNOBS = ("clip_threshold", "percentile", "clip_factor", "z_threshold", "policy", "spike", "stop")
KNOB = {name: index for index, name in enumerate(KNOBS)}


def variable_learning_rate(optimizer) -> bool:
    """Whether `optimizer`'s learning rate is a variable (a number), not a schedule."""
    return optimizer is not None and isinstance(optimizer._learning_rate, keras.Variable)


class CommandApplier:
    """How a `LiveClipping` obeys commands (a mixin: it sets the graph side's `_knobs`, the
    policies' state variables and the wrapped optimizer's learning rate, and records events
    through `AttachedRun._record`)."""

    def _poll(self, database: RunDatabase, run_id: int) -> None:
        """The poller thread: read new commands, write acknowledgements; never the graph."""
        last_id = 0
        while True:
            closing = self._closing.wait(self._poll_seconds)
            acknowledgements = []
            while not self._acknowledgements.empty():
                acknowledgements.append(self._acknowledgements.get())
            try:
                if acknowledgements:
                    database.acknowledge_commands(acknowledgements)
                if closing:
                    return
                for command in database.pending_commands(run_id, last_id):
                    last_id = command["id"]
                    self._incoming.put(command)
            except sqlite3.Error as error:
                self._warn_once("commands", f"Reading commands from {str(database.path)!r} failed: {error}")
                if closing:
                    return

    def _apply_commands(self, steps_done: int, commands: list | None = None) -> None:
        if commands is None:
            commands = []
            while not self._incoming.empty():
                commands.append(self._incoming.get())
        for command in commands:
            try:
                self._apply(command["kind"], command["value"], command["parameters"], steps_done)
                acknowledgement = (command["id"], steps_done + 1, time.time(), None)
            except (ValueError, TypeError) as error:
                acknowledgement = (command["id"], None, time.time(), str(error))
            self._acknowledgements.put(acknowledgement)

    def _apply(self, kind: str, value: Any, params: dict, steps_done: int) -> None:
        """Apply one command (ValueError for a bad value, before anything changes)."""
        knobs = self._knob_values.copy()
        if kind == "clip_threshold":
            knobs[KNOB["clip_threshold"]] = policies.validate_clip_threshold(value)
            self._record(steps_done, kind, float(self._knob_values[KNOB["clip_threshold"]]), float(knobs[0]))
        elif kind == "policy":
            self._apply_policy(value, params, knobs, steps_done)
        elif kind == "spike":
            knobs[KNOB["spike"]] = policies.validate_positive("factor", value)
            self._record(steps_done, kind, None, float(knobs[KNOB["spike"]]))
        elif kind == "learning_rate":
            self._set_learning_rate(value, steps_done)
        elif kind in ("pause", "resume"):
            if self._multi_worker:
                raise ValueError(f"`{kind}` is not supported across workers (the others would time out).")
            if self._paused != (kind == "pause"):
                self._paused = kind == "pause"
                self._record(steps_done, kind, None, None)
        elif kind == "stop":
            knobs[KNOB["stop"]] = 1.0
            self._record(steps_done, kind, None, None)
            if not self._multi_worker:
                self._stop = True  # workers stop together, once the flag went through the graph
        else:
            raise ValueError(f"Unknown command kind {kind!r}.")
        if not np.array_equal(knobs, self._knob_values):
            self._knobs.assign(knobs)
            knobs[KNOB["spike"]] = 1.0  # the graph resets it after one step
            self._knob_values = knobs

    def _apply_policy(self, name: Any, params: dict, knobs: np.ndarray, steps_done: int) -> None:
        policies.validate_policy_name(name)
        old_params = self._policy_params[name]
        checked = policies.validate_policy_params(name, {**old_params, **params})
        spec = policies.POLICY_PARAMETERS[name]
        structural = [key for key in checked if not spec[key].live and checked[key] != old_params[key]]
        if structural:
            raise ValueError(
                f"`{structural[0]}` of {name!r} sets the size of the compiled step, so it cannot change "
                f"while the script runs. Received: {structural[0]}={checked[structural[0]]!r}; "
                f"it is {old_params[structural[0]]!r}. Live: "
                f"{', '.join(k for k in spec if spec[k].live) or 'none'}"
            )
        index = policies.POLICY_NAMES.index(name)
        for key in checked:
            if key in KNOB:
                knobs[KNOB[key]] = checked[key]
        knobs[KNOB["policy"]] = index
        if name != self._policy:
            fresh = self._policies[index].init([])
            for variable, value in zip(self._policy_states[index], fresh):
                variable.assign(value)  # a policy switched to starts with an empty history
            self._record(steps_done, "policy", self._policy, name)
        for key in checked:
            if checked[key] != old_params[key]:
                self._record(steps_done, f"{name}.{key}", old_params[key], checked[key])
        self._policy, self._policy_params = name, {**self._policy_params, name: checked}

    def _set_learning_rate(self, value: Any, steps_done: int) -> None:
        learning_rate = policies.validate_positive("learning_rate", value)
        optimizer = self._optimizer
        if optimizer is None:
            raise ValueError(
                "The learning rate can change only on an optimizer passed to `wrap`. Received: "
                f"learning_rate={value!r} for a custom loop's own optimizer."
            )
        if not variable_learning_rate(optimizer):
            schedule = type(optimizer._learning_rate).__name__
            raise ValueError(
                f"The optimizer's learning rate is a schedule ({schedule}): a command cannot "
                f"override a schedule. Received: learning_rate={value!r}"
            )
        if self._multi_worker:
            raise ValueError("The learning rate cannot change across workers mid-run.")
        # Keras callbacks write it too (ReduceLROnPlateau): the last writer wins, and both
        # writes show, even one that no step used before this command replaced it.
        old = float(np.float32(optimizer.learning_rate.numpy()))
        if self._learning_rate_seen is not None and old != self._learning_rate_seen:
            self._record(steps_done, "learning_rate", self._learning_rate_seen, old)
        optimizer.learning_rate = learning_rate
        self._learning_rate_seen = float(np.float32(learning_rate))
        self._record(steps_done, "learning_rate", old, learning_rate)
