"""The A/B race tab: two runs at once, same seed and data, two clipping set-ups, one set of charts.

"Start A/B race" starts both trainers (each in its own thread) through the shared manager, so
every browser tab sees the same race. While they race, each side has its own threshold, Pause,
Resume and Stop; the charts overlay both, coloured A/B, refreshed by one timed fragment that
only reads a `RaceSnapshot`. Controls sit outside the fragment and act through callbacks.
"""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from dashboard import charts, comparison, controls, panels
from dashboard.race import RACE_LABELS, RaceSettings, RaceSide, RaceSnapshot, default_race_settings
from dashboard.operator_controls import session_run_manager
from dashboard.run_manager import RunManager
from training.policies import POLICY_NAMES
from training.tasks import TASK_NAMES, TASKS

# Widget keys of the set-up (they configure the next race only).
TASK = "race.task"
SEED = "race.seed"
SPEED = "race.speed"
LOG_SCALE = "race.log_scale"
# Session state (private to this tab).
_ERRORS = "_race_errors"  # where -> message, shown until the next command
_VERSIONS = "_race_versions"  # side -> bumps to give its threshold control a fresh widget
_FINGERPRINT = "_race_fingerprint"  # manager.fingerprint() when this tab last ran in full
_FAST_REFRESH = "_race_fast_refresh"  # the fragment redraws fast until both sides have a step
_LAST_ACTION = "_race_last_action"


def _policy_key(label: str) -> str:
    return f"race.{label}.policy"


def _threshold_key(label: str, task: str) -> str:
    # One widget per task: picking a task starts each side at that task's own threshold.
    return f"race.{label}.clip_threshold.{task}"


def _errors() -> dict[str, str]:
    return st.session_state.setdefault(_ERRORS, {})


def _show_error(where: str) -> None:
    controls.show_error(where, _ERRORS)


def _action(where: str, command: str, action: Callable[[], Any]) -> None:
    """Run a button's command; show a refusal under `where`. One click is one command (a click
    landing in a timed refresh can reach its callback twice)."""
    if not controls.first_click(command, _LAST_ACTION):
        return
    st.session_state[_ERRORS] = {}
    try:
        action()
    except (ValueError, RuntimeError) as error:
        _errors()[where] = str(error)


# --- callbacks -----------------------------------------------------------------------------------


def _settings_from_controls() -> RaceSettings:
    state = st.session_state
    task = state.get(TASK, "exploding_rnn")
    defaults = default_race_settings(task)
    sides = []
    for label, default in zip(RACE_LABELS, defaults.sides):
        sides.append(
            RaceSide(
                policy=state.get(_policy_key(label), default.policy),
                clip_threshold=state.get(_threshold_key(label, task), default.clip_threshold),
            )
        )
    speed = state.get(SPEED, 300)
    return RaceSettings(
        task=task,
        sides=tuple(sides),
        seed=int(state.get(SEED, 0)),
        max_steps_per_second=controls.speed_value(speed),
    )


def _on_start(manager: RunManager) -> None:
    _action("race", "start_race", lambda: manager.start_race(_settings_from_controls()))


def _on_side_command(manager: RunManager, label: str, command: str) -> None:
    actions = {
        "pause": lambda: manager.race_pause(label),
        "resume": lambda: manager.race_resume(label),
        "stop": lambda: manager.stop_race(label),
    }
    _action(label, f"{command}.{label}", actions[command])


def _on_stop_race(manager: RunManager) -> None:
    _action("race", "stop_race", lambda: manager.stop_race())


def _on_side_threshold(manager: RunManager, label: str, key: str) -> None:
    state = st.session_state
    state[_ERRORS] = {}
    try:
        manager.race_set_clip_threshold(label, state[key])
    except (ValueError, RuntimeError) as error:
        _errors()[label] = str(error)
        versions = state.setdefault(_VERSIONS, {})
        versions[label] = versions.get(label, 0) + 1  # a fresh widget, back at the run's value


# --- the tab -------------------------------------------------------------------------------------


