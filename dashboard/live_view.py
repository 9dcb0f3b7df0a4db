"""The Live tab: every chart of the current run in one timed fragment, the advisor and exports under it.

The fragment reads one `RunSnapshot` per refresh (every `controls.REFRESH_SECONDS` while a run is
running or paused, stretched when more than three tabs watch: dashboard/viewers.py; no timer
otherwise), computes every chart first and then draws them in one go. When the run, its state or
its settings change (from any tab), it reruns the whole page so the controls follow. Nothing here
loops, sleeps or starts a thread.
"""

from __future__ import annotations

import datetime
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from streamlit import dataframe_util

from dashboard import (
    advice, attached_view, chart_specs, charts, controls, export, fork_charts, fork_view, panels, shared_charts, step_range,
)
from dashboard.controls import (
    ADVISOR,
    CLIP_THRESHOLD,
    FINGERPRINT,
    LOG_SCALE,
    SMOOTHING,
    NEEDS_FULL_RERUN,
    POLICY,
    RUN,
    SUGGEST_PERCENTILE,
    WHAT_IF_THRESHOLD,
    control_value,
)
from dashboard.live_forks import ForkSnapshot
from dashboard.live_run import RunSnapshot
from dashboard.operator_controls import session_run_manager
from dashboard.run_manager import RunManager
from dashboard import viewers as viewers_module
from dashboard.step_range import StepRange
from training.policies import validate_clip_threshold

# The policies for which a global-norm threshold read off the histogram means what it says.
THRESHOLD_POLICIES = ("global_norm", "per_tensor_norm", "zclip")
VIEWER_IDLE_REFRESH_SECONDS = 2.0


FAST_REFRESH = "_live_fast_refresh"  # the fragment redraws fast until the run's first step
REFRESH = "_live_refresh"  # (usual, stretched) refresh as this session's last full run set them
VIEWER_ID = "_live_viewer_id"
# The step charts of a window or a zoom: shared by the sessions that show the same steps, apart
# from the whole-run charts so that many sessions' zooms cannot push those out.
RANGED = shared_charts.SharedCharts()


def zoom_place(run_number: int) -> panels.ZoomPlace:
    """Where a session keeps its zoom of the live run `run_number` and its "Steps shown"."""
    return panels.ZoomPlace("live", run_number)


def render(manager: RunManager) -> None:
    """The Live tab: the timed live view, then (once there is a run) the advisor and exports.

    When another process records a live run in the database, a selector above offers it; an
    attached run is drawn from the database and steered through it (`attached_view`).
    """
    with st.container():  # one slot, whether or not there is a selector (see _live_view)
        attached = attached_view.select_live_run(manager)
    if attached is not None:
        attached_view.render_attached(manager, attached)
        fork_view.attached_note()
        return
    refresh = controls.REFRESH_SECONDS if manager.is_active else None
    waiting = manager.is_active and manager.snapshot().status.step == 0
    st.session_state[FAST_REFRESH] = waiting
    if waiting:
        refresh = controls.FIRST_STEP_REFRESH_SECONDS
    if refresh is None and not manager.can_steer:
        # A viewer cannot start a run itself: it looks now and then for the operator's.
        refresh = VIEWER_IDLE_REFRESH_SECONDS
    if manager.run_number:  # outside the timed fragment, as every control
        panels.steps_shown_control(zoom_place(manager.run_number), st.columns([1, 3])[0])
    # The timed fragment's refresh, stretched with the number of tabs watching (dashboard/viewers.py).
    viewers = manager.viewers.seen(_viewer_id())
    stretched = None if refresh is None else viewers_module.refresh_seconds(refresh, viewers)
    st.session_state[REFRESH] = (refresh, stretched)
    st.fragment(_live_view, run_every=stretched)()
    if manager.run_number:
        fork_view.render(manager)
        _live_tools(manager)


def _on_apply_suggested(manager: RunManager, value: float) -> None:
    def apply() -> None:
        controls.send_or_check(manager.is_active, manager.set_clip_threshold, validate_clip_threshold, value)
        controls.show_value(CLIP_THRESHOLD, value)

    controls.action(RUN, "apply_suggested", apply)
    st.session_state[NEEDS_FULL_RERUN] = True  # the button sits in the fragment: redraw all


