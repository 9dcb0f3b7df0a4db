"""How every chart of one run looks: Altair builders, pure functions of DataFrames.

Nothing here imports Streamlit or TensorFlow, so every chart can be built and checked in a unit
test. The rows each chart draws come from `chart_frames` (metrics, layer and evaluation views
cut into at most `max_points` spans) and `event_frames` (the commands drawn on the loss chart);
this module decides only the marks, colours, axes and tooltips. `chart_specs` fills the same
charts' specs from cached templates, and is checked against them.

`charts` is where the views import every chart name from: the frames, the events table and
the readouts beside the charts (`readouts`) are re-exported here.
"""

from __future__ import annotations

import math
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from dashboard.chart_frames import (
    CLIP_RATE_WINDOW,
    HEATMAP_COLUMNS,
    LINE_POINTS,
    LOSS_CHART_EVALUATIONS,
    MAX_LAYER_ROWS,
    MAX_POINTS,
    METRIC_AGGREGATIONS,
    NORM_COLUMNS,
    NORM_THRESHOLD_POLICIES,
    WEIGHTED_BY_STEPS,
    clip_rate_frame,
    evaluation_frame,
    even_spans,
    finite,
    gradient_norm_frame,
    group_layer_view,
    histogram_frame,
    layer_norm_frame,
    MAX_SMOOTHING,
    loss_frame,
    smoothed,
    validate_smoothing,
    metric_names,
    positive_values,
    rolling_clip_rate,
    validation_loss_frame,
)
from dashboard.event_frames import (
    MAX_EVENT_RULES,
    event_group,
    event_label,
    event_labels_frame,
    event_rules_frame,
    events_table,
)
from dashboard.readouts import Headline, WhatIf, headline, latest_validation, recent_norms, suggest_threshold, what_if

# One colour per meaning, shared by every chart (and the legend).
RAW_OPACITY = 0.3  # the raw loss behind its smoothed curve, as TensorBoard draws it
COLORS = {
    "before_clip": "#4C78A8",
    "after_clip": "#54A24B",
    "threshold": "#E45756",
    "clip_marker": "#F58518",
    "suggested": "#6F4E9C",
    "loss": "#3B3B58",
    "validation": "#D1495B",
    "hover": "#9A9A9A",
}
SERIES_LABELS = {
    "before_clip": "Before clip",
    "after_clip": "After clip",
    "threshold": "Threshold",
    "clip_marker": "Clip event",
}
# Events drawn on the loss chart, grouped so that colours mean the same everywhere.
EVENT_GROUP_COLORS = {
    "Threshold": COLORS["threshold"],
    "Spike": COLORS["clip_marker"],
    "Policy": COLORS["suggested"],
    "Learning rate": "#2A9D8F",
    "Run": "#7F7F7F",
}


def vega_lite_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart as a Vega-Lite dict, without Altair's JSON-schema validation.

    Validation is about 60% of the cost of turning our charts into specs on every refresh;
    the builders' output is validated once by the unit tests instead (tests/test_charts.py).
    """
    return chart.to_dict(validate=False)


def histogram_lines(
    clip_threshold: float | None, suggested_threshold: float | None, threshold_label: str = "threshold"
) -> list[tuple[str, float, str, list[int]]]:
    """The histogram's vertical lines: (legend name, value, colour, dash) of each drawable one."""
    return [
        (f"{name} {value:.3g}", float(value), color, dash)
        for value, name, color, dash in (
            (clip_threshold, threshold_label, COLORS["threshold"], [1, 0]),
            (suggested_threshold, "suggested", COLORS["suggested"], [5, 3]),
        )
        if value is not None and math.isfinite(value) and value > 0
    ]


def histogram_lines_frame(drawn: list[tuple[str, float, str, list[int]]]) -> pd.DataFrame:
    """The rows of the histogram's lines (from `histogram_lines`): line, value."""
    return pd.DataFrame({"line": [line[0] for line in drawn], "value": [line[1] for line in drawn]})


# --- charts ----------------------------------------------------------------------------------


