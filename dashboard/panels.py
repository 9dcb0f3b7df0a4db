"""Widgets shared by the Live, A/B race, History and Compare tabs: drawing, the step zoom and
window (`step_range`), the advisor, exports.

Streamlit only: every number comes from the `RunManager` (the glue) and every chart from the
pure builders (`charts`, `comparison`, `advice`, `export`). Nothing here loops, sleeps or starts
a thread; a download's bytes are made only when it is clicked (Streamlit calls the function
then, in a thread of its own, so it reads plain data and never calls `st.*`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import advice as advice_charts
from dashboard import chart_specs, charts, export, step_range
from dashboard.step_range import StepRange
from dashboard.run_library import Advice
from dashboard.run_manager import RunManager


@dataclass(frozen=True)
class ZoomPlace:
    """Where one view (Live, History, Compare) keeps its step zoom and its window in the session.

    `owner`: the run (or runs) on screen; a zoom kept for another owner is no zoom, so opening
    another run starts unzoomed.
    """

    name: str  # "live", "history", "compare": prefixes the session keys and the charts' keys
    owner: Hashable

    @property
    def zoom_key(self) -> str:
        return f"_{self.name}.step_zoom"

    @property
    def window_key(self) -> str:  # the accepted "Steps shown", kept while its widget is not drawn
        return f"_{self.name}.steps_shown"


def session_zoom(place: ZoomPlace) -> StepRange | None:
    """This session's zoom of `place` (None: not zoomed)."""
    return step_range.stored_zoom(st.session_state.get(place.zoom_key), place.owner)


def session_window(place: ZoomPlace) -> int | None:
    """How many newest steps `place` shows in this session (None: all)."""
    try:
        return step_range.window_steps(st.session_state.get(place.window_key, step_range.ALL_STEPS))
    except ValueError:
        return None


def steps_shown_control(place: ZoomPlace, where: Any = st) -> None:
    """The "Steps shown" choice of `place`: a window of the newest steps, which drops the zoom.

    Kept per session under `place.window_key`: a tab that is not open draws no widget, and
    Streamlit forgets a widget's own state when it is not drawn.
    """
    state = st.session_state
    labels = list(step_range.WINDOWS)
    kept = state.get(place.window_key, step_range.ALL_STEPS)
    widget_key = f"{place.name}.steps_shown"

    def chosen() -> None:
        state[place.window_key] = state[widget_key]
        step_range.reset_zoom(state, place.zoom_key)

    where.selectbox(
        "Steps shown", labels, index=labels.index(kept) if kept in labels else 0, key=widget_key,
        on_change=chosen, help="Only the newest steps, following the run as it grows; drag across a "
        "chart's steps to zoom in on any range instead.",
    )  # fmt: skip


def shown_steps(place: ZoomPlace, covered: tuple[int, int] | None) -> StepRange | None:
    """The steps `place`'s charts show in this session, of a run (or runs) covering steps
    `covered` (first, newest; `step_range.covered_steps`): the zoom, else the window, else None
    (the whole run)."""
    if covered is None:
        return None
    return step_range.shown_range(*covered, session_window(place), session_zoom(place))


def zoom_bar(place: ZoomPlace, shown: StepRange | None, zoomed: bool) -> None:
    """What the step charts show, and the "Reset zoom" button (disabled unless zoomed)."""
    text, button = st.columns([6, 1], vertical_alignment="center")
    if zoomed:
        text.caption(f":material/zoom_in: Zoomed to {shown.text()}, kept while new steps arrive. Drag across a chart to zoom further.")
    else:
        showing = f"Showing {shown.text()}. " if shown is not None else ""
        text.caption(f"{showing}Drag across a chart's steps to zoom in.")
    button.button(
        "Reset zoom", key=f"{place.name}.reset_zoom", disabled=not zoomed, icon=":material/zoom_out:", width="stretch",
        on_click=step_range.reset_zoom, args=(st.session_state, place.zoom_key),
    )  # fmt: skip


def _on_brush(place: ZoomPlace, chart_key: str) -> None:
    step_range.apply_selection(st.session_state, chart_key, place.zoom_key, place.owner)


def draw(chart: alt.TopLevelMixin | dict, place: ZoomPlace | None = None, name: str = "") -> None:
    """Draw a built chart (or its Vega-Lite dict) across its column (the builders' output is
    validated by the tests). With a `place`, a chart drawn over steps takes the zoom brush: a
    drag across it zooms `place` (the chart `name` keys it)."""
    spec = chart if isinstance(chart, dict) else charts.vega_lite_spec(chart)
    if place is None or not step_range.drawn_over_steps(spec):
        st.vega_lite_chart(spec=spec, width="stretch")
        return
    # The key carries the zoom count: a new zoom draws a fresh chart, with no brush left on it.
    version = st.session_state.get(step_range.zoom_version_key(place.zoom_key), 0)
    key = f"{place.name}.chart.{name}.{version}"
    spec = chart_specs.redrawn_in_place(step_range.with_brush(spec))  # a refresh must not drop a brush mid-drag
    st.vega_lite_chart(
        spec=spec, width="stretch", key=key, on_select=functools.partial(_on_brush, place, key),
        selection_mode=[step_range.ZOOM_PARAM],
    )  # fmt: skip


