"""The sidebar's controls: widget keys, the session state behind them, their callbacks, the sidebar.

What a control shows lives in session state (the last accepted value); every control's callback
sends the new value to the shared `RunManager` through one helper (`_command`: validate -> send
-> report), and a refused value shows its message under the control, naming the value as typed,
while the control goes back to the value in effect. The number controls (threshold, learning
rate, policy parameters) are text fields, so the page always sees what was typed: a browser's
number field keeps showing a value it never sends (out of its range, or `1e999`), which left a
value on screen that was not in effect. Buttons go through `action`, which drops a repeated click
(`first_click`), and apply only in the run's states `run_button_refusals` allows. Nothing here loops,
sleeps or starts a thread.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import streamlit as st

from dashboard.live_run import ACTIVE_STATES, RunSettings
from dashboard.run_manager import RunManager
from training.policies import POLICY_NAMES, POLICY_PARAMETERS, validate_clip_threshold, validate_policy_params
from training.plugins import PluginError, check_task_once, task_catalogue
from training.tasks import TASKS, get_task
from training.trainer import validate_learning_rate

REFRESH_SECONDS = 1.0  # how often a timed view redraws while something trains
# While a started run has no step yet: redraw twice as often, so the first step shows within
# half a second of being trained (issue #11). Not faster: each redraw is Python that holds the
# GIL the new run's trace needs (at load average 15 the first step took 213 s on the page).
FIRST_STEP_REFRESH_SECONDS = 0.5
SPEED_OPTIONS = (10, 30, 100, 300, 1000, 3000, "Full")  # steps per second; "Full": no cap
SUGGEST_PERCENTILES = (50, 75, 80, 90, 95, 99)
REPEAT_SECONDS = 0.75  # a repeat of the same button command within this is dropped
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

# Names of the controls (their widgets' keys add a version, see `widget_key`).
TASK = "task"
POLICY = "policy"
CLIP_THRESHOLD = "clip_threshold"
LEARNING_RATE = "learning_rate"
SPEED = "speed"
SPIKE_FACTOR = "spike_factor"
LOG_SCALE = "log_scale"
WHAT_IF_THRESHOLD = "what_if_threshold"
SUGGEST_PERCENTILE = "suggest_percentile"
RUN = "run"  # where errors of Start / Pause / Resume / Stop / Inject spike show
DATABASE_PATH = "database_path"
ADVISOR = "advisor"  # where errors of the live run's replay show
# Session state (FINGERPRINT and NEEDS_FULL_RERUN are shared with the Live tab).
_ERRORS = "_errors"  # control name -> message, shown until the next command
_VALUES = "_values"  # control name -> the value it shows (the last accepted)
_VERSIONS = "_versions"  # control name -> how many times it got a new widget
_SYNCED = "_synced"  # the run's values the controls last took
FINGERPRINT = "_fingerprint"  # manager.fingerprint() when the page last ran in full
NEEDS_FULL_RERUN = "_needs_full_rerun"
_LAST_ACTION = "_last_action"  # (command, time.monotonic()) of the last button command


def param_key(policy: str, name: str) -> str:
    return f"param.{policy}.{name}"


def param_label(name: str) -> str:
    return name.replace("_", " ").capitalize()  # "z_threshold" -> "Z threshold"


def speed_option(max_steps_per_second: float | None) -> Any:
    """The Speed option closest to a steps-per-second cap (None: "Full")."""
    if max_steps_per_second is None:
        return "Full"
    numbers = [option for option in SPEED_OPTIONS if option != "Full"]
    return min(numbers, key=lambda option: abs(math.log(option / max_steps_per_second)))


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


def speed_value(option: Any) -> float | None:
    return None if option == "Full" else float(option)


# --- session state ------------------------------------------------------------------------------
#
# What a control shows lives in `_VALUES` (the last accepted value), not in the widget's own
# state, and the page never writes into a widget's state. To show a new value (a value from
# the run, a refused value undone, the suggested threshold) the control gets a new widget key:
# a fresh widget starts from `_VALUES`. The browser sends every widget's value with each
# refresh, so a widget whose value was overwritten on the server could send the old one back.


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


def _initialize_defaults() -> None:
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


def _new_widget(name: str) -> None:
    """Give control `name` a fresh widget from the next run on (it starts from `_VALUES`)."""
    versions = st.session_state[_VERSIONS]
    versions[name] = versions.get(name, 0) + 1


def show_value(name: str, value: Any) -> None:
    """Make control `name` show `value` from the next run on (a new widget if it changed)."""
    st.session_state[_VALUES][name] = value
    _new_widget(name)


# --- number fields: text in, a number out ---------------------------------------------------------

SHOWN_TEXT_CHARACTERS = 40  # a refusal quotes this much of what was typed, then cuts it


def number_text(value: Any) -> str:
    """The text a number field shows for `value`: the shortest that reads back as it (20.0 -> "20",
    1e-05 -> "1e-05"), so the field shows exactly the value in effect."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def typed_number(text: str, kind: type) -> int | float:
    """The number in a field's `text`, as `kind` (int or float); NaN when it is not a number,
    so the control's validator refuses it and says what is allowed.

    An int field takes a whole number written either way ("5", "5.0", "1e3"); anything else
    goes on as a float for its validator to refuse.
    """
    text = text.strip()
    if kind is int:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        number = float(text)
    except ValueError:
        return math.nan
    return int(number) if kind is int and number.is_integer() else number


