"""The Live tab's "Fork and sweep" section: fork the live run, sweep thresholds, adopt or discard.

The inputs ("Fork from here" with its overrides, "Sweep thresholds" with its list and steps)
sit outside any timer; what changes as the branches train (the list of branches with Adopt and
Discard, a sweep's progress and its "Loss by clip threshold" result) is a timed fragment that
reads one `ForkSnapshot`. Every command goes through `control_commands.action`: a refused value
shows its message, naming the value as typed, and nothing is sent. Where forking cannot work (an
attached script's run, streamed data, a viewer, a run that does not train) one line says why
instead of the controls. Nothing here loops, sleeps or starts a thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from dashboard import charts, controls, export, fork_charts, panels, shared_charts
from dashboard.control_state import CLIP_THRESHOLD, NEEDS_FULL_RERUN, show_error, show_value
from dashboard.live_forks import MAX_BRANCHES, ForkSnapshot
from dashboard.number_fields import number_list, optional_number, typed_number
from dashboard.run_manager import RunManager
from training.loop.branches import LIVE_BRANCH_STATES
from training.loop.sweeps import DEFAULT_SWEEP_STEPS, default_sweep_thresholds, validate_sweep_thresholds
from training.policies import POLICY_NAMES, validate_clip_threshold
from training.trainer import validate_learning_rate

# Where each group's refusal shows (control_state's error table).
FORK = "fork"
SWEEP = "sweep"
BRANCHES = "branches"
# Widget keys of the fork's overrides (empty: the run's own value).
FORK_THRESHOLD = "fork.clip_threshold"
FORK_POLICY = "fork.policy"
FORK_LEARNING_RATE = "fork.learning_rate"
FORK_AT_STEP = "fork.at_step"
SWEEP_STEPS = "sweep.steps"
RUN_POLICY = ""  # the Branch policy option that keeps the run's
NOW = "now"  # the From step option that forks at the run's step when the trainer takes it
ALONGSIDE = (
    "The run keeps training while its branches run: one training thread takes turns with them, a "
    "chunk each, because that thread alone owns the model's variables (a branch is a swap of their "
    "values, no second model) and on two cores a second thread would only share the CPU."
)
ATTACHED = (
    "Forking works on this app's own run only: an attached script trains its model in its own "
    "process, where Clipwatch keeps no snapshot to fork from."
)
VIEW_ONLY = "View only: forking and sweeps are the operator's (enter the operator key in the sidebar)."
_SWEEP_CHARTS = shared_charts.SharedCharts(capacity=8)  # a finished sweep's charts, for every session


def attached_note() -> None:
    """The one line an attached run's view shows instead of the fork controls."""
    st.info(ATTACHED, icon=":material/call_split:")


def render(manager: RunManager) -> None:
    """The section under the live charts: the controls (or why not), then the timed status."""
    forks = manager.fork_snapshot()
    with st.expander("Fork and sweep", icon=":material/call_split:", expanded=True):
        if not manager.can_steer:
            st.info(VIEW_ONLY, icon=":material/visibility:")
        elif forks.refusal is not None:
            st.info(forks.refusal, icon=":material/call_split:")
        else:
            _fork_controls(manager, forks)
            _sweep_controls(manager)
        refresh = controls.REFRESH_SECONDS if manager.is_active else None
        st.fragment(_fork_status, run_every=refresh)(manager)


# --- Fork from here ------------------------------------------------------------------------------


def fork_request(threshold_text: str, policy: str, learning_rate_text: str, at_step: Any) -> dict:
    """The keyword arguments of `RunManager.fork` from the fields (empty: the run's value);
    ValueError naming the value as typed, before anything is sent."""
    return {
        "at_step": None if at_step == NOW else int(at_step),
        "clip_threshold": optional_number(threshold_text, validate_clip_threshold),
        "policy": None if policy == RUN_POLICY else policy,
        "learning_rate": optional_number(learning_rate_text, validate_learning_rate),
    }