def _viewer_id() -> str:
    """This session's id among the tabs watching (kept in its session state)."""
    return st.session_state.setdefault(VIEWER_ID, uuid.uuid4().hex)


def _live_view() -> None:
    manager = session_run_manager()
    if st.session_state.pop(NEEDS_FULL_RERUN, False) or (
        manager.fingerprint() != st.session_state.get(FINGERPRINT)
    ):
        st.rerun(scope="app")  # the controls (and the refresh timer) must follow the run
    snapshot = manager.snapshot()
    if st.session_state.get(FAST_REFRESH) and snapshot.status is not None and snapshot.status.step > 0:
        st.rerun(scope="app")  # the first step is here: back to the usual refresh
    refresh, stretched = st.session_state.get(REFRESH, (None, None))
    if refresh is not None and viewers_module.refresh_seconds(refresh, manager.viewers.seen(_viewer_id())) != stretched:
        st.rerun(scope="app")  # tabs came or went: the timer follows
    # Everything is computed first and then drawn in one go: elements still waiting after half
    # a second of a rerun fade, so spreading the drawing over the computing would flicker.
    ghosts = panels.ghosts_frame(manager.live_advice())
    forks = manager.fork_snapshot()
    place = zoom_place(snapshot.run_number)
    shown = panels.shown_steps(place, step_range.covered_steps(snapshot.metrics_view))
    figures = _figures(snapshot, ghosts, forks, shown, _range_reader(manager, snapshot)) if len(snapshot.metrics_view) else None
    # Messages that come and go sit in one container, so the header below has one place in the
    # page whatever they say: a header drawn by a timed rerun that a full rerun cut short then
    # lands where the new one goes and is replaced by it. CI once saw a second header, still
    # "Running", beside the new one after Stop was pressed during a refresh.
    with st.container():
        _run_line(snapshot)
        _failure(snapshot)
        _write_warning(snapshot)
    _headline(snapshot)
    if snapshot.run_number == 0:
        st.info(
            "No run yet. Pick a task and a clipping policy in the sidebar, then press **Start**. "
            "The first step takes a moment while TensorFlow builds the model and traces its step.",
            icon=":material/play_circle:",
        )
        return
    if figures is None:
        if snapshot.is_active:
            st.info(_waiting_for(snapshot), icon=":material/hourglass_top:")
        return
    if snapshot.is_active and snapshot.status.compiling:
        st.caption(
            ":material/hourglass_top: Compiling the full training step in the background (every "
            "policy, XLA); the run trains on a quick step meanwhile, losing nothing at the switch."
        )
    _charts(manager, figures, place, shown)


def _range_reader(manager: RunManager, snapshot: RunSnapshot):
    """A function reading a range of the snapshot's run at the finest resolution there is: the
    run's store while it is the current run (`RunManager.view_range`; the snapshot's whole-run
    view holds only its newest steps one by one), else the snapshot's view, cropped."""

    def read(steps: StepRange) -> tuple:
        views = manager.view_range(snapshot.run_number, steps.first, steps.last)
        return step_range.crop_views(snapshot.metrics_view, snapshot.layer_view, steps) if views is None else views

    return read


