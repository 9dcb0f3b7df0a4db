"""The commands of an attached run (`training.keras.LiveClipping`): read, applied, acknowledged.

A poller thread reads the run's new commands from the database five times a second (and at once
when a PostgreSQL server announces one: `RunDatabase.wait_for_commands`) and writes the
acknowledgements; the training thread applies them between steps (`_apply_commands`), each
checked before anything changes: a refused one is acknowledged with its error and no step.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np

from ..clipping.commands import SENT_COMMAND_KINDS, apply_command, check_command
from ..clipping.engine import KNOB
from ..runs.database import RunDatabase

logger = logging.getLogger("training.keras")


def variable_learning_rate(optimizer) -> bool:
    """Whether `optimizer`'s learning rate is a variable (a number), not a schedule."""
    return optimizer is not None and isinstance(optimizer._learning_rate, keras.Variable)


class CommandApplier:
    """How a `LiveClipping` obeys commands (a mixin: it sets the engine's knobs, the
    policies' state variables and the wrapped optimizer's learning rate, and records events
    through `AttachedRun._record`)."""

    def _poll(self, database: RunDatabase, run_id: int) -> None:
        """The poller thread: read new commands, write acknowledgements; never the graph."""
        last_id = 0
        while True:
            try:
                database.wait_for_commands(run_id, self._poll_seconds, self._closing)
            except database.errors:
                self._closing.wait(self._poll_seconds)  # the server is away: poll as before
            closing = self._closing.is_set()
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
            except database.errors as error:
                self._warn_once("commands", f"Reading commands from {database.location!r} failed: {error}")
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
        command = check_command(kind, value, params, kinds=SENT_COMMAND_KINDS)
        engine = self._engine
        if self._multi_worker and kind in ("pause", "resume"):
            raise ValueError(f"`{kind}` is not supported across workers (the others would time out).")
        optimizer = None
        if kind == "learning_rate":
            optimizer = self._checked_optimizer(value)
        old_learning_rate = None if optimizer is None else float(np.float32(optimizer.learning_rate.numpy()))
        if optimizer is not None and self._learning_rate_seen is not None and old_learning_rate != self._learning_rate_seen:
            # Keras callbacks write it too (ReduceLROnPlateau): the last writer wins, and both
            # writes show, even one that no step used before this command replaced it.
            self._record(steps_done, "learning_rate", self._learning_rate_seen, old_learning_rate)
        # A policy switched to starts afresh; no policy's initial state depends on the weights.
        applied = apply_command(
            engine, command, [], optimizer=optimizer, structural_changes=False, learning_rate=old_learning_rate
        )
        if kind == "spike":
            engine.knob_values[KNOB["spike"]] = 1.0  # the graph resets it after one step
        if kind == "learning_rate":
            self._learning_rate_seen = float(np.float32(command.value))
        if applied.pause is not None and self._paused != applied.pause:
            self._paused = applied.pause
            self._record(steps_done, kind, None, None)
        if applied.stop:
            self._record(steps_done, kind, None, None)
            if not self._multi_worker:
                self._stop = True  # workers stop together, once the flag went through the graph
        for change in applied.changes:
            self._record(steps_done, change.kind, change.old, change.new)

    def _checked_optimizer(self, value: Any):
        """The wrapped optimizer whose learning rate a command may set (None without one:
        `apply_command` refuses that); ValueError for a schedule or across workers."""
        optimizer = self._optimizer
        if optimizer is None:
            return None
        if not variable_learning_rate(optimizer):
            schedule = type(optimizer._learning_rate).__name__
            raise ValueError(
                f"The optimizer's learning rate is a schedule ({schedule}): a command cannot "
                f"override a schedule. Received: learning_rate={value!r}"
            )
        if self._multi_worker:
            raise ValueError("The learning rate cannot change across workers mid-run.")
        return optimizer
