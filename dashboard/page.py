"""The page: sidebar controls, a header, and four tabs: Live, A/B race, History and Compare.

The Live tab is one live fragment that draws every chart of the current run, with the threshold
advisor and exports under it; the other tabs live in `race_view` and `history_view`. The tabs
are lazy (only the open one runs), so a hidden tab costs nothing and keeps no timer.

Controls sit outside the live fragment and act through callbacks that send commands to the
shared `RunManager`; a value the trainer refuses shows its message under the control and the
control goes back to the last accepted value. The fragment reads one `RunSnapshot` per refresh
(every `REFRESH_SECONDS` while a run is running or paused; no timer otherwise). Nothing here
loops, sleeps or starts a thread.

Tabs stay in step: when the run, its state or its settings change (from any tab), the next
refresh of every tab reruns its whole page, and the controls take the run's values.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from dashboard import advice, charts, export, history_view, panels, race_view
from dashboard.run_manager import (
    POLICY_NAMES,
    POLICY_PARAMETERS,
    TASK_NAMES,
    TASKS,
    RunManager,
    RunSettings,
    RunSnapshot,
    get_run_manager,
    validate_clip_threshold,
    validate_learning_rate,
    validate_policy_params,
)

TITLE = "Clipwatch"
SUBTITLE = (
    "Watch gradient clipping act on a live training run, step by step, and tune the threshold "
    "while the model trains."
)
REFRESH_SECONDS = 1.0
EVENT_ROWS = 200  # newest events in the table (a plain HTML table: readable and quick)
SPEED_OPTIONS = (10, 30, 100, 300, 1000, 3000, "Full")  # steps per second; "Full": no cap
SUGGEST_PERCENTILES = (50, 75, 80, 90, 95, 99)
# The policies for which a global-norm threshold read off the histogram means what it says.
THRESHOLD_POLICIES = ("global_norm", "per_tensor_norm", "zclip")
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
SECTION = "section"  # the tabs' key: the open tab's label
TABS = ("Live", "A/B race", "History", "Compare")
# Private session state.
_ERRORS = "_errors"  # control name -> message, shown until the next command
_VALUES = "_values"  # control name -> the value it shows (the last accepted)
_VERSIONS = "_versions"  # control name -> how many times it got a new widget
_SYNCED = "_synced"  # the run's values the controls last took
_FINGERPRINT = "_fingerprint"  # manager.fingerprint() when the page last ran in full
_NEEDS_FULL_RERUN = "_needs_full_rerun"
_LAST_ACTION = "_last_action"  # (command, time.monotonic()) of the last button command
REPEAT_SECONDS = 0.75


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


def _speed_value(option: Any) -> float | None:
    return None if option == "Full" else float(option)


# --- entry point -------------------------------------------------------------------------------


def render() -> None:
    """Draw the whole page for this session (call after st.set_page_config)."""
    manager = get_run_manager()
    _initialize_defaults()
    st.session_state[_FINGERPRINT] = manager.fingerprint()
    _take_run_values(manager)
    with st.sidebar:
        _run_controls(manager)
        _view_controls()
        _settings_controls(manager)
    st.title(TITLE, anchor=False)
    st.markdown(SUBTITLE)
    _database_messages(manager)
    live, race, history, compare = st.tabs(TABS, key=SECTION, on_change="rerun")
    if live.open:
        with live:
            refresh = REFRESH_SECONDS if manager.is_active else None
            st.fragment(_live_view, run_every=refresh)()
            if manager.run_number:
                _live_tools(manager)
    if race.open:
        with race:
            race_view.render(manager)
    if history.open:
        with history:
            history_view.render_history(manager)
    if compare.open:
        with compare:
            history_view.render_compare(manager)


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


def _show_value(name: str, value: Any) -> None:
    """Make control `name` show `value` from the next run on (a new widget if it changed)."""
    state = st.session_state
    state[_VALUES][name] = value
    state[_VERSIONS][name] = state[_VERSIONS].get(name, 0) + 1


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
            _show_value(name, value)
    state[_SYNCED] = {**values, RUN: manager.run_number}


def _report(name: str, error: Exception) -> None:
    st.session_state[_ERRORS][name] = str(error)


def _show_error(name: str) -> None:
    message = st.session_state[_ERRORS].get(name)
    if message:
        st.error(message, icon=":material/error:")


def _command(name: str, key: str, action: Callable[[Any], Any]) -> None:
    """Send what widget `key` of control `name` now holds; on a refusal show why and undo."""
    state = st.session_state
    if key != widget_key(name):
        return  # a replaced widget's late value: the control shows something newer
    state[_ERRORS] = {}
    value = state[key]
    try:
        action(value)
    except (ValueError, RuntimeError) as error:
        _report(name, error)
        _show_value(name, control_value(name))  # a new widget, back at the accepted value
        return
    state[_VALUES][name] = value


def _action(name: str, command: str, action: Callable[[], Any]) -> None:
    """Run a button's command (Start, Stop, Inject spike, ...); show a refusal under `name`.

    A click that lands while a timed refresh is running can reach its callback twice
    (Streamlit replays button triggers of an interrupted run), so a repeat of the same
    command from this tab within `REPEAT_SECONDS` is dropped: one click, one spike.
    """
    state = st.session_state
    now = time.monotonic()
    last_command, last_time = state.get(_LAST_ACTION, (None, -math.inf))
    if command == last_command and now - last_time < REPEAT_SECONDS:
        return
    state[_LAST_ACTION] = (command, now)
    state[_ERRORS] = {}
    try:
        action()
    except (ValueError, RuntimeError) as error:
        _report(name, error)


# --- callbacks (run before the script, in this session's thread) -------------------------------


def _on_task(manager: RunManager, key: str) -> None:
    _command(TASK, key, lambda task: None)
    task = TASKS[control_value(TASK)]
    if not manager.is_active:  # the next run starts from the task's own defaults
        _show_value(CLIP_THRESHOLD, float(task.clip_threshold))
        _show_value(LEARNING_RATE, float(task.learning_rate))


def _policy_params_from_controls(policy: str) -> dict[str, Any]:
    return {name: control_value(param_key(policy, name)) for name in POLICY_PARAMETERS[policy]}


def _on_policy(manager: RunManager, key: str) -> None:
    def send(policy: str) -> None:
        params = _policy_params_from_controls(policy)
        if manager.is_active:
            manager.set_policy(policy, **params)
        else:
            validate_policy_params(policy, params)

    _command(POLICY, key, send)


def _on_policy_param(manager: RunManager, key: str, policy: str, name: str) -> None:
    def send(value: Any) -> None:
        settings = manager.settings
        if manager.is_active and settings is not None and settings.policy == policy:
            manager.set_policy(policy, **{name: value})
        else:
            validate_policy_params(policy, {**_policy_params_from_controls(policy), name: value})

    _command(param_key(policy, name), key, send)


def _on_clip_threshold(manager: RunManager, key: str) -> None:
    def send(value: Any) -> None:
        if manager.is_active:
            manager.set_clip_threshold(value)
        else:
            validate_clip_threshold(value)

    _command(CLIP_THRESHOLD, key, send)


def _on_learning_rate(manager: RunManager, key: str) -> None:
    def send(value: Any) -> None:
        if manager.is_active:
            manager.set_learning_rate(value)
        else:
            validate_learning_rate(value)

    _command(LEARNING_RATE, key, send)


def _on_speed(manager: RunManager, key: str) -> None:
    def send(option: Any) -> None:
        if manager.is_active:
            manager.set_speed(_speed_value(option))

    _command(SPEED, key, send)


def _settings_from_controls() -> RunSettings:
    policy = control_value(POLICY)
    return RunSettings(
        task=control_value(TASK),
        policy=policy,
        policy_params=_policy_params_from_controls(policy),
        clip_threshold=control_value(CLIP_THRESHOLD),
        learning_rate=control_value(LEARNING_RATE),
        max_steps_per_second=_speed_value(control_value(SPEED)),
    )


def _on_start(manager: RunManager) -> None:
    def start() -> None:
        run_number = manager.start(_settings_from_controls())
        st.session_state[_SYNCED] = {**_run_values(manager.settings), RUN: run_number}

    _action(RUN, "start", start)


def _on_run_command(manager: RunManager, command: str) -> None:
    actions = {
        "pause": manager.pause,
        "resume": manager.resume,
        "stop": manager.stop,
        "inject_spike": lambda: manager.inject_spike(st.session_state[SPIKE_FACTOR]),
    }
    _action(RUN, command, actions[command])


def _on_apply_suggested(manager: RunManager, value: float) -> None:
    def apply() -> None:
        if manager.is_active:
            manager.set_clip_threshold(value)
        else:
            validate_clip_threshold(value)
        _show_value(CLIP_THRESHOLD, value)

    _action(RUN, "apply_suggested", apply)
    st.session_state[_NEEDS_FULL_RERUN] = True  # the button sits in the fragment: redraw all


# --- sidebar -----------------------------------------------------------------------------------


def _run_controls(manager: RunManager) -> None:
    active, state = manager.is_active, manager.state
    st.header("Run", anchor=False)
    key = widget_key(TASK)
    task = st.selectbox(
        "Task",
        TASK_NAMES,
        index=TASK_NAMES.index(control_value(TASK)),
        key=key,
        on_change=_on_task,
        args=(manager, key),
        help="The model and data to train. Takes effect at the next Start.",
    )
    next_run = " Applies at the next Start." if active and task != manager.settings.task else ""
    st.caption(TASKS[task].description + "." + next_run)
    _show_error(TASK)

    key = widget_key(POLICY)
    policy = st.selectbox(
        "Policy",
        POLICY_NAMES,
        index=POLICY_NAMES.index(control_value(POLICY)),
        key=key,
        on_change=_on_policy,
        args=(manager, key),
        help="How gradients are clipped. Changing it during a run switches the run's policy.",
    )
    st.caption(POLICY_DESCRIPTIONS.get(policy, ""))
    _show_error(POLICY)
    for name, parameter in POLICY_PARAMETERS[policy].items():
        integer = parameter.kind is int
        control = param_key(policy, name)
        key = widget_key(control)
        st.number_input(
            param_label(name),
            value=control_value(control),
            key=key,
            step=1 if integer else 10.0 ** (math.floor(math.log10(float(parameter.default))) - 1),
            format="%d" if integer else "%g",
            on_change=_on_policy_param,
            args=(manager, key, policy, name),
            help=f"{parameter.allowed().capitalize()}; default {parameter.default:g}."
            + ("" if parameter.live else " Changing it during a run recompiles the step."),
        )
        _show_error(control)

    key = widget_key(CLIP_THRESHOLD)
    st.number_input(
        "Clip threshold",
        value=control_value(CLIP_THRESHOLD),
        key=key,
        step=0.01,
        format="%g",
        on_change=_on_clip_threshold,
        args=(manager, key),
        help="c, a finite number > 0 (type any value, e.g. 1e-4 or 1e4). During a run it "
        "takes effect at the next chunk of steps.",
    )
    _show_error(CLIP_THRESHOLD)
    key = widget_key(LEARNING_RATE)
    st.number_input(
        "Learning rate",
        value=control_value(LEARNING_RATE),
        key=key,
        step=0.0001,
        format="%g",
        on_change=_on_learning_rate,
        args=(manager, key),
        help="A finite number > 0; the task's default is filled in when you pick a task.",
    )
    _show_error(LEARNING_RATE)
    key = widget_key(SPEED)
    st.select_slider(
        "Speed",
        options=SPEED_OPTIONS,
        value=control_value(SPEED),
        key=key,
        format_func=lambda option: option if option == "Full" else f"{option:,}",
        on_change=_on_speed,
        args=(manager, key),
        help="A cap on steps per second, so a demo unfolds at a pace people can follow. "
        "Full: as fast as the machine goes.",
    )
    _show_error(SPEED)

    left, right = st.columns(2)
    left.button(
        "Start",
        key="start",
        type="primary",
        width="stretch",
        disabled=active or manager.race_is_active,
        on_click=_on_start,
        args=(manager,),
    )
    right.button(
        "Stop",
        key="stop",
        width="stretch",
        disabled=not active,
        on_click=_on_run_command,
        args=(manager, "stop"),
    )
    left.button(
        "Pause",
        key="pause",
        width="stretch",
        disabled=state != "running",
        on_click=_on_run_command,
        args=(manager, "pause"),
    )
    right.button(
        "Resume",
        key="resume",
        width="stretch",
        disabled=state != "paused",
        on_click=_on_run_command,
        args=(manager, "resume"),
    )
    st.number_input(
        "Spike factor",
        value=100.0,
        key=SPIKE_FACTOR,
        step=10.0,
        format="%g",
        help="Inject spike multiplies one step's gradients by this factor, before clipping.",
    )
    st.button(
        "Inject spike",
        key="inject_spike",
        width="stretch",
        disabled=not active,
        on_click=_on_run_command,
        args=(manager, "inject_spike"),
    )
    _show_error(RUN)


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


# --- the live view -----------------------------------------------------------------------------


def _live_view() -> None:
    manager = get_run_manager()
    if st.session_state.pop(_NEEDS_FULL_RERUN, False) or (
        manager.fingerprint() != st.session_state.get(_FINGERPRINT)
    ):
        st.rerun(scope="app")  # the controls (and the refresh timer) must follow the run
    snapshot = manager.snapshot()
    # Everything is computed first and then drawn in one go: elements still waiting after half
    # a second of a rerun fade, so spreading the drawing over the computing would flicker.
    ghosts = panels.ghosts_frame(manager.live_advice())
    figures = _figures(snapshot, ghosts) if len(snapshot.metrics_view) else None
    _run_line(snapshot)
    _failure(snapshot)
    _write_warning(snapshot)
    _headline(snapshot)
    if snapshot.run_number == 0:
        st.info(
            "No run yet. Pick a task and a clipping policy in the sidebar, then press **Start**. "
            "The first steps take a few seconds while TensorFlow compiles the training step.",
            icon=":material/play_circle:",
        )
        return
    if figures is None:
        if snapshot.is_active:
            st.info(
                "Building the model and compiling the training step…",
                icon=":material/hourglass_top:",
            )
        return
    _charts(manager, figures)


def _run_line(snapshot: RunSnapshot) -> None:
    if snapshot.run_number == 0 or snapshot.settings is None:
        return
    settings = snapshot.settings
    panels.run_caption(
        f"Run {snapshot.run_number}",
        f"task `{settings.task}` · policy `{settings.policy}` · learning rate {settings.learning_rate:g}",
        settings.max_steps_per_second,
        snapshot.started_at,
    )


def _failure(snapshot: RunSnapshot) -> None:
    status = snapshot.status
    if status is None or status.state != "failed":
        return
    st.error(f"Run {snapshot.run_number} failed: {status.error}", icon=":material/error:")
    if status.traceback:  # a run that stops itself (e.g. too many NaN steps) raised nothing
        with st.expander("Traceback"):
            st.code(status.traceback, language="text")


def _threshold_text(snapshot: RunSnapshot) -> tuple[str, str]:
    """The threshold in force as the metric shows it, and its help."""
    status = snapshot.status
    config = status.config if status is not None else None
    if config is None:
        return "–", "No run yet."
    policy = config.policy
    if policy == "none":
        return "off", "Policy none clips nothing."
    if policy == "agc":
        return f"×{config.policy_params['agc']['clip_factor']:g}", "AGC's clip factor."
    if policy == "autoclip":
        recent = snapshot.recent
        thresholds = charts.finite(recent["clip_threshold"]) if len(recent) else []
        thresholds = [value for value in thresholds if math.isfinite(value)]
        percentile = config.policy_params["autoclip"]["percentile"]
        value = f"{thresholds[-1]:.3g}" if thresholds else "–"
        return value, f"Adaptive: the p{percentile:g} of the last norms."
    return f"{config.clip_threshold:g}", "The threshold the trainer applies now."


def _headline(snapshot: RunSnapshot) -> None:
    status = snapshot.status
    numbers = charts.headline(snapshot.recent)
    threshold, threshold_help = _threshold_text(snapshot)

    def number(value: float | None, pattern: str = "{:.4g}") -> str:
        return "–" if value is None or not math.isfinite(value) else pattern.format(value)

    cells = (
        ("State", (status.state if status else "no run").capitalize(), None),
        ("Step", f"{status.step:,}" if status else "0", "Steps completed."),
        ("Steps/s", f"{status.steps_per_second:,.0f}" if status else "0", "Over the last second."),
        ("Loss", number(numbers.loss), "Of the newest finite step."),
        ("Grad norm", number(numbers.grad_norm), "The newest step's global L2 norm, before clipping."),
        (
            "Clip rate",
            number(numbers.clip_rate, "{:.0%}"),
            f"Share of the last {charts.CLIP_RATE_WINDOW} steps that were clipped.",
        ),
        (
            "Non-finite",
            f"{status.nonfinite_steps:,}" if status else "0",
            "Steps whose loss or gradient was NaN or inf; they change nothing.",
        ),
        ("Threshold", threshold, threshold_help),
    )
    for column, (label, value, help_text) in zip(st.columns(len(cells)), cells):
        column.metric(label, value, help=help_text, border=True)


def _panel(key: str, title: str, caption: str):
    panel = st.container(border=True, key=key)
    panel.markdown(f"**{title}**")
    panel.caption(caption)
    return panel


@dataclass(frozen=True)
class _WhatIf:
    """What the histogram panel says, worked out before anything is drawn."""

    norms_count: int
    threshold: float | None  # the what-if threshold (the run's unless one is typed)
    threshold_error: str | None
    readout: charts.WhatIf | None
    percentile: int
    suggested: float | None
    at_suggested: charts.WhatIf | None
    policy: str


def _what_if_numbers(snapshot: RunSnapshot) -> tuple[_WhatIf, object]:
    state = st.session_state
    norms = charts.recent_norms(snapshot.recent)
    settings = snapshot.settings
    policy = settings.policy if settings is not None else control_value(POLICY)
    current = settings.clip_threshold if settings is not None else control_value(CLIP_THRESHOLD)
    chosen = state.get(WHAT_IF_THRESHOLD)
    percentile = state.get(SUGGEST_PERCENTILE, 90)
    suggested = charts.suggest_threshold(norms, percentile)
    threshold, error = (current if chosen is None else chosen), None
    try:
        threshold = validate_clip_threshold(threshold)
    except ValueError as refused:
        threshold, error = None, f"What-if threshold: {refused}"
    numbers = _WhatIf(
        norms_count=len(norms),
        threshold=threshold,
        threshold_error=error,
        readout=None if threshold is None else charts.what_if(norms, threshold),
        percentile=percentile,
        suggested=suggested,
        at_suggested=None if suggested is None else charts.what_if(norms, suggested),
        policy=policy,
    )
    histogram = charts.gradient_norm_histogram(
        norms,
        threshold,
        suggested,
        log_scale=bool(state.get(LOG_SCALE)),
        threshold_label="threshold" if chosen is None else "what-if",
    )
    return numbers, histogram


@dataclass(frozen=True)
class _Figures:
    """Every chart and number of the live view, built from one snapshot."""

    gradient_norm: Any
    loss: Any
    clip_rate: Any
    layers: Any
    histogram: Any
    what_if: _WhatIf
    events: Any  # the events table
    resolution: str


def _figures(snapshot: RunSnapshot, ghosts=None) -> _Figures:
    """Every chart of the live view; `ghosts`: the advisor's thresholds to draw (dashed)."""
    log_scale = bool(st.session_state.get(LOG_SCALE))
    view = snapshot.metrics_view
    what_if, histogram = _what_if_numbers(snapshot)
    per_point = math.ceil(int(view["steps"].sum()) / charts.LINE_POINTS)
    resolution = (
        "one point per step"
        if per_point <= 1
        else f"one point per {per_point:,} steps: its mean, in a band from its smallest to its "
        "largest norm, so spikes stay visible"
    )
    gradient_norm = charts.gradient_norm_chart(view, log_scale=log_scale)
    if ghosts is not None and len(ghosts):
        gradient_norm = advice.with_ghost_thresholds(gradient_norm, ghosts, log_scale)
    return _Figures(
        gradient_norm=gradient_norm,
        loss=charts.loss_chart(view, snapshot.events, log_scale=log_scale),
        clip_rate=charts.clip_rate_chart(view),
        layers=charts.layer_norm_chart(snapshot.layer_view),
        histogram=histogram,
        what_if=what_if,
        events=charts.events_table(snapshot.events),
        resolution=resolution,
    )


