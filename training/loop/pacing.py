"""How a run is held to `max_steps_per_second` (a demo's pace), apart from the loop that trains."""

from __future__ import annotations

import threading
import time
from typing import Callable


class Pacer:
    """About ten chunks a second at the asked-for pace. A chunk that fell behind (the page took
    the CPU) catches up; a long stall (a compile, a branch's start) does not cause a burst, nor
    does the first chunk after a (re)start, whose time holds the step's compile (0.1-3 s)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.reset(0)

    def reset(self, step: int) -> None:
        """Count the pace from `step`, now (a new pace, a resume); again after the next chunk."""
        self._start_time, self._start_step = self._clock(), step
        self._first_chunk = True

    def hold_back(self, seconds: float) -> None:
        """Time the run spent on something else (a branch's start) is not owed as steps."""
        self._start_time += seconds

    def chunk(self, pace: float | None, step: int, steps: int) -> int:
        """The next chunk's steps, at most `steps`."""
        if pace is None:
            return steps
        behind = int((self._clock() - self._start_time) * pace) - (step - self._start_step)
        return min(steps, max(1, int(pace * 0.1), behind))

    def wait(self, pace: float | None, step: int, wake: threading.Event, stop: threading.Event) -> None:
        """Wait until `step` is due; a command (`wake`) or a stop ends the wait early."""
        if pace is None:
            return
        due = self._start_time + (step - self._start_step) / pace
        if self._first_chunk or due < self._clock() - 1.0:  # a compile: no catch-up burst
            self.reset(step)
            self._first_chunk = False
            due = self._start_time
        while (delay := due - self._clock()) > 0 and not stop.is_set():
            if wake.wait(min(delay, 0.05)):
                break  # a command arrived: apply it now
