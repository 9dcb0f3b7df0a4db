"""The History and Compare tabs: recorded runs, read-only, from the run database.

History lists every recorded run; opening one draws it with the live view's charts (the run is
loaded into a `MetricsStore` by the manager, so the same builders draw it), with the threshold
advisor's ghost lines, exports, and rename and delete (delete asks first); a branch is listed
under the run it was forked from, and "Compare with its branches" picks them for Compare, which
draws a lineage from its fork step. Compare overlays up to six runs, coloured by run, above a table of their configs and final numbers. Both draw the
validation loss on the loss chart and offer a run's other recorded metrics (a fit's epoch logs:
accuracy, val_accuracy, ...) in a select box beside their chart, and a "Steps shown" window and a
drag-to-zoom on their charts over steps (`panels.ZoomPlace`, kept per session and run).

Nothing here loops, sleeps or starts a thread; commands go through callbacks to the manager.
"""

from __future__ import annotations

import datetime

import pandas as pd
import streamlit as st

from dashboard import charts, comparison, controls, export, lineage, panels, step_range
from dashboard.run_library import RecordedRun
from dashboard.run_manager import RunManager

# Session state (private to these tabs).
_SELECTED = "_history_selected"  # the run id History shows
_SELECT_VERSION = "_history_select_version"  # bumps when the selection is set from code
_CONFIRM_DELETE = "_history_confirm_delete"  # the run id awaiting "Yes, delete"
_ERRORS = "_history_errors"  # where -> message, shown until the next command
_NOTICE = "_history_notice"  # a one-off success message ("Deleted run 3.")
_COMPARED = "_compare_selected"  # the run ids Compare overlays
_COMPARE_VERSION = "_compare_version"
HISTORY_LOG_SCALE = "history.log_scale"
COMPARE_LOG_SCALE = "compare.log_scale"
COMPARE_FROM_FORK = "compare.from_fork_step"
HISTORY_SMOOTHING = "history.smoothing"
COMPARE_SMOOTHING = "compare.smoothing"


def _errors() -> dict[str, str]:
    return st.session_state.setdefault(_ERRORS, {})


def _show_error(where: str) -> None:
    controls.show_error(where, _ERRORS)


def _command(where: str, action) -> None:
    st.session_state[_ERRORS] = {}
    try:
        action()
    except (ValueError, RuntimeError) as error:
        _errors()[where] = str(error)


def _no_database(manager: RunManager) -> bool:
    status = manager.database_status()
    if status.available:
        return False
    st.info(
        "There is no run database, so there is no history to show: runs are kept in memory only. "
        "Set a database path under **Settings** in the sidebar.",
        icon=":material/database:",
    )
    return True


def _run_label(runs: pd.DataFrame):
    names = dict(zip(runs["run_id"].astype(int), runs["name"].astype(str)))
    return lambda run_id: f"{names.get(int(run_id), '?')}  (#{int(run_id)})"


# --- History -------------------------------------------------------------------------------------


def render_history(manager: RunManager) -> None:
    """The History tab."""
    if _no_database(manager):
        return
    state = st.session_state
    notice = state.pop(_NOTICE, None)
    if notice:
        st.success(notice, icon=":material/check_circle:")
    runs = lineage.lineage_order(manager.list_runs())  # each run's branches under it
    if len(runs) == 0:
        st.info(
            f"No recorded runs yet in `{manager.database_status().path}`. Every run you start "
            "(and both sides of an A/B race) is recorded here.",
            icon=":material/history:",
        )
        return
    st.dataframe(
        comparison.history_table(runs),
        hide_index=True,
        width="stretch",
        height=min(36 * (len(runs) + 1) + 2, 300),
        column_config={
            "Threshold": st.column_config.NumberColumn(format="%.4g"),
            "Final loss": st.column_config.NumberColumn(format="%.4g"),
            "Clip rate": st.column_config.NumberColumn(format="percent"),
            "Steps": st.column_config.NumberColumn(format="localized"),
        },
    )
    run_ids = [int(run_id) for run_id in runs["run_id"]]
    selected = state.get(_SELECTED)
    if selected not in run_ids:
        selected = run_ids[0]  # the newest (that is no branch)
    key = f"history.run@{state.get(_SELECT_VERSION, 0)}"
    chosen = st.selectbox(
        "Open a run",
        run_ids,
        index=run_ids.index(selected),
        format_func=_run_label(runs),
        key=key,
        help="Newest first, each run's branches under it. A recorded run opens read-only, drawn like the live view.",
    )
    state[_SELECTED] = selected if chosen is None else int(chosen)
    try:
        recorded = manager.recorded_run(state[_SELECTED])
    except (ValueError, RuntimeError) as error:
        st.error(str(error), icon=":material/error:")
        return
    _lineage_line(runs, recorded)
    _recorded_run_view(manager, recorded)