def _draw(chart) -> None:
    st.vega_lite_chart(spec=charts.vega_lite_spec(chart), width="stretch")


def _charts(manager: RunManager, figures: _Figures) -> None:
    resolution = figures.resolution
    with _panel(
        "gradient_norm_panel",
        "Gradient norm",
        f"Before and after clipping, with the threshold and clip events ({resolution}).",
    ):
        _draw(figures.gradient_norm)

    left, right = st.columns(2)
    with left, _panel(
        "loss_panel", "Loss and commands", "Mean loss per point; every command as a labelled rule."
    ):
        _draw(figures.loss)
    with right, _panel(
        "clip_rate_panel",
        "Clip rate",
        f"Share of clipped steps over a rolling window of {charts.CLIP_RATE_WINDOW} steps.",
    ):
        _draw(figures.clip_rate)

    left, right = st.columns(2)
    with left, _panel(
        "layer_panel",
        "Gradient norm per layer",
        "Each trainable variable's norm before clipping (largest per cell, log colour).",
    ):
        _draw(figures.layers)
    with right, _panel(
        "histogram_panel",
        "Recent gradient norms",
        f"The last {figures.what_if.norms_count:,} steps before clipping, with a what-if readout.",
    ):
        _what_if_panel(manager, figures.what_if, figures.histogram)

    table = figures.events
    shown = table.head(EVENT_ROWS)
    more = f" (the newest {EVENT_ROWS} of {len(table):,})" if len(table) > EVENT_ROWS else ""
    with _panel(
        "events_panel", "Events", f"Every command, newest first, at the step it took effect{more}."
    ):
        with st.container(height=260 if len(shown) > 6 else "content", border=False):
            st.table(shown.set_index("Step"))