def render(manager: RunManager) -> None:
    """The A/B race tab."""
    st.session_state[_FINGERPRINT] = manager.fingerprint()
    racing = manager.race_is_active
    st.markdown(
        "Two runs start at once from the **same seed and data** (the same initial weights and "
        "batches), with two clipping set-ups. Both train side by side, each in its own thread, "
        "and draw on the same charts."
    )
    locked = not manager.can_steer  # a viewer (dashboard.access): every control is disabled
    with st.expander("Set up the next race", expanded=not racing, icon=":material/tune:"):
        _setup(locked)
    left, right = st.columns(2)
    left.button(
        "Start A/B race",
        key="start_race",
        type="primary",
        width="stretch",
        disabled=locked or racing or manager.is_active,
        on_click=_on_start,
        args=(manager,),
        help="Starts both sides at once."
        + (" Stop the run in the sidebar first." if manager.is_active else ""),
    )
    right.button(
        "Stop race",
        key="stop_race",
        width="stretch",
        disabled=locked or not racing,
        on_click=_on_stop_race,
        args=(manager,),
    )
    _show_error("race")
    if manager.race_number:
        _side_controls(manager)
    st.toggle(
        "Log-scale y axes", value=True, key=LOG_SCALE,
        help="For the gradient-norm and loss charts: a side that diverges spans many decades.",
    )  # fmt: skip
    refresh = controls.REFRESH_SECONDS if racing else None
    # Until both sides count a step, redraw fast (then one full rerun goes back to the usual pace).
    waiting = racing and any(side.status.step == 0 for side in manager.race_snapshot().sides)
    st.session_state[_FAST_REFRESH] = waiting
    if waiting:
        refresh = controls.FIRST_STEP_REFRESH_SECONDS
    st.fragment(_race_live, run_every=refresh)()


def _setup(locked: bool) -> None:
    top = st.columns(3)
    task = top[0].selectbox(
        "Task", TASK_NAMES, index=TASK_NAMES.index("exploding_rnn"), key=TASK,
        help="Both sides train this task from the same seed.", disabled=locked,
    )  # fmt: skip
    top[1].number_input(
        "Seed", min_value=0, value=0, step=1, key=SEED, help="Initial weights and batch order.", disabled=locked
    )
    controls.speed_slider(top[2], 300, SPEED, "A cap on each side's steps per second.", disabled=locked)
    st.caption(TASKS[task].description + ".")
    defaults = default_race_settings(task)
    for column, label, default in zip(st.columns(2), RACE_LABELS, defaults.sides):
        with column.container(border=True):
            st.markdown(f"**Side {label}**")
            st.selectbox(
                "Policy", POLICY_NAMES, index=POLICY_NAMES.index(default.policy), key=_policy_key(label),
                disabled=locked,
            )
            st.number_input(
                "Clip threshold",
                value=float(default.clip_threshold),
                key=_threshold_key(label, task),
                format="%g",
                step=0.01,
                help=f"The task's own threshold is {default.clip_threshold:g}.",
                disabled=locked,
            )


def _side_controls(manager: RunManager) -> None:
    settings = manager.race_settings
    trainers = manager.race_trainers
    locked = not manager.can_steer
    versions = st.session_state.setdefault(_VERSIONS, {})
    for column, label, side, trainer in zip(st.columns(2), RACE_LABELS, settings.sides, trainers):
        state = trainer.status.state
        with column.container(border=True, key=f"race_side_{label}"):
            st.markdown(f"**{side.name(label)}** · {state}")
            # A new widget whenever the side's threshold changes (from any tab) or a value is
            # refused: it starts from the accepted value, never from a stale one.
            key = f"race.{label}.live_threshold@{manager.race_number}:{side.clip_threshold!r}#{versions.get(label, 0)}"
            st.number_input(
                f"Clip threshold {label}",
                value=float(side.clip_threshold),
                key=key,
                format="%g",
                step=0.01,
                disabled=locked or state not in ("running", "paused"),
                on_change=_on_side_threshold,
                args=(manager, label, key),
                help="Takes effect at the side's next chunk of steps."
                + (" Policy none does not clip at it." if side.policy == "none" else ""),
            )
            buttons = st.columns(3)
            buttons[0].button(
                "Pause", key=f"race.{label}.pause", width="stretch", disabled=locked or state != "running",
                on_click=_on_side_command, args=(manager, label, "pause"),
            )  # fmt: skip
            buttons[1].button(
                "Resume", key=f"race.{label}.resume", width="stretch", disabled=locked or state != "paused",
                on_click=_on_side_command, args=(manager, label, "resume"),
            )  # fmt: skip
            buttons[2].button(
                "Stop", key=f"race.{label}.stop", width="stretch",
                disabled=locked or state not in ("running", "paused"),
                on_click=_on_side_command, args=(manager, label, "stop"),
            )  # fmt: skip
            _show_error(label)


