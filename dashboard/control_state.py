"""What each control shows: its name, its last accepted value, its widget's key, its refusal.

What a control shows lives in session state (the last accepted value), not in the widget's own
state, and the page never writes into a widget's state. To show a new value (a value from the
run, a refused value undone, the suggested threshold) the control gets a new widget key: a
fresh widget starts from the accepted value. The browser sends every widget's value with each
refresh, so a widget whose value was overwritten on the server could send the old one back.
A refused command's message is kept per control until the next command.
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from training.policies import POLICY_PARAMETERS
from training.tasks import TASKS

SPEED_OPTIONS = (10, 30, 100, 300, 1000, 3000, "Full")  # steps per second; "Full": no cap

# Names of the controls (their widgets' keys add a version, see `widget_key`).
TASK = "task"
POLICY = "policy"
CLIP_THRESHOLD = "clip_threshold"
LEARNING_RATE = "learning_rate"
SPEED = "speed"
SPIKE_FACTOR = "spike_factor"
LOG_SCALE = "log_scale"
SMOOTHING = "smoothing"  # the loss charts' EMA weight, kept per session (0: off)
WHAT_IF_THRESHOLD = "what_if_threshold"
SUGGEST_PERCENTILE = "suggest_percentile"
RUN = "run"  # where errors of Start / Pause / Resume / Stop / Inject spike show
DATABASE_PATH = "database_path"
ADVISOR = "advisor"  # where errors of the live run's replay show
# Session state (FINGERPRINT and NEEDS_FULL_RERUN are shared with the Live tab).
_ERRORS = "_errors"  # control name -> message, shown until the next command
_VALUES = "_values"  # control name -> the value it shows (the last accepted)
_VERSIONS = "_versions"  # control name -> how many times it got a new widget
FINGERPRINT = "_fingerprint"  # manager.fingerprint() when the page last ran in full
NEEDS_FULL_RERUN = "_needs_full_rerun"


def param_key(policy: str, name: str) -> str:
    return f"param.{policy}.{name}"


def speed_option(max_steps_per_second: float | None) -> Any:
    """The Speed option closest to a steps-per-second cap (None: "Full")."""
    if max_steps_per_second is None:
        return "Full"
    numbers = [option for option in SPEED_OPTIONS if option != "Full"]
    return min(numbers, key=lambda option: abs(math.log(option / max_steps_per_second)))


def speed_value(option: Any) -> float | None:
    return None if option == "Full" else float(option)


def _defaults() -> dict[str, Any]:
    task = TASKS["seed"]
    values: dict[str, Any] = {
        TASK: task.name,
        POLICY: "global_norm",
        CLIP_THRESHOLD: float(task.clip_threshold),
        LEARNING_RATE: float(task.learning_rate),
        SPEED: speed_option(300),
    }
    for policy, parameters in POLICY_PARAMETERS.items():
        for name, parameter in parameters.items():
            values[param_key(policy, name)] = parameter.kind(parameter.default)
    return values


def initialize_defaults() -> None:
    state = st.session_state
    state.setdefault(_ERRORS, {})
    state.setdefault(_VALUES, _defaults())
    state.setdefault(_VERSIONS, {})


def control_value(name: str) -> Any:
    """The value control `name` shows (its last accepted value)."""
    return st.session_state[_VALUES][name]


def widget_key(name: str) -> str:
    """The key of the widget that shows control `name` now, e.g. "clip_threshold@2"."""
    return f"{name}@{st.session_state[_VERSIONS].get(name, 0)}"


def new_widget(name: str) -> None:
    """Give control `name` a fresh widget from the next run on (it starts from `_VALUES`)."""
    versions = st.session_state[_VERSIONS]
    versions[name] = versions.get(name, 0) + 1


def show_value(name: str, value: Any) -> None:
    """Make control `name` show `value` from the next run on (a new widget if it changed)."""
    accept(name, value)
    new_widget(name)


def accept(name: str, value: Any) -> None:
    """Make `value` what control `name` shows, in the widget it has now (no new widget)."""
    st.session_state[_VALUES][name] = value


def clear_errors() -> None:
    """Drop every control's refusal: what shows next is about the new command only."""
    st.session_state[_ERRORS] = {}


def report(name: str, error: Exception) -> None:
    st.session_state[_ERRORS][name] = str(error)


def show_error(name: str, errors_key: str = _ERRORS) -> None:
    """The refusal of the last command of control `name` (in the tab's `errors_key` table)."""
    message = st.session_state.setdefault(errors_key, {}).get(name)
    if message:
        st.error(message, icon=":material/error:")
