"""How many tabs watch the live run, and how often each redraws the Live tab for that many.

Why (issue #20): every tab redrew the Live tab once a second, and a redraw cost its renderer
206-229 ms of main-thread work (measured through DevTools, benchmarks/viewers.py) and the server
about as much. Ten tabs asked for ten redraws a second; this 2-core machine, training at full
speed beside them, delivered about three, unevenly: step counters stood still for 8-15 s. A
header-only fragment at 1 s did not help (each fragment rerun cost the renderer ~200 ms whatever
it drew: 15.1 s). So the refresh stretches with the number of tabs, so that all tabs together
redraw about `REDRAWS_PER_SECOND` times a second: fewer, evenly spaced redraws.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

# A tab that has not refreshed for this long has gone: 3x the longest refresh, as a loaded
# machine delays refreshes (one that dropped out would make every tab rerun the whole page).
SEEN_WITHIN_SECONDS = 12.0
REDRAWS_PER_SECOND = 3.0  # all tabs together, once there are more tabs than this
MAX_REFRESH_SECONDS = 4.0


class ViewerCount:
    """The tabs seen lately, by the id each session keeps; thread-safe (every session's script
    thread reports here)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, viewer_id: str) -> int:
        """Note that `viewer_id` is watching now; return how many tabs watch (itself included)."""
        now = self._clock()
        with self._lock:
            self._last_seen[viewer_id] = now
            for gone in [key for key, seen_at in self._last_seen.items() if now - seen_at > SEEN_WITHIN_SECONDS]:
                del self._last_seen[gone]
            return len(self._last_seen)


def refresh_seconds(usual_seconds: float, viewers: int) -> float:
    """The Live tab's refresh for one of `viewers` tabs: `usual_seconds` up to
    `REDRAWS_PER_SECOND` tabs, then stretched in whole steps of it (at most `MAX_REFRESH_SECONDS`),
    so the interval changes only when the count crosses a step."""
    if viewers < 1:
        raise ValueError(f"viewers must be at least 1. Received: viewers={viewers!r}")
    wanted = viewers / REDRAWS_PER_SECOND
    return min(MAX_REFRESH_SECONDS, max(usual_seconds, usual_seconds * math.ceil(wanted / usual_seconds)))
