"""The loss charts' smoothing (issue #20): TensorBoard's debiased EMA over the drawn points, the
raw curve kept faint behind it, the shared spec equal to Altair's, and a slider kept per session."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from benchmarks.dashboard_cost import filled_store
from dashboard import chart_specs, charts

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_smoothed_matches_a_hand_computed_series_and_skips_a_nan():
    values = [1.0, 2.0, 3.0, math.nan, 5.0]
    # s_t = (w * numerator + x) / (w * denominator + 1), here with w = 0.5:
    # 1; 2.5/1.5; 4.25/1.75; NaN (left out); 7.125/1.875
    expected = [1.0, 2.5 / 1.5, 4.25 / 1.75, math.nan, 7.125 / 1.875]
    np.testing.assert_allclose(charts.smoothed(values, 0.5), expected, rtol=1e-12)
    np.testing.assert_array_equal(charts.smoothed([3.0, 1.0], 0.0), [3.0, 1.0])  # 0: off


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), st.floats(0.0, charts.MAX_SMOOTHING))
def test_smoothed_stays_between_the_smallest_and_largest_value_and_starts_at_the_first(values, weight):
    out = charts.smoothed(values, weight)
    assert out[0] == values[0]
    tolerance = 1e-9 * max(1.0, max(abs(v) for v in values))
    assert min(values) - tolerance <= out.min() and out.max() <= max(values) + tolerance


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, math.nan, "0.5", True, None])
def test_a_smoothing_outside_zero_to_max_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(f"Received: smoothing={bad!r}")):
        charts.validate_smoothing(bad)


def test_the_loss_frame_keeps_the_raw_loss_beside_the_smoothed_one():
    view = filled_store(3_000, seed=4).view(2000)[0]
    raw = charts.loss_frame(view)
    frame = charts.loss_frame(view, smoothing=0.9)
    assert "loss_smoothed" not in raw.columns
    pd.testing.assert_series_equal(frame["loss"], raw["loss"])
    np.testing.assert_allclose(frame["loss_smoothed"], charts.smoothed(raw["loss"].to_numpy(), 0.9))
    assert frame["loss_smoothed"].std() < frame["loss"].std()  # smoother


def test_the_smoothed_chart_draws_the_raw_curve_faint_and_the_shared_spec_equals_altairs():
    def comparable(spec):
        return json.loads(re.sub(r"view_[0-9a-f]+_\d+", "VIEW", json.dumps(spec, sort_keys=True)))

    for seed in (5, 6):  # the first makes the template, the second fills it in
        store = filled_store(3_000, seed=seed)
        view, events = store.view(2000)[0], store.events()
        chart = charts.loss_chart(view, events, smoothing=0.8)
        spec = charts.vega_lite_spec(chart)
        assert comparable(chart_specs.loss_spec(view, events, smoothing=0.8)) == comparable(spec)
    lines = [layer for layer in json.loads(json.dumps(spec))["layer"][0]["layer"]]
    marks = {layer["encoding"]["y"]["field"]: layer["mark"] for layer in lines}
    assert marks["loss"]["opacity"] == charts.RAW_OPACITY and "opacity" not in marks["loss_smoothed"]
    plain = charts.vega_lite_spec(charts.loss_chart(view, events))
    assert "loss_smoothed" not in json.dumps(plain)


def test_the_view_slider_smooths_the_live_loss_and_is_kept_across_reruns(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPWATCH_DB", str(tmp_path / "runs" / "clipwatch.db"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    (slider,) = [s for s in at.sidebar.slider if s.label == "Loss smoothing"]
    assert slider.value == 0.0
    slider.set_value(0.6).run()
    at.run()  # another rerun: the session keeps it
    (slider,) = [s for s in at.sidebar.slider if s.label == "Loss smoothing"]
    assert slider.value == 0.6 and not at.exception
    assert at.session_state["smoothing"] == 0.6  # the key the live view's charts read


def test_compare_smooths_each_run_on_its_own_over_its_raw_curve():
    from dashboard import comparison

    views = {"first": filled_store(3_000, seed=7).view(2000)[0], "second": filled_store(2_000, seed=8).view(2000)[0]}
    long = comparison.runs_long_frame(views)
    raw = comparison.run_series_frame(long)
    chart = comparison.runs_loss_chart(long, smoothing=0.7)
    spec = charts.vega_lite_spec(chart)
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    for name in ("first", "second"):  # each run's own EMA: the second run's first point is its own loss
        rows = data[data[comparison.RUN] == name]
        np.testing.assert_allclose(rows["loss"], raw[raw[comparison.RUN] == name]["loss"])
        np.testing.assert_allclose(rows["loss_smoothed"], charts.smoothed(rows["loss"].to_numpy(), 0.7))
    lines = [layer for layer in spec["layer"][0]["layer"] if layer["mark"]["type"] == "line"]
    marks = {layer["encoding"]["y"]["field"]: layer["mark"] for layer in lines}
    assert marks["loss"]["opacity"] == charts.RAW_OPACITY and "opacity" not in marks["loss_smoothed"]
    assert "loss_smoothed" not in json.dumps(charts.vega_lite_spec(comparison.runs_loss_chart(long)))
    with pytest.raises(ValueError, match=re.escape("Received: smoothing=2")):
        comparison.runs_loss_chart(long, smoothing=2)