def _series_color_scale() -> alt.Scale:
    keys = ("before_clip", "after_clip", "threshold", "clip_marker")
    return alt.Scale(
        domain=[SERIES_LABELS[key] for key in keys], range=[COLORS[key] for key in keys]
    )


def y_scale(log_scale: bool, zero: bool = True) -> alt.Scale:
    return alt.Scale(type="log") if log_scale else alt.Scale(zero=zero)


def step_axis(steps: Sequence | None = None, end: float | None = None) -> alt.X:
    """The shared x axis: steps, labelled 0, 500, 10k, 1.5M; tight to the data."""
    scale = alt.Scale(nice=False, zero=False)
    if steps is not None and len(steps):
        last = float(end if end is not None else np.max(steps))
        scale = alt.Scale(domain=[float(np.min(steps)), last], nice=False)
    labels = "datum.value >= 1000 ? format(datum.value, '~s') : format(datum.value, ',')"
    axis = alt.Axis(labelExpr=labels, tickCount=8)
    return alt.X("step:Q", title="Step", scale=scale, axis=axis)


def gradient_norm_chart(
    view: pd.DataFrame, log_scale: bool = False, max_points: int = LINE_POINTS, height: int = 340
) -> alt.LayerChart:
    """Gradient norm before and after clipping, the threshold as a step line, clip markers.

    Before clipping: the mean per point as a line inside a min-max band, so a point that stands
    for many steps still shows its largest norm (a spike stays visible). After clipping: the
    mean per point. Clip markers sit at the largest pre-clip norm of every point with a clipped
    step, more opaque the larger the share of clipped steps. One shared dataset of at most
    `max_points` rows; hovering anywhere shows one tooltip for the nearest step.
    """
    data = gradient_norm_frame(view, log_scale=log_scale, max_points=max_points)
    legend = alt.Legend(title=None, orient="top", symbolOpacity=1, symbolStrokeWidth=3)
    color = alt.Color("series:N", scale=_series_color_scale(), legend=legend)
    y_title = "Gradient norm (global L2)" + (", log scale" if log_scale else "")
    base = alt.Chart().encode(x=step_axis(data["step"]))

    def series(key: str, *required: str):
        valid = " && ".join(f"isValid(datum.{column})" for column in required)
        return base.transform_filter(valid).transform_calculate(series=f"'{SERIES_LABELS[key]}'")

    before = series("before_clip", "grad_norm_mean").mark_line(strokeWidth=1.3).encode(
        y=alt.Y("grad_norm_mean:Q"), color=color
    )
    # The envelope has a fixed colour so the legend takes its symbol from the line above.
    band = (
        base.transform_filter("isValid(datum.grad_norm_min) && isValid(datum.grad_norm)")
        .mark_area(color=COLORS["before_clip"], opacity=0.18)
        .encode(y=alt.Y("grad_norm_min:Q"), y2=alt.Y2("grad_norm"))
    )
    band_top = (
        base.transform_filter("isValid(datum.grad_norm)")
        .mark_line(color=COLORS["before_clip"], strokeWidth=0.8, opacity=0.55)
        .encode(y=alt.Y("grad_norm:Q"))
    )
    after = series("after_clip", "clipped_grad_norm_mean").mark_line(strokeWidth=1.6).encode(
        y=alt.Y("clipped_grad_norm_mean:Q", title=y_title, scale=y_scale(log_scale)), color=color
    )
    threshold = (
        series("threshold", "clip_threshold")
        .mark_line(interpolate="step-after", strokeDash=[6, 3], strokeWidth=2)
        .encode(y=alt.Y("clip_threshold:Q"), color=color)
    )
    markers = (
        series("clip_marker", "grad_norm")
        .transform_filter("datum.clipped > 0")
        .mark_point(filled=True, size=22)
        .encode(
            y=alt.Y("grad_norm:Q"),
            color=color,
            opacity=alt.Opacity("clip_share:Q", scale=alt.Scale(domain=[0, 1], range=[0.35, 0.95]), legend=None),
        )
    )
    hover = alt.selection_point(
        name="hover", fields=["step"], nearest=True, on="pointerover", clear="pointerout", empty=False
    )
    tooltip = [
        alt.Tooltip("step:Q", title="Step", format=","),
        alt.Tooltip("steps:Q", title="Steps in point", format=","),
        alt.Tooltip("grad_norm_mean:Q", title="Before clip (mean)", format=".4g"),
        alt.Tooltip("grad_norm:Q", title="Before clip (max)", format=".4g"),
        alt.Tooltip("clipped_grad_norm_mean:Q", title="After clip (mean)", format=".4g"),
        alt.Tooltip("clip_threshold:Q", title="Threshold", format=".4g"),
        alt.Tooltip("clipped:Q", title="Clipped steps", format=","),
    ]
    hover_rule = (
        base.mark_rule(color=COLORS["hover"], strokeWidth=1)
        .encode(opacity=alt.condition(hover, alt.value(0.8), alt.value(0)), tooltip=tooltip)
        .add_params(hover)
    )
    # After-clip first: where clipping changed nothing the before line covers it, so the green
    # shows exactly where clipping acted.
    layers = (after, band, band_top, before, threshold, markers, hover_rule)
    return alt.layer(*layers, data=data).properties(height=height)