def _waiting_for(snapshot: RunSnapshot) -> str:
    """What a started run waits for before its first step, and for how long so far."""
    waited = f" ({time.time() - snapshot.started_at:.0f} s)" if snapshot.started_at else ""
    if snapshot.loading_tensorflow:
        return (
            f"Loading TensorFlow{waited}: the server imports it once, in the background, after "
            "it starts. The run begins as soon as it is loaded."
        )
    return f"Building the model and tracing its first training step{waited}…"


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

    cells = (
        ("State", (status.state if status else "no run").capitalize(), None),
        ("Step", f"{status.step:,}" if status else "0", "Steps completed."),
        ("Steps/s", f"{status.steps_per_second:,.0f}" if status else "0", "Over the last second."),
        ("Loss", panels.number(numbers.loss), "Of the newest finite step."),
        ("Grad norm", panels.number(numbers.grad_norm), "The newest step's global L2 norm, before clipping."),
        (
            "Clip rate",
            panels.number(numbers.clip_rate, "{:.0%}"),
            f"Share of the last {charts.CLIP_RATE_WINDOW} steps that were clipped.",
        ),
        (
            "Non-finite",
            f"{status.nonfinite_steps:,}" if status else "0",
            "Steps whose loss or gradient was NaN or inf; they change nothing.",
        ),
        ("Threshold", threshold, threshold_help),
    )
    validation = charts.latest_validation(snapshot.evaluations)
    if "val_loss" in validation:  # only for tasks with validation data
        cells += (("Val loss", panels.number(validation["val_loss"]),
                   "Loss on the task's validation data at the last evaluation."),)  # fmt: skip
    for column, (label, value, help_text) in zip(st.columns(len(cells)), cells):
        column.metric(label, value, help=help_text, border=True)


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


def _what_if_numbers(snapshot: RunSnapshot) -> tuple[_WhatIf, tuple]:
    """The what-if numbers, and the histogram's arguments after the norms (threshold, suggested,
    log scale, label): with the snapshot, they key the shared charts."""
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
    histogram = (threshold, suggested, bool(state.get(LOG_SCALE)), "threshold" if chosen is None else "what-if")
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


def _streamlit_ready(spec: dict) -> dict:
    """`spec` with its datasets already in the Arrow bytes Streamlit sends (it converts each
    dataset on every call otherwise: once per session per refresh)."""
    datasets = {name: dataframe_util.convert_anything_to_arrow_bytes(rows) for name, rows in spec["datasets"].items()}
    return {**spec, "datasets": datasets}


def session_smoothing() -> float:
    """This session's loss smoothing (the View slider; 0 when unset or not a weight)."""
    try:
        return charts.validate_smoothing(st.session_state.get(SMOOTHING, 0.0))
    except ValueError:
        return 0.0


def _step_specs(metrics: pd.DataFrame, layers: pd.DataFrame, events: pd.DataFrame, evaluations: pd.DataFrame,
                log_scale: bool, smoothing: float, lookback: pd.DataFrame | None = None,
                from_step: int | None = None) -> dict:  # fmt: skip
    """The four charts drawn over steps, as Vega-Lite dicts; the clip rate from `lookback` (the
    rows before `from_step` too, when a range is shown) so its first points count a full window."""
    return {
        "gradient_norm": chart_specs.gradient_norm_spec(metrics, log_scale=log_scale),
        "loss": chart_specs.loss_spec(metrics, events, log_scale=log_scale, evaluations=evaluations, smoothing=smoothing),
        "clip_rate": chart_specs.clip_rate_spec(metrics if lookback is None else lookback, from_step=from_step),
        "layers": chart_specs.layer_norm_spec(layers),
    }


def _drawn_branches(forks: ForkSnapshot | None, shown: StepRange | None = None) -> tuple[dict, dict]:
    """The forks to draw (name -> rows, name -> colour), their rows cropped to `shown`."""
    if forks is None or not forks.drawn_forks:
        return {}, {}
    rows, colors = fork_charts.drawn_branches(forks.drawn_forks, forks.fork_metrics)
    return {name: step_range.crop(frame, shown) for name, frame in rows.items()}, colors


