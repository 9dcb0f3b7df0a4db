"""How many tabs watch the live run, and how often each redraws its charts for that many.

Why (issue #20): every tab redraws the whole Live tab once a second, and a redraw cost its
renderer 208-229 ms of main-thread work (measured through DevTools, benchmarks/viewers.py). Ten
tabs then wanted about two seconds of CPU per second for the renderers alone on this 2-core
machine, beside the server and the training thread: step counters stood still for 8-13 s. So the
header (the step counter, the state, the numbers) keeps its one-second refresh in a fragment of
its own, which costs little to draw, and the charts' refresh stretches with the number of tabs so
that all tabs together redraw charts about `CHART_REDRAWS_PER_SECOND` times a second.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

SEEN_WITHIN_SECONDS = 5.0  # a tab whose header has not refreshed for this long has gone
CHART_REDRAWS_PER_SECOND = 3.0  # all tabs together, once there are more tabs than this
MAX_CHART_REFRESH_SECONDS = 5.0


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


def chart_refresh_seconds(refresh_seconds: float, viewers: int) -> float:
    """The charts' refresh for one of `viewers` tabs: `refresh_seconds` up to
    `CHART_REDRAWS_PER_SECOND` tabs, then stretched in whole steps of it (at most
    `MAX_CHART_REFRESH_SECONDS`), so the interval changes only when the count crosses a step."""
    if viewers < 1:
        raise ValueError(f"viewers must be at least 1. Received: viewers={viewers!r}")
    wanted = viewers / CHART_REDRAWS_PER_SECOND
    return min(MAX_CHART_REFRESH_SECONDS, max(refresh_seconds, refresh_seconds * math.ceil(wanted / refresh_seconds)))