def as_typed(message: str, text: str) -> str:
    """`message` (a validator's "... Received: name=value") with the value as it was typed.

    The validator saw the parsed number (`1e999` as inf, `abc` as nan); the person typed text.
    A number is shown as typed, anything else quoted (`''` for an empty field).
    """
    head, received, tail = message.rpartition("Received: ")
    if not received or "=" not in tail:
        return message
    name, shown = tail.split("=", 1)[0], text.strip()
    try:
        float(shown)
        quoted = False
    except ValueError:
        quoted = True
    if len(shown) > SHOWN_TEXT_CHARACTERS:
        shown = f"{shown[:SHOWN_TEXT_CHARACTERS]}... ({len(shown):,} characters)"
    return f"{head}{received}{name}={shown!r}" if quoted else f"{head}{received}{name}={shown}"


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


def report(name: str, error: Exception) -> None:
    st.session_state[_ERRORS][name] = str(error)


def show_error(name: str, errors_key: str = _ERRORS) -> None:
    """The refusal of the last command of control `name` (in the tab's `errors_key` table)."""
    message = st.session_state.setdefault(errors_key, {}).get(name)
    if message:
        st.error(message, icon=":material/error:")


def _command(
    name: str, key: str, action: Callable[[Any], Any], number_kind: type | None = None,
    current_key: str | None = None,
) -> None:
    """The one control callback: validate -> send -> report.

    Takes what widget `key` of control `name` now holds (a number field's text as a number of
    `number_kind`, see `typed_number`) and hands it to `action`, which validates and sends it or
    raises. Any earlier refusal goes (the message shown is always about this input). A refused
    value shows why under the control, naming the value as typed, and the control gets a new
    widget back at the value in effect; an accepted one becomes the control's value, shown as
    it is taken. `current_key`: the widget key the control has now (default `widget_key(name)`).
    """
    state = st.session_state
    if key != (widget_key(name) if current_key is None else current_key):
        return  # a replaced widget's late value: the control shows something newer
    state[_ERRORS] = {}
    typed = state[key]
    value = typed if number_kind is None else typed_number(typed, number_kind)
    try:
        action(value)
    except (ValueError, RuntimeError) as error:
        report(name, error if number_kind is None else as_typed(str(error), typed))
        _new_widget(name)  # back at the value in effect
        return
    state[_VALUES][name] = value
    if number_kind is not None and number_text(value) != typed:
        _new_widget(name)  # "1e-3" shows as 0.001, " 0.5 " as 0.5, "5.0" in an integer field as 5


def first_click(command: str, last_action_key: str = _LAST_ACTION) -> bool:
    """False for a repeat of `command` from this tab within `REPEAT_SECONDS` (else records it).

    A click that lands while a timed refresh is running can reach its callback twice
    (Streamlit replays button triggers of an interrupted run): one click, one command.
    """
    state = st.session_state
    now = time.monotonic()
    last_command, last_time = state.get(last_action_key, (None, -math.inf))
    if command == last_command and now - last_time < REPEAT_SECONDS:
        return False
    state[last_action_key] = (command, now)
    return True


def action(name: str, command: str, run: Callable[[], Any], refusal: Callable[[], str | None] = lambda: None) -> None:
    """Run a button's command (Start, Stop, Inject spike, ...); show a refusal under `name`.

    `refusal()`: why the command does not apply now (None: it does), checked at the click, since
    a browser can send a click on a button drawn before the run's state changed.
    """
    if not first_click(command):
        return
    st.session_state[_ERRORS] = {}
    try:
        why_not = refusal()
        if why_not is not None:
            raise RuntimeError(why_not)
        run()
    except (ValueError, RuntimeError) as error:
        report(name, error)