def _shared_figures(snapshot: RunSnapshot, log_scale: bool, histogram: tuple, smoothing: float = 0.0,
                    forks: ForkSnapshot | None = None, step_charts: bool = True) -> dict:  # fmt: skip
    """The charts every session with these view settings draws, built once per store change
    (dashboard/shared_charts.py) as Vega-Lite dicts (dashboard/chart_specs.py), with the run's
    forks drawn on them (dashboard/fork_charts.py). `step_charts=False`: the histogram and the
    events only (a session showing a range draws its step charts from `_ranged_figures`)."""
    status = snapshot.status
    drawn = () if forks is None else forks.drawn_forks
    # The settings hold a dict (unhashable): their repr stands for them.
    key = (snapshot.run_number, status.step, status.state, len(snapshot.events), len(snapshot.evaluations),
           repr(snapshot.settings), log_scale, histogram, smoothing,
           tuple((branch.branch_id, branch.step, branch.state) for branch in drawn), step_charts)  # fmt: skip

    def build() -> dict:
        threshold, suggested, histogram_log_scale, label = histogram
        specs = {}
        if step_charts:
            specs = _step_specs(snapshot.metrics_view, snapshot.layer_view, snapshot.events, snapshot.evaluations,
                                log_scale, smoothing)  # fmt: skip
        specs["histogram"] = chart_specs.gradient_norm_histogram_spec(
            charts.recent_norms(snapshot.recent), threshold, suggested, log_scale=histogram_log_scale,
            threshold_label=label,
        )
        if drawn and step_charts:
            specs = fork_charts.live_specs_with_branches(specs, *_drawn_branches(forks), log_scale=log_scale)
        shared = {name: _streamlit_ready(spec) for name, spec in specs.items()}
        shared["events"] = charts.events_table(snapshot.events)
        return shared

    return shared_charts.LIVE.get(key, build)


def _ranged_figures(snapshot: RunSnapshot, shown: StepRange, read, log_scale: bool, smoothing: float = 0.0,
                    forks: ForkSnapshot | None = None) -> dict:  # fmt: skip
    """The step charts of steps `shown` only (a window or a zoom), read by `read(steps)` as
    finely as the store holds them; also `view`, the metrics drawn. Shared (`RANGED`) by the
    sessions showing the same steps."""
    drawn = () if forks is None else forks.drawn_forks
    newest = step_range.covered_steps(snapshot.metrics_view)[1]
    # A zoom that ends before the newest step no longer changes: built once, it is a cache hit
    # on every refresh after that, and the browser gets the same chart (its brush stays put).
    key = (snapshot.run_number, shown, min(newest, shown.last), len(snapshot.events), len(snapshot.evaluations),
           log_scale, smoothing, tuple((branch.branch_id, branch.step, branch.state) for branch in drawn))  # fmt: skip

    def build() -> dict:
        lookback, lookback_layers = read(step_range.with_lookback(shown, charts.CLIP_RATE_WINDOW))
        metrics, layers = step_range.crop_views(lookback, lookback_layers, shown)
        specs = _step_specs(metrics, layers, step_range.crop(snapshot.events, shown),
                            step_range.crop(snapshot.evaluations, shown), log_scale, smoothing, lookback, shown.first)  # fmt: skip
        if drawn:
            specs = fork_charts.live_specs_with_branches(specs, *_drawn_branches(forks, shown), log_scale=log_scale)
        ranged = {name: _streamlit_ready(spec) for name, spec in specs.items()}
        ranged["view"] = metrics
        return ranged

    return RANGED.get(key, build)


def _figures(snapshot: RunSnapshot, ghosts=None, forks: ForkSnapshot | None = None, shown: StepRange | None = None,
             read=None) -> _Figures:  # fmt: skip
    """Every chart of the live view; `ghosts`: the advisor's thresholds to draw (dashed);
    `forks`: the run's branches, drawn on the parent's charts; `shown`: the steps the step
    charts show (None: the whole run), read by `read(steps)` (`_range_reader`)."""
    log_scale = bool(st.session_state.get(LOG_SCALE))
    smoothing = session_smoothing()
    what_if, histogram = _what_if_numbers(snapshot)
    shared = _shared_figures(snapshot, log_scale, histogram, smoothing, forks, step_charts=shown is None)
    steps = shared if shown is None else _ranged_figures(snapshot, shown, read, log_scale, smoothing, forks)
    view = snapshot.metrics_view if shown is None else steps["view"]
    per_point = math.ceil(int(view["steps"].sum()) / charts.LINE_POINTS) if len(view) else 1
    resolution = (
        "one point per step"
        if per_point <= 1
        else f"one point per {per_point:,} steps: its mean, in a band from its smallest to its "
        "largest norm, so spikes stay visible"
    )
    gradient_norm = steps["gradient_norm"]
    if ghosts is not None and len(ghosts):  # this session's advisor lines: its own chart
        ghosts = step_range.crop(ghosts, shown)
        gradient_norm = advice.with_ghost_thresholds(charts.gradient_norm_chart(view, log_scale=log_scale), ghosts, log_scale)
        if forks is not None and forks.drawn_forks:
            gradient_norm = fork_charts.live_specs_with_branches(
                {"gradient_norm": charts.vega_lite_spec(gradient_norm)}, *_drawn_branches(forks, shown), log_scale=log_scale,
            )["gradient_norm"]
    return _Figures(
        gradient_norm=gradient_norm,
        loss=steps["loss"],
        clip_rate=steps["clip_rate"],
        layers=steps["layers"],
        histogram=shared["histogram"],
        what_if=what_if,
        events=shared["events"],
        resolution=resolution,
    )


