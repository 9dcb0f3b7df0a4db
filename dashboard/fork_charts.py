"""How branches of the live run are drawn: on the parent's charts, and a sweep's "Loss by clip threshold".

Pure functions of DataFrames and Vega-Lite dicts (no Streamlit, no TensorFlow). A fork is drawn
on the live charts (gradient norm, loss, clip rate) as one more layer of the parent's spec, from
its fork step, in its own colour: the layer encodes the branch on `stroke`, a channel the
parent's layers do not use, so its legend (each branch's settings) stays apart from the parent's
own colour legend without touching the parent's layers. A sweep's result is drawn by Altair.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from dashboard import charts, comparison
from dashboard.chart_specs import records, visit_dicts

# Colours no line of the parent's charts uses (theirs: charts.COLORS).
BRANCH_COLORS = ("#B279A2", "#17BECF", "#9D755D", "#FF9DA6", "#BCBD22", "#1F77B4", "#8C564B", "#E377C2")
BRANCH_DATASET = "clipwatch_branches"
BRANCH = comparison.RUN  # the column naming each row's branch
# The live charts that draw branches, and the column each draws of a branch.
BRANCH_FIELDS = {"gradient_norm": "grad_norm_mean", "loss": "loss", "clip_rate": "clip_rate"}
_LOG_FIELDS = ("grad_norm_mean", "loss")  # the columns drawn on a log axis when the view is log-scale
_TOP_LEVEL = ("$schema", "config", "datasets", "height", "width", "autosize", "padding", "background", "usermeta")
WITHIN_NOISE = "within noise"
OWN_SETTINGS_COLORS = {"baseline": "#3B3B58", "noise": "#7F7F7F"}  # a sweep's two branches at the run's settings


def branch_name(branch_id: int, label: str, fork_step: int) -> str:
    """A branch's name in legends: "Branch 2 · clip 0.3 · from step 1,200"."""
    return f"Branch {branch_id} · {label} · from step {fork_step:,}"


def branch_colors(branch_ids: Sequence[int]) -> dict[int, str]:
    """A colour per branch: its id's own colour, or the next one free among `branch_ids` (so a
    branch keeps its colour while others come and go, and no two shown share one)."""
    colors, taken = {}, set()
    for branch_id in sorted(branch_ids):
        index = branch_id % len(BRANCH_COLORS)
        while BRANCH_COLORS[index] in taken and len(taken) < len(BRANCH_COLORS):
            index = (index + 1) % len(BRANCH_COLORS)
        colors[branch_id] = BRANCH_COLORS[index]
        taken.add(BRANCH_COLORS[index])
    return colors