def run_button_refusals(state: str, steps: int, run_number: int, race_is_active: bool) -> dict[str, str | None]:
    """Why each run button does not apply now (None: it does), from one read of the run.

    `state` and `steps`: the run's status ("none" before the first run). A run is starting from
    Start until its first step: then only Stop applies (Pause, Resume and a spike would wait for
    a step nobody can see yet) and Start does not, so one Start is one run. (Start, Stop, Start...
    pressed 62 times in 23 s had left 13 History rows, 8 without a step: the run database now
    drops a run stopped before its first step.)
    """
    active = state in ACTIVE_STATES
    starting = active and state != "paused" and steps == 0
    run = f"Run {run_number}"
    phase = "starting (no step yet)" if starting else state
    not_now = f"{run} is {phase}" if run_number else "There is no run yet"
    return {
        "start": f"{run} is still {phase}: press Stop before starting a new run." if active
        else "An A/B race is on: stop it (A/B race tab) before starting a run." if race_is_active
        else None,
        "stop": None if active else f"{not_now}: there is nothing to stop. Press Start for a new run.",
        "pause": None if state == "running" and not starting else f"{not_now}: Pause applies to a run that trains.",
        "resume": None if state == "paused" else f"{not_now}: Resume applies to a paused run.",
        "inject_spike": None if active and not starting
        else f"{not_now}: a spike applies to a run that has started training.",
    }  # fmt: skip


def _run_button_refusals(manager: RunManager) -> dict[str, str | None]:
    trainer = manager.trainer
    status = None if trainer is None else trainer.status  # one read: state and steps agree
    return run_button_refusals(
        "none" if status is None else status.state, 0 if status is None else status.step,
        manager.run_number, manager.race_is_active,
    )  # fmt: skip


def send_or_check(live: bool, send: Callable[[Any], Any], check: Callable[[Any], Any], value: Any) -> None:
    """While the run is on (`live`) send `value` to it; between runs only check it for the next."""
    (send if live else check)(value)


# --- callbacks (run before the script, in this session's thread) -------------------------------


def _on_control(name: str, key: str, live: Callable[[], bool], send: Callable[[Any], Any],
                check: Callable[[Any], Any] = lambda value: None, number_kind: type | None = None) -> None:
    """A run setting's callback: `_command` sending to the run while it is on, else checking the
    value for the next Start (`send_or_check`)."""
    _command(name, key, lambda value: send_or_check(live(), send, check, value), number_kind)


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
    _command(TASK, key, _use_task)
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
    _initialize_defaults()
    _take_run_values(manager)
    with st.sidebar:
        _run_controls(manager)
        _view_controls()
        _settings_controls(manager)


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


# --- settings: the run database ----------------------------------------------------------------


def _on_database_path(manager: RunManager, key: str) -> None:
    # RuntimeError: a viewer (dashboard.access). The field shows the database in use.
    _command(DATABASE_PATH, key, manager.set_database_path, current_key=_database_path_key(manager))


def _database_path_key(manager: RunManager) -> str:
    # A new widget whenever the path changes (from any tab) or a value is refused.
    return f"{widget_key(DATABASE_PATH)}.{manager.database_status().generation}"


def _settings_controls(manager: RunManager) -> None:
    status = manager.database_status()
    with st.expander("Settings", icon=":material/settings:", expanded=not status.available):
        key = _database_path_key(manager)
        st.text_input(
            "Database path",
            value=status.path,
            key=key,
            on_change=_on_database_path,
            args=(manager, key),
            help="The SQLite file every new run (and both sides of an A/B race) is recorded in, "
            "for History and Compare: a file in the runs folder. A run already going keeps "
            "writing where it started.",
            disabled=not manager.can_steer,
        )
        if status.available:
            st.caption("New runs are recorded here.")
        else:
            st.caption("This path cannot be used: new runs are kept in memory only.")
        show_error(DATABASE_PATH)


def database_messages(manager: RunManager) -> None:
    status = manager.database_status()
    if status.available:
        return
    st.error(status.error, icon=":material/database:")
    st.warning(
        "Runs are kept in memory only: new runs are not recorded, so they will not show in "
        "History or Compare and are gone when the server stops. Everything else works. Set "
        "another database path under **Settings** in the sidebar to record them again.",
        icon=":material/memory:",
    )