def _charts(manager: RunManager, figures: _Figures, place: panels.ZoomPlace, shown: StepRange | None) -> None:
    resolution = figures.resolution
    panels.zoom_bar(place, shown, zoomed=panels.session_zoom(place) is not None)
    panels.panel_rows((
        (("gradient_norm_panel", "Gradient norm",
          f"Before and after clipping, with the threshold and clip events ({resolution}).", figures.gradient_norm),),
        (("loss_panel", "Loss and commands", "Mean loss per point; every command as a labelled rule; the validation loss dashed red, when the task has validation data.", figures.loss),
         ("clip_rate_panel", "Clip rate",
          f"Share of clipped steps over a rolling window of {charts.CLIP_RATE_WINDOW} steps.", figures.clip_rate)),
        (("layer_panel", "Gradient norm per layer",
          "Each trainable variable's norm before clipping (largest per cell, log colour).", figures.layers),
         ("histogram_panel", "Recent gradient norms",
          f"The last {figures.what_if.norms_count:,} steps before clipping, with a what-if readout.",
          lambda: _what_if_panel(manager, figures.what_if, figures.histogram))),
    ), zoom=place)  # fmt: skip
    panels.events_panel("events_panel", figures.events, "Every command, newest first, at the step it took effect")


def _what_if_panel(manager: RunManager, numbers: _WhatIf, histogram) -> None:
    if numbers.threshold_error:
        st.warning(numbers.threshold_error, icon=":material/warning:")
    panels.draw(histogram)
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
        disabled=not usable or not manager.can_steer,
        on_click=_on_apply_suggested,
        args=(manager, suggested),
        help=f"Set the clip threshold to {suggested:g} in one click."
        if usable
        else f"The {numbers.policy} policy does not clip at a norm threshold.",
    )


def _write_warning(snapshot: RunSnapshot) -> None:
    status = snapshot.status
    if status is not None and status.warning:
        st.warning(status.warning, icon=":material/warning:")
    events = snapshot.events
    for reason in events.loc[events["kind"] == "xla_fallback", "new"] if len(events) else ():
        st.warning(f"Running without XLA: {reason}", icon=":material/warning:")


# --- the live run's advisor and exports ----------------------------------------------------------


def _on_advise_live(manager: RunManager) -> None:
    controls.action(ADVISOR, "advise_live", manager.advise_live)
    st.session_state[NEEDS_FULL_RERUN] = True  # the live chart draws the new ghost lines


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
        controls.show_error(ADVISOR)
        if live_advice is not None and settings is not None:
            panels.advisor_readout(
                manager, live_advice, f"live.proposed@{manager.run_number}", settings.clip_threshold
            )
    log_scale = bool(st.session_state.get(LOG_SCALE))  # read now: the downloads run elsewhere
    smoothing = session_smoothing()
    run_number = manager.run_number
    ghosts = panels.ghosts_frame(live_advice)

    def figures() -> dict:
        snapshot = manager.snapshot()
        return panels.run_figures(
            snapshot.metrics_view, snapshot.layer_view, snapshot.events, log_scale, ghosts, snapshot.evaluations,
            smoothing,
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
            **charts.latest_validation(snapshot.evaluations),  # val_loss, val_<metric>
            "Error": status.error or "",
        },
        charts=figures,
        events=charts.events_table(snapshot.events),
    )
