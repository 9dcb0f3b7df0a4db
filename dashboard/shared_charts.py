"""Charts built once per store change and shared by every browser session.

Every open tab reruns the live fragment each second. Built per session, the charts' server cost
grew with the number of viewers (134-240 ms of CPU per tab per refresh at 1M steps, so ten tabs
asked for more than the two cores have). Keyed by what they are drawn from (the run, its step,
state and event count, and the view's own settings), they are built by whichever session asks
first and handed to every other session as they are: built once per store change, whatever the
number of viewers. Sessions that ask for a key while it is being built wait for that build
instead of starting their own.

Pure Python, no Streamlit: the cached values are plain dicts (Vega-Lite specs) and numbers that
sessions only read.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Hashable

DEFAULT_CAPACITY = 32  # keys kept: a few views (log scale, what-if) of the latest store changes


class SharedCharts:
    """A small, thread-safe, least-recently-used cache where one caller builds each key.

    Example:
        >>> cache = SharedCharts()
        >>> cache.get(("run", 1, 500), lambda: {"mark": "line"})
        {'mark': 'line'}
        >>> cache.get(("run", 1, 500), lambda: 1 / 0)  # built already: not called again
        {'mark': 'line'}
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"`capacity` must be an integer >= 1. Received: capacity={capacity!r}")
        self.capacity = capacity
        self._values: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._building: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.builds = 0  # how many times a value was built (hits are the other calls)
        self.hits = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value for `key`, built by `build()` if no session has built it yet."""
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    self.hits += 1
                    return self._values[key]
                pending = self._building.get(key)
                if pending is None:
                    pending = self._building[key] = threading.Event()
                    break  # this caller builds it
            pending.wait()  # another session is building it; then read it (or build, if it failed)
        try:
            value = build()
            with self._lock:
                self._values[key] = value
                self._values.move_to_end(key)
                while len(self._values) > self.capacity:
                    self._values.popitem(last=False)
                self.builds += 1
            return value
        finally:
            with self._lock:
                self._building.pop(key, None)
            pending.set()


LIVE = SharedCharts()  # the live view's charts, for every session of this server process