def _what_if_panel(manager: RunManager, numbers: _WhatIf, histogram) -> None:
    if numbers.threshold_error:
        st.warning(numbers.threshold_error, icon=":material/warning:")
    _draw(histogram)
    if numbers.readout is not None:
        readout = numbers.readout
        st.markdown(
            f"At threshold **{readout.clip_threshold:g}**, **{readout.clipped_share:.1%}** of the "
            f"last **{readout.steps:,}** steps would have been clipped."
        )
    suggested = numbers.suggested
    if suggested is None:
        st.caption("No finite gradient norms yet to suggest a threshold from.")
        return
    st.markdown(
        f"Suggested threshold (p{numbers.percentile} of recent norms): **{suggested:g}**, which "
        f"would have clipped {numbers.at_suggested.clipped_share:.1%}."
    )
    usable = numbers.policy in THRESHOLD_POLICIES
    st.button(
        "Apply suggested threshold",
        key="apply_suggested",
        type="primary",
        disabled=not usable,
        on_click=_on_apply_suggested,
        args=(manager, suggested),
        help=f"Set the clip threshold to {suggested:g} in one click."
        if usable
        else f"The {numbers.policy} policy does not clip at a norm threshold.",
    )


# --- settings: the run database ----------------------------------------------------------------


def _on_database_path(manager: RunManager, key: str) -> None:
    state = st.session_state
    if key != _database_path_key(manager):
        return  # a replaced widget's late value
    state[_ERRORS] = {}
    try:
        manager.set_database_path(state[key])
    except ValueError as error:
        _report(DATABASE_PATH, error)
        state[_VERSIONS][DATABASE_PATH] = state[_VERSIONS].get(DATABASE_PATH, 0) + 1


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
            "for History and Compare. A run already going keeps writing where it started.",
        )
        if status.available:
            st.caption("New runs are recorded here.")
        else:
            st.caption("This path cannot be used: new runs are kept in memory only.")
        _show_error(DATABASE_PATH)


