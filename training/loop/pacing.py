"""How a run is held to `max_steps_per_second` (a demo's pace), apart from the loop that trains."""

from __future__ import annotations

import threading
import time


class Pacer:
    """About ten chunks a second at the asked-for pace. A chunk that fell behind (the page took
    the CPU) catches up; a long stall (a compile, a branch's start) does not cause a burst."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, step: int) -> None:
        """Count the pace from `step`, now (a new pace, a resume)."""
        self._start_time, self._start_step = time.perf_counter(), step

    def hold_back(self, seconds: float) -> None:
        """Time the run spent on something else (a branch's start) is not owed as steps."""
        self._start_time += seconds

    def chunk(self, pace: float | None, step: int, steps: int) -> int:
        """The next chunk's steps, at most `steps`."""
        if pace is None:
            return steps
        behind = int((time.perf_counter() - self._start_time) * pace) - (step - self._start_step)
        return min(steps, max(1, int(pace * 0.1), behind))

    def wait(self, pace: float | None, step: int, wake: threading.Event, stop: threading.Event) -> None:
        """Wait until `step` is due; a command (`wake`) or a stop ends the wait early."""
        if pace is None:
            return
        due = self._start_time + (step - self._start_step) / pace
        if due < time.perf_counter() - 1.0:  # far behind (a compile): no catch-up burst
            self.reset(step)
            due = self._start_time
        while (delay := due - time.perf_counter()) > 0 and not stop.is_set():
            if wake.wait(min(delay, 0.05)):
                break  # a command arrived: apply it now
