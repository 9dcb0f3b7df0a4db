"""Chart builders and the small computations behind them: pure functions of DataFrames.

Nothing here imports Streamlit or TensorFlow, so every chart can be built and checked in a unit
test. The inputs are the frames a `MetricsStore` hands out:

* a *metrics view* (`store.view()[0]`): one row per point, each standing for `steps` steps,
  with `grad_norm` / `clipped_grad_norm` the max over the point's steps (so a spike stays
  visible however long the run), `clipped` and `nonfinite` counts, and `clip_threshold` the
  last value in force;
* a *layer view* (`store.view()[1]`): `step` plus one column per trainable variable;
* recent raw rows (`store.metrics(last=N)`) for the histogram and the what-if readout;
* the events table (`store.events()`): step, time_s, kind, old, new.

Every builder cuts the run into at most `max_points` equal spans of steps and merges the rows
in each span (keeping the span's largest norm, so a spike stays visible), whatever it is
handed: a chart costs the same for any run length, and old and new steps are drawn at one
density. Non-finite values (a NaN step, the `inf` threshold of policy `none`) are dropped
before drawing.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

MAX_POINTS = 2000  # the most rows any chart carries; the browser stays fast
LINE_POINTS = 600  # spans of steps in the line charts: about one per two pixels of a wide chart
HEATMAP_COLUMNS = 240  # time spans in the per-layer heatmap: about one per 3-4 pixels
MAX_EVENT_RULES = 60  # the newest events drawn as rules on the loss chart
CLIP_RATE_WINDOW = 100  # steps in the rolling clip rate
# Rows of the per-layer heatmap: a label per row stays readable at 36 px; a model with more
# variables is drawn per layer, and past this many layers as the largest ones plus "other".
MAX_LAYER_ROWS = 40

# One colour per meaning, shared by every chart (and the legend).
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
# Policies whose threshold is compared with a gradient norm; for `value` it caps single
# elements and for `agc` it is a clip factor, so drawing it against the norm would mislead.
NORM_THRESHOLD_POLICIES = frozenset({"global_norm", "per_tensor_norm", "autoclip", "zclip"})

# How the columns of a metrics view combine when neighbouring rows merge (others: last).
METRIC_AGGREGATIONS = {
    "step": "first",
    "steps": "sum",
    "loss": "mean",
    "grad_norm": "max",
    "grad_norm_min": "min",
    "grad_norm_mean": "mean",
    "clipped_grad_norm": "max",
    "clipped_grad_norm_mean": "mean",
    "clipped": "sum",
    "nonfinite": "sum",
}
# Means over a span weigh each row by the steps it stands for.
WEIGHTED_BY_STEPS = ("loss", "grad_norm_mean", "clipped_grad_norm_mean")


# --- data preparation ------------------------------------------------------------------------


def vega_lite_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart as a Vega-Lite dict, without Altair's JSON-schema validation.

    Validation is about 60% of the cost of turning our charts into specs on every refresh;
    the builders' output is validated once by the unit tests instead (tests/test_charts.py).
    """
    return chart.to_dict(validate=False)


