"""The Live view of a run that another process records: a user's script with LiveClipping.

The Live tab's selector lists the live runs in the database (this app's own and attached ones).
For an attached run, the charts are read from the database as the script's writer commits them
(the manager caches the loaded run until the database moves on) and redrawn every
`REFRESH_SECONDS`; the controls send commands through the database's `commands` table, and the
last command's acknowledgement (the step from which the script applies it, or its error) shows.
The loss chart carries the validation loss the script recorded (a fit's epoch logs), dashed, and
its other metrics (accuracy, val_accuracy, ...) are one select box away. The acknowledgement shown
is the run's latest command's, read from the database, whichever page sent it: a second tab on
the same run sees it, and nothing of it lives in the session. A run that ends while it
is shown stays selected with its final state: a command sent to it then is refused with the
database's reason (the run has ended), never left waiting.

Streamlit only: every number comes from the `RunManager`, every chart from the pure builders.
Nothing here loops, sleeps or starts a thread.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, history_view, panels
from dashboard.run_manager import RunManager
from training.persistence import LIVE_STATES
from training.policies import POLICY_NAMES

REFRESH_SECONDS = 0.5  # with the writer's 0.5 s commits: a change is on the charts within ~1 s
OWN_RUN = "own"  # the selector's value for this app's own live run
SELECTED = "live.run"
COMMAND_LABELS = {
    "clip_threshold": "Clip threshold", "learning_rate": "Learning rate", "policy": "Policy",
    "pause": "Pause", "resume": "Resume", "stop": "Stop", "spike": "Inject spike",
}  # fmt: skip
_ERROR = "_attached_error"
_VERSION = "_attached_version"  # bumps to give the controls fresh widgets (a new value shown)


def select_live_run(manager: RunManager) -> int | None:
    """The selector of live runs; returns the attached run's id to show, or None (the app's own).

    The attached run this session shows stays listed after it ends (until another is chosen),
    so its final state shows and a command sent to it is refused with the reason.
    """
    runs = manager.live_runs()
    attached = runs[runs.attached]
    shown = st.session_state.get(SELECTED)
    if shown not in (OWN_RUN, None) and int(shown) not in set(attached.run_id.astype(int)):
        recorded = manager.list_runs()
        attached = pd.concat([attached, recorded[recorded.run_id == int(shown)]])  # empty once deleted
    if attached.empty:
        st.session_state.pop(SELECTED, None)
        return None
    labels = {OWN_RUN: "This app's run"}
    for row in attached.itertuples():
        labels[int(row.run_id)] = f"#{int(row.run_id)} {row.name} (attached script)"  # stable: a changing label makes a new widget
    if shown not in labels:
        st.session_state.pop(SELECTED, None)
    choice = st.selectbox(
        "Live run",
        list(labels),
        format_func=labels.get,
        key=SELECTED,
        help="This app's own run, or a run another process records with training.keras.LiveClipping.",
    )
    return None if choice == OWN_RUN else int(choice)


def render_attached(manager: RunManager, run_id: int) -> None:
    """Controls (outside the timed fragment) and the charts (inside it) of an attached run.

    The charts refresh while the run is live; when it ends, the whole view reruns once so the
    controls say so, and then nothing refreshes.
    """
    state = _run_state(manager, run_id)
    _controls(manager, run_id, state)
    refresh = REFRESH_SECONDS if state in LIVE_STATES else None
    st.fragment(_live_charts, run_every=refresh)(manager, run_id, state)


def _run_state(manager: RunManager, run_id: int) -> str | None:
    """The run's state in the database (None if it cannot be read: the charts say why)."""
    try:
        return str(manager.recorded_run(run_id).info["state"])
    except (ValueError, RuntimeError):
        return None


def _send(manager: RunManager, run_id: int, kind: str, value: Any = None) -> None:
    st.session_state.pop(_ERROR, None)
    try:
        manager.send_command(run_id, kind, value)
    except (ValueError, RuntimeError) as error:
        st.session_state[_ERROR] = str(error)
        st.session_state[_VERSION] = st.session_state.get(_VERSION, 0) + 1  # undo the typed value


def _on_input(manager: RunManager, run_id: int, kind: str, key: str) -> None:
    _send(manager, run_id, kind, st.session_state[key])


def describe_command(kind: str, value: Any) -> str:
    """What a command asked, as the controls name it: 'Clip threshold 0.05', 'Pause'."""
    label = COMMAND_LABELS.get(kind, kind)
    if kind in ("clip_threshold", "learning_rate"):
        return f"{label} {float(value):g}"
    return f"{label} {value}" if kind == "policy" else label