def _on_fork(manager: RunManager) -> None:
    state = st.session_state
    fields = (state.get(FORK_THRESHOLD, ""), state.get(FORK_POLICY, RUN_POLICY),
              state.get(FORK_LEARNING_RATE, ""), state.get(FORK_AT_STEP, NOW))  # fmt: skip
    controls.action(FORK, f"fork:{fields}", lambda: manager.fork(**fork_request(*fields)))
    state[NEEDS_FULL_RERUN] = True  # the charts draw the new branch at the next refresh


def _fork_controls(manager: RunManager, forks: ForkSnapshot) -> None:
    settings = manager.settings
    st.markdown("**Fork from here**")
    st.caption(ALONGSIDE)
    threshold, policy, learning_rate, at_step = st.columns(4)
    threshold.text_input(
        "Branch clip threshold", key=FORK_THRESHOLD, placeholder=f"the run's: {settings.clip_threshold:g}",
        help="The branch's clip threshold, a finite number > 0. Empty: the run's.",
    )  # fmt: skip
    policy.selectbox(
        "Branch policy", [RUN_POLICY, *POLICY_NAMES], key=FORK_POLICY,
        format_func=lambda name: f"the run's: {settings.policy}" if name == RUN_POLICY else name,
        help="The branch's clipping policy (its parameters: the run's). The run's: keep it.",
    )  # fmt: skip
    learning_rate.text_input(
        "Branch learning rate", key=FORK_LEARNING_RATE, placeholder=f"the run's: {settings.learning_rate:g}",
        help="The branch's learning rate, a finite number > 0. Empty: the run's.",
    )  # fmt: skip
    steps = [NOW, *sorted(forks.snapshot_steps, reverse=True)]
    if st.session_state.get(FORK_AT_STEP, NOW) not in steps:
        st.session_state[FORK_AT_STEP] = NOW  # that snapshot is no longer kept
    at_step.selectbox(
        "Fork from step", steps, key=FORK_AT_STEP,
        format_func=lambda step: "now (the run's step)" if step == NOW else f"step {step:,} (snapshot)",
        help="Now, or one of the kept snapshots: the branch replays the run's own batches from there.",
    )  # fmt: skip
    full = forks.alive_forks >= MAX_BRANCHES
    st.button(
        "Fork from here", key="fork_button", type="primary", icon=":material/call_split:", disabled=full,
        on_click=_on_fork, args=(manager,),
        help=f"At most {MAX_BRANCHES} branches at once." if full else "Start a branch with these overrides.",
    )  # fmt: skip
    show_error(FORK)


# --- Sweep thresholds ----------------------------------------------------------------------------


def sweep_request(thresholds_text: str, steps_text: str) -> dict:
    """The keyword arguments of `RunManager.sweep` from the fields; ValueError naming the value."""
    thresholds = validate_sweep_thresholds(number_list(thresholds_text, validate_clip_threshold))
    steps = typed_number(steps_text, int)
    if isinstance(steps, float) or steps < 1:
        raise ValueError(f"Steps per threshold must be a whole number >= 1. Received: steps={steps_text.strip()!r}")
    return {"thresholds": thresholds, "steps": steps}


def _thresholds_key(manager: RunManager) -> str:
    """The thresholds field's key: a new field (new default) per run and per threshold in force."""
    return f"sweep.thresholds@{manager.run_number}:{manager.settings.clip_threshold:g}"


def _on_sweep(manager: RunManager, key: str) -> None:
    state = st.session_state
    fields = (state.get(key, ""), state.get(SWEEP_STEPS, str(DEFAULT_SWEEP_STEPS)))
    controls.action(SWEEP, f"sweep:{fields}", lambda: manager.sweep(**sweep_request(*fields)))