def _lineage_line(runs: pd.DataFrame, recorded: RecordedRun) -> None:
    """Where the run came from and what was forked from it, with a way to overlay them."""
    info, run_id = recorded.info, recorded.run_id
    parts = []
    source = lineage.forked_from(info.get("parent_run_id"), info.get("fork_step"))
    if source:
        parts.append(f"Forked from {source}; its steps go on from there.")
    branches = lineage.branches_of(runs, run_id)
    if branches:
        parts.append(f"Branches: {', '.join(f'#{branch}' for branch in branches)}.")
    if not parts:
        return
    text, button = st.columns([4, 1], vertical_alignment="center")
    text.caption(" ".join(parts), help="A branch starts from a snapshot of its parent and trains on the same batches.")
    if branches:
        button.button(
            "Compare with its branches", key=f"history.compare_branches.{run_id}", on_click=_compare_family,
            args=(lineage.with_branches(runs, run_id, comparison.MAX_RUNS),), width="stretch",
            help=f"Overlay this run and its branches on the Compare tab (up to {comparison.MAX_RUNS}).",
        )  # fmt: skip


def _compare_family(run_ids: list[int]) -> None:
    state = st.session_state
    state[_COMPARED] = list(run_ids)
    state[_COMPARE_VERSION] = state.get(_COMPARE_VERSION, 0) + 1  # a fresh widget with them picked
    state[_NOTICE] = f"Runs {', '.join(f'#{run_id}' for run_id in run_ids)} are picked on the Compare tab."


def _recorded_run_view(manager: RunManager, recorded: RecordedRun) -> None:
    info = recorded.info
    run_id = recorded.run_id
    st.subheader(str(info["name"]), anchor=False)
    created = datetime.datetime.fromtimestamp(float(info["created_at"])).strftime("%Y-%m-%d %H:%M:%S")
    st.caption(
        f"**#{run_id}** · task `{info['task']}` · policy `{info['policy']}` · threshold "
        f"{'off' if info['policy'] == 'none' else format(float(info['clip_threshold']), 'g') + ' at the start'} · learning rate "
        f"{float(info['learning_rate']):g} · batch {int(info['batch_size'])} · seed "
        f"{int(info['seed'])} · started {created} · read-only"
    )
    if info.get("error"):
        st.error(f"Run {run_id} {info['state']}: {info['error']}", icon=":material/error:")
    cells = (
        ("State", str(info["state"]).capitalize()),
        ("Steps", f"{int(info['steps'] or 0):,}"),
        ("Final loss", panels.number(info["final_loss"])),
        ("Clip rate", panels.number(info["clip_rate"], "{:.1%}")),
        ("Non-finite", f"{recorded.nonfinite_steps:,}"),
    )
    validation = charts.latest_validation(recorded.evaluations)
    if "val_loss" in validation:
        cells += (("Val loss", panels.number(validation["val_loss"])),)
    for column, (label, value) in zip(st.columns(len(cells)), cells):
        column.metric(label, value, border=True)

    log_scale = st.toggle("Log-scale y axes", value=False, key=HISTORY_LOG_SCALE)
    smoothing = st.slider(
        "Loss smoothing", min_value=0.0, max_value=charts.MAX_SMOOTHING, value=0.0, step=0.01,
        key=HISTORY_SMOOTHING, help="An exponential moving average of the loss (TensorBoard's); 0 is off.",
    )  # fmt: skip
    place = panels.ZoomPlace("history", run_id)
    panels.steps_shown_control(place, st.columns([1, 3])[0])
    with panels.panel(
        "history_advisor_panel",
        "Threshold advisor",
        "The run's recorded pre-clip norms replayed: the clip rate a global-norm threshold would "
        "have had, and (ghost lines on the chart below) the thresholds autoclip and zclip would "
        "have chosen.",
    ):
        try:
            with st.spinner("Replaying the recorded norms through autoclip and zclip…"):
                advice = manager.recorded_advice(run_id)
        except (ValueError, RuntimeError) as error:
            st.error(str(error), icon=":material/error:")
            advice, proposed = None, None
        else:
            proposed = panels.advisor_readout(
                manager, advice, f"history.proposed@{run_id}", recorded.clip_threshold
            )
    ghosts = panels.ghosts_frame(advice)

    def build_figures(shown: step_range.StepRange | None = None) -> dict:
        return panels.run_figures(
            recorded.metrics_view, recorded.layer_view, recorded.events, log_scale, ghosts, recorded.evaluations,
            smoothing, shown,
        )

    if len(recorded.metrics_view) == 0:
        st.info("This run recorded no steps.", icon=":material/info:")
    else:
        # The charts draw the run as the library holds it (its newest steps one by one, older
        # ones in buckets): a zoom into old steps of a long run shows those buckets.
        shown = panels.shown_steps(place, step_range.covered_steps(recorded.metrics_view))
        panels.zoom_bar(place, shown, zoomed=panels.session_zoom(place) is not None)
        _draw_run(build_figures(shown), recorded, proposed, log_scale, place)
        with st.expander("Export", icon=":material/download:"):
            # Each download builds its own data when clicked (in a thread of Streamlit's own).
            panels.export_buttons(
                f"history.export.{run_id}",
                str(info["name"]),
                metrics=lambda: manager.recorded_metrics(run_id),
                figures=build_figures,
                report=lambda: recorded_report(recorded, build_figures()),
                chart_names=panels.CHART_NAMES,
            )
    _manage(manager, recorded)