def branches_long_frame(metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Several branches' per-step rows stacked, with a `run` column naming each (in order)."""
    frames = [frame.assign(**{BRANCH: name}) for name, frame in metrics.items() if len(frame)]
    if not frames:
        return pd.DataFrame({BRANCH: pd.Categorical([], categories=list(metrics)), "step": []})
    long = pd.concat(frames, ignore_index=True)
    long[BRANCH] = pd.Categorical(long[BRANCH], categories=list(metrics))
    return long


VIEW_COLUMNS = ("step", "steps", "loss", "grad_norm", "grad_norm_mean", "clip_threshold", "clipped", "nonfinite", "policy")


def grown_view(view: pd.DataFrame | None, rows: pd.DataFrame, max_points: int = charts.MAX_POINTS) -> pd.DataFrame:
    """A branch's bounded view with its new per-step `rows` (`Trainer.branch_metrics` since the
    view's last step) added: the columns the multi-run charts read, merged into at most
    `max_points` spans once it holds twice that (a branch can train 100,000 steps; a refresh
    then reads its new rows only and draws a few thousand)."""
    new = pd.DataFrame(
        {
            "step": rows["step"].to_numpy(np.int64),
            "steps": np.ones(len(rows), np.int64),
            "loss": charts.finite(rows["loss"]),
            "grad_norm": charts.finite(rows["grad_norm"]),
            "grad_norm_mean": charts.finite(rows["grad_norm"]),
            "clip_threshold": charts.finite(rows["clip_threshold"]),
            "clipped": rows["clipped"].to_numpy().astype(np.int64),
            "nonfinite": (~rows["finite"].to_numpy().astype(bool)).astype(np.int64),
            "policy": rows["policy"].astype(str).to_numpy(),
        }
    )
    view = new if view is None or not len(view) else pd.concat([view, new], ignore_index=True)
    if len(view) > 2 * max_points:
        view = charts.even_spans(view, max_points, charts.METRIC_AGGREGATIONS)[list(VIEW_COLUMNS)]
    return view


def branch_series(metrics: Mapping[str, pd.DataFrame], log_scale: bool = False,
                  max_points: int = charts.LINE_POINTS) -> pd.DataFrame:  # fmt: skip
    """What the live charts draw of each branch: step, loss, grad_norm_mean, clip_rate per point."""
    series = comparison.run_series_frame(branches_long_frame(metrics), max_points)
    if log_scale:
        for column in _LOG_FIELDS:
            series[column] = charts.positive_values(series[column].to_numpy(np.float64))
    return series


def with_branches(spec: dict, series: pd.DataFrame, field: str, colors: Mapping[str, str]) -> dict:
    """`spec` (a live chart's Vega-Lite dict, left unchanged) with each branch's `field` drawn
    over it as a line coloured by `colors` (branch name -> colour), named in a "Branches" legend,
    and its step axis widened to the branches' last step (a branch can run ahead of its parent)."""
    if not len(series):
        return spec
    names = list(colors)
    outer = {key: value for key, value in spec.items() if key in _TOP_LEVEL and key != "datasets"}
    inner = copy.deepcopy({key: value for key, value in spec.items() if key not in _TOP_LEVEL})
    layers = inner.pop("layer") if "layer" in inner else [inner]
    shared = {key: inner.pop(key) for key in ("data", "params") if key in inner and "layer" in spec}
    rows = series[[BRANCH, "step", field]].astype({BRANCH: str})
    layer = {
        "data": {"name": BRANCH_DATASET},
        "transform": [{"filter": f"isValid(datum.{field})"}],
        "mark": {"type": "line", "strokeWidth": 1.6, "interpolate": "linear"},
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": field, "type": "quantitative"},
            "stroke": {
                "field": BRANCH, "type": "nominal",
                "scale": {"domain": names, "range": [colors[name] for name in names]},
                "legend": {"title": "Branches", "orient": "top", "symbolType": "stroke",
                           "symbolStrokeWidth": 3, "labelLimit": 360},
            },
            "tooltip": [
                {"field": BRANCH, "type": "nominal", "title": "Branch"},
                {"field": "step", "type": "quantitative", "title": "Step", "format": ","},
                {"field": field, "type": "quantitative", "title": field.replace("_", " "), "format": ".4g"},
            ],
        },
    }  # fmt: skip
    combined = {**outer, **shared, "layer": [*layers, layer]}
    combined["datasets"] = {**spec.get("datasets", {}), BRANCH_DATASET: records(rows)}
    _widen_step_domain(combined, float(rows["step"].max()))
    return combined


def _widen_step_domain(spec: dict, last_step: float) -> None:
    """Make every explicit step domain in `spec` reach `last_step` (in place: a copy's)."""

    def widen(node: dict) -> None:
        x = node.get("x")
        domain = x.get("scale", {}).get("domain") if isinstance(x, dict) and x.get("field") == "step" else None
        if isinstance(domain, list) and len(domain) == 2 and domain[1] < last_step:
            node["x"] = {**x, "scale": {**x["scale"], "domain": [domain[0], last_step]}}

    visit_dicts(spec, widen)


def live_specs_with_branches(specs: dict, metrics: Mapping[str, pd.DataFrame], colors: Mapping[str, str],
                             log_scale: bool = False) -> dict:  # fmt: skip
    """The live view's specs (by name) with the branches drawn on the charts in `BRANCH_FIELDS`."""
    if not metrics:
        return specs
    series = branch_series(metrics, log_scale)
    return {name: with_branches(spec, series, BRANCH_FIELDS[name], colors) if name in BRANCH_FIELDS else spec
            for name, spec in specs.items()}  # fmt: skip


# --- a sweep's result ----------------------------------------------------------------------------


def sweep_frame(result: Mapping) -> pd.DataFrame:
    """One row per threshold: clip_threshold, mean_loss, final_loss, clip_rate, verdict, best."""
    rows = list(result.get("sweep", []))
    best = result.get("best_clip_threshold")
    frame = pd.DataFrame(
        {
            "clip_threshold": [float(row["clip_threshold"]) for row in rows],
            "mean_loss": charts.finite([row["mean_loss"] for row in rows]),
            "final_loss": charts.finite([row["final_loss"] for row in rows]),
            "clip_rate": charts.finite([row["clip_rate"] for row in rows]),
            "verdict": [WITHIN_NOISE if row.get("within_noise") else "" for row in rows],
            "best": [best is not None and row["clip_threshold"] == best for row in rows],
            "branch_id": [int(row["branch_id"]) for row in rows],
        }
    )
    return frame


def noise_band(result: Mapping) -> tuple[float, float] | None:
    """(low, high) of the run's own noise around the baseline's mean loss, or None if unknown."""
    baseline, noise = result.get("baseline_mean_loss"), result.get("noise_floor")
    if baseline is None or noise is None or not (math.isfinite(baseline) and math.isfinite(noise)):
        return None
    return baseline - noise, baseline + noise


