"""Charts and tables about several runs at once: the Compare tab, the A/B race and History.

Pure functions of DataFrames (no Streamlit, no TensorFlow). The charts take one *long* frame:
the metrics views (or raw per-step metrics) of several runs stacked, with a `run` column naming
the run each row belongs to (`runs_long_frame` builds it). Every run's series is cut into at
most `max_points` equal spans of steps (norms keep each span's largest value, so a spike stays
visible; the loss and the clip rate keep the mean), so a chart carries at most
`max_points` rows per run and per series however long the runs are.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from dashboard import charts, lineage, step_range

MAX_RUNS = 6  # the most runs one comparison overlays: more lines stop being readable
# One colour per run, in the order the runs are given (A/B races: A blue, B orange).
RUN_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2")
RUN = "run"
NORM_SERIES = "Gradient norm (max per point)"
THRESHOLD_SERIES = "Threshold"


# --- frames --------------------------------------------------------------------------------------


def runs_long_frame(views: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack the metrics of several runs into one long frame with a `run` column.

    `views` maps a run's name to its metrics view (`store.view()[0]`) or its raw per-step
    metrics; the names' order is the runs' order in legends and colours.
    """
    if len(views) > MAX_RUNS:
        raise ValueError(
            f"At most {MAX_RUNS} runs can be overlaid. Received {len(views)} runs: {list(views)}"
        )
    frames = []
    for name, view in views.items():
        if "step" not in view:
            raise ValueError(f"Run {name!r} has no `step` column. Received columns: {list(view.columns)}")
        frames.append(_normalized(view).assign(**{RUN: str(name)}))
    if not frames:
        return pd.DataFrame(columns=[RUN, "step", "steps", "loss", "grad_norm", "clipped"])
    long = pd.concat(frames, ignore_index=True)
    long[RUN] = pd.Categorical(long[RUN], categories=[str(name) for name in views])
    return long


def covered_steps(views: Mapping[str, pd.DataFrame]) -> tuple[int, int] | None:
    """The first and the newest step any of several runs' views stands for; None if all are empty."""
    covered = [step_range.covered_steps(view) for view in views.values()]
    covered = [pair for pair in covered if pair is not None]
    if not covered:
        return None
    return min(first for first, _ in covered), max(newest for _, newest in covered)


def _normalized(view: pd.DataFrame) -> pd.DataFrame:
    """A view or raw metrics in the columns of a view (`steps`, counts of clipped and NaN steps)."""
    frame = pd.DataFrame({"step": view["step"].to_numpy(np.int64)})
    frame["steps"] = view["steps"].to_numpy(np.int64) if "steps" in view else np.ones(len(view), np.int64)
    for column in ("loss", "grad_norm", "clip_threshold"):
        frame[column] = charts.finite(view[column]) if column in view else np.nan
    frame["grad_norm_mean"] = charts.finite(view["grad_norm_mean"]) if "grad_norm_mean" in view else frame["grad_norm"]
    frame["clipped"] = view["clipped"].to_numpy().astype(np.int64) if "clipped" in view else 0
    if "nonfinite" in view:
        frame["nonfinite"] = view["nonfinite"].to_numpy(np.int64)
    elif "finite" in view:
        frame["nonfinite"] = (~view["finite"].to_numpy().astype(bool)).astype(np.int64)
    else:
        frame["nonfinite"] = 0
    frame["policy"] = view["policy"].astype(str).to_numpy() if "policy" in view else ""
    return frame


