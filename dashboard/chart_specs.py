"""The live charts as Vega-Lite dicts, filled into cached templates instead of built by Altair.

`charts.py` stays the one definition of how every chart looks. Here each chart's Altair spec is
built once per *shape* (log scale or not, events or none, which threshold lines, ...) and kept as
a template; a refresh then only turns its frames into records and puts them, with the x axis's
domain and the histogram's line names, into a copy of that template. The result equals
`charts.vega_lite_spec(charts.<chart>(...))` (tests/test_chart_specs.py compares them).

Why: at 1M steps a refresh spent ~60% of its time in Altair (building the object tree, copying
and validating it in `.properties()`/`alt.layer`, its `to_dict` walk and its DataFrame
sanitising), for specs whose only changes between refreshes are the data and the domain.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable, Hashable

import numpy as np
import pandas as pd
from altair.vegalite.v6.api import _dataset_name

from dashboard import charts

_TEMPLATES: dict[Hashable, tuple[dict, list[str]]] = {}
MAX_TEMPLATES = 64  # shapes seen (a handful in practice); bounded so odd inputs cannot grow it


def records(frame: pd.DataFrame) -> list[dict]:
    """`frame` as Altair puts it in a spec: one dict per row, Python numbers, NaN/inf as None."""
    columns = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            listed = values.tolist()
            if bad.any():
                for index in np.flatnonzero(bad):
                    listed[index] = None
        elif values.dtype.kind == "O":
            listed = [None if value is None or (isinstance(value, float) and math.isnan(value)) else value for value in values.tolist()]
        else:
            listed = values.tolist()
        columns.append(listed)
    names = [str(name) for name in frame.columns]
    return [dict(zip(names, row)) for row in zip(*columns)]


def visit_dicts(node, visit: Callable[[dict], None]) -> None:
    """Call `visit` on every dict inside `node` (a spec), outermost first."""
    if isinstance(node, dict):
        visit(node)
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return
    for child in children:
        if isinstance(child, (dict, list)):
            visit_dicts(child, visit)


def _rename_data(spec: dict, renames: dict[str, str]) -> None:
    """Point every `{"data": {"name": old}}` in `spec` at its new dataset name, in place."""

    def rename(node: dict) -> None:
        data = node.get("data")
        if isinstance(data, dict) and data.get("name") in renames:
            node["data"] = {**data, "name": renames[data["name"]]}

    visit_dicts(spec, rename)


def _set_step_domain(spec: dict, domain: list[float]) -> None:
    """Set the domain of every step x axis (`x` on field `step` with a domain) in `spec`."""

    def set_domain(node: dict) -> None:
        x = node.get("x")
        if isinstance(x, dict) and x.get("field") == "step" and "domain" in x.get("scale", {}):
            node["x"] = {**x, "scale": {**x["scale"], "domain": list(domain)}}

    visit_dicts(spec, set_domain)


def redrawn_in_place(spec: dict) -> dict:
    """`spec` as it can be redrawn in place: its datasets named by their order (Altair's names
    hash their rows) and its step axes
    without an explicit domain (the data's extent, which is the same: `charts.step_axis` sets
    the domain to the data's first and last step, `nice` off, no zero).

    Why: the browser draws a chart anew whenever its spec changes, and the hashed dataset names
    and the domain change with every new step: a live refresh (every second) then dropped a
    brush being dragged across the chart (measured: a 1.5 s drag never zoomed). With these
    names the spec stays the same from refresh to refresh and only the data is replaced.
    Datasets are shared, not copied; the rest is copied along the way.
    """
    datasets = spec.get("datasets", {})
    # Not "data_0": Vega-Lite names its own derived data that way, and a clash draws nothing.
    renames = {name: f"rows_{index}" if name.startswith("data-") else name for index, name in enumerate(datasets)}

    def renamed(node):
        if isinstance(node, list):
            return [renamed(child) for child in node]
        if not isinstance(node, dict):
            return node
        node = {key: renamed(value) for key, value in node.items() if key != "datasets"}
        data = node.get("data")
        if isinstance(data, dict) and data.get("name") in renames:
            node["data"] = {**data, "name": renames[data["name"]]}
        x = node.get("x")
        if isinstance(x, dict) and x.get("field") == "step" and "domain" in x.get("scale", {}):
            scale = {key: value for key, value in x["scale"].items() if key != "domain"}
            node["x"] = {**x, "scale": {**scale, "nice": False, "zero": False}}
        return node

    result = renamed(spec)
    if datasets:
        result["datasets"] = {renames[name]: rows for name, rows in datasets.items()}
    return result


def _filled(
    key: Hashable,
    build: Callable[[], object],
    frames: list[pd.DataFrame],
    domain: list[float] | None = None,
    finish: Callable[[dict], None] | None = None,
) -> dict:
    """The spec of `build()` for `frames`, from the template of shape `key` (made on first use)."""
    values = [records(frame) for frame in frames]
    names = [_dataset_name(rows) for rows in values]
    entry = _TEMPLATES.get(key)
    if entry is None:
        spec = charts.vega_lite_spec(build())
        if len(_TEMPLATES) < MAX_TEMPLATES and sorted(spec.get("datasets", {})) == sorted(set(names)):
            template = {name: value for name, value in spec.items() if name != "datasets"}
            _TEMPLATES[key] = (copy.deepcopy(template), names)
        return spec
    template, template_names = entry
    spec = copy.deepcopy(template)
    _rename_data(spec, dict(zip(template_names, names)))
    if domain is not None:
        _set_step_domain(spec, domain)
    if finish is not None:
        finish(spec)
    spec["datasets"] = dict(zip(names, values))
    return spec


def _step_domain(steps: pd.Series, end: float | None = None) -> list[float] | None:
    """What `charts.step_axis` puts in the domain (None: no steps, so no domain)."""
    if not len(steps):
        return None
    return [float(np.min(steps)), float(end if end is not None else np.max(steps))]


# The histogram's keyword options and their defaults, read from the chart it mirrors (one source).
_HISTOGRAM_OPTIONS = {
    name: parameter.default
    for name, parameter in inspect.signature(charts.gradient_norm_histogram).parameters.items()
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    and parameter.default is not inspect.Parameter.empty
    and name != "suggested_threshold"
}


def _one_frame_spec(key: tuple, data: pd.DataFrame, build: Callable[[], object]) -> dict:
    """A chart drawn from one frame over the steps: its template also depends on the frame's columns."""
    domain = _step_domain(data["step"])
    return _filled((*key, domain is None, tuple(data.columns)), build, [data], domain)


def gradient_norm_spec(view: pd.DataFrame, log_scale: bool = False, max_points: int = charts.LINE_POINTS, height: int = 340) -> dict:
    """`charts.gradient_norm_chart(...)` as a Vega-Lite dict."""
    return _one_frame_spec(
        ("gradient_norm", log_scale, height),
        charts.gradient_norm_frame(view, log_scale=log_scale, max_points=max_points),
        lambda: charts.gradient_norm_chart(view, log_scale=log_scale, max_points=max_points, height=height),
    )


def loss_spec(
    view: pd.DataFrame,
    events: pd.DataFrame,
    log_scale: bool = False,
    max_points: int = charts.LINE_POINTS,
    height: int = 260,
    evaluations: pd.DataFrame | None = None,
    smoothing: float = 0.0,
) -> dict:
    """`charts.loss_chart(...)` as a Vega-Lite dict."""
    frame = charts.loss_frame(view, log_scale, max_points, smoothing)
    validation = charts.validation_loss_frame(evaluations)
    if log_scale and len(validation):
        validation["val_loss"] = charts.positive_values(validation["val_loss"].to_numpy())
    rules = charts.event_rules_frame(events)
    frames = [frame] + ([validation] if len(validation) else [])
    frames += [] if len(rules) == 0 else [rules, charts.event_labels_frame(rules)]
    domain = _step_domain(frame["step"])
    return _filled(
        # The spec's shape depends on whether it smooths, not on the weight (it is in the data):
        # dragging the slider fills one template instead of making one per value.
        ("loss", log_scale, height, domain is None, len(frames), len(validation) > 0, smoothing > 0),
        lambda: charts.loss_chart(
            view, events, log_scale=log_scale, max_points=max_points, height=height, evaluations=evaluations,
            smoothing=smoothing,
        ),
        frames,
        domain,
    )


def clip_rate_spec(view: pd.DataFrame, window: int = charts.CLIP_RATE_WINDOW, max_points: int = charts.LINE_POINTS,
                   height: int = 260, from_step: int | None = None) -> dict:  # fmt: skip
    """`charts.clip_rate_chart(...)` as a Vega-Lite dict."""
    return _one_frame_spec(
        ("clip_rate", window, height),
        charts.clip_rate_frame(view, window, max_points, from_step),
        lambda: charts.clip_rate_chart(view, window=window, max_points=max_points, height=height, from_step=from_step),
    )


def layer_norm_spec(layer_view: pd.DataFrame, max_points: int = charts.MAX_POINTS, row_height: int = 36) -> dict:
    """`charts.layer_norm_chart(...)` as a Vega-Lite dict (grouped by layer as it groups)."""
    grouped, note = charts.group_layer_view(layer_view)
    data = charts.layer_norm_frame(grouped, max_points)
    layers = tuple(column for column in grouped.columns if column != "step")
    domain = _step_domain(data["step"], end=data["step_end"].max() if len(data) else None)
    return _filled(
        ("layer_norm", layers, row_height, domain is None, note),
        lambda: charts.layer_norm_chart(layer_view, max_points=max_points, row_height=row_height),
        [data],
        domain,
    )


def gradient_norm_histogram_spec(
    norms: np.ndarray, clip_threshold: float | None, suggested_threshold: float | None = None, **options: Any
) -> dict:
    """`charts.gradient_norm_histogram(...)` as a Vega-Lite dict (the same options and defaults)."""
    unknown = sorted(set(options) - set(_HISTOGRAM_OPTIONS))
    if unknown:
        raise TypeError(f"Unknown histogram options {unknown}. Allowed: {sorted(_HISTOGRAM_OPTIONS)}")
    options = {**_HISTOGRAM_OPTIONS, **options}
    log_scale, bins, height = options["log_scale"], options["bins"], options["height"]
    threshold_label = options["threshold_label"]
    counts = charts.histogram_frame(norms, bins=bins, log_scale=log_scale)
    drawn = charts.histogram_lines(clip_threshold, suggested_threshold, threshold_label)
    frames = [counts]
    if drawn:
        frames.append(charts.histogram_lines_frame(drawn))
    line_names = [line[0] for line in drawn]

    def name_the_lines(spec: dict) -> None:
        encoding = spec["layer"][1]["encoding"]
        for channel in ("color", "strokeDash"):
            encoding[channel]["scale"]["domain"] = list(line_names)

    shape = tuple((line[2], tuple(line[3])) for line in drawn)
    return _filled(
        ("histogram", log_scale, height, bins, shape),
        lambda: charts.gradient_norm_histogram(
            norms, clip_threshold, suggested_threshold, log_scale=log_scale, bins=bins, height=height,
            threshold_label=threshold_label,
        ),
        frames,
        finish=name_the_lines if drawn else None,
    )