def _draw_run(figures, recorded: RecordedRun, proposed: float | None, log_scale: bool,
              zoom: panels.ZoomPlace | None = None) -> None:  # fmt: skip
    norms = charts.recent_norms(recorded.recent)
    histogram = charts.gradient_norm_histogram(norms, proposed, log_scale=log_scale, threshold_label="proposed")
    panels.panel_rows((
        (("history_gradient_norm_panel", "Gradient norm",
          "Before and after clipping, with the threshold, clip events and the advisor's ghost "
          "thresholds (dashed, faded).", figures["Gradient norm"]),),
        (("history_loss_panel", "Loss and commands",
          "Mean loss per point; every command as a rule; the validation loss dashed red, where the run has it.",
          figures["Loss and commands"]),
         ("history_clip_rate_panel", "Clip rate",
          f"Share of clipped steps over a rolling window of {charts.CLIP_RATE_WINDOW} steps.", figures["Clip rate"])),
        (("history_layer_panel", "Gradient norm per layer", "Each trainable variable's norm before clipping.",
          figures["Gradient norm per layer"]),
         ("history_histogram_panel", "Last gradient norms",
          f"The run's last {len(norms):,} steps before clipping, with the proposed threshold.", histogram)),
    ), zoom=zoom)  # fmt: skip
    metric_panel("history_metric_panel", recorded.evaluations, f"history.metric@{recorded.run_id}")
    panels.events_panel("history_events_panel", charts.events_table(recorded.events), "Every command, newest first")


def metric_panel(key: str, evaluations: pd.DataFrame, select_key: str) -> None:
    """The run's other recorded metrics (`charts.metric_names`: a fit's `accuracy`,
    `val_accuracy`, ...): a select box beside the chart of the chosen one; nothing without any."""
    _metric_select_panel(
        key, "Every metric the run recorded besides the loss, at the step it was recorded (a fit's: "
        "each epoch's end).", charts.metric_names(evaluations), select_key,
        lambda name: charts.metric_chart(evaluations, name),
    )  # fmt: skip


def _metric_select_panel(key: str, caption: str, metrics: list[str], select_key: str, chart_of) -> None:
    """A "Recorded metrics" panel: a select box of `metrics` beside `chart_of(chosen)`; nothing
    when `metrics` is empty."""
    if not metrics:
        return
    if st.session_state.get(select_key) not in metrics:
        st.session_state.pop(select_key, None)  # e.g. another run without it: its first instead
    with panels.panel(key, "Recorded metrics", caption):
        choice, chart = st.columns([1, 4])
        metric = choice.selectbox("Metric", metrics, key=select_key, help="The validation metrics (`val_`) dashed.")
        with chart:
            panels.draw(chart_of(metric))


