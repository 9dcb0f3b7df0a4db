"""Unit tests of dashboard/charts.py: the chart builders and the numbers behind them.

The data comes from a real `MetricsStore` filled with made-up steps (no trainer needed), so the
frames have exactly the shape the page hands the builders.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dashboard import charts
from training.policies import POLICY_NAMES
from training.store import MetricsStore

from support import assert_imports_neither_streamlit_nor_tensorflow

LAYERS = ("hidden/kernel", "hidden/bias", "output/kernel", "output/bias")


def fill_store(
    total_steps: int,
    spike_at: int | None = None,
    spike_value: float = 1000.0,
    threshold: float = 0.3,
    threshold_changes: dict[int, float] | None = None,
    policy: str = "global_norm",
    chunk: int = 2048,
    seed: int = 0,
) -> MetricsStore:
    """A store holding `total_steps` steps of lognormal norms around 0.2, clipped at `threshold`."""
    store = MetricsStore(list(LAYERS), POLICY_NAMES)
    rng = np.random.default_rng(seed)
    changes = sorted((threshold_changes or {}).items())
    step = 0
    while step < total_steps:
        count = min(chunk, total_steps - step)
        steps = np.arange(step + 1, step + count + 1)
        norms = rng.lognormal(np.log(0.2), 0.3, count).astype(np.float32)
        if spike_at is not None and step < spike_at <= step + count:
            norms[spike_at - step - 1] = spike_value
        thresholds = np.full(count, threshold, np.float32)
        for change_step, value in changes:
            thresholds[steps > change_step] = value
        store.append(
            {
                "step": steps,
                "time_s": 1.7e9 + steps * 1e-3,
                "loss": (0.5 + 0.1 * rng.standard_normal(count)).astype(np.float32),
                "grad_norm": norms,
                "clipped_grad_norm": np.minimum(norms, thresholds),
                "clip_threshold": thresholds,
                "clipped": norms > thresholds,
                "finite": np.ones(count, bool),
                "learning_rate": np.full(count, 0.01, np.float32),
                "policy": np.full(count, POLICY_NAMES.index(policy), np.int8),
                "layer_norms": (norms[:, None] * np.linspace(0.2, 1.0, len(LAYERS))).astype(np.float32),
            }
        )
        step += count
    return store


def layers_of(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def marks(chart) -> list[str]:
    return [layer["mark"]["type"] for layer in layers_of(chart)]


def rows(chart) -> list[dict]:
    return [row for values in chart.to_dict().get("datasets", {}).values() for row in values]


# --- the gradient-norm chart ---------------------------------------------------------------------


def test_gradient_norm_chart_draws_both_norms_the_threshold_as_a_step_line_and_clip_markers():
    store = fill_store(5_000)
    view, _ = store.view(2000)
    chart = charts.gradient_norm_chart(view)
    layers = layers_of(chart)
    by_y = {layer["encoding"].get("y", {}).get("field"): layer for layer in layers}

    assert by_y["grad_norm_mean"]["mark"]["type"] == "line"
    assert by_y["clipped_grad_norm_mean"]["mark"]["type"] == "line"
    threshold = by_y["clip_threshold"]
    assert threshold["mark"]["type"] == "line"
    assert threshold["mark"]["interpolate"] == "step-after"
    markers = [layer for layer in layers if layer["mark"]["type"] == "point"]
    assert len(markers) == 1
    assert markers[0]["encoding"]["y"]["field"] == "grad_norm"  # at the largest pre-clip norm
    assert {"filter": "datum.clipped > 0"} in markers[0]["transform"]
    band = [layer for layer in layers if layer["mark"]["type"] == "area"]
    assert band and band[0]["encoding"]["y2"]["field"] == "grad_norm"  # the band reaches the max
    assert all(layer["encoding"]["x"]["field"] == "step" for layer in layers if "x" in layer["encoding"])
    # Every clipped row is in the data the markers filter; none of the others.
    data = rows(chart)
    assert any(row["clipped"] > 0 for row in data) and any(row["clipped"] == 0 for row in data)


def test_gradient_norm_chart_uses_one_colour_per_meaning():
    chart = charts.gradient_norm_chart(fill_store(500).view(2000)[0])
    scales = [
        layer["encoding"]["color"]["scale"]
        for layer in layers_of(chart)
        if "color" in layer["encoding"] and "scale" in layer["encoding"]["color"]
    ]
    assert scales, "the series must share one explicit colour scale"
    for scale in scales:
        assert scale["domain"] == ["Before clip", "After clip", "Threshold", "Clip event"]
        assert scale["range"] == [
            charts.COLORS["before_clip"],
            charts.COLORS["after_clip"],
            charts.COLORS["threshold"],
            charts.COLORS["clip_marker"],
        ]


def test_gradient_norm_chart_has_a_tooltip_for_the_nearest_step():
    chart = charts.gradient_norm_chart(fill_store(500).view(2000)[0])
    hover = [layer for layer in layers_of(chart) if layer["mark"]["type"] == "rule"]
    assert len(hover) == 1
    titles = [tooltip["title"] for tooltip in hover[0]["encoding"]["tooltip"]]
    assert titles[:2] == ["Step", "Steps in point"]
    assert "Threshold" in titles
    params = chart.to_dict()["params"]  # Altair lifts a layer's selection to the top
    assert params[0]["select"]["nearest"] is True and params[0]["select"]["fields"] == ["step"]


def test_log_scale_sets_a_log_axis_and_drops_values_it_cannot_place():
    store = fill_store(300)
    view, _ = store.view(2000)
    view.loc[10, ["grad_norm_min", "grad_norm_mean", "grad_norm"]] = 0.0  # a zero gradient
    linear = charts.gradient_norm_chart(view, log_scale=False)
    logarithmic = charts.gradient_norm_chart(view, log_scale=True)

    def y_scale(chart):
        return next(
            layer["encoding"]["y"].get("scale", {})
            for layer in layers_of(chart)
            if layer["encoding"].get("y", {}).get("title")
        )

    assert y_scale(linear).get("type") is None
    assert y_scale(logarithmic)["type"] == "log"
    at_step = {row["step"]: row for row in rows(logarithmic)}
    assert at_step[int(view.loc[10, "step"])]["grad_norm"] is None
    assert {row["step"]: row for row in rows(linear)}[int(view.loc[10, "step"])]["grad_norm"] == 0.0


def test_non_finite_values_never_reach_the_chart():
    store = fill_store(400, policy="none", threshold=math.inf)  # `none` records an inf threshold
    view, _ = store.view(2000)
    view.loc[5, "grad_norm"] = np.nan
    chart = charts.gradient_norm_chart(view)
    spec = json.dumps(chart.to_dict(), allow_nan=False)  # raises on NaN / inf
    assert all(row["clip_threshold"] is None for row in rows(chart))
    assert "Infinity" not in spec


def test_the_threshold_is_not_drawn_against_the_norm_for_agc_and_value():
    for policy in ("agc", "value"):
        chart = charts.gradient_norm_chart(fill_store(300, policy=policy).view(2000)[0])
        assert all(row["clip_threshold"] is None for row in rows(chart)), policy
    chart = charts.gradient_norm_chart(fill_store(300, policy="zclip").view(2000)[0])
    assert all(row["clip_threshold"] == pytest.approx(0.3) for row in rows(chart))


def test_threshold_changes_show_in_the_step_line_data():
    store = fill_store(3_000, threshold=0.3, threshold_changes={2_000: 0.15})
    data = rows(charts.gradient_norm_chart(store.view(2000)[0]))
    before = [row["clip_threshold"] for row in data if row["step"] < 1_990]
    after = [row["clip_threshold"] for row in data if row["step"] > 2_010]
    assert set(np.round(before, 4)) == {0.3}
    assert set(np.round(after, 4)) == {0.15}


# --- bounds and spikes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def million_step_store() -> MetricsStore:
    return fill_store(1_000_000, spike_at=654_321, spike_value=1000.0)


def all_charts(store: MetricsStore, events: pd.DataFrame | None = None) -> dict:
    view, layer_view = store.view(max_points=charts.MAX_POINTS)
    recent = store.metrics(last=2000)
    events = store.events() if events is None else events
    return {
        "gradient_norm": charts.gradient_norm_chart(view),
        "gradient_norm_log": charts.gradient_norm_chart(view, log_scale=True),
        "loss": charts.loss_chart(view, events),
        "clip_rate": charts.clip_rate_chart(view),
        "layers": charts.layer_norm_chart(layer_view),
        "histogram": charts.gradient_norm_histogram(charts.recent_norms(recent), 0.3, 0.4),
    }


def test_every_chart_of_a_million_step_run_stays_within_two_thousand_points(million_step_store):
    view, layer_view = million_step_store.view(max_points=charts.MAX_POINTS)
    assert len(view) <= 2_100 and len(layer_view) <= 2_100
    assert view["steps"].sum() == 1_000_000  # the view covers the whole run
    for name, chart in all_charts(million_step_store).items():
        assert charts.chart_rows(chart) <= charts.MAX_POINTS, name


def test_builders_bound_their_data_even_when_handed_every_step():
    raw = fill_store(50_000).metrics()  # 50,000 raw rows, turned into a view-shaped frame
    view = pd.DataFrame(
        {
            "step": raw["step"],
            "steps": 1,
            "loss": raw["loss"],
            "grad_norm": raw["grad_norm"],
            "grad_norm_min": raw["grad_norm"],
            "grad_norm_mean": raw["grad_norm"],
            "clipped_grad_norm": raw["clipped_grad_norm"],
            "clipped_grad_norm_mean": raw["clipped_grad_norm"],
            "clip_threshold": raw["clip_threshold"],
            "clipped": raw["clipped"].astype(int),
            "nonfinite": 0,
            "learning_rate": raw["learning_rate"],
            "policy": raw["policy"],
        }
    )
    for chart in (
        charts.gradient_norm_chart(view, max_points=500),
        charts.loss_chart(view, pd.DataFrame(columns=["step", "time_s", "kind", "old", "new"]), max_points=500),
        charts.clip_rate_chart(view, max_points=500),
    ):
        assert charts.chart_rows(chart) <= 500


def test_a_single_spike_in_a_million_steps_stays_visible(million_step_store):
    view, layer_view = million_step_store.view(max_points=charts.MAX_POINTS)
    chart = charts.gradient_norm_chart(view)
    data = rows(chart)
    peak = max(data, key=lambda row: row["grad_norm"])
    assert peak["grad_norm"] == pytest.approx(1000.0)
    assert peak["step"] <= 654_321 < peak["step"] + peak["steps"]
    assert peak["clipped"] > 0  # so it carries a clip marker too
    others = [row["grad_norm"] for row in data if row is not peak]
    assert max(others) < 10  # and nothing else looks like it
    heatmap = charts.layer_norm_frame(layer_view)
    assert heatmap["norm"].max() == pytest.approx(1000.0)


# --- the numbers behind the charts ---------------------------------------------------------------


def test_even_spans_keeps_the_max_and_weighs_means_by_steps():
    frame = pd.DataFrame(
        {
            "step": [1, 2, 3, 4, 5, 6],
            "steps": [1, 1, 1, 1, 1, 5],
            "grad_norm": [1.0, 9.0, 2.0, 3.0, 4.0, 5.0],
            "loss": [1.0, 1.0, 1.0, 1.0, 1.0, 4.0],
            "clip_threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "clipped": [0, 1, 0, 1, 1, 2],
        }
    )
    merged = charts.even_spans(frame, 2, charts.METRIC_AGGREGATIONS)
    # Steps 1..10 in two spans of five: rows 1-5 and row 6 (which stands for steps 6-10).
    assert merged["step"].tolist() == [1, 6]
    assert merged["steps"].tolist() == [5, 5]
    assert merged["grad_norm"].tolist() == [9.0, 5.0]
    assert merged["clip_threshold"].tolist() == [0.5, 0.6]  # the last in force
    assert merged["clipped"].tolist() == [3, 2]
    whole = charts.even_spans(frame, 1, charts.METRIC_AGGREGATIONS)
    assert whole["loss"].iloc[0] == pytest.approx((5 * 1.0 + 5 * 4.0) / 10)  # weighted by steps
    assert charts.even_spans(frame, 100).equals(frame)


def test_even_spans_rejects_a_bad_budget_and_names_it():
    frame = pd.DataFrame({"step": [1, 2]})
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"Received: max_points={bad!r}"):
            charts.even_spans(frame, bad)


def test_rolling_clip_rate_matches_a_hand_count():
    frame = pd.DataFrame(
        {"step": [1, 2, 3, 4, 5, 6], "steps": [1] * 6, "clipped": [1, 0, 1, 1, 0, 0]}
    )
    rate = charts.rolling_clip_rate(frame, window=3)
    assert rate["clip_rate"].tolist() == pytest.approx([1, 1 / 2, 2 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert rate["steps_in_window"].tolist() == [1, 2, 3, 3, 3, 3]
    # A row wider than the window gives its own rate; reaching into a window, it counts for
    # the steps it has inside (here 99 of its 1000, so 24.75 clipped).
    wide = pd.DataFrame({"step": [1, 1001], "steps": [1000, 1], "clipped": [250, 1]})
    rate = charts.rolling_clip_rate(wide, window=100)
    assert rate["clip_rate"].tolist() == pytest.approx([0.25, (1 + 24.75) / 100])
    assert rate["steps_in_window"].tolist() == pytest.approx([1000, 100])
    with pytest.raises(ValueError, match="Received: window=0"):
        charts.rolling_clip_rate(frame, window=0)


def test_clip_rate_chart_is_a_percentage_area_from_zero_to_one():
    chart = charts.clip_rate_chart(fill_store(2_000).view(2000)[0])
    spec = chart.to_dict()
    assert spec["mark"]["type"] == "area"
    assert spec["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert spec["encoding"]["y"]["axis"]["format"] == "%"
    assert all(0 <= row["clip_rate"] <= 1 for row in rows(chart))


def test_what_if_and_the_suggested_threshold_match_hand_computed_numbers():
    norms = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, np.nan, np.inf])
    readout = charts.what_if(norms, 0.55)
    assert (readout.steps, readout.clipped_steps) == (10, 5)
    assert readout.clipped_share == 0.5
    assert readout.sentence() == "At threshold 0.55, 50.0% of the last 10 steps would have been clipped."
    assert charts.suggest_threshold(norms, 90) == pytest.approx(np.percentile(norms[:10], 90))
    assert charts.suggest_threshold(np.array([np.nan, 0.0]), 90) is None
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match=rf"Received: percentile={bad}"):
            charts.suggest_threshold(norms, bad)


def test_histogram_counts_every_finite_norm_and_draws_the_threshold_and_suggestion():
    norms = np.random.default_rng(1).lognormal(np.log(0.2), 0.3, 2000)
    counts = charts.histogram_frame(np.append(norms, [np.nan, np.inf]), bins=30)
    assert counts["count"].sum() == 2000 and len(counts) == 30
    assert counts["bin_end"].iloc[:-1].tolist() == counts["bin_start"].iloc[1:].tolist()
    log_counts = charts.histogram_frame(np.append(norms, 0.0), bins=30, log_scale=True)
    assert log_counts["count"].sum() == 2000  # zero cannot sit on a log axis

    chart = charts.gradient_norm_histogram(norms, 0.25, 0.31)
    layers = layers_of(chart)
    assert [layer["mark"]["type"] for layer in layers] == ["bar", "rule"]
    lines = {row["line"]: row["value"] for row in rows(chart) if "line" in row}
    assert lines == {"threshold 0.25": 0.25, "suggested 0.31": 0.31}  # the legend says the values
    colours = layers[1]["encoding"]["color"]["scale"]
    assert dict(zip(colours["domain"], colours["range"])) == {
        "threshold 0.25": charts.COLORS["threshold"],
        "suggested 0.31": charts.COLORS["suggested"],
    }
    # The policy `none` has no threshold to draw; the suggestion still shows.
    without = charts.gradient_norm_histogram(norms, math.inf, 0.31)
    assert [row["line"] for row in rows(without) if "line" in row] == ["suggested 0.31"]
    what_if = charts.gradient_norm_histogram(norms, 0.5, None, threshold_label="what-if")
    assert [row["line"] for row in rows(what_if) if "line" in row] == ["what-if 0.5"]


def test_layer_heatmap_tiles_time_and_keeps_variables_in_model_order():
    store = fill_store(30_000)
    _, layer_view = store.view(2000)
    cells = charts.layer_norm_frame(layer_view)
    assert len(cells) <= charts.MAX_POINTS
    for layer in LAYERS:
        one = cells[cells["layer"] == layer].sort_values("step")
        assert (one["step_end"].to_numpy()[:-1] == one["step"].to_numpy()[1:]).all()
        assert (one["step_end"] > one["step"]).all()
    spec = charts.layer_norm_chart(layer_view).to_dict()
    assert spec["mark"]["type"] == "rect"
    assert spec["encoding"]["y"]["sort"] == list(LAYERS)
    assert spec["encoding"]["color"]["scale"]["type"] == "log"


# --- events --------------------------------------------------------------------------------------


def events_frame(*events) -> pd.DataFrame:
    return pd.DataFrame(
        [(step, 1.7e9 + step, kind, old, new) for step, kind, old, new in events],
        columns=["step", "time_s", "kind", "old", "new"],
    )


def test_loss_chart_draws_every_command_as_a_labelled_rule():
    store = fill_store(3_000)
    events = events_frame(
        (0, "start", "", "global_norm"),
        (500, "clip_threshold", "1", "0.5"),
        (900, "spike", "", "100"),
        (1500, "pause", "", ""),
        (1500, "resume", "", ""),
        (2000, "autoclip.percentile", "10", "50"),
    )
    chart = charts.loss_chart(store.view(2000)[0], events)
    layers = layers_of(chart)
    assert [layer["mark"]["type"] for layer in layers] == ["line", "rule", "text"]
    data = chart.to_dict()["datasets"]
    rule_rows = data[layers[1]["data"]["name"]]
    label_rows = data[layers[2]["data"]["name"]]
    assert [row["step"] for row in rule_rows] == [500, 900, 1500, 1500, 2000]  # not the start
    assert [row["label"] for row in label_rows] == [
        "threshold 1 → 0.5",
        "spike ×100",
        "pause · resume",
        "autoclip.percentile 10 → 50",
    ]
    assert layers[1]["encoding"]["x"]["field"] == "step"
    tooltips = [tooltip["title"] for tooltip in layers[1]["encoding"]["tooltip"]]
    assert tooltips == ["Step", "Command", "Old", "New"]
    threshold_group = [row for row in rule_rows if row["kind"] == "clip_threshold"][0]["group"]
    scale = layers[1]["encoding"]["color"]["scale"]
    colours = dict(zip(scale["domain"], scale["range"]))
    assert colours[threshold_group] == charts.COLORS["threshold"]


def test_loss_chart_without_events_is_just_the_line():
    chart = charts.loss_chart(fill_store(100).view(2000)[0], events_frame((0, "start", "", "none")))
    assert marks(chart) == ["line"]


def test_events_table_lists_every_command_newest_first():
    table = charts.events_table(
        events_frame((0, "start", "", "global_norm"), (10, "clip_threshold", "1", "0.5"), (20, "stop", "", ""))
    )
    assert table.columns.tolist() == ["Step", "Time", "Command", "Old", "New"]
    assert table["Command"].tolist() == ["stop", "clip_threshold", "start"]
    assert table.iloc[1][["Step", "Old", "New"]].tolist() == [10, "1", "0.5"]
    assert charts.events_table(events_frame()).empty


def test_event_labels_read_as_short_phrases():
    assert charts.event_label("clip_threshold", "1", "0.5") == "threshold 1 → 0.5"
    assert charts.event_label("max_steps_per_second", "", "300") == "speed full → 300"
    assert charts.event_label("learning_rate", "0.01", "0.001") == "learning rate 0.01 → 0.001"
    assert charts.event_label("stop", "", "") == "stop"


def test_headline_reads_the_newest_finite_step_and_the_last_hundred():
    recent = pd.DataFrame(
        {
            "loss": [0.5] * 299 + [0.25, np.nan],
            "grad_norm": [0.2] * 299 + [0.3, np.nan],
            "clipped": [True] * 201 + [False] * 75 + [True] * 24 + [False],
            "finite": [True] * 300 + [False],
        }
    )
    numbers = charts.headline(recent)
    assert (numbers.loss, numbers.grad_norm) == (0.25, pytest.approx(0.3))  # skips the NaN step
    assert numbers.clip_rate == pytest.approx(24 / 100)
    assert numbers.window == 100
    assert charts.headline(recent.iloc[:0]).loss is None


def test_charts_module_imports_neither_streamlit_nor_tensorflow():
    assert_imports_neither_streamlit_nor_tensorflow("dashboard.charts")


# --- validation loss and big models (issue #9) -----------------------------------------------------


def chart_values(chart, field: str) -> list:
    """Every value of `field` in every dataset of a built chart."""
    return [row[field] for values in chart.to_dict().get("datasets", {}).values() for row in values if field in row]


def evaluations_frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(
        [(step, 1.7e9 + step, name, value) for step, name, value in rows], columns=["step", "time_s", "name", "value"]
    )


def test_loss_chart_draws_the_validation_loss_beside_the_training_loss():
    evaluations = evaluations_frame(
        (500, "val_loss", 0.9), (500, "val_accuracy", 0.5), (1000, "val_loss", 0.7), (1500, "val_loss", float("nan"))
    )
    chart = charts.loss_chart(fill_store(2_000).view(2000)[0], events_frame((0, "start", "", "none")), evaluations=evaluations)
    assert chart_values(chart, "val_loss") == [0.9, 0.7]  # NaN dropped, accuracy not drawn
    spec = chart.to_dict()
    drawn = json.dumps(spec)
    assert charts.COLORS["validation"] in drawn and "Validation loss" in drawn
    assert charts.latest_validation(evaluations) == {"val_loss": pytest.approx(float("nan"), nan_ok=True)}
    assert charts.latest_validation(evaluations.iloc[:2]) == {"val_loss": 0.9, "val_accuracy": 0.5}
    assert charts.latest_validation(None) == {}
    without = charts.loss_chart(fill_store(100).view(2000)[0], events_frame((0, "start", "", "none")))
    assert chart_values(without, "val_loss") == []


def big_layer_view(layers: int, steps: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = {"step": np.arange(1, steps + 1)}
    for index in range(layers):
        for variable in ("kernel", "bias", "gamma"):
            frame[f"layer{index:03d}/{variable}"] = rng.uniform(0.1, 1.0, steps) * (index + 1)
    return pd.DataFrame(frame)


def test_a_model_with_hundreds_of_variables_is_drawn_per_layer_and_says_so():
    few = big_layer_view(10)  # 30 variables: drawn as they are
    assert charts.group_layer_view(few) == (few, None)
    many = big_layer_view(12)  # 36 variables... still under the limit
    assert charts.group_layer_view(many)[1] is None
    grouped, note = charts.group_layer_view(big_layer_view(14))  # 42 variables in 14 layers
    assert note == "42 variables grouped into 14 layers (norm of each layer's gradient)"
    view = big_layer_view(14)
    expected = np.sqrt((view[["layer003/kernel", "layer003/bias", "layer003/gamma"]] ** 2).sum(axis=1))
    np.testing.assert_allclose(grouped["layer003"], expected)
    huge = big_layer_view(100)  # 300 variables in 100 layers: the 39 largest plus "other"
    reduced, note = charts.group_layer_view(huge)
    assert len(reduced.columns) == 1 + charts.MAX_LAYER_ROWS
    assert reduced.columns[-1] == "other (61 layers)"
    assert "layer099" in reduced.columns and "layer000" not in reduced.columns  # largest kept
    assert note.endswith("the 39 largest shown, the other 61 as their max")
    chart = charts.layer_norm_chart(huge).to_dict()
    assert chart["title"] == note and len(chart["encoding"]["y"]["sort"]) == charts.MAX_LAYER_ROWS