def run_series_frame(
    long: pd.DataFrame, max_points: int = charts.LINE_POINTS, window: int = charts.CLIP_RATE_WINDOW,
    from_step: int | None = None,
) -> pd.DataFrame:
    """What the multi-run charts draw: per run, at most `max_points` rows.

    Columns: run, step, steps, loss (mean), grad_norm (max), grad_norm_mean, clip_threshold
    (last; NaN where the policy does not compare it with the norm), clip_rate (rolling over
    `window` steps, mean per point), nonfinite (how many of the point's steps were NaN/inf).
    With `from_step`, rows ending before it only fill the rolling window (a zoom's first points).
    """
    columns = [
        RUN, "step", "steps", "loss", "grad_norm", "grad_norm_mean", "clip_threshold", "clip_rate",
        "nonfinite",
    ]  # fmt: skip
    if RUN not in long:
        raise ValueError(f"A long frame of runs needs a `{RUN}` column. Received columns: {list(long.columns)}")
    parts = []
    runs = long[RUN].cat.categories if isinstance(long[RUN].dtype, pd.CategoricalDtype) else pd.unique(long[RUN])
    for name in runs:
        view = long[long[RUN] == name].drop(columns=[RUN]).sort_values("step").reset_index(drop=True)
        if len(view) == 0:
            continue
        view = _normalized(view)
        view["clip_rate"] = charts.rolling_clip_rate(view, window)["clip_rate"].to_numpy()
        if from_step is not None:
            view = view[view["step"] + view["steps"] - 1 >= from_step].reset_index(drop=True)
            if len(view) == 0:
                continue
        spans = charts.even_spans(view, max_points, {**charts.METRIC_AGGREGATIONS, "clip_rate": "mean"})
        threshold = charts.finite(spans["clip_threshold"])
        compares_norm = spans["policy"].astype(str).isin(charts.NORM_THRESHOLD_POLICIES).to_numpy()
        parts.append(
            pd.DataFrame(
                {
                    RUN: str(name),
                    "step": spans["step"].to_numpy(np.int64),
                    "steps": spans["steps"].to_numpy(np.int64),
                    "loss": charts.finite(spans["loss"]),
                    "grad_norm": charts.finite(spans["grad_norm"]),
                    "grad_norm_mean": charts.finite(spans["grad_norm_mean"]),
                    "clip_threshold": np.where(compares_norm, threshold, np.nan),
                    "clip_rate": charts.finite(spans["clip_rate"]),
                    "nonfinite": spans["nonfinite"].to_numpy(np.int64),
                }
            )
        )
    if not parts:
        return pd.DataFrame({column: [] for column in columns})
    return pd.concat(parts, ignore_index=True)[columns]


# --- charts --------------------------------------------------------------------------------------


def _run_names(long: pd.DataFrame) -> list[str]:
    if isinstance(long[RUN].dtype, pd.CategoricalDtype):
        return [str(name) for name in long[RUN].cat.categories]
    return [str(name) for name in pd.unique(long[RUN])]


def run_color_scale(names: Sequence[str]) -> alt.Scale:
    """Colours by run, in order; the same runs get the same colours in every chart."""
    return alt.Scale(domain=list(names), range=[RUN_COLORS[index % len(RUN_COLORS)] for index in range(len(names))])


def _color(names: Sequence[str], legend: bool = True) -> alt.Color:
    return alt.Color(
        f"{RUN}:N",
        scale=run_color_scale(names),
        legend=alt.Legend(title="Run", orient="top", symbolStrokeWidth=3, labelLimit=280) if legend else None,
    )


def _positive_where(frame: pd.DataFrame, columns: Sequence[str], log_scale: bool) -> pd.DataFrame:
    if log_scale:
        for column in columns:
            values = frame[column].to_numpy(np.float64)
            frame[column] = np.where(values > 0, values, np.nan)
    return frame


