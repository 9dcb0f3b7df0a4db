"""The sidebar: the run's controls and buttons and the view options, with each one's callback.

What a control shows lives in `control_state` (the last accepted value, its widget's key, its
refusal); each control's callback here sends the new value to the shared `RunManager` through
`control_commands` (`control_command`: validate -> send -> report), and buttons go through its
`action`. The number controls are text fields (`number_fields`); the database path under
Settings is `database_setting`'s. While a run is on, the controls take its settings when they
change elsewhere (another tab). The names the other views use from those modules are
re-exported here. Nothing here loops, sleeps or starts a thread.
"""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from dashboard.control_commands import (
    REPEAT_SECONDS,
    action,
    control_command,
    first_click,
    run_button_refusals,
    send_or_check,
)
from dashboard.chart_frames import MAX_SMOOTHING
from dashboard.control_state import (
    ADVISOR,
    CLIP_THRESHOLD,
    DATABASE_PATH,
    FINGERPRINT,
    LEARNING_RATE,
    LOG_SCALE,
    SMOOTHING,
    NEEDS_FULL_RERUN,
    POLICY,
    RUN,
    SPEED,
    SPEED_OPTIONS,
    SPIKE_FACTOR,
    SUGGEST_PERCENTILE,
    TASK,
    WHAT_IF_THRESHOLD,
    control_value,
    initialize_defaults,
    param_key,
    report,
    show_error,
    show_value,
    speed_option,
    speed_value,
    widget_key,
)
from dashboard.database_setting import database_messages, settings_controls
from dashboard.live_run import RunSettings
from dashboard.number_fields import SHOWN_TEXT_CHARACTERS, as_typed, number_text, typed_number
from dashboard.run_manager import RunManager
from training.policies import POLICY_NAMES, POLICY_PARAMETERS, validate_clip_threshold, validate_policy_params
from training.plugins import PluginError, check_task_once, task_catalogue
from training.tasks import get_task
from training.trainer import validate_learning_rate

REFRESH_SECONDS = 1.0  # how often a timed view redraws while something trains
# While a started run has no step yet: redraw twice as often, so the first step shows within
# half a second of being trained (issue #11). Not faster: each redraw is Python that holds the
# GIL the new run's trace needs (at load average 15 the first step took 213 s on the page).
FIRST_STEP_REFRESH_SECONDS = 0.5
SUGGEST_PERCENTILES = (50, 75, 80, 90, 95, 99)
POLICY_DESCRIPTIONS = {
    "none": "No clipping; norms are still measured.",
    "global_norm": "Scale all gradients together so their global L2 norm is at most the "
    "threshold (Pascanu et al. 2013).",
    "per_tensor_norm": "Scale each gradient tensor to L2 norm at most the threshold "
    "(Keras `clipnorm`).",
    "value": "Clip every element to [−threshold, threshold] (Keras `clipvalue`).",
    "autoclip": "Threshold = a percentile of the last `Window` norms (Seetharaman et al. "
    "2020); `Clip threshold` is not used.",
    "agc": "Unit-wise clipping relative to the weights' norms (Brock et al. 2021); "
    "`Clip threshold` is not used.",
    "zclip": "Clip spikes by z-score against a running mean of norms, capped at the "
    "threshold (Kumar et al. 2025).",
}
_SYNCED = "_synced"  # session state: the run's values the controls last took


def param_label(name: str) -> str:
    return name.replace("_", " ").capitalize()  # "z_threshold" -> "Z threshold"


def speed_slider(where: Any, value: Any, key: str, help: str, **callback: Any) -> Any:
    """The Speed control (in `where`: `st` or a column); `callback`: on_change and its args."""
    return where.select_slider(
        "Speed",
        options=SPEED_OPTIONS,
        value=value,
        key=key,
        format_func=lambda option: option if option == "Full" else f"{option:,}",
        help=help,
        **callback,
    )


def _run_values(settings: RunSettings) -> dict[str, Any]:
    values = {
        TASK: settings.task,
        POLICY: settings.policy,
        CLIP_THRESHOLD: float(settings.clip_threshold),
        LEARNING_RATE: float(settings.learning_rate),
        SPEED: speed_option(settings.max_steps_per_second),
    }
    for name, value in settings.policy_params.items():
        values[param_key(settings.policy, name)] = value
    return values


