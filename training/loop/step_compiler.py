"""Compiles a trainer's full training step on a thread of its own, while a quick step trains.

Why: the full step holds every clipping policy in one `tf.switch_case` (so switching policy never
retraces) and is XLA-compiled. Measured on seed, warm process, quiet machine: tracing it takes
0.6-0.8 s and its first call (XLA compile) 2.1 s; exploding_rnn 0.8 s + 2.7 s. The quick step
holds only the policy in force, so it traces and compiles sooner (it is XLA-compiled too, so
both compute the same bits: training/loop/steps.py). So the trainer starts on the quick step,
this module traces and compiles the full one meanwhile, and the trainer swaps it in between two
chunks. Both steps read and write the same `tf.Variable`s (weights, optimizer slots, policy
state, live knobs), so the swap loses no step, no optimizer state and no command.

The compile is a real call with zero steps: XLA compiles for the arguments' shapes (two
scalars), so every later call reuses it; a zero-step call changes no variable.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable

from . import xla_cache

_running: set = set()  # every BackgroundCompile whose thread has not finished
_running_lock = threading.Lock()


def wait_for_running_compiles(timeout: float = 60.0) -> None:
    """Wait until every compile still running has finished (at most `timeout` seconds in all).

    A compile still running when the interpreter shuts down aborts the process ("terminate called
    after throwing", SIGABRT). Waiting for the jobs themselves, not for the runs that started them:
    a run that nobody holds any more is gone while its full step may still compile (its steps
    kept for a later run, training/loop/step_pool.py).
    """
    deadline = time.monotonic() + timeout
    with _running_lock:
        jobs = list(_running)
    for job in jobs:
        job.wait(max(0.0, deadline - time.monotonic()))


class BackgroundCompile:
    """Traces `make_function()` for `signature`, then calls it once with `warm_arguments()`, all
    on a daemon thread.

    Why the trace runs here (issue #20): traced on the training thread between two chunks, it
    stopped the run for as long. Measured in fresh processes on this 2-core machine
    (benchmarks/step_gaps.py, load 1-3): consecutive steps' times jumped by 1.1-1.4 s on seed and
    exploding_rnn, by 2.5 s beside a thread running Python (the page's script thread), and by
    2-8 s under load. Traced here, the run goes on: the training thread gives the interpreter
    lock up whenever it runs a chunk and gets it back within the 0.5 ms switch interval
    (training/interpreter_lock.py). The worst gap fell to 0.05-0.28 s (most of what is left at
    the page's pace is one full garbage collection, ~0.25 s with the lock held, that the trace's
    allocations set off), and seed's quick step ran at 74,000 steps/s during the trace. The
    price: the trace shares the CPU with training, so the full step comes later (seed: 3.7-5.1 s
    after Start instead of 2.8-2.9 s). (A trace here had once starved the training thread to
    40 steps/s; that quick step ran without XLA, at Python's 5 ms switch interval.)

    The first call, where XLA compiles (and, if XLA cannot compile the step, its fallback:
    training/loop/xla_fallback.py), is C++ that releases the lock. If it fails while a persistent
    XLA cache is in use, the cache's entries are deleted (one may be corrupt) and it retries once
    with a fresh `make_function()`. `function` is then the ready function, or `error`/`traceback`
    say why there is none.
    """

    # True: trace on the thread that creates the job, as before issue #20 (the benchmark's
    # side-by-side baseline, benchmarks/step_gaps.py).
    trace_on_caller = False

    def __init__(self, make_function: Callable, signature: tuple, warm_arguments: Callable[[], tuple]):
        self._make_function = make_function
        self._signature = signature
        self._warm_arguments = warm_arguments
        self.function: Callable | None = None
        self.error: BaseException | None = None
        self.traceback: str | None = None
        self.trace_seconds: float | None = None  # the trace alone
        self.seconds: float | None = None  # the trace and compile
        self._done = threading.Event()
        self._cancelled = threading.Event()
        function = make_function()
        if self.trace_on_caller:
            self._trace(function)
        with _running_lock:
            _running.add(self)
        threading.Thread(target=self._run, args=(function,), name="clipwatch-compile", daemon=True).start()

    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Nobody will use the function (its run ended): a job still tracing skips the XLA
        compile (2-3 s of a core; C++ that cannot be stopped once begun). `function` stays None."""
        self._cancelled.set()

    def _trace(self, function: Callable) -> None:
        started = time.perf_counter()
        function.get_concrete_function(*self._signature)
        self.trace_seconds = time.perf_counter() - started

    def _compile(self, function: Callable) -> Callable | None:
        if self.trace_seconds is None:
            self._trace(function)
        if self._cancelled.is_set():
            return None
        function(*self._warm_arguments())
        return function

    def _run(self, function: Callable) -> None:
        started = time.perf_counter()
        try:
            try:
                self.function = self._compile(function)
            except Exception as error:
                if not xla_cache.recover(error):
                    raise
                # A fresh trace: a new function name, so a new cache key.
                self.trace_seconds = None
                self.function = self._compile(self._make_function())
        except Exception as error:  # the training thread raises it when it would swap
            self.error, self.traceback = error, traceback.format_exc()
        self.seconds = time.perf_counter() - started
        self._done.set()
        with _running_lock:
            _running.discard(self)