def runs_gradient_norm_chart(
    long: pd.DataFrame, log_scale: bool = False, max_points: int = charts.LINE_POINTS, height: int = 320,
    from_step: int | None = None,
) -> alt.LayerChart:
    """Each run's pre-clip gradient norm (max per point), with its threshold dashed, by colour;
    from `from_step` when given (`run_series_frame`).

    Where a run had NaN/inf steps there is no line; a small triangle along the top edge marks
    them instead (a run that diverged shows where).
    """
    names = _run_names(long)
    data = run_series_frame(long, max_points, from_step=from_step)
    data = _positive_where(data, ("grad_norm", "clip_threshold"), log_scale)
    base = alt.Chart().encode(x=charts.step_axis(data["step"]), color=_color(names))
    dash = alt.StrokeDash(
        "series:N",
        scale=alt.Scale(domain=[NORM_SERIES, THRESHOLD_SERIES], range=[[1, 0], [6, 3]]),
        legend=alt.Legend(title=None, orient="top", symbolStrokeColor="#555", symbolStrokeWidth=2),
    )
    y_title = "Gradient norm before clip" + (", log scale" if log_scale else "")
    norm = (
        base.transform_filter("isValid(datum.grad_norm)")
        .transform_calculate(series=f"'{NORM_SERIES}'")
        .mark_line(strokeWidth=1.4)
        .encode(
            y=alt.Y("grad_norm:Q", title=y_title, scale=charts.y_scale(log_scale)),
            strokeDash=dash,
            tooltip=[
                alt.Tooltip(f"{RUN}:N", title="Run"),
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("grad_norm:Q", title="Norm (max)", format=".4g"),
                alt.Tooltip("grad_norm_mean:Q", title="Norm (mean)", format=".4g"),
                alt.Tooltip("clip_threshold:Q", title="Threshold", format=".4g"),
            ],
        )
    )
    threshold = (
        base.transform_filter("isValid(datum.clip_threshold)")
        .transform_calculate(series=f"'{THRESHOLD_SERIES}'")
        .mark_line(interpolate="step-after", strokeWidth=2, opacity=0.8)
        .encode(y=alt.Y("clip_threshold:Q"), strokeDash=dash)
    )
    return alt.layer(norm, threshold, _nonfinite_markers(base), data=data).properties(height=height)


def _nonfinite_markers(base: alt.Chart) -> alt.Chart:
    """A small triangle along the top edge wherever a run had NaN/inf steps (no line there)."""
    return (
        base.transform_filter("datum.nonfinite > 0")
        .mark_point(shape="triangle-down", filled=True, size=40, opacity=0.8)
        .encode(
            y=alt.value(6),
            tooltip=[
                alt.Tooltip(f"{RUN}:N", title="Run"),
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("nonfinite:Q", title="Non-finite steps", format=","),
            ],
        )
    )


def runs_evaluation_frame(evaluations: Mapping[str, pd.DataFrame], name: str = "val_loss",
                          column: str = "val_loss") -> pd.DataFrame:
    """`run, step, <column>` of the evaluations named `name` of several runs (`evaluations`
    maps a run's name to its `Trainer.evaluations()` / `RunDatabase.evaluations()` rows)."""
    frames = [charts.evaluation_frame(rows, name, column).assign(**{RUN: run}) for run, rows in evaluations.items()]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return pd.DataFrame({RUN: pd.Series(dtype="object"), "step": pd.Series(dtype="int64"),
                             column: pd.Series(dtype="float64")})  # fmt: skip
    return pd.concat(frames, ignore_index=True)[[RUN, "step", column]]


