"""Unit tests of dashboard/comparison.py and dashboard/advice.py: charts of several runs at once
(Compare, the A/B race), the History and config tables, and the advisor's ghost thresholds.

Runs are real `MetricsStore`s filled with made-up steps, so the frames have exactly the shape the
page hands the builders.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from dashboard import advice, charts, comparison
from training.policies import POLICY_NAMES
from training.store import MetricsStore

from support import assert_imports_neither_streamlit_nor_tensorflow


def run_view(
    total_steps: int,
    policy: str = "global_norm",
    threshold: float = 0.3,
    spike_at: int | None = None,
    nonfinite_from: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The metrics view of a made-up run: lognormal norms around 0.2, clipped at `threshold`."""
    store = MetricsStore(["dense/kernel"], POLICY_NAMES)
    rng = np.random.default_rng(seed)
    chunk = 4096
    for first in range(0, total_steps, chunk):
        steps = np.arange(first + 1, min(first + chunk, total_steps) + 1)
        norms = rng.lognormal(np.log(0.2), 0.3, len(steps)).astype(np.float32)
        if spike_at is not None and steps[0] <= spike_at <= steps[-1]:
            norms[spike_at - steps[0]] = 5000.0
        finite = np.ones(len(steps), bool) if nonfinite_from is None else steps < nonfinite_from
        norms = np.where(finite, norms, np.nan).astype(np.float32)
        store.append(
            {
                "step": steps,
                "time_s": 1.7e9 + steps * 1e-3,
                "loss": np.where(finite, 0.5, np.nan).astype(np.float32),
                "grad_norm": norms,
                "clipped_grad_norm": np.minimum(norms, threshold),
                "clip_threshold": np.full(len(steps), threshold if policy != "none" else np.inf, np.float32),
                "clipped": (norms > threshold) & (policy != "none"),
                "finite": finite,
                "learning_rate": np.full(len(steps), 0.01, np.float32),
                "policy": np.full(len(steps), POLICY_NAMES.index(policy), np.int8),
                "layer_norms": norms[:, None],
            }
        )
    return store.view()[0]


def encoding_of(chart, channel: str) -> list[dict]:
    spec = chart.to_dict()
    layers = spec.get("layer", [spec])
    found = [layer["encoding"][channel] for layer in layers if channel in layer.get("encoding", {})]
    found += [spec["encoding"][channel]] if channel in spec.get("encoding", {}) else []
    return found


def rows(chart) -> list[dict]:
    return [row for values in chart.to_dict().get("datasets", {}).values() for row in values]


def test_every_run_gets_its_own_colour_in_the_order_given():
    long = comparison.runs_long_frame(
        {"A · none": run_view(500, "none"), "B · global_norm 0.3": run_view(500), "C": run_view(200)}
    )
    for builder in (comparison.runs_gradient_norm_chart, comparison.runs_loss_chart, comparison.runs_clip_rate_chart):
        colors = encoding_of(builder(long), "color")
        assert colors, builder.__name__
        for color in colors:
            assert color["field"] == "run"
            assert color["scale"]["domain"] == ["A · none", "B · global_norm 0.3", "C"]
            assert color["scale"]["range"] == list(comparison.RUN_COLORS[:3])
    drawn_runs = {row["run"] for row in rows(comparison.runs_loss_chart(long))}
    assert drawn_runs == {"A · none", "B · global_norm 0.3", "C"}


def test_each_runs_threshold_is_dashed_in_its_colour_and_none_has_no_threshold():
    long = comparison.runs_long_frame({"A": run_view(300, "none"), "B": run_view(300, threshold=0.25)})
    chart = comparison.runs_gradient_norm_chart(long)
    layers = chart.to_dict()["layer"]
    threshold_layer = [layer for layer in layers if layer["mark"].get("interpolate") == "step-after"]
    assert len(threshold_layer) == 1 and threshold_layer[0]["encoding"]["y"]["field"] == "clip_threshold"
    by_run = {}
    for row in rows(chart):
        by_run.setdefault(row["run"], []).append(row["clip_threshold"])
    assert set(by_run["A"]) == {None}  # policy none's infinite threshold is not drawn
    assert np.allclose(by_run["B"], 0.25)