def _sweep_controls(manager: RunManager) -> None:
    st.markdown("**Sweep thresholds**")
    st.caption(
        "One branch per threshold from the run's step, on the run's own batches, plus the run's own "
        "settings on the same batches (the baseline) and on another batch order (the noise)."
    )
    key = _thresholds_key(manager)
    if key not in st.session_state:  # prefilled once: around the threshold and the recent norms
        recent = manager.snapshot().recent
        norms = recent["grad_norm"].to_numpy(np.float64) if len(recent) else []
        defaults = default_sweep_thresholds(manager.settings.clip_threshold, norms)
        st.session_state[key] = ", ".join(f"{value:g}" for value in defaults)
    thresholds, steps = st.columns([3, 1])
    thresholds.text_input("Thresholds to sweep", key=key, help="1 to 8 clip thresholds, by commas or spaces.")
    steps.text_input("Steps per threshold", value=str(DEFAULT_SWEEP_STEPS), key=SWEEP_STEPS,
                     help="How many steps each branch trains.")  # fmt: skip
    running = manager.fork_snapshot().sweep
    busy = running is not None and not running["done"]
    st.button(
        "Sweep thresholds", key="sweep_button", icon=":material/tune:", disabled=busy,
        on_click=_on_sweep, args=(manager, key), help="Wait for the sweep running now." if busy else None,
    )  # fmt: skip
    show_error(SWEEP)


# --- what changes as branches train (timed) ------------------------------------------------------


def _fork_status(manager: RunManager) -> None:
    forks = manager.fork_snapshot()
    _branch_list(manager, forks)
    show_error(BRANCHES)
    _sweep_status(manager, forks)


def _on_branch(manager: RunManager, command: str, branch_id: int) -> None:
    send = manager.adopt_branch if command == "adopt" else manager.discard_branch
    controls.action(BRANCHES, f"{command}:{branch_id}", lambda: send(branch_id))
    st.session_state[NEEDS_FULL_RERUN] = True  # adopted settings reach the sidebar and charts


def _branch_list(manager: RunManager, forks: ForkSnapshot) -> None:
    shown = [branch for branch in forks.forks if branch.state not in ("discarded", "adopted")]
    ended = [branch for branch in forks.forks if branch.state in ("discarded", "adopted")]
    if shown:
        st.caption(f"Branches ({forks.alive_forks} of at most {MAX_BRANCHES} running), drawn on the charts above:")
    for branch in shown:
        name = fork_charts.branch_name(branch.branch_id, branch.label, branch.fork_step)
        where = "waiting for its fork step" if branch.state == "waiting" else f"at step {branch.step:,}"
        text, adopt, discard = st.columns([6, 1, 1], vertical_alignment="center")
        text.markdown(f"**{name}** · {branch.state} · {where}" + (f" · {branch.error}" if branch.error else ""))
        key = f"{forks.run_number}.{branch.branch_id}"
        adopt.button(
            "Adopt", key=f"adopt.{key}", disabled=not manager.can_steer or branch.state not in ("running", "finished"),
            on_click=_on_branch, args=(manager, "adopt", branch.branch_id),
            help="The run continues from this branch's state and settings (recorded as an event).",
        )  # fmt: skip
        discard.button(
            "Discard", key=f"discard.{key}", disabled=not manager.can_steer or branch.state not in LIVE_BRANCH_STATES,
            on_click=_on_branch, args=(manager, "discard", branch.branch_id), help="End this branch.",
        )  # fmt: skip
    if ended:
        st.caption("Ended: " + "; ".join(f"branch {b.branch_id} ({b.label}) {b.state}" for b in ended) + ".")


def _on_use_threshold(manager: RunManager, value: float) -> None:
    def use() -> None:
        manager.set_clip_threshold(value)
        show_value(CLIP_THRESHOLD, value)

    controls.action(SWEEP, f"use_threshold:{value}", use)
    st.session_state[NEEDS_FULL_RERUN] = True  # the sidebar and the header show the new threshold


def _sweep_status(manager: RunManager, forks: ForkSnapshot) -> None:
    sweep = forks.sweep
    if sweep is None:
        return
    if not sweep["done"]:
        progress = float(sweep["progress"])
        st.progress(min(max(progress, 0.0), 1.0), text=f"Sweep {sweep['sweep_id']}: {progress:.0%} of its steps trained")
        return
    _sweep_result(manager, forks)