def _database_messages(manager: RunManager) -> None:
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


def _write_warning(snapshot: RunSnapshot) -> None:
    status = snapshot.status
    if status is not None and status.warning:
        st.warning(status.warning, icon=":material/warning:")


# --- the live run's advisor and exports ----------------------------------------------------------


def _on_advise_live(manager: RunManager) -> None:
    _action(ADVISOR, "advise_live", manager.advise_live)
    st.session_state[_NEEDS_FULL_RERUN] = True  # the live chart draws the new ghost lines


def _live_tools(manager: RunManager) -> None:
    settings = manager.settings
    live_advice = manager.live_advice()
    with st.expander("Threshold advisor", icon=":material/lightbulb:", expanded=live_advice is not None):
        st.caption(
            "Replays this run's newest pre-clip norms (up to 100,000 steps; a few seconds): the "
            "clip rate a global-norm threshold would have had, and the thresholds autoclip and "
            "zclip would have chosen, drawn as ghost lines on the gradient-norm chart. The "
            "replay covers the steps up to the moment you press the button."
        )
        st.button(
            "Replay the newest steps",
            key="advise_live",
            on_click=_on_advise_live,
            args=(manager,),
            icon=":material/replay:",
        )
        _show_error(ADVISOR)
        if live_advice is not None and settings is not None:
            panels.advisor_readout(
                manager, live_advice, f"live.proposed@{manager.run_number}", settings.clip_threshold
            )
    log_scale = bool(st.session_state.get(LOG_SCALE))  # read now: the downloads run elsewhere
    run_number = manager.run_number
    ghosts = panels.ghosts_frame(live_advice)

    def figures() -> dict:
        snapshot = manager.snapshot()
        return panels.run_figures(
            snapshot.metrics_view, snapshot.layer_view, snapshot.events, log_scale, ghosts
        )

    with st.expander("Export", icon=":material/download:"):
        st.caption(
            "The live run as it is when you click: its per-step metrics (every step the live "
            "store holds: the newest 100,000), a self-contained HTML report, and each chart. "
            "History exports every recorded step."
        )
        panels.export_buttons(
            f"live.export.{run_number}",
            f"run-{run_number}",
            metrics=manager.live_metrics,
            figures=figures,
            report=lambda: _live_report(manager, figures()),
            chart_names=panels.CHART_NAMES,
        )