def test_each_series_stays_bounded_and_a_spike_survives_bucketing():
    long = comparison.runs_long_frame(
        {"short": run_view(2_000), "long": run_view(300_000, spike_at=123_457, seed=1)}
    )
    frame = comparison.run_series_frame(long, max_points=600)
    counts = frame.groupby("run").size()
    assert counts["long"] <= 600 and counts["short"] <= 600
    assert frame.query("run == 'long'")["grad_norm"].max() == pytest.approx(5000.0)  # max per bucket
    chart = comparison.runs_gradient_norm_chart(long)
    assert charts.chart_rows(chart) <= 2 * 600
    assert max(row["grad_norm"] or 0 for row in rows(chart)) == pytest.approx(5000.0)


def test_a_diverged_run_is_marked_where_its_steps_went_non_finite():
    long = comparison.runs_long_frame({"A": run_view(200, "none", nonfinite_from=51), "B": run_view(200)})
    frame = comparison.run_series_frame(long)
    diverged = frame.query("run == 'A' and nonfinite > 0")
    assert diverged["step"].min() == 51 and diverged["nonfinite"].sum() == 150
    assert frame.query("run == 'B'")["nonfinite"].sum() == 0
    markers = [layer for layer in comparison.runs_loss_chart(long).to_dict()["layer"] if layer["mark"]["type"] == "point"]
    assert len(markers) == 1 and markers[0]["transform"][0]["filter"] == "datum.nonfinite > 0"


def test_more_than_six_runs_or_a_frame_without_steps_is_refused_with_what_was_received():
    with pytest.raises(ValueError, match="At most 6 runs.*Received 7 runs"):
        comparison.runs_long_frame({f"run {index}": run_view(10) for index in range(7)})
    with pytest.raises(ValueError, match=r"Run 'x' has no `step` column. Received columns: \['loss'\]"):
        comparison.runs_long_frame({"x": pd.DataFrame({"loss": [1.0]})})


def test_history_and_config_tables_read_the_database_rows():
    runs = pd.DataFrame(
        {
            "run_id": [2, 1], "name": ["tuned", "baseline"], "task": ["seed", "seed"],
            "policy": ["global_norm", "none"], "clip_threshold": [0.5, 1.0], "learning_rate": [0.01, 0.01],
            "steps": [1000, None], "final_loss": [0.25, None], "clip_rate": [0.1, None],
            "state": ["stopped", "interrupted"], "error": [None, None], "created_at": [1.7e9, 1.7e9 - 60],
            "host": ["gpu-box", None],
        }
    )  # fmt: skip
    table = comparison.history_table(runs)
    assert list(table.columns) == ["Id", "Name", "Forked from", "Task", "Policy", "Threshold", "Steps", "Final loss",
                                   "Clip rate", "State", "Host", "Date"]  # fmt: skip
    assert table["Forked from"].tolist() == ["", ""]  # a database from before lineage: no column, no branch
    assert table["Host"].tolist() == ["gpu-box", ""]  # a run recorded before hosts were kept: blank
    assert table["Name"].tolist() == ["tuned", "baseline"] and table["Steps"].tolist() == [1000, 0]
    assert np.isnan(table["Final loss"].iloc[1]) and table["Date"].iloc[0].startswith("20")
    # Policy none clips nothing: no threshold shown (found by probing: the sidebar's 1.0 was).
    assert table["Threshold"].iloc[0] == 0.5 and np.isnan(table["Threshold"].iloc[1])

    infos = [
        {"name": "tuned", "task": "seed", "policy": "autoclip", "clip_threshold": 1.0, "learning_rate": 0.01,
         "batch_size": 32, "seed": 0, "steps": 1000, "final_loss": 0.25, "clip_rate": 0.1, "state": "stopped",
         "config": {"policy_params": {"autoclip": {"percentile": 10.0, "window": 1000}}}},
        {"name": "tuned", "task": "seed", "policy": "none", "clip_threshold": 1.0, "learning_rate": 0.01,
         "batch_size": 32, "seed": 0, "steps": 10, "final_loss": None, "clip_rate": 0.0, "state": "failed"},
    ]  # fmt: skip
    names = comparison.unique_run_names(["tuned", "tuned"], [2, 3])
    assert names == ["tuned #2", "tuned #3"]
    config = comparison.runs_config_table(infos, names)
    assert config["Run"].tolist() == names
    assert config["Policy parameters"].tolist() == ["percentile=10, window=1000", ""]
    assert config["Threshold"].iloc[0] == 1.0 and np.isnan(config["Threshold"].iloc[1])  # autoclip's cap; none: blank
    with pytest.raises(ValueError, match="Received 1 names for 2 runs"):
        comparison.runs_config_table(infos, ["one"])