def finite(values) -> np.ndarray:
    """`values` as float64 with every NaN and +-inf replaced by NaN (which charts drop)."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array), array, np.nan)


def even_spans(
    frame: pd.DataFrame, max_points: int, aggregations: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Merge rows into at most `max_points` equal spans of steps, one row per non-empty span.

    `frame` has a `step` column (ascending; the first step a row stands for) and optionally
    `steps` (how many steps it stands for; 1 if absent). `aggregations` maps a column to
    first, last, sum, mean, min or max (default: last); `step` takes the first and `steps` the
    sum. Columns in `WEIGHTED_BY_STEPS` average with each row weighted by its `steps`.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"`max_points` must be an integer >= 1. Received: max_points={max_points!r}")
    if len(frame) == 0:
        return frame.reset_index(drop=True)
    steps = frame["step"].to_numpy(np.int64)
    counts = frame["steps"].to_numpy(np.int64) if "steps" in frame else np.ones(len(frame), np.int64)
    first, end = int(steps[0]), int(steps[-1] + counts[-1])
    width = max(1, math.ceil((end - first) / max_points))
    if width == 1 and len(frame) <= max_points:
        return frame.reset_index(drop=True)
    group = (steps - first) // width
    aggregations = {**(aggregations or {}), "step": "first", "steps": "sum"}
    weighted = [column for column in WEIGHTED_BY_STEPS if column in frame]
    frame = frame.copy()
    for column in weighted:  # sum(value * steps) / sum(steps), skipping non-finite rows
        values = finite(frame[column])
        frame[column] = np.nan_to_num(values) * counts
        frame[f"_{column}_steps"] = np.where(np.isfinite(values), counts, 0)
        aggregations[column] = aggregations[f"_{column}_steps"] = "sum"
    how = {column: aggregations.get(column, "last") for column in frame.columns}
    merged = frame.groupby(group, sort=True, observed=True).agg(how)
    for column in weighted:
        weights = merged.pop(f"_{column}_steps").to_numpy(np.float64)
        merged[column] = np.where(weights > 0, merged[column] / np.maximum(weights, 1), np.nan)
    return merged.reset_index(drop=True)


def _threshold_against_norm(view: pd.DataFrame) -> np.ndarray:
    threshold = finite(view["clip_threshold"])
    if "policy" in view:
        compares_norm = view["policy"].astype(str).isin(NORM_THRESHOLD_POLICIES).to_numpy()
        threshold = np.where(compares_norm, threshold, np.nan)
    return threshold


def positive_values(values: np.ndarray) -> np.ndarray:
    """For log scales: zero and negatives become NaN (a log axis cannot place them)."""
    return np.where(values > 0, values, np.nan)


def gradient_norm_frame(
    view: pd.DataFrame, log_scale: bool = False, max_points: int = LINE_POINTS
) -> pd.DataFrame:
    """The rows the gradient-norm chart draws.

    step, steps, grad_norm_min / grad_norm_mean / grad_norm (max) before clipping,
    clipped_grad_norm_mean / clipped_grad_norm (max) after, clip_threshold (NaN where the
    policy does not compare it with the norm), clipped (count) and clip_share.
    """
    data = even_spans(view, max_points, METRIC_AGGREGATIONS)
    steps = data["steps"].to_numpy(np.int64)
    clipped = data["clipped"].to_numpy(np.int64)
    frame = pd.DataFrame(
        {
            "step": data["step"].to_numpy(np.int64),
            "steps": steps,
            "grad_norm_min": finite(data["grad_norm_min"]),
            "grad_norm_mean": finite(data["grad_norm_mean"]),
            "grad_norm": finite(data["grad_norm"]),
            "clipped_grad_norm_mean": finite(data["clipped_grad_norm_mean"]),
            "clipped_grad_norm": finite(data["clipped_grad_norm"]),
            "clip_threshold": _threshold_against_norm(data),
            "clipped": clipped,
            "clip_share": clipped / np.maximum(steps, 1),
        }
    )
    if log_scale:
        for column in NORM_COLUMNS:
            frame[column] = positive_values(frame[column].to_numpy())
    return frame


NORM_COLUMNS = (
    "grad_norm_min",
    "grad_norm_mean",
    "grad_norm",
    "clipped_grad_norm_mean",
    "clipped_grad_norm",
    "clip_threshold",
)


def rolling_clip_rate(view: pd.DataFrame, window: int = CLIP_RATE_WINDOW) -> pd.DataFrame:
    """Share of clipped steps over the last `window` steps, at every row of a metrics view.

    Rows may stand for many steps (older, bucketed parts of the view): a row wider than the
    window gives its own rate, and the oldest row reaching into a window counts in proportion
    to the steps it has inside. Returns step, clip_rate (0..1) and steps_in_window.
    """
    if window < 1:
        raise ValueError(f"`window` must be at least 1. Received: window={window!r}")
    if len(view) == 0:
        return pd.DataFrame({"step": [], "clip_rate": [], "steps_in_window": []})
    steps = view["steps"].to_numpy(np.int64)
    clipped = view["clipped"].to_numpy(np.float64)
    row_end = view["step"].to_numpy(np.int64) + steps - 1
    rows = np.arange(len(view))
    cumulative_steps = np.concatenate([[0], np.cumsum(steps)])
    cumulative_clipped = np.concatenate([[0.0], np.cumsum(clipped)])
    window_start = row_end - window + 1  # the first step inside each row's window
    # The oldest row reaching into the window; it counts in proportion to its overlap.
    first = np.minimum(np.searchsorted(row_end, window_start, side="left"), rows)
    overlap = np.where(first < rows, np.minimum(row_end[first] - window_start + 1, steps[first]), steps[first])
    share = overlap / steps[first]
    in_window = cumulative_steps[rows + 1] - cumulative_steps[first + 1] + overlap
    clipped_in_window = (
        cumulative_clipped[rows + 1] - cumulative_clipped[first + 1] + clipped[first] * share
    )
    return pd.DataFrame(
        {
            "step": view["step"].to_numpy(np.int64),
            "clip_rate": clipped_in_window / np.maximum(in_window, 1),
            "steps_in_window": in_window,
        }
    )


def layer_norm_frame(layer_view: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Long form of a layer view for a heatmap: step, step_end, layer, norm.

    Time is cut into equal spans of steps (at most `HEATMAP_COLUMNS`, and cells, spans times
    layers, at most `max_points`); each cell holds the largest norm in its span.
    """
    layers = [column for column in layer_view.columns if column != "step"]
    if not layers or len(layer_view) == 0:
        return pd.DataFrame({"step": [], "step_end": [], "layer": [], "norm": []})
    spans = max(1, min(max_points // len(layers), HEATMAP_COLUMNS))
    data = even_spans(layer_view, spans, {name: "max" for name in layers})
    first, last_end = int(layer_view["step"].iloc[0]), int(layer_view["step"].iloc[-1]) + 1
    width = max(1, math.ceil((last_end - first) / spans))  # as even_spans cut it
    # Each cell covers its whole span, so neighbouring cells tile the axis.
    span_start = first + (data["step"].to_numpy(np.int64) - first) // width * width
    data["step"] = span_start
    step_end = np.minimum(span_start + width, max(last_end, int(span_start[-1]) + 1))
    long = data.assign(step_end=step_end).melt(
        id_vars=["step", "step_end"], value_vars=layers, var_name="layer", value_name="norm"
    )
    long["norm"] = positive_values(finite(long["norm"]))
    return long.dropna(subset=["norm"]).reset_index(drop=True)


def group_layer_view(
    layer_view: pd.DataFrame, max_rows: int = MAX_LAYER_ROWS
) -> tuple[pd.DataFrame, str | None]:
    """A layer view with at most `max_rows` variable columns, and a note saying how it was cut.

    Up to `max_rows` variables: unchanged (no note). More: variables are grouped by layer (the
    first part of their name, "block0_attention/query/kernel" -> "block0_attention"); a
    layer's norm is the root of the sum of its variables' squared norms, which is the norm of
    the layer's whole gradient (for a point standing for several steps, an upper bound, as each
    variable keeps its own max). Still more than `max_rows` layers: the `max_rows - 1` layers
    with the largest norms stay, the rest become one row "other (N layers)" holding their max.
    """
    variables = [column for column in layer_view.columns if column != "step"]
    if len(variables) <= max_rows:
        return layer_view, None
    groups: dict[str, list[str]] = {}
    for name in variables:
        groups.setdefault(name.split("/")[0], []).append(name)
    columns = {"step": layer_view["step"].to_numpy()}
    for layer, members in groups.items():
        squares = np.square(layer_view[members].to_numpy(np.float64))
        columns[layer] = np.sqrt(np.nansum(squares, axis=1))
    grouped = pd.DataFrame(columns)
    note = f"{len(variables)} variables grouped into {len(groups)} layers (norm of each layer's gradient)"
    if len(groups) <= max_rows:
        return grouped, note
    peaks = grouped[list(groups)].max(axis=0).sort_values(ascending=False)
    kept, rest = list(peaks.index[: max_rows - 1]), list(peaks.index[max_rows - 1 :])
    reduced = grouped[["step", *kept]].copy()
    reduced[f"other ({len(rest)} layers)"] = grouped[rest].max(axis=1)
    note += f"; the {len(kept)} largest shown, the other {len(rest)} as their max"
    return reduced, note


def evaluation_frame(evaluations: pd.DataFrame | None, name: str, column: str = "value") -> pd.DataFrame:
    """`step, <column>` of the evaluations named `name` (`Trainer.evaluations()` or
    `RunDatabase.evaluations()` rows), finite values only."""
    if evaluations is None or len(evaluations) == 0:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), column: pd.Series(dtype="float64")})
    rows = evaluations[evaluations["name"] == name]
    frame = pd.DataFrame(
        {"step": rows["step"].to_numpy(np.int64), column: finite(rows["value"].to_numpy(np.float64))}
    )
    return frame.dropna().reset_index(drop=True)