def panel(key: str, title: str, caption: str):
    """A bordered box with a bold title and a caption; `key` names it for CSS and tests."""
    box = st.container(border=True, key=key)
    box.markdown(f"**{title}**")
    box.caption(caption)
    return box


def panel_rows(rows: Sequence[Sequence[tuple[str, str, str, Any]]], zoom: ZoomPlace | None = None) -> None:
    """Panels laid out in rows: a row of one spans the page, a row of two splits it in columns.

    Each panel is (key, title, caption, content): content is a built chart, or a function that
    draws the panel's body. With `zoom`, the charts drawn over steps take its brush (`draw`).
    """
    for row in rows:
        places = [contextlib.nullcontext()] if len(row) == 1 else st.columns(len(row))
        for place, (key, title, caption, content) in zip(places, row):
            with place, panel(key, title, caption):
                if isinstance(content, (alt.TopLevelMixin, dict)):
                    draw(content, zoom, key)
                else:
                    content()


EVENT_ROWS = 200  # newest events in a table (a plain HTML table: readable and quick)


def events_panel(key: str, table: pd.DataFrame, caption: str) -> None:
    """A run's events table (`charts.events_table`), its newest `EVENT_ROWS`, in a panel."""
    more = f" (the newest {EVENT_ROWS} of {len(table):,})" if len(table) > EVENT_ROWS else ""
    shown = table.head(EVENT_ROWS)
    with panel(key, "Events", f"{caption}{more}."):
        with st.container(height=260 if len(shown) > 6 else "content", border=False):
            st.table(shown.set_index("Step"))


def number(value: Any, pattern: str = "{:.4g}") -> str:
    """A number for a metric card, or "–" when there is none (None, NaN, inf)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return pattern.format(value) if math.isfinite(value) else "–"


def file_stem(name: str) -> str:
    """A file name from a run's name: "A/B race 12:00 · B" -> "clipwatch-A-B-race-12-00-B"."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    return f"clipwatch-{cleaned or 'run'}"[:100]


# --- the threshold advisor -----------------------------------------------------------------------


def advisor_readout(manager: RunManager, advice: Advice, key: str, default_threshold: float) -> float | None:
    """The proposed-threshold input and what the replay says; returns the valid proposed value.

    The clip rate at the proposed threshold is `replay(norms, "global_norm", clip_threshold=T)`
    over the replayed steps; autoclip and zclip appear as ghost lines on the gradient-norm chart.
    """
    proposed = st.number_input(
        "Proposed threshold",
        value=float(default_threshold),
        key=key,
        format="%g",
        step=0.01,
        help="A global-norm clip threshold to try on this run's recorded norms.",
    )
    if advice.count == 0:
        st.caption("No recorded steps to replay yet.")
        return None
    try:
        rate = manager.replayed_clip_rate(advice, proposed)
    except ValueError as error:
        st.warning(f"Proposed threshold: {error}", icon=":material/warning:")
        proposed = None
    else:
        st.markdown(
            advice_charts.clip_rate_sentence(proposed, rate, advice.count, advice.recorded_clip_rate)
        )
    lines = []
    for policy, detail in (
        ("autoclip", "its defaults: p10 of the last 1,000 norms"),
        ("zclip", f"its defaults, capped at the run's threshold {advice.run_clip_threshold:g}"),
    ):
        typical = advice_charts.typical_threshold(advice.thresholds[policy])
        typical_text = "–" if typical is None else f"{typical:.3g}"
        lines.append(
            f"- **{policy}** ({detail}) would have used a threshold around **{typical_text}** "
            f"(median) and clipped **{number(advice.clip_rates[policy], '{:.1%}')}**."
        )
    st.markdown("\n".join(lines))
    st.caption(
        f"Replayed steps {int(advice.steps[0]):,}–{int(advice.steps[-1]):,}. The norms stay as "
        "recorded: another threshold would have changed the training too, so this is an "
        "estimate, not a rerun."
    )
    return proposed


_GHOSTS: dict[tuple, pd.DataFrame] = {}  # advice.key -> its ghost frame (a replay never changes)