def _take_run_values(manager: RunManager) -> None:
    """Show the run's settings in the controls when they changed (e.g. from another tab).

    Only while a run is running or paused: between runs the controls configure the next one.
    """
    settings = manager.settings
    if not manager.is_active or settings is None:
        return
    state = st.session_state
    values = _run_values(settings)
    synced = state.get(_SYNCED) or {}
    same_run = synced.get(RUN) == manager.run_number
    for name, value in values.items():
        if (not same_run or synced.get(name) != value) and control_value(name) != value:
            show_value(name, value)
    state[_SYNCED] = {**values, RUN: manager.run_number}


def _run_button_refusals(manager: RunManager) -> dict[str, str | None]:
    trainer = manager.trainer
    status = None if trainer is None else trainer.status  # one read: state and steps agree
    return run_button_refusals(
        "none" if status is None else status.state, 0 if status is None else status.step,
        manager.run_number, manager.race_is_active,
    )  # fmt: skip


# --- callbacks (run before the script, in this session's thread) -------------------------------


def _on_control(name: str, key: str, live: Callable[[], bool], send: Callable[[Any], Any],
                check: Callable[[Any], Any] = lambda value: None, number_kind: type | None = None) -> None:
    """A run setting's callback: `control_command` sending to the run while it is on, else
    checking the value for the next Start (`send_or_check`)."""
    control_command(name, key, lambda value: send_or_check(live(), send, check, value), number_kind)


def _use_task(label: str) -> None:
    """Accept a Task option, or refuse it with the plug-in's one-line message (`PluginError`).

    Only options of the catalogue (built-in tasks and plug-ins found in `CLIPWATCH_TASKS` and
    examples/tasks/) are ever imported: the page never imports a path a visitor names.
    """
    entry = task_catalogue().get(label)
    if entry is None:
        raise ValueError(f"Unknown task {label!r}. Valid tasks: {', '.join(task_catalogue())}")
    if entry.error:
        raise PluginError(entry.error)
    check_task_once(entry.task)  # a plug-in's model and data, built once to see that they fit


def _on_task(manager: RunManager, key: str) -> None:
    control_command(TASK, key, _use_task)
    task = get_task(control_value(TASK))
    if not manager.is_active:  # the next run starts from the task's own defaults
        show_value(CLIP_THRESHOLD, float(task.clip_threshold))
        show_value(LEARNING_RATE, float(task.learning_rate))


def _policy_params_from_controls(policy: str) -> dict[str, Any]:
    return {name: control_value(param_key(policy, name)) for name in POLICY_PARAMETERS[policy]}


def _on_policy(manager: RunManager, key: str) -> None:
    _on_control(
        POLICY, key, lambda: manager.is_active,
        lambda policy: manager.set_policy(policy, **_policy_params_from_controls(policy)),
        lambda policy: validate_policy_params(policy, _policy_params_from_controls(policy)),
    )  # fmt: skip


def _on_policy_param(manager: RunManager, key: str, policy: str, name: str) -> None:
    def runs_this_policy() -> bool:
        settings = manager.settings
        return manager.is_active and settings is not None and settings.policy == policy

    _on_control(
        param_key(policy, name), key, runs_this_policy,
        lambda value: manager.set_policy(policy, **{name: value}),
        lambda value: validate_policy_params(policy, {**_policy_params_from_controls(policy), name: value}),
        POLICY_PARAMETERS[policy][name].kind,
    )  # fmt: skip


def _on_clip_threshold(manager: RunManager, key: str) -> None:
    _on_control(
        CLIP_THRESHOLD, key, lambda: manager.is_active, manager.set_clip_threshold, validate_clip_threshold, float
    )  # fmt: skip


def _on_learning_rate(manager: RunManager, key: str) -> None:
    _on_control(
        LEARNING_RATE, key, lambda: manager.is_active, manager.set_learning_rate, validate_learning_rate, float
    )  # fmt: skip