def validation_loss_frame(evaluations: pd.DataFrame | None) -> pd.DataFrame:
    """`step, val_loss` from `Trainer.evaluations()` rows (finite values only)."""
    return evaluation_frame(evaluations, "val_loss", "val_loss")


# Drawn on the loss chart already: the per-step loss, and the validation loss beside it.
LOSS_CHART_EVALUATIONS = ("loss", "val_loss")


def metric_names(evaluations: pd.DataFrame | None) -> list[str]:
    """The recorded metrics the loss chart does not draw (`accuracy`, `val_accuracy`, ...), in
    alphabetical order with each training metric just before its `val_` counterpart."""
    if evaluations is None or len(evaluations) == 0:
        return []
    names = {str(name) for name in evaluations["name"].unique()} - set(LOSS_CHART_EVALUATIONS)

    def order(name: str) -> tuple[str, int]:
        base, depth = name, 0
        while base.startswith("val_"):
            base, depth = base[4:], depth + 1
        return base, depth

    return sorted(names, key=order)


def latest_validation(evaluations: pd.DataFrame | None) -> dict[str, float]:
    """The last evaluation's values by name (`val_loss`, `val_<metric>`); empty without any."""
    if evaluations is None or len(evaluations) == 0:
        return {}
    last = evaluations[evaluations["step"] == evaluations["step"].iloc[-1]]
    return {str(name): float(value) for name, value in zip(last["name"], last["value"])}