def _live_report(manager: RunManager, figures: dict) -> str:
    """The HTML report of the live run, as it is now (runs outside the script: no `st.*`)."""
    snapshot = manager.snapshot()
    status, settings = snapshot.status, snapshot.settings
    config = status.config
    numbers = charts.headline(snapshot.recent)
    metrics = snapshot.metrics_view
    steps = int(metrics["steps"].sum()) if len(metrics) else 0
    clipped = int(metrics["clipped"].sum()) if len(metrics) else 0
    started = datetime.datetime.fromtimestamp(snapshot.started_at).strftime("%Y-%m-%d %H:%M:%S")
    return export.html_report(
        title=f"Clipwatch run {snapshot.run_number}",
        config={
            "Run": snapshot.run_number,
            "Database run id": status.run_id,
            "Task": config.task,
            "Policy": config.policy,
            "Policy parameters": config.policy_params.get(config.policy, {}),
            "Clip threshold": config.clip_threshold,
            "Learning rate": config.learning_rate,
            "Batch size": config.batch_size,
            "Seed": config.seed,
            "Speed cap (steps/s)": settings.max_steps_per_second if settings else None,
            "Started": started,
        },
        summary={
            "State": status.state,
            "Steps": status.step,
            "Final loss": numbers.loss,
            "Clip rate (whole run)": clipped / steps if steps else None,
            "Non-finite steps": status.nonfinite_steps,
            "Error": status.error or "",
        },
        charts=figures,
        events=charts.events_table(snapshot.events),
    )