def runs_validation_frame(evaluations: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """`run, step, val_loss` of several runs (see `runs_evaluation_frame`)."""
    return runs_evaluation_frame(evaluations, "val_loss", "val_loss")


def runs_loss_chart(
    long: pd.DataFrame,
    log_scale: bool = False,
    max_points: int = charts.LINE_POINTS,
    height: int = 260,
    validation: pd.DataFrame | None = None,
    from_step: int | None = None,
    smoothing: float = 0.0,
) -> alt.LayerChart:
    """Each run's loss (mean per point), by colour; NaN/inf steps marked along the top edge;
    each run's validation loss (`runs_validation_frame`) dashed with dots in its colour; from
    `from_step` when given (`run_series_frame`). With `smoothing` > 0, each run's loss smoothed
    over its own plotted points (`charts.smoothed`, TensorBoard's) is drawn over its raw curve,
    which stays behind it, faint, as on the Live tab."""
    smoothing = charts.validate_smoothing(smoothing)
    names = _run_names(long)
    data = _positive_where(run_series_frame(long, max_points, from_step=from_step), ("loss",), log_scale)
    if smoothing > 0:
        data["loss_smoothed"] = np.nan
        for _, rows in data.groupby(RUN, sort=False):  # each run on its own: runs never blend
            data.loc[rows.index, "loss_smoothed"] = charts.smoothed(rows["loss"].to_numpy(), smoothing)
    base = alt.Chart().encode(x=charts.step_axis(data["step"]), color=_color(names))
    line = (
        base.transform_filter("isValid(datum.loss)")
        .mark_line(strokeWidth=1.4, opacity=charts.RAW_OPACITY if smoothing > 0 else 1.0)
        .encode(
            y=alt.Y("loss:Q", title="Loss (mean per point)" + (", log scale" if log_scale else ""),
                    scale=charts.y_scale(log_scale, zero=False)),
            tooltip=[
                alt.Tooltip(f"{RUN}:N", title="Run"),
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("loss:Q", title="Loss", format=".4g"),
            ],
        )
    )
    if smoothing > 0:
        line = alt.layer(line, (
            base.transform_filter("isValid(datum.loss_smoothed)")
            .mark_line(strokeWidth=1.8)
            .encode(
                y=alt.Y("loss_smoothed:Q", scale=charts.y_scale(log_scale, zero=False)),
                tooltip=[
                    alt.Tooltip(f"{RUN}:N", title="Run"),
                    alt.Tooltip("step:Q", title="Step", format=","),
                    alt.Tooltip("loss:Q", title="Loss", format=".4g"),
                    alt.Tooltip("loss_smoothed:Q", title="Smoothed loss", format=".4g"),
                ],
            )
        ))  # fmt: skip
    layers = alt.layer(line, _nonfinite_markers(base), data=data)
    if validation is not None and len(validation):
        validation = _positive_where(validation.copy(), ("val_loss",), log_scale)
        dashed = (
            alt.Chart(validation)
            .transform_filter("isValid(datum.val_loss)")
            .mark_line(strokeDash=[5, 3], strokeWidth=1.6, point=True)
            .encode(
                x=alt.X("step:Q"),
                y=alt.Y("val_loss:Q"),
                color=_color(names, legend=False),
                tooltip=[
                    alt.Tooltip(f"{RUN}:N", title="Run"),
                    alt.Tooltip("step:Q", title="Step", format=","),
                    alt.Tooltip("val_loss:Q", title="Validation loss", format=".4g"),
                ],
            )
        )
        layers = alt.layer(layers, dashed)
    return layers.properties(height=height)


def runs_metric_chart(metric: pd.DataFrame, name: str, names: Sequence[str], height: int = 260) -> alt.Chart:
    """One recorded metric of several runs (`runs_evaluation_frame(..., name, "value")`), coloured
    by run as in the other charts (`names`: every compared run, in order)."""
    return (
        alt.Chart(metric)
        .mark_line(strokeWidth=1.6, point=True, strokeDash=[5, 3] if name.startswith("val_") else [])
        .encode(
            x=charts.step_axis(metric["step"]),
            y=alt.Y("value:Q", title=name, scale=alt.Scale(zero=False)),
            color=_color(names),
            tooltip=[
                alt.Tooltip(f"{RUN}:N", title="Run"),
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("value:Q", title=name, format=".4g"),
            ],
        )
        .properties(height=height)
    )


def runs_clip_rate_chart(
    long: pd.DataFrame,
    window: int = charts.CLIP_RATE_WINDOW,
    max_points: int = charts.LINE_POINTS,
    height: int = 260,
    from_step: int | None = None,
) -> alt.Chart:
    """Each run's share of clipped steps over a rolling window of `window` steps, by colour;
    from `from_step` when given (the steps before it still fill the window)."""
    names = _run_names(long)
    data = run_series_frame(long, max_points, window, from_step)
    return (
        alt.Chart(data)
        .transform_filter("isValid(datum.clip_rate)")
        .mark_line(strokeWidth=1.6, interpolate="step-after")
        .encode(
            x=charts.step_axis(data["step"]),
            y=alt.Y(
                "clip_rate:Q",
                title=f"Clipped, rolling {window} steps",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
            ),
            color=_color(names),
            tooltip=[
                alt.Tooltip(f"{RUN}:N", title="Run"),
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("clip_rate:Q", title="Clip rate", format=".1%"),
            ],
        )
        .properties(height=height)
    )


# --- tables --------------------------------------------------------------------------------------


def _date(seconds: Any) -> str:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(value):
        return ""
    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _threshold(value: Any, policy: Any) -> float:
    """A run's threshold for the tables: blank under `none`, which clips nothing (its steps
    record inf; the Live header says "off"), not the sidebar's value it was started with."""
    return math.nan if policy == "none" else _number(value)


def history_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The History tab's list: one row per recorded run (`RunDatabase.list_runs()`, in its order;
    `lineage.lineage_order` puts branches under their run and adds the `depth` that indents a
    branch's name), with the run each branch was forked from."""
    columns = ["Id", "Name", "Forked from", "Task", "Policy", "Threshold", "Steps", "Final loss", "Clip rate",
               "State", "Host", "Date"]  # fmt: skip
    if len(runs) == 0:
        return pd.DataFrame({column: [] for column in columns})
    depths = runs["depth"] if "depth" in runs else [0] * len(runs)
    parents = runs["parent_run_id"] if "parent_run_id" in runs else [None] * len(runs)
    fork_steps = runs["fork_step"] if "fork_step" in runs else [None] * len(runs)
    return pd.DataFrame(
        {
            "Id": runs["run_id"].astype(np.int64).to_numpy(),
            "Name": [("  " * (int(depth) - 1) + lineage.BRANCH_MARK if depth else "") + str(name)
                     for name, depth in zip(runs["name"], depths)],  # fmt: skip
            "Forked from": [lineage.forked_from(parent, step) for parent, step in zip(parents, fork_steps)],
            "Task": runs["task"].astype(str).to_numpy(),
            "Policy": runs["policy"].astype(str).to_numpy(),
            "Threshold": [_threshold(value, policy) for value, policy in zip(runs["clip_threshold"], runs["policy"])],
            "Steps": runs["steps"].fillna(0).astype(np.int64).to_numpy(),
            "Final loss": [_number(value) for value in runs["final_loss"]],
            "Clip rate": [_number(value) for value in runs["clip_rate"]],
            "State": runs["state"].astype(str).to_numpy(),
            # The machine recording it (runs shared on a server come from several); "" before hosts were kept.
            "Host": [value if isinstance(value, str) else "" for value in runs.get("host", [None] * len(runs))],
            "Date": [_date(value) for value in runs["created_at"]],
        }
    )


def runs_config_table(infos: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Configs and final numbers of compared runs side by side: one row per run.

    `infos` are `RunDatabase.run_info()` dicts (with `nonfinite_steps` if known); `names` the
    runs' names as the charts' legend shows them (default: each info's `name`).
    """
    names = list(names) if names is not None else [str(info.get("name", "")) for info in infos]
    if len(names) != len(infos):
        raise ValueError(f"One name per run is needed. Received {len(names)} names for {len(infos)} runs")
    rows = []
    for name, info in zip(names, infos):
        config = info.get("config") or {}
        policy = info.get("policy", config.get("policy", ""))
        params = (config.get("policy_params") or {}).get(policy) or {}
        rows.append(
            {
                "Run": name,
                "Task": info.get("task", config.get("task", "")),
                "Policy": policy,
                "Policy parameters": ", ".join(f"{key}={value:g}" for key, value in params.items()),
                "Threshold": _threshold(info.get("clip_threshold"), policy),
                "Learning rate": _number(info.get("learning_rate")),
                "Batch size": int(info.get("batch_size") or config.get("batch_size") or 0),
                "Seed": int(info.get("seed") if info.get("seed") is not None else config.get("seed", 0)),
                "Steps": int(info.get("steps") or 0),
                "Final loss": _number(info.get("final_loss")),
                "Final val loss": _number(info.get("val_loss")),  # the last evaluation, if any
                "Clip rate": _number(info.get("clip_rate")),
                "State": str(info.get("state", "")),
            }
        )
    return pd.DataFrame(rows)


def unique_run_names(names: Sequence[str], run_ids: Sequence[int]) -> list[str]:
    """Run names for a legend: a name two runs share gets each run's id added ("baseline #3")."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} #{run_id}" for name, run_id in zip(names, run_ids)]


__all__ = [
    "MAX_RUNS",
    "RUN_COLORS",
    "covered_steps",
    "history_table",
    "run_color_scale",
    "run_series_frame",
    "runs_clip_rate_chart",
    "runs_config_table",
    "runs_gradient_norm_chart",
    "runs_long_frame",
    "runs_loss_chart",
    "runs_validation_frame",
    "unique_run_names",
]