def recent_norms(recent: pd.DataFrame) -> np.ndarray:
    """The finite pre-clip gradient norms of recent raw rows."""
    if len(recent) == 0:
        return np.zeros(0)
    norms = finite(recent["grad_norm"])
    return norms[np.isfinite(norms)]


def histogram_frame(norms: np.ndarray, bins: int = 40, log_scale: bool = False) -> pd.DataFrame:
    """Counts of `norms` in `bins` bins (log-spaced if `log_scale`): bin_start, bin_end, count."""
    norms = np.asarray(norms, dtype=np.float64)
    norms = norms[np.isfinite(norms)]
    if log_scale:
        norms = norms[norms > 0]
    if len(norms) == 0:
        return pd.DataFrame({"bin_start": [], "bin_end": [], "count": [], "share": []})
    low, high = float(norms.min()), float(norms.max())
    if high <= low:  # all equal: one bin around the value
        low, high = (low / 1.05, high * 1.05) if log_scale else (low - 0.5, high + 0.5)
    edges = np.geomspace(low, high, bins + 1) if log_scale else np.linspace(low, high, bins + 1)
    counts, edges = np.histogram(norms, bins=edges)
    return pd.DataFrame(
        {
            "bin_start": edges[:-1],
            "bin_end": edges[1:],
            "count": counts,
            "share": counts / len(norms),
        }
    )


