"""Which steps the step charts show: the whole run, its newest N steps, or a range the user zoomed to.

Pure functions, no Streamlit. A `StepRange` is inclusive on both ends. The zoom comes from an
interval brush (`ZOOM_PARAM`) dragged across a chart's step axis; Streamlit hands the chart's
selection back as `{"selection": {"step_zoom": {"step": [from, to]}}}` (an empty dict once the
brush is cleared), and `selected_range` reads that. A zoom is a fixed range of steps, kept in the
session as `zoom_entry(owner, range)`, so a live refresh (new steps arriving) keeps it; a window
follows the newest step.

Example:
    >>> shown_range(1, 50_000, window=1_000, zoom=None)
    StepRange(first=49001, last=50000)
    >>> shown_range(1, 50_000, window=1_000, zoom=StepRange(200, 300))
    StepRange(first=200, last=300)
    >>> selected_range({"selection": {"step_zoom": {"step": [199.6, 300.2]}}})
    StepRange(first=200, last=300)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, MutableMapping

import numpy as np
import pandas as pd

ZOOM_PARAM = "step_zoom"  # the brush's name in the chart specs (and in the selection)
ALL_STEPS = "All steps"
# The "Steps shown" options: label -> how many of the newest steps (None: the whole run).
WINDOWS: dict[str, int | None] = {
    ALL_STEPS: None,
    "Last 1,000 steps": 1_000,
    "Last 10,000 steps": 10_000,
    "Last 100,000 steps": 100_000,
}
MIN_ZOOM_STEPS = 2  # a line needs two points: a narrower brush is no zoom


def _is_step(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class StepRange:
    """Steps `first` to `last`, both included (`first` >= 0)."""

    first: int
    last: int

    def __post_init__(self):
        if not (_is_step(self.first) and _is_step(self.last)):
            raise ValueError(f"A step range needs integer steps. Received: first={self.first!r}, last={self.last!r}")
        if self.first < 0 or self.last < self.first:
            raise ValueError(
                f"A step range needs 0 <= first <= last. Received: first={self.first!r}, last={self.last!r}"
            )
        object.__setattr__(self, "first", int(self.first))  # numpy integers become plain ones
        object.__setattr__(self, "last", int(self.last))

    @property
    def steps(self) -> int:
        return self.last - self.first + 1

    def text(self) -> str:
        return f"steps {self.first:,}–{self.last:,}"


def window_steps(label: Any) -> int | None:
    """How many newest steps a "Steps shown" option shows (None: all); ValueError otherwise."""
    if not isinstance(label, str) or label not in WINDOWS:
        raise ValueError(f"Steps shown must be one of {list(WINDOWS)}. Received: {label!r}")
    return WINDOWS[label]


def shown_range(first_step: int, newest_step: int, window: int | None, zoom: StepRange | None) -> StepRange | None:
    """The steps to draw, or None for the whole run (nothing to crop).

    A zoom wins over the window (it was asked for last); a window as long as the run or
    longer shows the whole run.
    """
    if window is not None and (not _is_step(window) or window < 1):
        raise ValueError(f"A window must be a whole number of steps >= 1, or None. Received: window={window!r}")
    if zoom is not None:
        return zoom
    if window is None or newest_step - first_step + 1 <= window:
        return None
    return StepRange(max(0, newest_step - window + 1), newest_step)


def covered_steps(view: pd.DataFrame) -> tuple[int, int] | None:
    """The first and the newest step a metrics view (`step`, `steps`) stands for; None if empty."""
    if not len(view):
        return None
    last = int(view["step"].iloc[-1]) + (int(view["steps"].iloc[-1]) - 1 if "steps" in view else 0)
    return int(view["step"].iloc[0]), last


def selected_range(selection: Any) -> StepRange | None:
    """The steps a user brushed on a chart (Streamlit's selection state), or None for none.

    Brush ends are continuous: the range takes every whole step inside the brush. A cleared
    brush, a brush holding fewer than `MIN_ZOOM_STEPS` steps or a malformed state (anything but
    two finite numbers) is no zoom.
    """
    if not isinstance(selection, Mapping):
        return None
    brushed = selection.get("selection", selection)
    brushed = brushed.get(ZOOM_PARAM) if isinstance(brushed, Mapping) else None
    ends = brushed.get("step") if isinstance(brushed, Mapping) else None
    if not isinstance(ends, (list, tuple)) or len(ends) != 2:
        return None
    if not all(isinstance(end, (numbers.Real, np.floating, np.integer)) and not isinstance(end, (bool, np.bool_))
               for end in ends):  # fmt: skip
        return None
    low, high = sorted(float(end) for end in ends)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    first, last = max(0, math.ceil(low)), math.floor(high)
    if last - first + 1 < MIN_ZOOM_STEPS:
        return None
    return StepRange(first, last)


# --- the zoom kept in the session ----------------------------------------------------------------


def zoom_entry(owner: Hashable, zoom: StepRange) -> tuple:
    """What the session keeps for a zoom: whose it is (a run, a set of runs) and its steps."""
    return (owner, zoom.first, zoom.last)


def stored_zoom(entry: Any, owner: Hashable) -> StepRange | None:
    """The zoom a session entry holds for `owner`; None for another owner's, none or a malformed one."""
    if not isinstance(entry, tuple) or len(entry) != 3 or entry[0] != owner:
        return None
    try:
        return StepRange(entry[1], entry[2])
    except ValueError:
        return None


def zoom_version_key(zoom_key: str) -> str:
    """Where the session counts a view's zooms: the charts' keys carry the count, so a new zoom
    (or a reset) draws fresh charts with no brush left on them."""
    return f"{zoom_key}.version"


def apply_selection(state: MutableMapping, chart_key: str, zoom_key: str, owner: Hashable) -> StepRange | None:
    """The brush callback's work, on `state` (the session): a brushed range becomes the zoom.

    Only a range zooms: a cleared or malformed selection changes nothing, since a redrawn chart
    can report its brush gone while the user's zoom must stay. Returns the new zoom, if any.
    """
    zoom = selected_range(state.get(chart_key))
    if zoom is None:
        return None
    state[zoom_key] = zoom_entry(owner, zoom)
    version = zoom_version_key(zoom_key)
    state[version] = state.get(version, 0) + 1
    return zoom


def reset_zoom(state: MutableMapping, zoom_key: str) -> None:
    """Forget the zoom (the charts are drawn anew, brushes cleared)."""
    state.pop(zoom_key, None)
    version = zoom_version_key(zoom_key)
    state[version] = state.get(version, 0) + 1


# --- cropping rows and specs ---------------------------------------------------------------------


def with_lookback(shown: StepRange, steps: int) -> StepRange:
    """`shown` with `steps` steps before it: what a rolling statistic over `steps` needs to be
    right at the range's first step."""
    return StepRange(max(0, shown.first - steps), shown.last)


def crop(frame: pd.DataFrame, shown: StepRange | None) -> pd.DataFrame:
    """The rows of `frame` (a `step` column; a `steps` column if a row stands for several) that
    overlap `shown`; all of them for None."""
    if shown is None or not len(frame):
        return frame
    return frame[_overlapping(frame, shown)].reset_index(drop=True)


def crop_views(metrics_view: pd.DataFrame, layer_view: pd.DataFrame, shown: StepRange | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A metrics view and its layer view (row for row, as a store hands them out) cropped alike:
    the layer view has no `steps` column, so it takes the metrics view's rows."""
    if shown is None:
        return metrics_view, layer_view
    keep = _overlapping(metrics_view, shown) if len(metrics_view) else np.zeros(0, bool)
    aligned = len(layer_view) == len(keep) and np.array_equal(layer_view["step"].to_numpy(), metrics_view["step"].to_numpy())
    layers = layer_view[keep].reset_index(drop=True) if aligned else crop(layer_view, shown)
    return metrics_view[keep].reset_index(drop=True), layers


def _overlapping(frame: pd.DataFrame, shown: StepRange) -> np.ndarray:
    steps = frame["step"].to_numpy(np.int64)
    ends = steps + frame["steps"].to_numpy(np.int64) - 1 if "steps" in frame else steps
    return (ends >= shown.first) & (steps <= shown.last)


def _brushed(node: dict, brush: dict) -> dict | None:
    """`node` with `brush` in its first unit drawn over steps (depth first), or None if none is."""
    layers = node.get("layer")
    if isinstance(layers, list):
        for index, layer in enumerate(layers):
            if isinstance(layer, dict):
                brushed = _brushed(layer, brush)
                if brushed is not None:
                    return {**node, "layer": [*layers[:index], brushed, *layers[index + 1 :]]}
        return None
    x = node.get("encoding", {}).get("x") if isinstance(node.get("encoding"), dict) else None
    if "mark" in node and isinstance(x, dict) and x.get("field") == "step":
        return {**node, "params": [*node.get("params", []), brush]}
    return None


def with_brush(spec: dict) -> dict:
    """`spec` (a Vega-Lite dict drawn over steps) with the zoom brush on its first unit over steps.

    Vega-Lite needs an interval selection inside one unit (a layer, however deeply layered); the
    brush projects on x only, so the other layers' tooltips, legends and hover rule stay as
    they were. The spec is copied only along the way to that unit (its datasets are shared).
    """
    brush = {"name": ZOOM_PARAM, "select": {"type": "interval", "encodings": ["x"]}}
    brushed = _brushed(spec, brush)
    if brushed is None:
        raise ValueError("The chart has no layer drawn over steps (an x encoding on `step`) to zoom on.")
    return brushed


def drawn_over_steps(spec: dict) -> bool:
    """Whether a Vega-Lite dict has a unit whose x axis is the step (so it can take the brush)."""
    return _brushed(spec, {}) is not None