def loss_chart(
    view: pd.DataFrame,
    events: pd.DataFrame,
    log_scale: bool = False,
    max_points: int = LINE_POINTS,
    height: int = 260,
    evaluations: pd.DataFrame | None = None,
    smoothing: float = 0.0,
) -> alt.LayerChart:
    """Loss (mean per point) with every command drawn as a labelled vertical rule, and the
    validation loss (`evaluations` rows named `val_loss`) as a dotted line beside it. With
    `smoothing` > 0 (TensorBoard's slider), the smoothed loss is drawn over the raw one, faint."""
    frame = loss_frame(view, log_scale, max_points, smoothing)
    tooltip = [
        alt.Tooltip("step:Q", title="Step", format=","),
        alt.Tooltip("steps:Q", title="Steps in point", format=","),
        alt.Tooltip("loss:Q", title="Loss", format=".4g"),
    ]
    y = alt.Y("loss:Q", title="Loss (mean per point)", scale=y_scale(log_scale, zero=False))
    line = (
        alt.Chart(frame)
        .transform_filter("isValid(datum.loss)")
        .mark_line(color=COLORS["loss"], strokeWidth=1.4, opacity=RAW_OPACITY if smoothing > 0 else 1.0)
        .encode(x=step_axis(frame["step"]), y=y, tooltip=tooltip)
    )
    if smoothing > 0:
        smooth = (
            alt.Chart(frame)
            .transform_filter("isValid(datum.loss_smoothed)")
            .mark_line(color=COLORS["loss"], strokeWidth=1.8)
            .encode(
                x=step_axis(frame["step"]),
                y=alt.Y("loss_smoothed:Q", title="Loss (mean per point)", scale=y_scale(log_scale, zero=False)),
                tooltip=[*tooltip, alt.Tooltip("loss_smoothed:Q", title="Smoothed loss", format=".4g")],
            )
        )
        line = alt.layer(line, smooth)
    validation = validation_loss_frame(evaluations)
    if len(validation):
        if log_scale:
            validation["val_loss"] = positive_values(validation["val_loss"].to_numpy())
        line = alt.layer(line, _validation_line(validation))
    rules = event_rules_frame(events)
    if len(rules) == 0:
        return alt.layer(line).properties(height=height)
    group_scale = alt.Scale(domain=list(EVENT_GROUP_COLORS), range=list(EVENT_GROUP_COLORS.values()))
    color = alt.Color("group:N", scale=group_scale, legend=alt.Legend(orient="top", title=None))
    event_tooltip = [
        alt.Tooltip("step:Q", title="Step", format=","),
        alt.Tooltip("kind:N", title="Command"),
        alt.Tooltip("old:N", title="Old"),
        alt.Tooltip("new:N", title="New"),
    ]
    rule = (
        alt.Chart(rules)
        .mark_rule(strokeDash=[4, 3], strokeWidth=1.5)
        .encode(x=alt.X("step:Q"), color=color, tooltip=event_tooltip)
    )
    labels = event_labels_frame(rules)
    label = (
        alt.Chart(labels)
        .mark_text(angle=270, align="right", baseline="bottom", dx=-4, dy=-3, fontSize=10)
        .encode(
            x=alt.X("step:Q"),
            y=alt.value(0),
            text=alt.Text("label:N"),
            color=alt.Color("group:N", scale=group_scale, legend=None),
        )
    )
    return alt.layer(line, rule, label).properties(height=height)


