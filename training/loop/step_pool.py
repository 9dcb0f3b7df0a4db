"""A run's compiled steps, kept for the next run of the same configuration in this process.

Why: a run compiles its steps before it trains at full speed (seed: the quick step's trace and
XLA compile ~0.6 s of a core, the full step's ~3 s more). The next run of the same task, seed,
batch size and structural policy settings (the page's next Start, an A/B race run again, a test
after a test) would compile the same graph again. A `tf.function` is bound to the variables it
captured, so the compiled steps are kept with them: the ended run's whole training state. The
next run still builds its own model, optimizer and engine (the cheap part: 0.06 s on seed), copies
their values into the kept state (every variable a snapshot holds, training/clipping/engine.py)
and trains on the kept steps: on the full step from its first chunk if the last run compiled it.
The quick and the full step compute the same bits (training/loop/steps.py), so the run is bit
for bit the one a fresh compile would have trained (tests/test_step_pool.py).

A kept state is only taken once nothing holds its run (its `Trainer` is gone): an ended run's
model stays its own for as long as anyone can read it. A run whose XLA compile fell back, or that
failed with an error, is not kept; one whose full step was still compiling is taken once that
compile is over (with the full step, if it was not cancelled).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, NamedTuple

import numpy as np

from ..clipping import policies
from ..clipping.engine import TrainingState

MAX_KEPT = 4  # each holds a model, its optimizer and its compiled executables


class _Kept(NamedTuple):
    key: tuple
    task: Any  # the task object itself: a key's id() of a task that is gone could be reused
    data: tuple  # the arrays the steps captured
    owner: "weakref.ref"  # the run that trained on them
    steps: Any  # ChunkSteps (its `state` is the training state)


_kept: list[_Kept] = []
_lock = threading.Lock()


def pool_key(config, *, monitoring: bool, max_nonfinite_steps: int, jit_compile: bool | None) -> tuple:
    """What the compiled steps bake in besides the variables' values and the task (which `take`
    matches by identity: the task object is kept, as an id() of one that is gone could be reused)."""
    structural = tuple(
        (name, tuple(sorted((key, value) for key, value in params.items() if not policies.POLICY_PARAMETERS[name][key].live)))
        for name, params in sorted(config.policy_params.items())
    )  # fmt: skip
    return (policies.POLICY_NAMES, config.seed, config.batch_size, structural, monitoring,
            max_nonfinite_steps, jit_compile)  # fmt: skip


def keep(key: tuple, data: tuple, task, owner, steps) -> None:
    """The run `owner` ended: keep its steps (with its state) for a later run, if they can serve one."""
    steps.release()
    if steps.jit_compile is False:
        return
    with _lock:
        _kept.append(_Kept(key, task, data, weakref.ref(owner), steps))
        del _kept[:-MAX_KEPT]  # the oldest go first


def take(key: tuple, data: tuple, task, fresh: TrainingState, on_event: Callable, on_compiling: Callable):
    """Kept steps for `key` whose run is gone, with `fresh`'s values (step 0) copied into their
    state; None if there are none (the caller builds its own)."""
    steps = _take(key, task, data, fresh)
    if steps is None:
        return None
    values = [np.asarray(variable) for variable in fresh.tracked()]
    engine = fresh.engine
    steps.state.restore({
        "step": 0, "values": values + [np.asarray(variable) for variable in steps.state.loop_variables],
        "policy": engine.policy, "policy_params": engine.policy_params, "knob_values": engine.knob_values,
    })  # fmt: skip
    steps.reuse(on_event, on_compiling)
    return steps


def clear() -> None:
    """Forget every kept state (the next run of each configuration compiles afresh)."""
    with _lock:
        _kept.clear()


def _take(key: tuple, task, data: tuple, fresh: TrainingState):
    # No garbage collection here: an ended run's Trainer is freed as soon as nobody holds it (its
    # recorder drops its consumers), and one still held must keep its state anyway. A collection
    # only cost the next run's thread ~0.3 s whenever an earlier run was still held.
    with _lock:
        for index, kept in enumerate(_kept):
            free = kept.key == key and kept.task is task and kept.owner() is None and kept.steps.reusable
            if free and _fits(kept, data, fresh):
                del _kept[index]  # by position: entries hold arrays, which `==` cannot compare
                return kept.steps
    return None


def _fits(kept: _Kept, data: tuple, fresh: TrainingState) -> bool:
    """The same variables (shapes and dtypes, in order) and the same captured data."""
    state = kept.steps.state
    tracked = state.tracked()
    theirs = tracked[: len(tracked) - len(state.loop_variables)]
    ours = fresh.tracked()
    same_variables = len(theirs) == len(ours) and all(
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(theirs, ours)
    )
    return same_variables and len(data) == len(kept.data) and all(
        np.array_equal(a, b) for a, b in zip(data, kept.data)
    )
