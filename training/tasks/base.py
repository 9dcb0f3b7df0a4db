"""What a task is: how to build its model and data, and its default training settings.

`Task` is the public contract that user plug-ins are written against (see `training.plugins`
and README "Your own model"). The fields the built-in tasks have always used keep their names
and meaning; every field added since has a default. Fields are checked when a `Task` is made,
so a plug-in with a field of the wrong kind fails at its own line with a message that says
what was received and what is allowed.

Example (a plug-in file)::

    import numpy as np
    from clipwatch.tasks import Task

    def build_model(seed):
        import keras
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])

    def make_data(seed):
        inputs = np.random.default_rng(seed).normal(size=(512, 4)).astype("float32")
        return inputs, inputs.sum(axis=1, keepdims=True)

    TASK = Task(name="sum4", description="Learn a sum", build_model=build_model,
                make_data=make_data, build_loss="mse")
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

# Tasks seed Keras' global RNG as they build: two models must not build at once (two runs, or
# a run and a plug-in's check).
BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def model_build():
    """One model build at a time (`BUILD_LOCK`), with the process's Python and NumPy random
    states as they were before it: a task's `build_model` seeds them
    (`keras.utils.set_random_seed`), and a user's own draws must not restart from its seed."""
    with BUILD_LOCK:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

# Keras optimizer names a task may give as `optimizer` (or give a callable instead).
OPTIMIZER_NAMES = (
    "adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl",
    "lion", "adafactor", "lamb",
)  # fmt: skip
DEFAULT_SHUFFLE_BUFFER = 10_000  # examples held by a streamed dataset's shuffle


@dataclass(frozen=True)
class Task:
    """A model, its data and its defaults.

    Args:
        name: the task's name in the Task select, the CLI and the run database.
        description: one line shown beside the name.
        build_model: seed -> a Keras model (any architecture). Seed Keras' global RNG with
            `keras.utils.set_random_seed(seed)` so a run is reproducible.
        make_data: seed -> `(inputs, targets)` arrays (kept in memory, batches gathered
            in-graph: the fast path) or a `tf.data.Dataset` of `(inputs, targets)` examples
            (streamed: shuffled with the run's seed, batched, repeated, prefetched; never
            materialised).
        build_loss: a Keras loss name ("mse"), a loss object, a loss function
            `(y_true, y_pred) -> loss`, or a callable with no arguments returning one of those.
        optimizer: a Keras optimizer name (`OPTIMIZER_NAMES`) or a callable
            `learning_rate -> keras optimizer`.
        learning_rate, batch_size, clip_threshold: the task's defaults.
        jit_compile: None (default) tries XLA and falls back once, with an event saying why,
            if the model does not compile under XLA; True or False force it.
        make_validation_data: None, or seed -> validation data in either form of `make_data`.
        metrics: Keras metric names or objects evaluated on the validation data.
        evaluation_interval: evaluate the validation data every this many steps (and once at
            the end of a run with a step limit).
        validation_steps: evaluate at most this many validation batches (None: all of it;
            required for an endless validation dataset).
        shuffle_buffer: examples a streamed dataset's shuffle holds.
        source: where the task came from (a plug-in's file); filled in by the loader.
    """

    name: str
    description: str
    build_model: Callable[[int], Any]
    make_data: Callable[[int], Any]
    build_loss: Any
    optimizer: str | Callable[[float], Any] = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    clip_threshold: float = 1.0  # the task's suggested threshold for fixed-threshold policies
    jit_compile: bool | None = None
    make_validation_data: Callable[[int], Any] | None = None
    metrics: Sequence[Any] = ()
    evaluation_interval: int = 500
    validation_steps: int | None = None
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    source: str = ""

    def __post_init__(self):
        problems = _field_problems(self)
        if problems:
            raise ValueError(problems[0])
        object.__setattr__(self, "metrics", tuple(self.metrics))


def _is_count(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_positive(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _is_metric(value: Any) -> bool:
    return isinstance(value, str) or hasattr(value, "update_state") or callable(value)


# Each field's check and what it allows: data, read by one loop.
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "" and v == v.strip(), "non-empty text"),
    "description": (lambda v: isinstance(v, str), "text"),
    "build_model": (callable, "a callable seed -> keras model"),
    "make_data": (callable, "a callable seed -> (inputs, targets) or a tf.data.Dataset"),
    "build_loss": (
        lambda v: isinstance(v, str) or callable(v),
        "a Keras loss name, a loss object or function, or a callable returning one",
    ),
    "optimizer": (
        lambda v: (isinstance(v, str) and v.lower() in OPTIMIZER_NAMES) or callable(v),
        f"one of {', '.join(OPTIMIZER_NAMES)}, or a callable learning_rate -> keras optimizer",
    ),
    "learning_rate": (_is_positive, "a finite number > 0"),
    "batch_size": (_is_count, "an integer >= 1"),
    "clip_threshold": (_is_positive, "a finite number > 0"),
    "jit_compile": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
    "make_validation_data": (lambda v: v is None or callable(v), "None or a callable seed -> data"),
    "metrics": (
        lambda v: isinstance(v, (list, tuple)) and all(_is_metric(m) for m in v),
        "a list of Keras metric names or objects",
    ),
    "evaluation_interval": (_is_count, "an integer >= 1 (steps)"),
    "validation_steps": (lambda v: v is None or _is_count(v), "None or an integer >= 1"),
    "shuffle_buffer": (_is_count, "an integer >= 1 (examples)"),
    "source": (lambda v: isinstance(v, str), "text"),
}


def _field_problems(task: Task) -> list[str]:
    problems = []
    for name, (check, allowed) in _FIELD_CHECKS.items():
        value = getattr(task, name)
        if not check(value):
            problems.append(
                f"Task field `{name}` must be {allowed}. Received: {name}={value!r}"
            )
    return problems


def resolve_loss(build_loss: Any):
    """The task's `build_loss` as a callable `(y_true, y_pred) -> scalar loss`."""
    import keras

    if isinstance(build_loss, str):
        return resolve_loss(keras.losses.get(build_loss))
    if isinstance(build_loss, keras.losses.Loss):
        return build_loss
    if _takes_no_arguments(build_loss):
        return resolve_loss(build_loss())
    # A loss function returns one value per example ("mse" does): reduce to the batch mean.
    @functools.wraps(build_loss)
    def batch_mean_loss(y_true, y_pred):
        return keras.ops.mean(build_loss(y_true, y_pred))

    return batch_mean_loss


def make_optimizer(optimizer: Any, learning_rate: float):
    """The task's `optimizer` (a name or a factory) built with `learning_rate`."""
    import keras

    if isinstance(optimizer, str):
        optimizer_class = type(keras.optimizers.get(optimizer.lower()))
        return optimizer_class(learning_rate=learning_rate)
    built = optimizer(learning_rate)
    if not isinstance(built, keras.optimizers.Optimizer):
        raise ValueError(
            "The task's `optimizer` callable must return a keras optimizer. "
            f"Received: {type(built).__name__}"
        )
    return built


def _takes_no_arguments(function: Callable) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return all(
        p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in parameters
    )