def _manage(manager: RunManager, recorded: RecordedRun) -> None:
    run_id, name = recorded.run_id, str(recorded.info["name"])
    state = st.session_state
    locked = not manager.can_steer  # a viewer (dashboard.access): rename and delete are disabled
    with st.container(border=True, key="history_manage_panel"):
        st.markdown("**Rename or delete**")
        name_key = f"history.name@{run_id}:{name}"
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        left.text_input("Run name", value=name, key=name_key, max_chars=200, disabled=locked)

        def rename() -> None:
            _command("manage", lambda: manager.rename_run(run_id, state[name_key]))

        right.button("Rename", key="history.rename", on_click=rename, width="stretch", disabled=locked)

        def ask() -> None:
            state[_ERRORS] = {}
            state[_CONFIRM_DELETE] = run_id

        def cancel() -> None:
            state.pop(_CONFIRM_DELETE, None)

        def delete() -> None:
            def act() -> None:
                manager.delete_run(run_id)
                state[_NOTICE] = f"Deleted run #{run_id} ({name})."
                state.pop(_SELECTED, None)
                state[_SELECT_VERSION] = state.get(_SELECT_VERSION, 0) + 1

            state.pop(_CONFIRM_DELETE, None)
            _command("manage", act)

        if state.get(_CONFIRM_DELETE) == run_id:
            steps = int(recorded.info["steps"] or 0)
            st.warning(
                f"Delete run #{run_id} ({name}) and its {steps:,} recorded steps? This cannot be undone.",
                icon=":material/warning:",
            )
            yes, no = st.columns(2)
            yes.button(
                "Yes, delete", key="history.confirm_delete", type="primary", on_click=delete, width="stretch",
                disabled=locked,
            )
            no.button("Cancel", key="history.cancel_delete", on_click=cancel, width="stretch")
        else:
            st.button(
                "Delete run…",
                key="history.delete",
                on_click=ask,
                icon=":material/delete:",
                help="Asks for confirmation first.",
                disabled=locked,
            )
        _show_error("manage")


def recorded_report(recorded: RecordedRun, figures) -> str:
    """The HTML report of a recorded run (its config, final numbers, charts and events)."""
    info = recorded.info
    config = info.get("config") or {}
    policy = info["policy"]
    created = datetime.datetime.fromtimestamp(float(info["created_at"])).strftime("%Y-%m-%d %H:%M:%S")
    return export.html_report(
        title=str(info["name"]),
        config={
            "Run id": recorded.run_id,
            "Name": info["name"],
            "Task": info["task"],
            "Policy": policy,
            "Policy parameters": (config.get("policy_params") or {}).get(policy, {}),
            "Clip threshold (at the start)": float(info["clip_threshold"]),
            "Learning rate": float(info["learning_rate"]),
            "Batch size": int(info["batch_size"]),
            "Seed": int(info["seed"]),
            "Started": created,
        },
        summary={
            "State": info["state"],
            "Steps": int(info["steps"] or 0),
            "Final loss": info["final_loss"],
            "Clip rate": info["clip_rate"],
            "Non-finite steps": recorded.nonfinite_steps,
            "Clip threshold at the end": recorded.clip_threshold,
            **charts.latest_validation(recorded.evaluations),  # val_loss, val_<metric>
            "Error": info.get("error") or "",
        },
        charts=figures,
        events=charts.events_table(recorded.events),
    )


# --- Compare -------------------------------------------------------------------------------------


