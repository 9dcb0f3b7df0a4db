"""A run's settings and status, and the checks a setting passes where it enters the trainer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..clipping import policies
from ..clipping.commands import MAX_STEPS_PER_SECOND, validate_pace  # noqa: F401  (re-exported)
from ..runs.names import validate_run_name

STATES = ("idle", "running", "paused", "stopped", "failed")
TARGET_CHUNK_SECONDS = 0.02  # keeps control latency to a few tens of milliseconds
MAX_CHUNK_STEPS = 2048  # the size of the in-graph metric buffers
DEFAULT_MAX_NONFINITE_STEPS = 50
MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed seeds numpy, whose seeds stop here
MAX_BATCH_SIZE = 65_536
Sink = Callable[[dict[str, np.ndarray]], None]


@dataclass(frozen=True)
class RunConfig:
    """The settings in force (as applied by the training thread)."""

    task: str
    policy: str
    clip_threshold: float
    learning_rate: float
    batch_size: int
    seed: int
    policy_params: dict[str, dict[str, float]]  # per policy, all its parameters
    max_steps_per_second: float | None = None
    max_steps: int | None = None


@dataclass(frozen=True)
class TrainerStatus:
    state: str  # one of STATES
    step: int  # steps completed
    steps_per_second: float
    error: str | None = None  # why the run failed
    traceback: str | None = None
    nonfinite_steps: int = 0
    trace_count: int = 0  # how many times the compiled chunk was traced
    config: RunConfig | None = None
    chunk_steps: int = 0  # size of the last chunk
    run_id: int | None = None  # the run's id in the database, when it is persisted
    warning: str | None = None  # e.g. the database could not be written (the run goes on)
    # The full step (every policy, XLA) is still compiling in the background; meanwhile the run
    # trains on the quick step (the policy in force only, the same bits). See training/loop/steps.py.
    compiling: bool = False


def validate_learning_rate(value: Any) -> float:
    """A learning rate: a finite number > 0 (ValueError naming the value otherwise)."""
    return policies.validate_positive("learning_rate", value)


def validate_count(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    whole = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))
    if not whole or value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be an integer {allowed}. Received: {name}={value!r}")
    return int(value)


def validate_optional_run_name(value: Any) -> str | None:
    """None or "" (the default name), or a name History can show as typed (as `rename_run`)."""
    if value is None or (isinstance(value, str) and value == ""):
        return value
    return validate_run_name(value)


def configured(config: RunConfig, kind: str, value: Any, params: dict) -> RunConfig | None:
    """Before the thread starts, a setting simply configures the run it will build: the new
    config, or None for a command that is not a setting."""
    if kind in ("clip_threshold", "learning_rate", "max_steps_per_second"):
        return replace(config, **{kind: value})
    if kind == "policy":
        return replace(config, policy=value, policy_params={**config.policy_params, value: params})
    return None
