"""Warming up at server start: train the default task's first steps once, in the background.

The first trainer of a process pays one-off costs on top of its own build and trace: TensorFlow's
and Keras' lazy initialisation, the first graph optimisation, XLA's first compile (measured, seed:
the first quick step took 2.7 s where later ones take 0.4 s). `warm_up()` pays them on a daemon
thread as soon as the server imports the dashboard, with a throw-away run that records nothing
(no database, no sinks), so a user's first Start costs what every later one does. It never
blocks the caller, and a failure only means no warm-up.
"""

from __future__ import annotations

import threading

DEFAULT_TASK = "seed"
WARM_UP_STEPS = 32  # two quick chunks: past the trace, the first call and the full step's start

_started: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def warm_up(task: str = DEFAULT_TASK) -> threading.Thread:
    """Start warming `task` (once per process and task); return the warm-up thread."""
    with _lock:
        thread = _started.get(task)
        if thread is None:
            thread = threading.Thread(target=_warm, args=(task,), name=f"clipwatch-warm-up-{task}", daemon=True)
            _started[task] = thread
            thread.start()
        return thread


def _warm(task: str) -> None:
    try:
        from training.trainer import Trainer

        trainer = Trainer(task=task, max_steps=WARM_UP_STEPS)
        trainer.start()
        trainer.wait_until_compiled()  # the full step's XLA compile warms XLA for the next one
        trainer.stop()
    except Exception:  # a warm-up is an optimisation: a run started later reports real errors
        pass