# --- the advisor's ghost thresholds --------------------------------------------------------------


def test_ghost_thresholds_are_bounded_finite_and_dashed_over_the_real_chart():
    steps = np.arange(1, 100_001)
    autoclip = np.concatenate([[np.inf], np.linspace(0.1, 0.3, 99_999)])  # autoclip's first step: none
    zclip = np.full(100_000, 0.8)
    ghosts = advice.ghost_threshold_frame(steps, {"autoclip": autoclip, "zclip": zclip}, max_points=600)
    assert ghosts.groupby("ghost").size().max() <= 600
    assert np.isfinite(ghosts["threshold"]).all()
    assert set(ghosts["ghost"]) == {"autoclip would have chosen", "zclip would have chosen"}
    assert np.allclose(ghosts.query("ghost == 'zclip would have chosen'")["threshold"], 0.8)

    base = charts.gradient_norm_chart(run_view(1000))
    chart = advice.with_ghost_thresholds(base, ghosts)
    spec = chart.to_dict()
    assert spec["height"] == 340 and spec["resolve"]["scale"]["color"] == "independent"
    inner, ghost_layer = spec["layer"]
    assert len(inner["layer"]) == len(base.to_dict()["layer"])  # the real threshold and all stay
    assert ghost_layer["mark"]["strokeDash"] == [2, 3] and ghost_layer["mark"]["opacity"] < 1
    assert ghost_layer["encoding"]["color"]["scale"]["range"] == [advice.GHOST_COLORS["autoclip"], advice.GHOST_COLORS["zclip"]]
    assert advice.with_ghost_thresholds(base, ghosts.iloc[:0]) is base  # nothing to add


def test_ghost_thresholds_need_one_value_per_step():
    with pytest.raises(ValueError, match="Received 3 thresholds for 'zclip' and 4 steps"):
        advice.ghost_threshold_frame(np.arange(4), {"zclip": np.ones(3)})


def test_the_typical_threshold_ignores_steps_without_one():
    assert advice.typical_threshold(np.array([np.inf, 1.0, 2.0, 3.0])) == 2.0
    assert advice.typical_threshold(np.array([np.inf])) is None


def test_the_pure_modules_import_neither_streamlit_nor_tensorflow():
    assert_imports_neither_streamlit_nor_tensorflow("dashboard.comparison", "dashboard.advice", "dashboard.export")


def chart_values(chart, field: str) -> list:
    """Every value of `field` in every dataset of a built chart."""
    return [row[field] for values in chart.to_dict().get("datasets", {}).values() for row in values if field in row]


def test_compare_loss_chart_draws_each_runs_validation_loss_in_its_colour():
    long = comparison.runs_long_frame({"A": run_view(300, seed=1), "B": run_view(300, seed=2)})
    evaluations = {
        "A": pd.DataFrame({"step": [100, 200], "time_s": [0.0, 1.0], "name": ["val_loss", "val_loss"], "value": [0.9, 0.8]}),
        "B": pd.DataFrame({"step": [100], "time_s": [0.0], "name": ["val_accuracy"], "value": [0.5]}),
    }
    validation = comparison.runs_validation_frame(evaluations)
    assert validation.to_dict("list") == {"run": ["A", "A"], "step": [100, 200], "val_loss": [0.9, 0.8]}
    chart = comparison.runs_loss_chart(long, validation=validation)
    assert chart_values(chart, "val_loss") == [0.9, 0.8]
    assert "Validation loss" in str(chart.to_dict())
    assert comparison.runs_validation_frame({}).empty
