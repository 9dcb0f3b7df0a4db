"""The template-filled live chart specs equal the specs Altair builds for the same data."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from benchmarks.dashboard_cost import filled_store
from dashboard import chart_specs, charts
from training.store import MetricsStore


def comparable(spec: dict) -> dict:
    """The spec with Altair's per-call view names (a global counter) made equal."""
    return json.loads(re.sub(r"view_[0-9a-f]+_\d+", "VIEW", json.dumps(spec, sort_keys=True)))


def altair_spec(chart) -> dict:
    return comparable(charts.vega_lite_spec(chart))


@pytest.fixture(scope="module")
def stores():
    empty = MetricsStore(["dense/kernel", "dense/bias"], ("none", "global_norm"))
    return {"empty": empty, "short": filled_store(3_000, seed=1), "long": filled_store(250_000, seed=2)}


def every_pair(store, log_scale, clip_threshold, suggested):
    view, layer_view = store.view(2000)
    events, norms = store.events(), charts.recent_norms(store.metrics(last=2000))
    return {
        "gradient_norm": (
            chart_specs.gradient_norm_spec(view, log_scale=log_scale),
            charts.gradient_norm_chart(view, log_scale=log_scale),
        ),
        "loss": (
            chart_specs.loss_spec(view, events, log_scale=log_scale),
            charts.loss_chart(view, events, log_scale=log_scale),
        ),
        "clip_rate": (chart_specs.clip_rate_spec(view), charts.clip_rate_chart(view)),
        "layer_norm": (chart_specs.layer_norm_spec(layer_view), charts.layer_norm_chart(layer_view)),
        "histogram": (
            chart_specs.gradient_norm_histogram_spec(norms, clip_threshold, suggested, log_scale=log_scale),
            charts.gradient_norm_histogram(norms, clip_threshold, suggested, log_scale=log_scale),
        ),
    }


@pytest.mark.parametrize("log_scale", [False, True])
@pytest.mark.parametrize("lines", [(1.0, 0.4), (0.7, None), (None, None), (math.inf, 2.0)])
def test_specs_equal_altair_for_every_store_shape(stores, log_scale, lines):
    # Each store is drawn twice: the first call makes the template, the second fills it in,
    # and between stores the same template takes other data.
    for name in ("short", "long", "empty", "short", "long"):
        for chart, (ours, chart_object) in every_pair(stores[name], log_scale, *lines).items():
            assert comparable(ours) == altair_spec(chart_object), (name, chart)


def test_a_template_takes_new_data_domain_and_line_names():
    store = MetricsStore(["w"], ("none", "global_norm"))
    first_spec, domains = None, []
    for rows in (400, 9_000):
        store.append(
            {
                "step": np.arange(store.total_steps + 1, store.total_steps + rows + 1),
                "time_s": np.zeros(rows),
                "loss": np.linspace(1.0, 0.5, rows),
                "grad_norm": np.linspace(0.1, 3.0, rows),
                "clipped_grad_norm": np.minimum(np.linspace(0.1, 3.0, rows), 1.0),
                "clip_threshold": np.ones(rows),
                "clipped": np.linspace(0.1, 3.0, rows) > 1.0,
                "finite": np.ones(rows, bool),
                "learning_rate": np.full(rows, 0.01),
                "policy": np.ones(rows, np.int8),
                "layer_norms": np.ones((rows, 1)),
            }
        )
        view, _ = store.view(2000)
        spec = chart_specs.gradient_norm_spec(view)
        first_spec = first_spec or spec
        domains.append(spec["layer"][0]["encoding"]["x"]["scale"]["domain"])
        assert comparable(spec) == altair_spec(charts.gradient_norm_chart(view))
    assert first_spec["datasets"] != spec["datasets"]  # the second is not the cached first
    assert domains[0][1] <= 400 < domains[1][1]
    norms = np.linspace(0.1, 2.0, 500)
    for threshold in (0.25, 1.75):
        histogram = chart_specs.gradient_norm_histogram_spec(norms, threshold, None)
        assert histogram["layer"][1]["encoding"]["color"]["scale"]["domain"] == [f"threshold {threshold:.3g}"]