def _validation_line(validation: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(validation)
        .transform_filter("isValid(datum.val_loss)")
        .mark_line(color=COLORS["validation"], strokeDash=[5, 3], strokeWidth=1.6, point=True)
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y("val_loss:Q"),
            tooltip=[
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("val_loss:Q", title="Validation loss", format=".4g"),
            ],
        )
    )


def metric_chart(evaluations: pd.DataFrame | None, name: str, height: int = 260) -> alt.Chart:
    """One recorded metric (`evaluations` rows named `name`, e.g. a fit's epoch `accuracy`)
    over the steps it was recorded at; a `val_` metric dashed in the validation colour."""
    frame = evaluation_frame(evaluations, name)
    validation = name.startswith("val_")
    return (
        alt.Chart(frame)
        .mark_line(color=COLORS["validation" if validation else "loss"], strokeDash=[5, 3] if validation else [],
                   strokeWidth=1.6, point=True)  # fmt: skip
        .encode(
            x=step_axis(frame["step"]),
            y=alt.Y("value:Q", title=name, scale=alt.Scale(zero=False)),
            tooltip=[
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("value:Q", title=name, format=".4g"),
            ],
        )
        .properties(height=height)
    )


def clip_rate_chart(
    view: pd.DataFrame,
    window: int = CLIP_RATE_WINDOW,
    max_points: int = LINE_POINTS,
    height: int = 260,
    from_step: int | None = None,
) -> alt.Chart:
    """Share of clipped steps over a rolling window of `window` steps (mean per point); drawn
    from `from_step` when given (earlier rows only fill the window: `clip_rate_frame`)."""
    data = clip_rate_frame(view, window, max_points, from_step)
    return (
        alt.Chart(data)
        .mark_area(
            color=COLORS["clip_marker"], opacity=0.35, line={"color": COLORS["clip_marker"]}, interpolate="step-after"
        )
        .encode(
            x=step_axis(data["step"]),
            y=alt.Y(
                "clip_rate:Q",
                title=f"Clipped, rolling {window} steps",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
            ),
            tooltip=[
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("clip_rate:Q", title="Clip rate", format=".1%"),
            ],
        )
        .properties(height=height)
    )


def layer_norm_chart(
    layer_view: pd.DataFrame, max_points: int = MAX_POINTS, row_height: int = 36
) -> alt.Chart:
    """Heatmap of each trainable variable's gradient norm (before clipping) over time; a model
    with more than `MAX_LAYER_ROWS` variables is drawn per layer (`group_layer_view`), which
    the chart's title says."""
    layer_view, note = group_layer_view(layer_view)
    data = layer_norm_frame(layer_view, max_points)
    layers = [column for column in layer_view.columns if column != "step"]
    chart = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=step_axis(data["step"], end=data["step_end"].max() if len(data) else None),
            x2=alt.X2("step_end"),
            y=alt.Y("layer:N", title=None, sort=layers, axis=alt.Axis(labelOverlap=False, labelLimit=160)),
            color=alt.Color(
                "norm:Q",
                title="Norm",
                scale=alt.Scale(type="log", scheme="viridis"),
                legend=alt.Legend(orient="right", format=".2g"),
            ),
            tooltip=[
                alt.Tooltip("layer:N", title="Variable"),
                alt.Tooltip("step:Q", title="From step", format=","),
                alt.Tooltip("norm:Q", title="Norm (max)", format=".4g"),
            ],
        )
        .properties(height=row_height * max(len(layers), 1) + 60)  # + the step axis
    )
    return chart.properties(title=note) if note else chart