def _on_speed(manager: RunManager, key: str) -> None:
    _on_control(SPEED, key, lambda: manager.is_active, lambda option: manager.set_speed(speed_value(option)))


def _settings_from_controls() -> RunSettings:
    policy = control_value(POLICY)
    return RunSettings(
        task=control_value(TASK),
        policy=policy,
        policy_params=_policy_params_from_controls(policy),
        clip_threshold=control_value(CLIP_THRESHOLD),
        learning_rate=control_value(LEARNING_RATE),
        max_steps_per_second=speed_value(control_value(SPEED)),
    )


def _on_start(manager: RunManager) -> None:
    def start() -> None:
        run_number = manager.start(_settings_from_controls())
        st.session_state[_SYNCED] = {**_run_values(manager.settings), RUN: run_number}

    action(RUN, "start", start, lambda: _run_button_refusals(manager)["start"])


def _on_run_command(manager: RunManager, command: str) -> None:
    actions = {
        "pause": manager.pause,
        "resume": manager.resume,
        "stop": manager.stop,
        "inject_spike": lambda: manager.inject_spike(st.session_state[SPIKE_FACTOR]),
    }
    action(RUN, command, actions[command], lambda: _run_button_refusals(manager)[command])


# --- sidebar -----------------------------------------------------------------------------------


def sidebar(manager: RunManager) -> None:
    """Set up this session's controls, take the run's values, and draw the sidebar."""
    initialize_defaults()
    _take_run_values(manager)
    with st.sidebar:
        _run_controls(manager)
        _view_controls()
        settings_controls(manager)


def _choice(manager: RunManager, name: str, label: str, options, on_change, help_text: str) -> str:
    """A select box for control `name`, showing its accepted value; returns what it shows."""
    key = widget_key(name)
    return st.selectbox(
        label,
        options,
        index=options.index(control_value(name)),
        key=key,
        on_change=on_change,
        args=(manager, key),
        help=help_text,
        disabled=not manager.can_steer,
    )


def _number_field(manager: RunManager, name: str, label: str, on_change, args: tuple, help_text: str) -> None:
    """A text field for number control `name`, showing the value in effect, and its refusal."""
    key = widget_key(name)
    st.text_input(
        label,
        value=number_text(control_value(name)),
        key=key,
        on_change=on_change,
        args=(manager, key, *args),
        help=help_text,
        disabled=not manager.can_steer,
    )
    show_error(name)


