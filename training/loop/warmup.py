"""Warming up at server start: train the default task's first steps once, in the background.

The first trainer of a process pays one-off costs on top of its own build and trace: TensorFlow's
and Keras' lazy initialisation and the first graph optimisation (measured, seed: the first quick
step took 2.7 s where later ones take 0.4 s). `warm_up()` pays them on a daemon thread once the
server's first page is drawn (dashboard/run_manager.py: started sooner, the import held up that
page's script run), with a throw-away run of one quick chunk that records nothing
(no database, no sinks) and ends before the full step is compiled. It never blocks the caller, and a
failure only means no warm-up.
"""

from __future__ import annotations

import threading

DEFAULT_TASK = "seed"
WARM_UP_STEPS = 16  # one quick chunk: the trace and the first call (XLA's own one-off start-up
# with it); the run ends before the full step is wanted, so no full compile competes with a
# user's first Start for the CPU

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
        from .trainer import Trainer

        trainer = Trainer(task=task, max_steps=WARM_UP_STEPS)
        trainer.start()
        trainer.wait_until_compiled()  # the run ends after its quick chunk: nothing to compile
        trainer.stop()
    except Exception:  # a warm-up is an optimisation: a run started later reports real errors
        pass