def gradient_norm_histogram(
    norms: np.ndarray,
    clip_threshold: float | None,
    suggested_threshold: float | None = None,
    log_scale: bool = False,
    bins: int = 40,
    height: int = 260,
    threshold_label: str = "threshold",
) -> alt.LayerChart:
    """Distribution of recent pre-clip gradient norms, with the threshold (and suggestion)."""
    counts = histogram_frame(norms, bins=bins, log_scale=log_scale)
    x_scale = alt.Scale(type="log", nice=False) if log_scale else alt.Scale(zero=False)
    bars = (
        alt.Chart(counts)
        .mark_bar(color=COLORS["before_clip"], opacity=0.8, binSpacing=0)
        .encode(
            x=alt.X("bin_start:Q", title="Gradient norm before clip", scale=x_scale),
            x2=alt.X2("bin_end"),
            y=alt.Y("count:Q", title="Steps"),
            y2=alt.datum(0),
            tooltip=[
                alt.Tooltip("bin_start:Q", title="From", format=".4g"),
                alt.Tooltip("bin_end:Q", title="To", format=".4g"),
                alt.Tooltip("count:Q", title="Steps", format=","),
                alt.Tooltip("share:Q", title="Share", format=".1%"),
            ],
        )
    )
    drawn = histogram_lines(clip_threshold, suggested_threshold, threshold_label)
    if not drawn:
        return alt.layer(bars).properties(height=height)
    lines = histogram_lines_frame(drawn)
    # A legend names the lines (labels on the plot would collide with each other and the bars).
    names = [line[0] for line in drawn]
    rules = (
        alt.Chart(lines)
        .mark_rule(strokeWidth=2.5)
        .encode(
            x=alt.X("value:Q"),
            color=alt.Color(
                "line:N",
                scale=alt.Scale(domain=names, range=[line[2] for line in drawn]),
                legend=alt.Legend(title=None, orient="top", symbolType="stroke", symbolStrokeWidth=3),
            ),
            strokeDash=alt.StrokeDash(
                "line:N", scale=alt.Scale(domain=names, range=[line[3] for line in drawn]), legend=None
            ),
            tooltip=[alt.Tooltip("line:N", title="Line"), alt.Tooltip("value:Q", title="At", format=".4g")],
        )
    )
    return alt.layer(bars, rules).properties(height=height)


def chart_rows(chart: alt.TopLevelMixin) -> int:
    """How many data rows a built chart carries in total (what the browser has to draw)."""
    spec = chart.to_dict()
    return sum(len(rows) for rows in spec.get("datasets", {}).values())


__all__: Sequence[str] = [
    # drawn here
    "COLORS", "RAW_OPACITY", "SERIES_LABELS", "EVENT_GROUP_COLORS",
    "vega_lite_spec", "chart_rows", "y_scale", "step_axis", "histogram_lines", "histogram_lines_frame",
    "gradient_norm_chart", "loss_chart", "metric_chart", "clip_rate_chart", "layer_norm_chart",
    "gradient_norm_histogram",
    # from chart_frames
    "CLIP_RATE_WINDOW", "HEATMAP_COLUMNS", "LINE_POINTS", "LOSS_CHART_EVALUATIONS", "MAX_LAYER_ROWS",
    "MAX_POINTS", "METRIC_AGGREGATIONS", "NORM_COLUMNS", "NORM_THRESHOLD_POLICIES", "WEIGHTED_BY_STEPS",
    "clip_rate_frame", "evaluation_frame", "even_spans", "finite", "gradient_norm_frame",
    "group_layer_view", "histogram_frame", "layer_norm_frame", "loss_frame", "metric_names",
    "positive_values", "rolling_clip_rate", "validation_loss_frame", "smoothed", "validate_smoothing", "MAX_SMOOTHING",
    # from event_frames
    "MAX_EVENT_RULES", "event_group", "event_label", "event_labels_frame", "event_rules_frame",
    "events_table",
    # from readouts
    "Headline", "WhatIf", "headline", "latest_validation", "recent_norms", "suggest_threshold", "what_if",
]  # fmt: skip
