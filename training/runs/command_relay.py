"""Commands sent through the run database, carried to a `Trainer` running in this process.

A headless run (`python -m training --db ...`) is steered as an attached script is: someone on
another machine calls `RunDatabase.send_command` (or uses the page), and the run's process reads
the command, applies it between two chunks and acknowledges it (`applied_step`: the first step
that uses it; or `error`, and nothing changed). The CLI's main loop calls `follow` in place of
its sleep, so the wait is a server's LISTEN (a command arrives at once) or a short poll.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import RunDatabase

log = logging.getLogger("training.persistence")


class CommandRelay:
    """Reads run `trainer.status.run_id`'s commands from `database` and hands them to the trainer
    (`Trainer.send_command`); `stop` is the caller's to carry out (`follow` returns True)."""

    def __init__(self, database: "RunDatabase", wait_seconds: float = 0.1):
        self.database, self.wait_seconds = database, wait_seconds
        self._last_id = 0
        self._acknowledgements: queue.SimpleQueue = queue.SimpleQueue()  # filled by the training thread
        self._never = threading.Event()
        self._warned = False

    def follow(self, trainer: Any) -> bool:
        """Wait up to `wait_seconds` for commands, pass each on, write the acknowledgements so
        far; return True when a `stop` command arrived (acknowledged already)."""
        run_id = trainer.status.run_id
        if run_id is None:  # not recorded (yet)
            time.sleep(self.wait_seconds)
            return False
        stop = False
        try:
            self.database.wait_for_commands(run_id, self.wait_seconds, self._never)
            for command in self.database.pending_commands(run_id, self._last_id):
                self._last_id = command["id"]
                if command["kind"] == "stop":
                    self._acknowledge(command["id"], trainer.status.step + 1, None)
                    stop = True
                    break
                try:
                    trainer.send_command(
                        command["kind"], command["value"],
                        on_applied=functools.partial(self._acknowledge, command["id"]), **command["parameters"],
                    )  # fmt: skip
                except (ValueError, TypeError, RuntimeError) as error:  # refused: nothing changed
                    self._acknowledge(command["id"], None, str(error))
            self.write_acknowledgements()
        except self.database.errors as error:  # the database is away: the next call retries
            if not self._warned:
                log.warning("Reading commands from %r failed: %s", self.database.location, error)
                self._warned = True
            time.sleep(self.wait_seconds)
        return stop

    def _acknowledge(self, command_id: int, step: int | None, error: str | None) -> None:
        self._acknowledgements.put((command_id, step, time.time(), error))

    def write_acknowledgements(self) -> None:
        """Write every acknowledgement made so far (also once the run has stopped)."""
        acknowledgements = []
        while not self._acknowledgements.empty():
            acknowledgements.append(self._acknowledgements.get())
        if acknowledgements:
            self.database.acknowledge_commands(acknowledgements)