@dataclass(frozen=True)
class WhatIf:
    """At `clip_threshold`, `clipped_share` of the last `steps` steps would have been clipped."""

    clip_threshold: float
    steps: int
    clipped_steps: int

    @property
    def clipped_share(self) -> float:
        return self.clipped_steps / self.steps if self.steps else 0.0

    def sentence(self) -> str:
        return (
            f"At threshold {self.clip_threshold:g}, {self.clipped_share:.1%} of the last "
            f"{self.steps:,} steps would have been clipped."
        )


def what_if(norms: np.ndarray, clip_threshold: float) -> WhatIf:
    """How many of `norms` a global-norm clip at `clip_threshold` would have scaled down."""
    norms = np.asarray(norms, dtype=np.float64)
    norms = norms[np.isfinite(norms)]
    return WhatIf(float(clip_threshold), len(norms), int((norms > clip_threshold).sum()))


def suggest_threshold(norms: np.ndarray, percentile: float = 90.0) -> float | None:
    """The `percentile` of recent norms: clipping there trims the top (100 - p)% of steps.

    None if there is nothing to go on (no finite, positive norm).
    """
    if not 0 < percentile < 100:
        raise ValueError(
            f"`percentile` must be between 0 and 100 (exclusive). Received: percentile={percentile!r}"
        )
    norms = np.asarray(norms, dtype=np.float64)
    norms = norms[np.isfinite(norms) & (norms > 0)]
    if len(norms) == 0:
        return None
    return float(f"{np.percentile(norms, percentile):.3g}")  # 3 significant digits reads well


@dataclass(frozen=True)
class Headline:
    """The header numbers, from the newest raw rows."""

    loss: float | None
    grad_norm: float | None
    clip_rate: float | None  # over the last `window` steps
    window: int


def headline(recent: pd.DataFrame, window: int = CLIP_RATE_WINDOW) -> Headline:
    if len(recent) == 0:
        return Headline(None, None, None, 0)
    last = recent.tail(window)
    finite_rows = recent[recent["finite"].astype(bool)] if "finite" in recent else recent
    loss = float(finite_rows["loss"].iloc[-1]) if len(finite_rows) else None
    grad_norm = float(finite_rows["grad_norm"].iloc[-1]) if len(finite_rows) else None
    clip_rate = float(last["clipped"].astype(bool).mean())
    return Headline(loss, grad_norm, clip_rate, len(last))


# --- events ----------------------------------------------------------------------------------

_EVENT_NAMES = {
    "clip_threshold": "threshold",
    "learning_rate": "learning rate",
    "max_steps_per_second": "speed",
    "spike": "spike",
}


def event_group(kind: str) -> str:
    if kind == "clip_threshold":
        return "Threshold"
    if kind == "spike":
        return "Spike"
    if kind == "learning_rate":
        return "Learning rate"
    if kind == "policy" or "." in kind:
        return "Policy"
    return "Run"


def event_label(kind: str, old: str, new: str) -> str:
    """A short label for a rule: 'threshold 1 -> 0.5', 'spike x100', 'pause'."""
    name = _EVENT_NAMES.get(kind, kind)
    if kind == "spike":
        return f"spike ×{new}"
    if kind == "max_steps_per_second":
        old, new = old or "full", new or "full"
    if old and new:
        return f"{name} {old} → {new}"
    if new and kind not in ("start", "failed", "finished"):
        return f"{name} {new}"
    return name


def events_table(events: pd.DataFrame) -> pd.DataFrame:
    """Every command, newest first: Step, Time, Command, Old, New."""
    columns = ["Step", "Time", "Command", "Old", "New"]
    if len(events) == 0:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    ordered = events.iloc[::-1]
    times = [
        datetime.datetime.fromtimestamp(float(t)).strftime("%H:%M:%S") for t in ordered["time_s"]
    ]
    return pd.DataFrame(
        {
            "Step": ordered["step"].astype(np.int64).to_numpy(),
            "Time": times,
            "Command": ordered["kind"].astype(str).to_numpy(),
            "Old": ordered["old"].astype(str).to_numpy(),
            "New": ordered["new"].astype(str).to_numpy(),
        }
    )