def render_compare(manager: RunManager) -> None:
    """The Compare tab."""
    if _no_database(manager):
        return
    state = st.session_state
    runs = manager.list_runs()
    if len(runs) == 0:
        st.info("No recorded runs yet to compare.", icon=":material/compare_arrows:")
        return
    run_ids = [int(run_id) for run_id in runs["run_id"]]
    chosen = [run_id for run_id in state.get(_COMPARED, []) if run_id in run_ids]
    if chosen != state.get(_COMPARED, []):  # a run was deleted: a fresh widget without it
        state[_COMPARE_VERSION] = state.get(_COMPARE_VERSION, 0) + 1
    key = f"compare.runs@{state.get(_COMPARE_VERSION, 0)}"
    chosen = st.multiselect(
        "Runs to compare",
        run_ids,
        default=chosen,
        format_func=_run_label(runs),
        max_selections=comparison.MAX_RUNS,
        key=key,
        placeholder=f"Pick up to {comparison.MAX_RUNS} runs",
        help="Their loss, gradient norm and clip rate are overlaid, coloured by run.",
    )
    state[_COMPARED] = [int(run_id) for run_id in chosen]
    if not chosen:
        st.info("Pick runs above to draw them; two or more are overlaid.", icon=":material/compare_arrows:")
        return
    recorded = []
    for run_id in chosen:
        try:
            recorded.append(manager.recorded_run(run_id))
        except (ValueError, RuntimeError) as error:
            st.error(str(error), icon=":material/error:")
            return
    names = comparison.unique_run_names([str(run.info["name"]) for run in recorded], [run.run_id for run in recorded])
    views = {name: run.metrics_view for name, run in zip(names, recorded)}
    split = lineage.split_step([{**run.info, "run_id": run.run_id} for run in recorded])
    place = panels.ZoomPlace("compare", tuple(run.run_id for run in recorded))
    toggles = st.columns([1, 1, 2], vertical_alignment="center")
    with toggles[0]:
        log_scale = st.toggle("Log-scale y axes", value=False, key=COMPARE_LOG_SCALE)
    panels.steps_shown_control(place, toggles[2])
    smoothing = st.slider(
        "Loss smoothing", min_value=0.0, max_value=charts.MAX_SMOOTHING, value=0.0, step=0.01,
        key=COMPARE_SMOOTHING, help="Each run's loss smoothed on its own (TensorBoard's moving average); 0 is off.",
    )  # fmt: skip
    if split is not None and toggles[1].toggle(
        "From the fork step", value=True, key=COMPARE_FROM_FORK,
        help=f"Draw from step {split:,}, where a compared run was forked from another: before it they are one run.",
    ):  # fmt: skip
        views = {name: view[view["step"] > split] for name, view in views.items()}
    shown = panels.shown_steps(place, comparison.covered_steps(views))
    validation = comparison.runs_validation_frame({name: run.evaluations for name, run in zip(names, recorded)})
    from_step = None
    if shown is not None:  # the rows before the range only fill the clip rate's rolling window
        from_step, lookback = shown.first, step_range.with_lookback(shown, charts.CLIP_RATE_WINDOW)
        views = {name: step_range.crop(view, lookback) for name, view in views.items()}
        validation = step_range.crop(validation, shown)
    long = comparison.runs_long_frame(views)
    figures = {
        "Gradient norm": comparison.runs_gradient_norm_chart(long, log_scale=log_scale, from_step=from_step),
        "Loss": comparison.runs_loss_chart(long, log_scale=log_scale, validation=validation, from_step=from_step,
                                           smoothing=smoothing),
        "Clip rate": comparison.runs_clip_rate_chart(long, from_step=from_step),
    }
    panels.zoom_bar(place, shown, zoomed=panels.session_zoom(place) is not None)
    panels.panel_rows((
        (("compare_gradient_norm_panel", "Gradient norm before clipping",
          "The largest norm per point, with each run's threshold dashed in its colour.", figures["Gradient norm"]),),
        (("compare_loss_panel", "Loss", "Mean loss per point; validation loss dashed, where a run has it.",
          figures["Loss"]),
         ("compare_clip_rate_panel", "Clip rate", f"Rolling over {charts.CLIP_RATE_WINDOW} steps.",
          figures["Clip rate"])),
    ), zoom=place)  # fmt: skip
    _compare_metric(names, recorded)
    infos = [
        {**run.info, "nonfinite_steps": run.nonfinite_steps,
         "val_loss": charts.latest_validation(run.evaluations).get("val_loss")}
        for run in recorded
    ]  # fmt: skip
    table = comparison.runs_config_table(infos, names)
    with panels.panel("compare_table_panel", "Configs and final numbers", "One row per run."):
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                "Threshold": st.column_config.NumberColumn(format="%.4g"),
                "Learning rate": st.column_config.NumberColumn(format="%.4g"),
                "Final loss": st.column_config.NumberColumn(format="%.4g"),
                "Final val loss": st.column_config.NumberColumn(format="%.4g"),
                "Clip rate": st.column_config.NumberColumn(format="percent"),
            },
        )


def _compare_metric(names: list[str], recorded: list[RecordedRun]) -> None:
    """The compared runs' other recorded metrics (accuracy, val_accuracy, ...), one at a time."""
    evaluations = {name: run.evaluations for name, run in zip(names, recorded)}
    _metric_select_panel(
        "compare_metric_panel", "Each run's metric at the step it was recorded, coloured by run.",
        charts.metric_names(pd.concat(list(evaluations.values()), ignore_index=True)), "compare.metric",
        lambda metric: comparison.runs_metric_chart(
            comparison.runs_evaluation_frame(evaluations, metric, "value"), metric, names
        ),
    )  # fmt: skip