def ghosts_frame(advice: Advice | None) -> pd.DataFrame:
    """The ghost lines (autoclip, zclip) to draw over a gradient-norm chart; empty without advice."""
    if advice is None or advice.count == 0:
        return advice_charts.ghost_threshold_frame([], {})
    frame = _GHOSTS.get(advice.key)
    if frame is None:
        frame = advice_charts.ghost_threshold_frame(advice.steps, advice.thresholds)
        if len(_GHOSTS) >= 16:
            _GHOSTS.clear()
        _GHOSTS[advice.key] = frame
    return frame


# --- exports -------------------------------------------------------------------------------------


def run_caption(label: str, details: str, max_steps_per_second: float | None, started_at: float,
                per: str = "") -> None:
    """The one-line caption under a run's title: what it is, its pace and when it started."""
    started = datetime.datetime.fromtimestamp(started_at).strftime("%H:%M:%S")
    pace = "full speed" if max_steps_per_second is None else f"at most {max_steps_per_second:,.0f} steps/s{per}"
    st.caption(f"**{label}** · {details} · {pace} · started {started}")


def export_buttons(
    key: str,
    name: str,
    metrics: Callable[[], pd.DataFrame],
    figures: Callable[[], Mapping[str, alt.TopLevelMixin]],
    report: Callable[[], str],
    chart_names: tuple[str, ...],
) -> None:
    """Download buttons: per-step metrics (CSV, Parquet), an HTML report, each chart (PNG, SVG).

    Every argument that makes data is a function, called only when its button is clicked.
    """
    stem = file_stem(name)
    files = (
        ("Metrics (CSV)", lambda: export.metrics_csv(metrics()), "", "csv", "text/csv", ":material/download:"),
        ("Metrics (Parquet)", lambda: export.metrics_parquet(metrics()), "", "parquet",
         "application/vnd.apache.parquet", ":material/download:"),
        ("Report (HTML)", report, "-report", "html", "text/html", ":material/description:"),
    )  # fmt: skip
    for column, (label, data, suffix, extension, mime, icon) in zip(st.columns(3), files):
        column.download_button(
            label, data=data, file_name=f"{stem}{suffix}.{extension}", mime=mime, key=f"{key}.{extension}",
            on_click="ignore", icon=icon, width="stretch",
        )  # fmt: skip
    for index, chart_name in enumerate(chart_names):
        label, png, svg = st.columns([2, 1, 1], vertical_alignment="center")
        label.caption(chart_name)
        for column, extension, mime, make in (
            (png, "png", "image/png", export.chart_png),
            (svg, "svg", "image/svg+xml", export.chart_svg),
        ):
            column.download_button(
                extension.upper(),
                data=lambda chart_name=chart_name, make=make: make(figures()[chart_name]),
                file_name=f"{stem}-chart-{index + 1}.{extension}",
                mime=mime,
                key=f"{key}.{extension}.{index}",
                on_click="ignore",
                width="stretch",
            )


# --- one run's charts (live, recorded) -----------------------------------------------------------

CHART_NAMES = ("Gradient norm", "Loss and commands", "Clip rate", "Gradient norm per layer")


def run_figures(
    metrics_view: pd.DataFrame,
    layer_view: pd.DataFrame,
    events: pd.DataFrame,
    log_scale: bool = False,
    ghosts: pd.DataFrame | None = None,
    evaluations: pd.DataFrame | None = None,
    smoothing: float = 0.0,
    shown: StepRange | None = None,
) -> dict[str, alt.TopLevelMixin]:
    """The charts of one run, by name (`CHART_NAMES`), as the live view draws them (the loss
    chart with the validation loss from `evaluations`, when the run has any); with `shown`,
    only those steps (the clip rate still counts the window before them)."""
    lookback = metrics_view
    if shown is not None:
        lookback = step_range.crop(metrics_view, step_range.with_lookback(shown, charts.CLIP_RATE_WINDOW))
        metrics_view, layer_view = step_range.crop_views(metrics_view, layer_view, shown)
        events = step_range.crop(events, shown)
        evaluations = None if evaluations is None else step_range.crop(evaluations, shown)
        ghosts = None if ghosts is None else step_range.crop(ghosts, shown)
    gradient_norm = charts.gradient_norm_chart(metrics_view, log_scale=log_scale)
    if ghosts is not None and len(ghosts):
        gradient_norm = advice_charts.with_ghost_thresholds(gradient_norm, ghosts, log_scale)
    return {
        "Gradient norm": gradient_norm,
        "Loss and commands": charts.loss_chart(
            metrics_view, events, log_scale=log_scale, evaluations=evaluations, smoothing=smoothing
        ),
        "Clip rate": charts.clip_rate_chart(lookback, from_step=None if shown is None else shown.first),
        "Gradient norm per layer": charts.layer_norm_chart(layer_view),
    }