def sweep_loss_chart(result: Mapping, height: int = 280) -> alt.LayerChart:
    """Mean loss over each branch's last quarter against its clip threshold (log axis), with the
    noise band (the baseline's mean loss ± the noise floor) and the thresholds inside it labelled."""
    frame = sweep_frame(result)
    x = alt.X("clip_threshold:Q", title="Clip threshold (log scale)", scale=alt.Scale(type="log", nice=False))
    y = alt.Y("mean_loss:Q", title="Mean loss, last quarter of the branch", scale=alt.Scale(zero=False))
    tooltip = [
        alt.Tooltip("clip_threshold:Q", title="Clip threshold", format=".4g"),
        alt.Tooltip("mean_loss:Q", title="Mean loss", format=".4g"),
        alt.Tooltip("final_loss:Q", title="Final loss", format=".4g"),
        alt.Tooltip("clip_rate:Q", title="Clip rate", format=".0%"),
        alt.Tooltip("verdict:N", title="Verdict"),
    ]
    base = alt.Chart(frame).transform_filter("isValid(datum.mean_loss)")
    line = base.mark_line(color=charts.COLORS["loss"], point=alt.OverlayMarkDef(size=70, filled=True)).encode(
        x=x, y=y, tooltip=tooltip
    )
    labels = (
        base.transform_filter("datum.verdict != ''")
        .mark_text(dy=-12, fontSize=11, color="#555")
        .encode(x=x, y=y, text="verdict:N")
    )
    best = base.transform_filter("datum.best").mark_point(size=260, shape="circle", color=charts.COLORS["after_clip"],
                                                          strokeWidth=2.5).encode(x=x, y=y)  # fmt: skip
    layers = [line, labels, best]
    band = noise_band(result)
    if band is not None:
        bounds = pd.DataFrame({"low": [band[0]], "high": [band[1]], "baseline": [sum(band) / 2],
                               "band": ["noise band (baseline ± noise floor)"]})  # fmt: skip
        area = alt.Chart(bounds).mark_rect(opacity=0.18, color=charts.COLORS["hover"]).encode(
            y="low:Q", y2="high:Q", tooltip=[alt.Tooltip("band:N", title="Band"), alt.Tooltip("low:Q", format=".4g"),
                                               alt.Tooltip("high:Q", format=".4g")]  # fmt: skip
        )
        rule = alt.Chart(bounds).mark_rule(strokeDash=[4, 3], color="#7F7F7F").encode(y="baseline:Q")
        layers = [area, rule, *layers]
    return alt.layer(*layers).properties(height=height)


def sweep_curves_chart(metrics: Mapping[str, pd.DataFrame], height: int = 280) -> alt.LayerChart:
    """Each sweep branch's loss (mean per point) from the fork step, one colour per branch; the
    baseline and the noise branch (the run's own settings) dashed."""
    series = comparison.run_series_frame(branches_long_frame(metrics))
    names = list(metrics)
    own = [name for name in names if name.startswith(("baseline", "noise"))]
    others = iter(BRANCH_COLORS * 2)
    palette = [OWN_SETTINGS_COLORS[name.split()[0]] if name in own else next(others) for name in names]
    series["own_settings"] = series[BRANCH].astype(str).isin(own)
    return (
        alt.Chart(series)
        .transform_filter("isValid(datum.loss)")
        .mark_line(strokeWidth=1.4)
        .encode(
            x=charts.step_axis(series["step"]),
            y=alt.Y("loss:Q", title="Loss (mean per point)", scale=alt.Scale(zero=False)),
            color=alt.Color(f"{BRANCH}:N", scale=alt.Scale(domain=names, range=palette),
                            legend=alt.Legend(title="Branch", orient="top", labelLimit=280)),  # fmt: skip
            strokeDash=alt.StrokeDash("own_settings:N", scale=alt.Scale(domain=[False, True], range=[[1, 0], [5, 3]]),
                                      legend=None),  # fmt: skip
            tooltip=[alt.Tooltip(f"{BRANCH}:N", title="Branch"), alt.Tooltip("step:Q", title="Step", format=","),
                     alt.Tooltip("loss:Q", title="Loss", format=".4g")],  # fmt: skip
        )
        .properties(height=height)
    )


def drawn_branches(branches: Sequence, metrics: Mapping[int, pd.DataFrame]) -> tuple[dict, dict]:
    """The forks to draw on the live charts: (name -> per-step rows, name -> colour), by id.
    `branches`: `BranchStatus`es with rows in `metrics` (branch id -> rows)."""
    shown = [branch for branch in branches if branch.branch_id in metrics]
    colors = branch_colors([branch.branch_id for branch in shown])
    names = {branch.branch_id: branch_name(branch.branch_id, branch.label, branch.fork_step) for branch in shown}
    return ({names[b.branch_id]: metrics[b.branch_id] for b in shown},
            {names[b.branch_id]: colors[b.branch_id] for b in shown})  # fmt: skip