def _sweep_charts(forks: ForkSnapshot) -> tuple[dict, dict]:
    """The finished sweep's two charts, built once for every session."""
    sweep = forks.sweep
    names = {status.branch_id: status.label for status in forks.branches if status.sweep_id == sweep["sweep_id"]}

    def build() -> tuple[dict, dict]:
        metrics = {names[branch_id]: rows for branch_id, rows in sorted(forks.sweep_metrics.items(), key=_sweep_order(forks))}
        return (charts.vega_lite_spec(fork_charts.sweep_loss_chart(sweep)),
                charts.vega_lite_spec(fork_charts.sweep_curves_chart(metrics)))

    return _SWEEP_CHARTS.get((forks.run_number, sweep["sweep_id"]), build)


def _sweep_order(forks: ForkSnapshot):
    """Thresholds in rising order, then the baseline, then the noise branch."""
    roles = {"threshold": 0, "baseline": 1, "noise": 2}
    statuses = {status.branch_id: status for status in forks.branches}

    def order(item) -> tuple:
        status = statuses[item[0]]
        return roles.get(status.role, 3), status.clip_threshold or 0.0

    return order


def _sweep_result(manager: RunManager, forks: ForkSnapshot) -> None:
    sweep = forks.sweep
    frame = fork_charts.sweep_frame(sweep)
    loss_chart, curves_chart = _sweep_charts(forks)
    with st.container(border=True, key="sweep_result_panel"):
        st.subheader("Loss by clip threshold", anchor=False)
        noise = panels.number(sweep.get("noise_floor"))
        st.caption(
            f"Sweep {sweep['sweep_id']} from step {sweep['fork_step']:,}: the mean loss over each branch's last "
            f"quarter, on the run's own batches. The grey band is the run's own noise ({noise}): the baseline "
            "against the same settings on another batch order; a threshold inside it is labelled "
            "\"within noise\" (not better or worse than the run's)."
        )
        left, right = st.columns(2)
        with left:
            panels.draw(loss_chart)
        with right:
            panels.draw(curves_chart)
        _sweep_downloads(forks)
        header = st.columns([1, 1, 1, 1, 2])
        for column, title in zip(header, ("Clip threshold", "Mean loss", "Clip rate", "Verdict", "")):
            column.caption(title)
        for row in frame.itertuples():
            cells = st.columns([1, 1, 1, 1, 2], vertical_alignment="center")
            verdict = row.verdict or ("lowest mean loss" if row.best else "")
            if row.best and row.verdict:
                verdict = f"lowest mean loss, {row.verdict}"
            for column, text in zip(cells, (f"{row.clip_threshold:g}", panels.number(row.mean_loss),
                                            panels.number(row.clip_rate, "{:.0%}"), verdict)):  # fmt: skip
                column.markdown(text or "–")
            cells[4].button(
                "Use this threshold", key=f"use_threshold.{forks.run_number}.{sweep['sweep_id']}.{row.branch_id}",
                disabled=not manager.can_steer or not manager.is_active, on_click=_on_use_threshold,
                args=(manager, float(row.clip_threshold)), help=f"Set the run's clip threshold to {row.clip_threshold:g}.",
            )  # fmt: skip


def _sweep_downloads(forks: ForkSnapshot) -> None:
    """The finished sweep's table as CSV and its "Loss by clip threshold" chart as PNG and SVG,
    each made only when its button is clicked."""
    sweep = forks.sweep
    stem = f"clipwatch-run-{forks.run_number}-sweep-{sweep['sweep_id']}"
    files = (
        ("Sweep table (CSV)", lambda: export.sweep_csv(sweep), "csv", "text/csv"),
        ("Chart (PNG)", lambda: export.chart_png(fork_charts.sweep_loss_chart(sweep)), "png", "image/png"),
        ("Chart (SVG)", lambda: export.chart_svg(fork_charts.sweep_loss_chart(sweep)), "svg", "image/svg+xml"),
    )
    for column, (label, data, extension, mime) in zip(st.columns(len(files)), files):
        column.download_button(
            label, data=data, file_name=f"{stem}.{extension}", mime=mime, on_click="ignore", width="stretch",
            key=f"sweep_{extension}.{forks.run_number}.{sweep['sweep_id']}", icon=":material/download:",
        )  # fmt: skip
