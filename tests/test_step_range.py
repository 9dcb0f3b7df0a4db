"""Zoom and window of the step charts (issue #20): `dashboard/step_range.py`'s pure functions on
the payload Streamlit sends, the brush in real chart specs, the clip rate's look-back, and
`MetricsStore.view_range` against hand-computed rows."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import vl_convert
from hypothesis import given
from hypothesis import strategies as st
from streamlit.elements.vega_charts import VegaLiteStateSerde

from benchmarks.dashboard_cost import filled_store
from dashboard import chart_specs, charts, comparison, step_range
from dashboard.export import chart_spec
from dashboard.step_range import StepRange
from training.store import VIEW_COLUMNS, MetricsStore


def streamlit_selection(ends) -> object:
    """The selection state exactly as `st.vega_lite_chart(..., on_select=...)` hands it to the
    page: Streamlit's own deserializer over the JSON its frontend sends (an empty dict once the
    brush is cleared, `None` before any event)."""
    serde = VegaLiteStateSerde([step_range.ZOOM_PARAM])
    if ends is None:
        return serde.deserialize(None)
    return serde.deserialize(json.dumps({"selection": {step_range.ZOOM_PARAM: {"step": ends} if ends else {}}}))


# --- StepRange, windows and the shown range ------------------------------------------------------


def test_a_step_range_counts_both_ends_and_takes_numpy_steps():
    shown = StepRange(np.int64(200), np.int32(300))
    assert (shown.first, shown.last, shown.steps) == (200, 300, 101)
    assert type(shown.first) is int and type(shown.last) is int
    assert shown.text() == "steps 200–300"


@given(st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none(), st.integers(max_value=-1)))
def test_a_step_range_refuses_a_bad_first_step_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(f"Received: first={bad!r}, last=10")):
        StepRange(bad, 10)


def test_a_step_range_refuses_last_before_first():
    with pytest.raises(ValueError, match=re.escape("Received: first=5, last=4")):
        StepRange(5, 4)


def test_every_window_label_has_its_steps():
    assert [step_range.window_steps(label) for label in step_range.WINDOWS] == [None, 1_000, 10_000, 100_000]


@given(st.one_of(st.text(max_size=12), st.integers(), st.none(), st.lists(st.integers(), max_size=2)))
def test_an_unknown_window_label_is_refused_naming_it(label):
    if isinstance(label, str) and label in step_range.WINDOWS:
        return
    with pytest.raises(ValueError, match=re.escape(f"Received: {label!r}")):
        step_range.window_steps(label)


def test_the_window_follows_the_newest_step_and_a_zoom_wins():
    assert step_range.shown_range(1, 5_000, 1_000, None) == StepRange(4_001, 5_000)
    assert step_range.shown_range(1, 5_800, 1_000, None) == StepRange(4_801, 5_800)  # follows the run
    assert step_range.shown_range(1, 1_000, 1_000, None) is None  # the whole run fits
    assert step_range.shown_range(1, 5_000, None, None) is None
    assert step_range.shown_range(1, 5_000, 1_000, StepRange(10, 20)) == StepRange(10, 20)
    assert step_range.shown_range(1, 5_000, None, StepRange(4_900, 9_000)) == StepRange(4_900, 9_000)  # fixed


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "1000"])
def test_a_bad_window_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(f"Received: window={bad!r}")):
        step_range.shown_range(1, 100, bad, None)


def test_covered_steps_counts_the_steps_of_the_last_row():
    view = pd.DataFrame({"step": [1, 65, 129], "steps": [64, 64, 10]})
    assert step_range.covered_steps(view) == (1, 138)
    assert step_range.covered_steps(view.iloc[:0]) is None


# --- the selection Streamlit sends ---------------------------------------------------------------


def test_a_brush_becomes_the_whole_steps_inside_it():
    assert step_range.selected_range(streamlit_selection([199.6, 300.2])) == StepRange(200, 300)
    assert step_range.selected_range(streamlit_selection([300.2, 199.6])) == StepRange(200, 300)  # dragged leftwards
    assert step_range.selected_range(streamlit_selection([-40.0, 3.0])) == StepRange(0, 3)
    assert step_range.selected_range(streamlit_selection([10, 11])) == StepRange(10, 11)


@pytest.mark.parametrize("ends", [None, [], [10.2, 10.9], [10.0, 10.0], [5.5, 6.4], [-9.0, -1.0]])
def test_a_cleared_or_too_narrow_brush_is_no_zoom(ends):
    assert step_range.selected_range(streamlit_selection(ends)) is None


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=10), children, max_size=3)),
    max_leaves=12,
)


@given(st.one_of(
    json_values,
    json_values.map(lambda value: {"selection": {step_range.ZOOM_PARAM: value}}),
    json_values.map(lambda value: {"selection": {step_range.ZOOM_PARAM: {"step": value}}}),
    st.lists(st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=3)), min_size=2, max_size=2).map(
        lambda ends: {"selection": {step_range.ZOOM_PARAM: {"step": ends}}}),
))  # fmt: skip
def test_any_malformed_selection_is_no_zoom_and_never_raises(selection):
    zoom = step_range.selected_range(selection)
    assert zoom is None or (isinstance(zoom, StepRange) and zoom.steps >= step_range.MIN_ZOOM_STEPS)
    if zoom is not None:  # only two finite numbers make a zoom, and it lies inside them
        low, high = sorted(selection["selection"][step_range.ZOOM_PARAM]["step"])
        assert low <= zoom.first or zoom.first == 0
        assert zoom.last <= high


def test_the_brush_callback_zooms_on_a_range_and_ignores_a_cleared_brush():
    state = {"chart": streamlit_selection([99.5, 200.5])}
    assert step_range.apply_selection(state, "chart", "zoom", owner=3) == StepRange(100, 200)
    assert state["zoom"] == (3, 100, 200) and state[step_range.zoom_version_key("zoom")] == 1
    assert step_range.stored_zoom(state["zoom"], 3) == StepRange(100, 200)
    assert step_range.stored_zoom(state["zoom"], 4) is None  # another run's zoom is none
    # A redrawn chart reports its brush gone: the zoom stays, and so do the charts' keys.
    state["chart"] = streamlit_selection([])
    assert step_range.apply_selection(state, "chart", "zoom", owner=3) is None
    assert state["zoom"] == (3, 100, 200) and state[step_range.zoom_version_key("zoom")] == 1
    step_range.reset_zoom(state, "zoom")
    assert "zoom" not in state and state[step_range.zoom_version_key("zoom")] == 2


@pytest.mark.parametrize("entry", [None, (3, 100), (3, 200, 100), (3, "a", 5), [3, 1, 5], (3, -1, 5)])
def test_a_malformed_stored_zoom_is_none(entry):
    assert step_range.stored_zoom(entry, 3) is None


# --- cropping ------------------------------------------------------------------------------------


@given(
    st.lists(st.integers(1, 40), min_size=0, max_size=30),
    st.integers(0, 600),
    st.integers(0, 300),
)
def test_crop_keeps_exactly_the_rows_that_overlap_the_range(widths, first, length):
    starts = np.concatenate([[1], 1 + np.cumsum(widths)])[: len(widths)].astype(np.int64)
    frame = pd.DataFrame({"step": starts, "steps": np.asarray(widths, np.int64), "value": np.arange(len(widths))})
    shown = StepRange(first, first + length)
    kept = step_range.crop(frame, shown)
    expected = [index for index, (start, width) in enumerate(zip(starts, widths))
                if start <= shown.last and start + width - 1 >= shown.first]  # fmt: skip
    assert kept["value"].tolist() == expected
    assert step_range.crop(frame, None) is frame


def test_crop_views_crops_the_layer_view_row_for_row_with_the_metrics():
    store = filled_store(5_000, seed=2)
    metrics, layers = store.view(200)
    shown = StepRange(2_000, 2_600)
    cropped, cropped_layers = step_range.crop_views(metrics, layers, shown)
    assert cropped["step"].tolist() == cropped_layers["step"].tolist()
    assert cropped["step"].iloc[0] <= shown.first < cropped["step"].iloc[0] + cropped["steps"].iloc[0]


def test_the_clip_rate_of_a_range_counts_the_window_before_it():
    clipped = np.zeros(400, bool)
    clipped[150:200] = True  # 50 clipped steps, all before step 201
    view = pd.DataFrame({"step": np.arange(1, 401), "steps": 1, "clipped": clipped.astype(np.int64)})
    frame = charts.clip_rate_frame(view, window=100, from_step=201)
    assert frame["step"].iloc[0] == 201 and frame["step"].iloc[-1] == 400
    # Step 201's window is steps 102..201: the 50 clipped ones are in it.
    assert frame["clip_rate"].iloc[0] == pytest.approx(50 / 100)
    assert frame["clip_rate"].iloc[-1] == 0.0


# --- the brush in the charts' specs --------------------------------------------------------------


def _units_with_brush(node, found=None) -> list[dict]:
    found = [] if found is None else found
    if isinstance(node, dict):
        if any(param.get("name") == step_range.ZOOM_PARAM for param in node.get("params", [])):
            found.append(node)
        for value in node.values():
            _units_with_brush(value, found)
    elif isinstance(node, list):
        for value in node:
            _units_with_brush(value, found)
    return found


def _without_brush(node):
    if isinstance(node, dict):
        node = {key: _without_brush(value) for key, value in node.items()}
        if "params" in node:
            node["params"] = [param for param in node["params"] if param.get("name") != step_range.ZOOM_PARAM]
            if not node["params"]:
                del node["params"]
        return node
    if isinstance(node, list):
        return [_without_brush(value) for value in node]
    return node


def step_chart_specs() -> dict[str, dict]:
    store = filled_store(3_000, seed=3)
    store.record_event(1_500, "clip_threshold", 1.0, 0.5)
    view, layers = store.view(2000)
    events = store.events()
    long = comparison.runs_long_frame({"a": view, "b": view})
    return {
        "gradient_norm": chart_specs.gradient_norm_spec(view),
        "loss_smoothed_with_events": chart_specs.loss_spec(view, events, smoothing=0.6),
        "loss_smoothed": chart_specs.loss_spec(view, events.iloc[:0], smoothing=0.6),  # layers in a layer only
        "clip_rate": chart_specs.clip_rate_spec(view),
        "layers": chart_specs.layer_norm_spec(layers),
        "compare_gradient_norm": chart_spec(comparison.runs_gradient_norm_chart(long)),
        "compare_loss": chart_spec(comparison.runs_loss_chart(long)),
    }


def test_the_brush_goes_on_one_unit_over_steps_and_leaves_the_rest_of_the_chart_as_it_was():
    for name, spec in step_chart_specs().items():
        original = copy.deepcopy(spec)
        brushed = step_range.with_brush(spec)
        assert spec == original, f"{name}: with_brush changed its input"
        (unit,) = _units_with_brush(brushed)
        assert unit["encoding"]["x"]["field"] == "step" and "mark" in unit, name
        assert unit["params"][-1] == {"name": step_range.ZOOM_PARAM, "select": {"type": "interval", "encodings": ["x"]}}
        assert _without_brush(brushed) == original, f"{name}: tooltips, legends or layers changed"
    # The first unit over steps, depth first: the loss line, not the commands' rules beside it.
    (unit,) = _units_with_brush(step_range.with_brush(step_chart_specs()["loss_smoothed_with_events"]))
    assert unit["encoding"]["y"]["field"] == "loss"


def test_a_brushed_chart_still_compiles_with_its_hover_tooltip_and_the_brush_signal():
    specs = step_chart_specs()
    compiled = json.dumps(vl_convert.vegalite_to_vega(step_range.with_brush(specs["gradient_norm"])))
    assert '"name": "step_zoom"' in compiled and '"name": "hover"' in compiled
    assert "Before clip (max)" in compiled  # the hover rule's tooltip
    for name in ("loss_smoothed_with_events", "clip_rate", "layers", "compare_loss"):
        assert '"name": "step_zoom"' in json.dumps(vl_convert.vegalite_to_vega(step_range.with_brush(specs[name]))), name


def test_a_chart_not_over_steps_takes_no_brush():
    histogram = chart_specs.gradient_norm_histogram_spec(np.linspace(0.1, 2.0, 50), 1.0)
    assert not step_range.drawn_over_steps(histogram)
    with pytest.raises(ValueError, match="no layer drawn over steps"):
        step_range.with_brush(histogram)


# --- MetricsStore.view_range ---------------------------------------------------------------------


def small_store(steps: int = 32) -> MetricsStore:
    """A ring of 8 steps and a summary of at most 4 buckets, fed steps 1..`steps` four at a time:
    grad norm = step, loss = step / 2, every third step clipped, layer norm = step."""
    store = MetricsStore(["w"], ("global_norm",), window=8, max_buckets=4, block=8)
    for first in range(1, steps + 1, 4):
        step = np.arange(first, min(first + 4, steps + 1), dtype=np.int64)
        store.append({
            "step": step, "time_s": step * 0.01, "loss": step / 2, "grad_norm": step.astype(np.float32),
            "clipped_grad_norm": np.minimum(step, 1.0).astype(np.float32), "clip_threshold": np.ones(len(step), np.float32),
            "clipped": step % 3 == 0, "finite": np.ones(len(step), bool), "learning_rate": np.full(len(step), 0.1, np.float32),
            "policy": np.zeros(len(step), np.int8), "layer_norms": step.astype(np.float32)[:, None],
        })  # fmt: skip
    return store


def test_view_range_gives_every_step_of_a_range_the_ring_holds():
    store = small_store()  # the ring holds steps 25..32
    metrics, layers = store.view_range(26, 30)
    assert metrics["step"].tolist() == [26, 27, 28, 29, 30] and metrics["steps"].tolist() == [1] * 5
    assert metrics["grad_norm"].tolist() == [26, 27, 28, 29, 30]
    assert metrics["loss"].tolist() == [13.0, 13.5, 14.0, 14.5, 15.0]
    assert metrics["clipped"].tolist() == [0, 1, 0, 0, 1]  # 27 and 30
    assert layers["w"].tolist() == [26, 27, 28, 29, 30]
    assert list(metrics.columns) == list(VIEW_COLUMNS)


def test_view_range_takes_older_steps_from_the_summary_buckets():
    store = small_store()
    # 32 steps in at most 4 buckets: width 16 (steps 1-15, 16-31, 32); the ring holds 25..32.
    summary = store.summary()
    assert summary["step"].tolist() == [1, 16, 32] and summary["last_step"].tolist() == [15, 31, 32]
    metrics, layers = store.view_range(10, 28)
    # Both buckets overlap 10..28; the second reaches into the ring, so it stands for 25..28 too.
    assert metrics["step"].tolist() == [1, 16] and metrics["steps"].tolist() == [15, 16]
    assert metrics["loss"].tolist() == [4.0, 11.75]  # mean of step / 2 over 1..15 and 16..31
    assert metrics["grad_norm"].tolist() == [15, 31] and metrics["grad_norm_min"].tolist() == [1, 16]
    assert metrics["grad_norm_mean"].tolist() == [8.0, 23.5]
    assert metrics["clipped"].tolist() == [5, 5]  # 3, 6, 9, 12, 15 and 18, 21, 24, 27, 30
    assert layers["w"].tolist() == [15, 31]


def test_view_range_merges_into_at_most_max_points_rows_keeping_each_max():
    metrics, layers = small_store().view_range(25, 32, max_points=3)
    assert metrics["step"].tolist() == [25, 28, 31] and metrics["steps"].tolist() == [3, 3, 2]
    assert metrics["grad_norm"].tolist() == [27, 30, 32] and metrics["grad_norm_min"].tolist() == [25, 28, 31]
    assert metrics["loss"].tolist() == [13.0, 14.5, 15.75]
    assert layers["w"].tolist() == [27, 30, 32]
    assert len(small_store().view_range(1, 32, max_points=1)[0]) == 1


def test_view_range_of_steps_the_run_never_had_is_empty():
    metrics, layers = small_store().view_range(100, 200)
    assert len(metrics) == 0 and list(metrics.columns) == list(VIEW_COLUMNS)
    assert list(layers.columns) == ["step", "w"]


@given(st.data())
def test_view_range_inside_the_ring_equals_the_stored_steps(data):
    store = filled_store(3_000, seed=9)  # the whole run is in the ring
    first = data.draw(st.integers(1, 3_000))
    last = data.draw(st.integers(first, 3_000))
    metrics, _ = store.view_range(first, last, max_points=5_000)
    raw = store.metrics()
    raw = raw[(raw["step"] >= first) & (raw["step"] <= last)]
    assert metrics["step"].tolist() == raw["step"].tolist()
    finite = raw["finite"].to_numpy()
    np.testing.assert_array_equal(metrics["grad_norm"].to_numpy()[finite], raw["grad_norm"].to_numpy(np.float64)[finite])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((5, 4), "Received: first=5, last=4"),
        ((1.0, 4), "Received: first=1.0, last=4"),
        ((True, 4), "Received: first=True, last=4"),
        ((1, "4"), "Received: first=1, last='4'"),
        ((1, 4, 0), "Received: max_points=0"),
        ((1, 4, 2.5), "Received: max_points=2.5"),
        ((1, 4, True), "Received: max_points=True"),
    ],
)
def test_view_range_refuses_bad_arguments_naming_them(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        small_store().view_range(*arguments)


def test_view_range_of_a_long_run_has_buckets_far_back_and_every_step_in_the_ring():
    store = filled_store(300_000, seed=1)
    metrics, _ = store.view_range(150_000, 150_400)
    assert 1 <= len(metrics) <= 5  # the summary's buckets: ~2,048 over the run
    assert metrics["step"].iloc[0] <= 150_000 and metrics["step"].iloc[-1] + metrics["steps"].iloc[-1] > 150_400
    recent, _ = store.view_range(250_000, 250_400)
    assert recent["step"].tolist() == list(range(250_000, 250_401))  # in the ring: every step
    assert not math.isnan(recent["loss"].iloc[0])
