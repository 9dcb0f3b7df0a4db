"""The threshold advisor's drawing: what other policies would have chosen, as ghost lines.

Pure functions (no Streamlit, no TensorFlow). The replay itself (`training.advisor.replay`)
runs in the glue (`run_manager`); this module gets its answers as arrays — the steps replayed
and, per policy, the threshold it would have used at each — and turns them into a small frame
and a chart layer drawn over the gradient-norm chart: dashed, faded lines, so they read as
"what would have been", under the real threshold's solid step line.
"""

from __future__ import annotations

import math
from typing import Mapping

import altair as alt
import numpy as np
import pandas as pd

from dashboard import charts

GHOST_COLORS = {"autoclip": "#6F4E9C", "zclip": "#2A9D8F"}  # purple, teal: not a series colour
GHOST_OPACITY = 0.6


def ghost_label(policy: str) -> str:
    return f"{policy} would have chosen"


def ghost_threshold_frame(
    steps: np.ndarray, thresholds: Mapping[str, np.ndarray], max_points: int = charts.LINE_POINTS
) -> pd.DataFrame:
    """Long frame of ghost thresholds: step, threshold, ghost (its label); at most `max_points`
    rows per ghost (the mean threshold of each equal span of steps; non-finite ones dropped).
    """
    steps = np.asarray(steps, np.int64).reshape(-1)
    parts = []
    for policy, values in thresholds.items():
        values = np.asarray(values, np.float64).reshape(-1)
        if len(values) != len(steps):
            raise ValueError(
                f"One threshold per replayed step is needed. Received {len(values)} thresholds "
                f"for {policy!r} and {len(steps)} steps"
            )
        frame = pd.DataFrame({"step": steps, "threshold": charts.finite(values)})
        frame = frame.dropna(subset=["threshold"]).reset_index(drop=True)
        if len(frame) == 0:
            continue
        spans = charts.even_spans(frame, max_points, {"threshold": "mean"})
        parts.append(spans[["step", "threshold"]].assign(ghost=ghost_label(policy)))
    if not parts:
        return pd.DataFrame({"step": [], "threshold": [], "ghost": []})
    return pd.concat(parts, ignore_index=True)


def ghost_threshold_layer(ghosts: pd.DataFrame, log_scale: bool = False) -> alt.Chart:
    """The ghost lines alone: dashed, faded, one colour per policy, with their own legend."""
    labels = [str(label) for label in pd.unique(ghosts["ghost"])] if len(ghosts) else []
    data = ghosts.copy()
    if log_scale and len(data):
        values = data["threshold"].to_numpy(np.float64)
        data["threshold"] = np.where(values > 0, values, np.nan)
    policies = [label.split(" ", 1)[0] for label in labels]
    return (
        alt.Chart(data)
        .transform_filter("isValid(datum.threshold)")
        .mark_line(interpolate="step-after", strokeDash=[2, 3], strokeWidth=2, opacity=GHOST_OPACITY)
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y("threshold:Q"),
            color=alt.Color(
                "ghost:N",
                scale=alt.Scale(domain=labels, range=[GHOST_COLORS.get(name, "#888888") for name in policies]),
                legend=alt.Legend(
                    title=None, orient="top", symbolStrokeWidth=3, symbolDash=[2, 3], labelLimit=260
                ),
            ),
            tooltip=[
                alt.Tooltip("ghost:N", title="Ghost"),
                alt.Tooltip("step:Q", title="Step", format=","),
                alt.Tooltip("threshold:Q", title="Threshold", format=".4g"),
            ],
        )
    )


def with_ghost_thresholds(
    gradient_norm_chart: alt.LayerChart, ghosts: pd.DataFrame, log_scale: bool = False
) -> alt.LayerChart:
    """`gradient_norm_chart` (from `charts.gradient_norm_chart`) with the ghost lines on top."""
    if len(ghosts) == 0:
        return gradient_norm_chart
    height = gradient_norm_chart.height
    inner = gradient_norm_chart.copy(deep=False)
    inner.height = alt.Undefined  # the outer layer carries the size
    layered = alt.layer(inner, ghost_threshold_layer(ghosts, log_scale)).resolve_scale(color="independent")
    return layered if height is alt.Undefined else layered.properties(height=height)


def typical_threshold(thresholds: np.ndarray) -> float | None:
    """The median of the finite thresholds a policy would have used (None if there are none)."""
    values = np.asarray(thresholds, np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def clip_rate_sentence(clip_threshold: float, clip_rate: float, steps: int, recorded_rate: float) -> str:
    """'At threshold 0.5, 12.3% of the newest 40,000 steps would have been clipped (the run: 4.0%).'"""
    rate = "–" if not math.isfinite(clip_rate) else f"{clip_rate:.1%}"
    recorded = "–" if not math.isfinite(recorded_rate) else f"{recorded_rate:.1%}"
    return (
        f"At threshold **{clip_threshold:g}**, **{rate}** of the newest **{steps:,}** steps would "
        f"have been clipped (the run clipped {recorded})."
    )


__all__ = [
    "GHOST_COLORS",
    "clip_rate_sentence",
    "ghost_label",
    "ghost_threshold_frame",
    "ghost_threshold_layer",
    "typical_threshold",
    "with_ghost_thresholds",
]