def event_rules_frame(events: pd.DataFrame, limit: int = MAX_EVENT_RULES) -> pd.DataFrame:
    """Events to draw as rules: the newest `limit`, without the run's own start."""
    if len(events) == 0:
        return pd.DataFrame({"step": [], "kind": [], "old": [], "new": [], "group": [], "label": []})
    shown = events[events["kind"] != "start"].tail(limit)
    return pd.DataFrame(
        {
            "step": shown["step"].astype(np.int64).to_numpy(),
            "kind": shown["kind"].astype(str).to_numpy(),
            "old": shown["old"].astype(str).to_numpy(),
            "new": shown["new"].astype(str).to_numpy(),
            "group": [event_group(kind) for kind in shown["kind"]],
            "label": [
                event_label(kind, old, new)
                for kind, old, new in zip(shown["kind"], shown["old"], shown["new"])
            ],
        }
    )


def loss_frame(view: pd.DataFrame, log_scale: bool = False, max_points: int = LINE_POINTS) -> pd.DataFrame:
    """The loss chart's rows: step, steps, loss (mean per point)."""
    data = even_spans(view, max_points, METRIC_AGGREGATIONS)
    loss = finite(data["loss"])
    return pd.DataFrame(
        {
            "step": data["step"].astype(np.int64),
            "steps": data["steps"].astype(np.int64),
            "loss": positive_values(loss) if log_scale else loss,
        }
    )


def event_labels_frame(rules: pd.DataFrame) -> pd.DataFrame:
    """One label per step: commands taken at the same step (pause, resume) share it."""
    return rules.groupby("step", sort=True).agg(
        label=("label", " · ".join), group=("group", "last")
    ).reset_index()


def clip_rate_frame(view: pd.DataFrame, window: int = CLIP_RATE_WINDOW, max_points: int = LINE_POINTS) -> pd.DataFrame:
    """The clip-rate chart's rows: the rolling clip rate merged into at most `max_points` spans."""
    rate = rolling_clip_rate(view, window)
    if len(view):
        rate["steps"] = view["steps"].to_numpy(np.int64)
    return even_spans(rate, max_points, {"clip_rate": "mean", "steps_in_window": "max"})


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
) -> alt.LayerChart:
    """Loss (mean per point) with every command drawn as a labelled vertical rule, and the
    validation loss (`evaluations` rows named `val_loss`) as a dotted line beside it."""
    frame = loss_frame(view, log_scale, max_points)
    line = (
        alt.Chart(frame)
        .transform_filter("isValid(datum.loss)")
        .mark_line(color=COLORS["loss"], strokeWidth=1.4)
        .encode(
            x=step_axis(frame["step"]),
            y=alt.Y("loss:Q", title="Loss (mean per point)", scale=y_scale(log_scale, zero=False)),
            tooltip=[
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("steps:Q", title="Steps in point", format=","),
                alt.Tooltip("loss:Q", title="Loss", format=".4g"),
            ],
        )
    )
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
) -> alt.Chart:
    """Share of clipped steps over a rolling window of `window` steps (mean per point)."""
    data = clip_rate_frame(view, window, max_points)
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
    "COLORS",
    "LINE_POINTS",
    "MAX_POINTS",
    "even_spans",
    "chart_rows",
    "clip_rate_chart",
    "event_label",
    "events_table",
    "gradient_norm_chart",
    "gradient_norm_histogram",
    "group_layer_view",
    "headline",
    "latest_validation",
    "layer_norm_chart",
    "loss_chart",
    "rolling_clip_rate",
    "validation_loss_frame",
    "suggest_threshold",
    "what_if",
]