def _race_live() -> None:
    manager = session_run_manager()
    if manager.fingerprint() != st.session_state.get(_FINGERPRINT):
        st.rerun(scope="app")  # the controls (and the refresh timer) must follow the race
    snapshot = manager.race_snapshot()
    if st.session_state.get(_FAST_REFRESH) and snapshot.sides and all(side.status.step > 0 for side in snapshot.sides):
        st.rerun(scope="app")  # both sides count: back to the usual refresh
    if snapshot.race_number == 0:
        st.info(
            "No race yet. Set up both sides above, then press **Start A/B race**. The first "
            "steps take a few seconds while TensorFlow compiles each side's training step.",
            icon=":material/play_circle:",
        )
        return
    drawn = any(len(side.metrics_view) for side in snapshot.sides)
    figures = _figures(snapshot) if drawn else None
    _race_line(snapshot)
    _side_headlines(snapshot)
    if figures is None:
        if snapshot.is_active:
            st.info("Building the models and compiling the training steps…", icon=":material/hourglass_top:")
        return
    panels.panel_rows((
        (("race_gradient_norm_panel", "Gradient norm before clipping, A against B",
          "The largest norm per point, each side's threshold dashed in its colour; triangles along "
          "the top mark NaN/inf steps.", figures["gradient_norm"]),),
        (("race_loss_panel", "Loss, A against B", "Mean loss per point.", figures["loss"]),
         ("race_clip_rate_panel", "Clip rate, A against B", f"Rolling over {charts.CLIP_RATE_WINDOW} steps.",
          figures["clip_rate"])),
    ))  # fmt: skip

def _figures(snapshot: RaceSnapshot) -> dict:
    """Every chart of the race, built before anything is drawn (no half-drawn refresh)."""
    log_scale = bool(st.session_state.get(LOG_SCALE, True))
    long = comparison.runs_long_frame({side.name: side.metrics_view for side in snapshot.sides})
    return {
        "gradient_norm": comparison.runs_gradient_norm_chart(long, log_scale=log_scale),
        "loss": comparison.runs_loss_chart(long, log_scale=log_scale),
        "clip_rate": comparison.runs_clip_rate_chart(long),
    }


def _race_line(snapshot: RaceSnapshot) -> None:
    settings = snapshot.settings
    panels.run_caption(
        f"A/B race {snapshot.race_number}",
        f"task `{settings.task}` · seed {settings.seed} · learning rate {settings.learning_rate:g}",
        settings.max_steps_per_second,
        snapshot.started_at,
        per=" each",
    )


def _side_headlines(snapshot: RaceSnapshot) -> None:
    for column, side in zip(st.columns(len(snapshot.sides)), snapshot.sides):
        status = side.status
        numbers = charts.headline(side.recent)
        with column.container(border=True, key=f"race_headline_{side.label}"):
            st.markdown(f"**{side.name}**")
            cells = (
                ("State", status.state.capitalize()),
                ("Step", f"{status.step:,}"),
                ("Loss", panels.number(numbers.loss)),
                ("Clip rate", panels.number(numbers.clip_rate, "{:.0%}")),
                ("Non-finite", f"{status.nonfinite_steps:,}"),
            )
            for cell, (label, value) in zip(st.columns(len(cells)), cells):
                cell.metric(f"{label} {side.label}", value)
            if status.state == "failed":
                st.error(f"Side {side.label} failed: {status.error}", icon=":material/error:")
            if status.warning:
                st.warning(f"Side {side.label}: {status.warning}", icon=":material/warning:")
