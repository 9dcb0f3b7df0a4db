"""Compiles a trainer's full training step on a thread of its own, while a quick step trains.

Why: the full step holds every clipping policy in one `tf.switch_case` (so switching policy never
retraces) and is XLA-compiled. Measured on seed, warm process, quiet machine: tracing it takes
0.6-0.8 s and its first call (XLA compile) 2.1 s; exploding_rnn 0.8 s + 2.7 s. The quick step
holds only the policy in force, so it traces and compiles sooner (it is XLA-compiled too, so
both compute the same bits: training/loop/steps.py). So the trainer starts on the quick step,
this module compiles the full one meanwhile, and the trainer swaps it in between two chunks. Both steps read and write the
same `tf.Variable`s (weights, optimizer slots, policy state, live knobs), so the swap loses no
step, no optimizer state and no command.

The compile is a real call with zero steps: XLA compiles for the arguments' shapes (two
scalars), so every later call reuses it; a zero-step call changes no variable.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable

from . import xla_cache


class BackgroundCompile:
    """Calls `function` (already traced) once with `warm_arguments()`, on a daemon thread.

    Why traced first, by the caller: tracing is Python and holds the GIL; run on a second thread
    next to a training thread it starved both (measured under load: the quick step fell to
    40 steps/s and the full step took 20-27 s to arrive). The first call, where XLA compiles, is
    C++ that releases the GIL. If it fails while a persistent XLA cache is in use, the cache's
    entries are deleted (one may be corrupt) and it retries once with `make_function()`, a fresh
    trace. `function` is then the ready function, or `error`/`traceback` say why there is none.
    """

    def __init__(self, function: Callable, make_function: Callable, warm_arguments: Callable[[], tuple]):
        self._traced = function
        self._make_function = make_function
        self._warm_arguments = warm_arguments
        self.function: Callable | None = None
        self.error: BaseException | None = None
        self.traceback: str | None = None
        self.seconds: float | None = None  # how long the trace and compile took
        self._done = threading.Event()
        threading.Thread(target=self._run, name="clipwatch-compile", daemon=True).start()

    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _compile(self, function: Callable) -> Callable:
        function(*self._warm_arguments())
        return function

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            try:
                self.function = self._compile(self._traced)
            except Exception as error:
                if not xla_cache.recover(error):
                    raise
                # A fresh trace: a new function name, so a new cache key.
                self.function = self._compile(self._make_function())
        except Exception as error:  # the training thread raises it when it would swap
            self.error, self.traceback = error, traceback.format_exc()
        self.seconds = time.perf_counter() - started
        self._done.set()
