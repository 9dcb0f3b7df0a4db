"""The rows each chart draws: pure functions of the frames a `MetricsStore` hands out.

Nothing here imports Streamlit, TensorFlow or Altair; `charts` draws these rows and
`chart_specs` fills them into cached specs, so both draw the same numbers. The inputs:

* a *metrics view* (`store.view()[0]`): one row per point, each standing for `steps` steps,
  with `grad_norm` / `clipped_grad_norm` the max over the point's steps (so a spike stays
  visible however long the run), `clipped` and `nonfinite` counts, and `clip_threshold` the
  last value in force;
* a *layer view* (`store.view()[1]`): `step` plus one column per trainable variable;
* recent raw rows (`store.metrics(last=N)`) for the histogram;
* evaluation rows (`Trainer.evaluations()`): step, name, value.

Every frame cuts the run into at most `max_points` equal spans of steps and merges the rows
in each span (keeping the span's largest norm, so a spike stays visible), whatever it is
handed: a chart costs the same for any run length, and old and new steps are drawn at one
density. Non-finite values (a NaN step, the `inf` threshold of policy `none`) become NaN,
which the charts drop.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

MAX_POINTS = 2000  # the most rows any chart carries; the browser stays fast
LINE_POINTS = 600  # spans of steps in the line charts: about one per two pixels of a wide chart
HEATMAP_COLUMNS = 240  # time spans in the per-layer heatmap: about one per 3-4 pixels
CLIP_RATE_WINDOW = 100  # steps in the rolling clip rate
# Rows of the per-layer heatmap: a label per row stays readable at 36 px; a model with more
# variables is drawn per layer, and past this many layers as the largest ones plus "other".
MAX_LAYER_ROWS = 40

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


MAX_SMOOTHING = 0.999  # 1 would hold the first point for ever


def validate_smoothing(value) -> float:
    """A smoothing weight in [0, MAX_SMOOTHING] (0: off); ValueError naming the value otherwise."""
    number = float(value) if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) else math.nan
    if not 0.0 <= number <= MAX_SMOOTHING:
        raise ValueError(f"Smoothing must be a number in [0, {MAX_SMOOTHING}] (0: off). Received: smoothing={value!r}")
    return number


def smoothed(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first points are
    not pulled towards 0: s_t = sum_i w^i x_(t-i) / sum_i w^i over the finite points so far.
    A point that is not finite (a NaN loss) stays NaN and does not enter the average."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    weight = validate_smoothing(weight)
    total = norm = 0.0
    for index, value in enumerate(values):
        if not math.isfinite(value):
            continue
        total, norm = weight * total + value, weight * norm + 1.0
        out[index] = total / norm
    return out


def loss_frame(view: pd.DataFrame, log_scale: bool = False, max_points: int = LINE_POINTS,
               smoothing: float = 0.0) -> pd.DataFrame:  # fmt: skip
    """The loss chart's rows: step, steps, loss (mean per point), and with `smoothing` > 0 the
    loss smoothed over the plotted points (`loss_smoothed`), as TensorBoard smooths what it draws."""
    data = even_spans(view, max_points, METRIC_AGGREGATIONS)
    loss = finite(data["loss"])
    loss = positive_values(loss) if log_scale else loss
    frame = pd.DataFrame(
        {
            "step": data["step"].astype(np.int64),
            "steps": data["steps"].astype(np.int64),
            "loss": loss,
        }
    )
    if validate_smoothing(smoothing) > 0:
        frame["loss_smoothed"] = smoothed(frame["loss"].to_numpy(), smoothing)
    return frame


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


def clip_rate_frame(view: pd.DataFrame, window: int = CLIP_RATE_WINDOW, max_points: int = LINE_POINTS,
                    from_step: int | None = None) -> pd.DataFrame:  # fmt: skip
    """The clip-rate chart's rows: the rolling clip rate merged into at most `max_points` spans.

    With `from_step`, rows ending before it are left out of the chart but still fill the rolling
    window (a zoomed chart's first points count the `window` steps before them)."""
    rate = rolling_clip_rate(view, window)
    if len(view):
        rate["steps"] = view["steps"].to_numpy(np.int64)
        if from_step is not None:
            ends = rate["step"].to_numpy(np.int64) + rate["steps"].to_numpy(np.int64) - 1
            rate = rate[ends >= from_step].reset_index(drop=True)
    return even_spans(rate, max_points, {"clip_rate": "mean", "steps_in_window": "max"})


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