def _run_controls(manager: RunManager) -> None:
    active = manager.is_active
    locked = not manager.can_steer  # a viewer (dashboard.access): every control is disabled
    st.header("Run", anchor=False)
    # The run's buttons come first: the browser draws the sidebar in order and the first select
    # box costs it ~0.8 s, so Start below the settings was clickable 2.0-2.1 s after a fresh
    # server's page opened, and above them 1.1-1.3 s (three opens each).
    refusals = _run_button_refusals(manager)  # a button that does not apply now is disabled
    left, right = st.columns(2)
    left.button(
        "Start", key="start", type="primary", width="stretch",
        disabled=locked or refusals["start"] is not None, on_click=_on_start, args=(manager,),
    )  # fmt: skip
    for column, label, command in ((right, "Stop", "stop"), (left, "Pause", "pause"), (right, "Resume", "resume")):
        column.button(
            label, key=command, width="stretch", disabled=locked or refusals[command] is not None,
            on_click=_on_run_command, args=(manager, command),
        )  # fmt: skip
    catalogue = task_catalogue()
    options = list(catalogue)
    if control_value(TASK) not in catalogue:  # a plug-in whose file went away since
        options.append(control_value(TASK))
    task = _choice(
        manager, TASK, "Task", options, _on_task,
        "The model and data to train: the built-in tasks and the plug-ins in CLIPWATCH_TASKS "
        "and examples/tasks/. Takes effect at the next Start.",
    )  # fmt: skip
    next_run = " Applies at the next Start." if active and task != manager.settings.task else ""
    entry = catalogue.get(task)
    st.caption((entry.description if entry is not None else "") + "." + next_run)
    show_error(TASK)

    policy = _choice(
        manager, POLICY, "Policy", POLICY_NAMES, _on_policy,
        "How gradients are clipped. Changing it during a run switches the run's policy.",
    )  # fmt: skip
    st.caption(POLICY_DESCRIPTIONS.get(policy, ""))
    show_error(POLICY)
    for name, parameter in POLICY_PARAMETERS[policy].items():
        control = param_key(policy, name)
        _number_field(
            manager, control, param_label(name), _on_policy_param, (policy, name),
            f"{parameter.allowed().capitalize()}; default {parameter.default:g}."
            + ("" if parameter.live else " Changing it during a run recompiles the step."),
        )  # fmt: skip

    _number_field(
        manager, CLIP_THRESHOLD, "Clip threshold", _on_clip_threshold, (),
        "c, a finite number > 0 (type any value, e.g. 1e-4 or 1e4). During a run it takes effect "
        "at the next chunk of steps.",
    )  # fmt: skip
    _number_field(
        manager, LEARNING_RATE, "Learning rate", _on_learning_rate, (),
        "A finite number > 0; the task's default is filled in when you pick a task.",
    )  # fmt: skip
    key = widget_key(SPEED)
    speed_slider(
        st,
        control_value(SPEED),
        key,
        "A cap on steps per second, so a demo unfolds at a pace people can follow. "
        "Full: as fast as the machine goes.",
        on_change=_on_speed,
        args=(manager, key),
        disabled=locked,
    )
    show_error(SPEED)

    st.number_input(
        "Spike factor",
        value=100.0,
        key=SPIKE_FACTOR,
        step=10.0,
        format="%g",
        help="Inject spike multiplies one step's gradients by this factor, before clipping.",
        disabled=locked,
    )
    st.button(
        "Inject spike",
        key="inject_spike",
        width="stretch",
        disabled=locked or refusals["inject_spike"] is not None,
        on_click=_on_run_command,
        args=(manager, "inject_spike"),
    )
    show_error(RUN)


def _view_controls() -> None:
    st.header("View", anchor=False)
    st.toggle(
        "Log-scale y axes", value=False, key=LOG_SCALE, help="For the gradient-norm and loss charts."
    )
    st.slider(
        "Loss smoothing",
        min_value=0.0,
        max_value=MAX_SMOOTHING,
        value=0.0,
        step=0.01,
        key=SMOOTHING,
        help="An exponential moving average of the loss curves, as TensorBoard's smoothing slider: "
        "the raw curve stays faint behind the smoothed one. 0 is off.",
    )
    st.number_input(
        "What-if threshold",
        key=WHAT_IF_THRESHOLD,
        value=None,
        format="%g",
        placeholder="the current threshold",
        help="Read off the histogram how many recent steps a global-norm clip at this "
        "threshold would have scaled down. Empty: the run's threshold.",
    )
    st.select_slider(
        "Suggest at percentile",
        options=SUGGEST_PERCENTILES,
        value=90,
        key=SUGGEST_PERCENTILE,
        format_func=lambda option: f"p{option}",
        help="The suggested threshold is this percentile of recent gradient norms: it clips "
        "the largest (100 - p)% of steps.",
    )


__all__ = [
    # the sidebar, here
    "REFRESH_SECONDS", "FIRST_STEP_REFRESH_SECONDS", "SUGGEST_PERCENTILES", "POLICY_DESCRIPTIONS",
    "param_label", "speed_slider", "sidebar",
    # from database_setting
    "database_messages",
    # from control_state
    "ADVISOR", "CLIP_THRESHOLD", "DATABASE_PATH", "FINGERPRINT", "LEARNING_RATE", "LOG_SCALE", "SMOOTHING",
    "NEEDS_FULL_RERUN", "POLICY", "RUN", "SPEED", "SPEED_OPTIONS", "SPIKE_FACTOR", "SUGGEST_PERCENTILE",
    "TASK", "WHAT_IF_THRESHOLD", "control_value", "param_key", "report", "show_error", "show_value",
    "speed_option", "speed_value", "widget_key",
    # from control_commands
    "REPEAT_SECONDS", "action", "first_click", "run_button_refusals", "send_or_check",
    # from number_fields
    "SHOWN_TEXT_CHARACTERS", "as_typed", "number_text", "typed_number",
]  # fmt: skip