def test_records_match_altair_for_missing_and_infinite_values():
    frame = pd.DataFrame(
        {
            "step": np.array([1, 2, 3], np.int64),
            "value": np.array([0.5, np.nan, np.inf], np.float32),
            "flag": [True, False, True],
            "text": ["a", None, "c"],
        }
    )
    chart = charts.alt.Chart(frame).mark_point().encode(x="step:Q")
    (values,) = charts.vega_lite_spec(chart)["datasets"].values()
    assert chart_specs.records(frame) == values


@pytest.mark.parametrize("log_scale", [False, True])
def test_specs_equal_altair_with_validation_loss_and_hundreds_of_variables(stores, log_scale):
    view = stores["short"].view(2000)[0]
    events = stores["short"].events()
    rng = np.random.default_rng(3)
    wide = pd.DataFrame({"step": np.arange(1, 61)})
    wide = pd.concat(
        [wide, pd.DataFrame({f"layer{i:03d}/{part}": rng.uniform(0.1, 2.0, 60)
                             for i in range(60) for part in ("kernel", "bias", "gamma")})], axis=1,
    )  # fmt: skip
    for values in ([0.9, 0.7, 0.6], [0.8, 0.5, 0.4]):  # the template, then new data in it
        evaluations = pd.DataFrame(
            {"step": [500, 1000, 1500], "time_s": [0.0] * 3, "name": ["val_loss"] * 3, "value": values}
        )
        ours = chart_specs.loss_spec(view, events, log_scale=log_scale, evaluations=evaluations)
        assert comparable(ours) == altair_spec(charts.loss_chart(view, events, log_scale=log_scale, evaluations=evaluations))
        assert comparable(chart_specs.layer_norm_spec(wide)) == altair_spec(charts.layer_norm_chart(wide))
        wide.iloc[:, 1:] = wide.iloc[:, 1:] * 1.5


def test_a_chart_redrawn_in_place_keeps_its_spec_from_refresh_to_refresh_and_draws_the_same():
    """The browser draws a chart anew (dropping a brush being dragged) whenever its spec changes;
    in place, two refreshes of a growing run differ only in their datasets."""
    import vl_convert

    earlier, later = filled_store(3_000, seed=7), filled_store(3_400, seed=7)
    earlier.record_event(1_500, "clip_threshold", 1.0, 0.5)
    later.record_event(1_500, "clip_threshold", 1.0, 0.5)

    def specs(store):
        view, layer_view = store.view(2000)
        return {
            "gradient_norm": chart_specs.gradient_norm_spec(view),
            "loss": chart_specs.loss_spec(view, store.events(), smoothing=0.5),
            "clip_rate": chart_specs.clip_rate_spec(view),
            "layers": chart_specs.layer_norm_spec(layer_view),
        }

    def without_data(spec):
        return json.dumps({key: value for key, value in spec.items() if key != "datasets"}, sort_keys=True)

    def svg(spec):  # the renderer numbers gradients with a global counter
        return re.sub(r"gradient_\d+", "GRADIENT", vl_convert.vegalite_to_svg(spec))

    for name, spec in specs(earlier).items():
        refreshed = specs(later)[name]
        assert without_data(spec) != without_data(refreshed), name  # as built: a new chart per refresh
        in_place, refreshed_in_place = chart_specs.redrawn_in_place(spec), chart_specs.redrawn_in_place(refreshed)
        assert without_data(in_place) == without_data(refreshed_in_place), name
        assert list(in_place["datasets"].values()) == list(spec["datasets"].values())  # the same rows
        assert all(rows is spec["datasets"][old] for rows, old in zip(in_place["datasets"].values(), spec["datasets"]))
        assert svg(in_place) == svg(spec), f"{name} is drawn differently in place"