def _controls(manager: RunManager, run_id: int, state: str | None) -> None:
    info = manager.attached_run_settings(run_id)
    version = st.session_state.get(_VERSION, 0)
    ended = state is not None and state not in LIVE_STATES
    locked = not manager.can_steer or ended  # a viewer (dashboard.access): commands are disabled
    with st.container(border=True, key="attached_controls_panel"):
        st.markdown("**Steer the attached script**")
        st.caption(
            "Each change is a command in the run database; the script applies it between two of "
            "its batches and acknowledges it with the first step that uses it."
        )
        if ended:
            st.info(f"Run #{run_id} has ended ({state}): it takes no more commands.", icon=":material/stop_circle:")
        threshold, rate, policy = st.columns(3)
        key = f"attached.clip_threshold.{run_id}.{version}"
        threshold.number_input(
            "Clip threshold", value=float(info["clip_threshold"]), key=key, format="%g", step=0.01,
            on_change=_on_input, args=(manager, run_id, "clip_threshold", key), disabled=locked,
        )  # fmt: skip
        key = f"attached.learning_rate.{run_id}.{version}"
        rate.number_input(
            "Learning rate", value=float(info["learning_rate"]), key=key, format="%g", step=0.0001,
            on_change=_on_input, args=(manager, run_id, "learning_rate", key), disabled=locked,
        )  # fmt: skip
        key = f"attached.policy.{run_id}.{version}"
        policy.selectbox(
            "Policy", POLICY_NAMES, index=POLICY_NAMES.index(info["policy"]), key=key,
            on_change=_on_input, args=(manager, run_id, "policy", key),
            disabled=locked,
        )  # fmt: skip
        buttons = st.columns(4)
        for column, (kind, value) in zip(buttons, (("pause", None), ("resume", None), ("stop", None), ("spike", 100.0))):
            column.button(COMMAND_LABELS[kind], key=f"attached.{kind}.{run_id}", on_click=_send,
                          args=(manager, run_id, kind, value), width="stretch", disabled=locked)  # fmt: skip
        if st.session_state.get(_ERROR):
            st.error(st.session_state[_ERROR], icon=":material/error:")


def _acknowledgement(manager: RunManager, run_id: int, state: str) -> None:
    command = manager.last_command(run_id)
    if command is None:
        return
    label = describe_command(command["kind"], command["value"])
    if command["error"]:
        st.error(f"{label}: refused by the script: {command['error']}", icon=":material/error:")
    elif command["applied_time"] is None and state not in LIVE_STATES:
        # The script writes its acknowledgements before it closes the run: this one never came.
        st.error(f"{label}: not applied: run #{run_id} has ended ({state}) before the script took it.",
                 icon=":material/error:")  # fmt: skip
    elif command["applied_time"] is None:
        st.info(f"{label}: sent, waiting for the script…", icon=":material/hourglass_top:")
    else:
        delay = command["applied_time"] - command["created"]
        st.success(
            f"{label}: applied by the script from step {int(command['applied_step']):,} "
            f"({delay:.2f} s after it was sent)",
            icon=":material/check_circle:",
        )


def _live_charts(manager: RunManager, run_id: int, shown_state: str | None) -> None:
    try:
        recorded = manager.recorded_run(run_id)
    except (ValueError, RuntimeError) as error:
        st.error(str(error), icon=":material/error:")
        return
    info = recorded.info
    state = str(info["state"])
    if state != shown_state and shown_state in LIVE_STATES:
        st.rerun(scope="app")  # the run has ended (or paused, resumed): the controls follow
    _acknowledgement(manager, run_id, state)
    cells = (
        ("State", state.capitalize()),
        ("Step", f"{int(info['steps'] or 0):,}"),
        ("Threshold", panels.number(recorded.clip_threshold, "{:g}")),
        ("Loss", panels.number(info["final_loss"])),
        ("Clip rate", panels.number(info["clip_rate"], "{:.1%}")),
    )
    validation = charts.latest_validation(recorded.evaluations)
    if "val_loss" in validation:  # the script's fit had validation data
        cells += (("Val loss", panels.number(validation["val_loss"])),)
    for column, (label, value) in zip(st.columns(len(cells)), cells):
        column.metric(label, value, border=True)
    if len(recorded.metrics_view) == 0:
        st.info("Waiting for the script's first recorded steps…", icon=":material/hourglass_top:")
        return
    figures = panels.run_figures(
        recorded.metrics_view, recorded.layer_view, recorded.events, False, None, recorded.evaluations
    )
    with panels.panel(
        "attached_gradient_norm_panel", "Gradient norm", "Before and after clipping, with the threshold and clip events."
    ):
        panels.draw(figures["Gradient norm"])
    left, right = st.columns(2)
    with left, panels.panel("attached_loss_panel", "Loss and commands",
                            "Mean loss per point; every command as a rule; the validation loss dashed red, "
                            "when the script's fit has validation data."):  # fmt: skip
        panels.draw(figures["Loss and commands"])
    with right, panels.panel(
        "attached_clip_rate_panel", "Clip rate", f"Rolling over {charts.CLIP_RATE_WINDOW} steps."
    ):
        panels.draw(figures["Clip rate"])
    left, right = st.columns(2)
    with left, panels.panel("attached_layer_panel", "Gradient norm per layer", "Each variable's norm before clipping."):
        panels.draw(figures["Gradient norm per layer"])
    with right, panels.panel("attached_events_panel", "Events", "Every command the script applied, newest first."):
        st.table(charts.events_table(recorded.events).head(50).set_index("Step"))
    history_view.metric_panel("attached_metric_panel", recorded.evaluations, f"attached.metric.{run_id}")
