"""Headless tests (AppTest) of the History, Compare and A/B race tabs and of the run database
settings, with real Trainers and a temporary database.

Runs are recorded by real Trainers of the seed task (a few hundred steps, full speed) or started
from the page itself. Each test gets a fresh shared RunManager on its own database (conftest sets
CLIPWATCH_DB to a temporary file) and stops every trainer it started.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import panels, step_range
from dashboard.run_manager import RunManager, get_run_manager
from dashboard.step_range import StepRange
from support import step_domains, wait_until
from training import Trainer
from training.persistence import RunDatabase
from training.tasks import TASKS

RUN_TIMEOUT = 90.0  # seconds: History and race runs compile two models
APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app.py")


@pytest.fixture
def manager() -> RunManager:
    st.cache_resource.clear()  # a fresh shared manager, on this test's database
    manager = get_run_manager()
    yield manager
    manager.stop_all()
    st.cache_resource.clear()


def record_run(database: RunDatabase, name: str, steps: int = 300, **settings) -> int:
    """Train a real seed-task run of `steps` steps into `database`; returns its run id."""
    trainer = Trainer(task="seed", max_steps=steps, database=database, run_name=name, **settings)
    trainer.start()
    try:
        wait_until(lambda: trainer.status.state != "running", timeout=RUN_TIMEOUT, what=f"run {name!r} to finish")
    finally:
        trainer.stop()
    assert trainer.status.state == "stopped", trainer.status
    return trainer.status.run_id


def open_tab(at: AppTest, label: str) -> AppTest:
    at.session_state["section"] = label
    return at.run()


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def spec_of(chart) -> str:
    return chart.proto.spec


def run_color_domains(spec: str) -> list[list[str]]:
    """The colour scales' domains of every layer whose colour encodes the `run` field."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            color = node.get("encoding", {}).get("color", {})
            if color.get("field") == "run":
                found.append(color["scale"]["domain"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(spec))
    return found


# --- History -------------------------------------------------------------------------------------


def test_history_lists_opens_renames_and_deletes_a_recorded_run(manager):
    database = manager.database
    run_id = record_run(database, "baseline", steps=400, policy="global_norm", clip_threshold=0.2)
    at = open_tab(AppTest.from_file(APP, default_timeout=90).run(), "History")
    assert not at.exception, at.exception

    # Listed, and opened (the newest run opens first) with the live view's charts.
    listed = at.dataframe[0].value
    assert listed["Name"].tolist() == ["baseline"] and listed["Steps"].tolist() == [400]
    assert listed["Policy"].tolist() == ["global_norm"] and listed["State"].tolist() == ["stopped"]
    assert at.selectbox(key=at.selectbox[0].key).value == run_id
    assert "baseline" in texts(at.subheader)
    drawn = [spec_of(chart) for chart in at.get("vega_lite_chart")]
    assert len(drawn) == 5  # gradient norm, loss, clip rate, per-layer, histogram
    assert "Gradient norm (global L2)" in drawn[0]
    # The advisor: ghost thresholds on the chart, and a replayed clip rate at a proposed one.
    assert "autoclip would have chosen" in drawn[0] and "zclip would have chosen" in drawn[0]
    norms = database.metrics(run_id)["grad_norm"].to_numpy(np.float32)
    proposed = at.number_input(key=f"history.proposed@{run_id}")
    assert proposed.value == 0.2  # the run's own threshold to start with
    proposed.set_value(0.15).run()
    sentence = next(text for text in texts(at.markdown) if text.startswith("At threshold **0.15**"))
    share = float(re.search(r"\*\*([0-9.]+)%\*\* of the newest \*\*400\*\* steps", sentence).group(1))
    assert share == pytest.approx(100 * (norms > 0.15).mean(), abs=0.05)

    # Rename.
    name_input = next(widget for widget in at.text_input if widget.label == "Run name")
    name_input.set_value("tuned at 0.2").run()
    at.button(key="history.rename").click().run()
    assert not at.exception and database.run_info(run_id)["name"] == "tuned at 0.2"
    assert "tuned at 0.2" in texts(at.subheader)

    # Delete asks first; Cancel keeps the run.
    at.button(key="history.delete").click().run()
    assert any("cannot be undone" in text for text in texts(at.warning))
    at.button(key="history.cancel_delete").click().run()
    assert len(database.list_runs()) == 1 and not at.warning
    at.button(key="history.delete").click().run()
    at.button(key="history.confirm_delete").click().run()
    assert not at.exception
    assert len(database.list_runs()) == 0
    assert any(f"Deleted run #{run_id}" in text for text in texts(at.success))
    assert any("No recorded runs yet" in text for text in texts(at.info))


def test_a_run_still_training_cannot_be_deleted(manager):
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.button(key="start").click().run()
    trainer = manager.trainer
    wait_until(lambda: trainer.status.run_id is not None and trainer.status.step > 10, timeout=RUN_TIMEOUT, what="a recorded run")
    open_tab(at, "History")
    at.button(key="history.delete").click().run()
    at.button(key="history.confirm_delete").click().run()
    assert texts(at.error) == [f"Run {trainer.status.run_id} is still training: stop it before deleting it."]
    assert len(manager.database.list_runs()) == 1 and trainer.status.state == "running"


def test_history_draws_a_window_and_a_zoom_of_the_recorded_run_and_resets_it(manager):
    run_id = record_run(manager.database, "long", steps=1_500)
    at = open_tab(AppTest.from_file(APP, default_timeout=90).run(), "History")
    assert not at.exception, at.exception
    panels_over_steps = ["history_clip_rate_panel", "history_gradient_norm_panel", "history_layer_panel", "history_loss_panel"]
    domains = step_domains(at, "history.chart.")
    assert sorted(domains) == panels_over_steps  # the histogram (over norms) takes no brush
    assert all(domain[0] == 1 for domain in domains.values())

    at.selectbox(key="history.steps_shown").select("Last 1,000 steps").run()
    assert any("Showing steps 501–1,500" in text for text in texts(at.caption))
    assert all(domain[0] == 501 for domain in step_domains(at, "history.chart.").values())

    # AppTest cannot drag a brush: the zoom goes where the brush's callback puts it
    # (step_range.apply_selection, unit-tested on Streamlit's payload in test_step_range.py).
    place = panels.ZoomPlace("history", run_id)
    at.session_state[place.zoom_key] = step_range.zoom_entry(run_id, StepRange(100, 300))
    at.run()
    assert any("Zoomed to steps 100–300" in text for text in texts(at.caption))
    zoomed = step_domains(at, "history.chart.")
    assert zoomed.pop("history_layer_panel") == [100, 301]
    assert all(domain == [100, 300] for domain in zoomed.values()), zoomed
    at.button(key="history.reset_zoom").click().run()
    assert place.zoom_key not in at.session_state
    assert all(domain[0] == 501 for domain in step_domains(at, "history.chart.").values())


# --- Compare -------------------------------------------------------------------------------------


def test_compare_overlays_two_runs_coloured_by_run(manager):
    database = manager.database
    clipped = record_run(database, "clipped at 0.1", policy="global_norm", clip_threshold=0.1)
    unclipped = record_run(database, "unclipped", policy="none")
    at = open_tab(AppTest.from_file(APP, default_timeout=90).run(), "Compare")
    picker = at.multiselect[0]
    assert picker.label == "Runs to compare" and picker.proto.max_selections == 6
    assert not at.get("vega_lite_chart")  # nothing picked yet
    picker.select(clipped).select(unclipped).run()
    assert not at.exception, at.exception
    drawn = [spec_of(chart) for chart in at.get("vega_lite_chart")]
    assert len(drawn) == 3  # gradient norm, loss, clip rate
    for spec in drawn:
        domains = run_color_domains(spec)
        assert domains and all(domain == ["clipped at 0.1", "unclipped"] for domain in domains)
    # A zoom crops every run (AppTest cannot drag a brush: the zoom goes where its callback puts it).
    place = panels.ZoomPlace("compare", (clipped, unclipped))
    at.session_state[place.zoom_key] = step_range.zoom_entry(place.owner, StepRange(50, 150))
    at.run()
    zoomed = step_domains(at, "compare.chart.")
    assert sorted(zoomed) == ["compare_clip_rate_panel", "compare_gradient_norm_panel", "compare_loss_panel"]
    assert all(domain == [50, 150] for domain in zoomed.values()), zoomed
    at.button(key="compare.reset_zoom").click().run()
    assert all(domain == [1, 300] for domain in step_domains(at, "compare.chart.").values())
    table = at.dataframe[0].value
    assert table["Run"].tolist() == ["clipped at 0.1", "unclipped"]
    assert table["Policy"].tolist() == ["global_norm", "none"]
    assert table["Steps"].tolist() == [300, 300]
    assert table["Clip rate"].iloc[1] == 0.0 and table["Clip rate"].iloc[0] > 0.5


# --- the A/B race --------------------------------------------------------------------------------


def test_the_ab_race_starts_two_trainers_on_the_same_data_that_both_advance(manager):
    at = open_tab(AppTest.from_file(APP, default_timeout=90).run(), "A/B race")
    assert not at.exception, at.exception
    threshold = float(TASKS["exploding_rnn"].clip_threshold)
    # The default set-up: the task's threshold, no clipping on A against global-norm on B.
    assert at.selectbox(key="race.A.policy").value == "none"
    assert at.selectbox(key="race.B.policy").value == "global_norm"
    assert at.number_input(key="race.A.clip_threshold.exploding_rnn").value == threshold
    at.number_input(key="race.B.clip_threshold.exploding_rnn").set_value(0.8).run()  # before Start
    at.button(key="start_race").click().run()
    assert not at.exception and not at.error, texts(at.error)
    side_a, side_b = manager.race_trainers
    assert side_a is not side_b
    assert (side_a.config.task, side_a.config.policy) == ("exploding_rnn", "none")
    assert (side_b.config.task, side_b.config.policy, side_b.config.clip_threshold) == (
        "exploding_rnn", "global_norm", 0.8,
    )  # fmt: skip
    assert side_a.config.seed == side_b.config.seed and side_a.config.batch_size == side_b.config.batch_size

    # Both advance at once: each has its own thread.
    wait_until(lambda: side_a.status.step >= 20 and side_b.status.step >= 20, timeout=RUN_TIMEOUT, what="both sides' first steps")
    seen_b = side_b.status.step
    wait_until(lambda: side_b.status.step > seen_b + 20, timeout=RUN_TIMEOUT, what="side B to keep going")
    # Same seed and data: the first step (before any update) is the same on both sides.
    first_a, first_b = side_a.metrics().iloc[0], side_b.metrics().iloc[0]
    assert first_a["loss"] == first_b["loss"] and first_a["grad_norm"] == first_b["grad_norm"]

    at.run()
    assert not at.exception
    drawn = [spec_of(chart) for chart in at.get("vega_lite_chart")]
    assert len(drawn) == 3
    names = ["A · none", "B · global_norm 0.8"]
    for spec in drawn:
        domains = run_color_domains(spec)
        assert domains and all(domain == names for domain in domains)
    assert {metric.label for metric in at.metric} >= {"Step A", "Step B", "State A", "State B"}
    assert at.sidebar.button(key="start").disabled  # one thing trains at a time

    # Each side has its own controls: a new threshold for B leaves A alone.
    b_threshold = next(widget for widget in at.number_input if widget.label == "Clip threshold B")
    b_threshold.set_value(0.5).run()
    assert not at.exception
    wait_until(lambda: side_b.config.clip_threshold == 0.5, timeout=RUN_TIMEOUT, what="B's new threshold")
    assert side_a.config.clip_threshold == threshold
    at.button(key="race.B.stop").click().run()
    assert side_b.status.state == "stopped"
    # Both sides are recorded, under their race names.
    recorded = sorted(manager.database.list_runs()["name"])
    assert [name.split(" · ", 1)[1] for name in recorded] == names


# --- the live run's advisor ----------------------------------------------------------------------


def test_the_live_run_replays_its_norms_and_draws_ghost_thresholds(manager):
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.button(key="start").click().run()
    trainer = manager.trainer
    wait_until(lambda: trainer.status.step >= 300, timeout=RUN_TIMEOUT, what="300 steps")
    at.run()
    assert "would have chosen" not in spec_of(at.get("vega_lite_chart")[0])  # no replay yet
    at.button(key="advise_live").click().run()
    assert not at.exception and not at.error, texts(at.error)
    advice = manager.live_advice()
    assert advice is not None and advice.count >= 300 and advice.steps[0] == 1
    drawn = spec_of(at.get("vega_lite_chart")[0])
    assert "autoclip would have chosen" in drawn and "zclip would have chosen" in drawn
    proposed = at.number_input(key="live.proposed@1")
    assert proposed.value == 1.0  # the run's threshold
    proposed.set_value(0.1).run()
    sentence = next(text for text in texts(at.markdown) if text.startswith("At threshold **0.1**"))
    share = float(re.search(r"\*\*([0-9.]+)%\*\* of the newest", sentence).group(1))
    assert share == pytest.approx(100 * (advice.grad_norms > 0.1).mean(), abs=0.05)
    proposed.set_value(-1.0).run()
    assert any("clip_threshold=-1.0" in text for text in texts(at.warning))


# --- the run database ----------------------------------------------------------------------------


def database_path_input(at):
    """The sidebar's Database path field, by its label (the number controls are text fields too)."""
    return next(widget for widget in at.sidebar.text_input if widget.label == "Database path")


def test_a_corrupt_database_shows_the_error_and_runs_are_kept_in_memory(tmp_path, monkeypatch):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a SQLite database " * 100)
    monkeypatch.setenv("CLIPWATCH_DB", str(corrupt))
    st.cache_resource.clear()
    manager = get_run_manager()
    try:
        at = AppTest.from_file(APP, default_timeout=90).run()
        assert not at.exception
        assert len(at.error) == 1 and "Cannot use the run database at" in at.error[0].value
        assert str(corrupt) in at.error[0].value
        assert any("kept in memory only" in text for text in texts(at.warning))

        # Start still works: the run trains, in memory.
        at.button(key="start").click().run()
        trainer = manager.trainer
        wait_until(lambda: trainer.status.step >= 20, timeout=RUN_TIMEOUT, what="the run's first steps")
        assert trainer.status.run_id is None and trainer.status.state == "running"
        assert any("no run database" in text for text in texts(open_tab(at, "History").info))

        # A path under a regular file cannot be used either; the run goes on.
        path_input = database_path_input(at)
        assert path_input.value == str(corrupt)
        path_input.set_value(str(corrupt / "runs.db")).run()
        assert str(corrupt / "runs.db") in at.error[0].value
        # A good path records the next runs; the current run is not lost.
        good = tmp_path / "good" / "runs.db"
        database_path_input(at).set_value(str(good)).run()
        assert not at.error and not at.warning
        assert manager.trainer is trainer and trainer.status.state == "running"
        assert manager.database_status().path == str(good) and good.exists()
    finally:
        manager.stop_all()
        st.cache_resource.clear()


def test_a_failed_database_write_mid_run_shows_as_a_warning(manager):
    at = AppTest.from_file(APP, default_timeout=90).run()
    control = next(widget for widget in at.sidebar.select_slider if widget.label == "Speed")
    control.set_value("Full").run()
    at.button(key="start").click().run()
    trainer = manager.trainer
    wait_until(lambda: trainer.status.run_id is not None and trainer.status.step > 10, timeout=RUN_TIMEOUT, what="a recorded run")
    # Another program breaks the database under the running writer.
    with sqlite3.connect(manager.database.path) as connection:
        connection.execute("DROP TABLE step_chunks")
    wait_until(lambda: trainer.status.warning, timeout=RUN_TIMEOUT, what="the writer's failure")
    at.run()
    assert trainer.status.state == "running"  # training goes on in memory
    warnings = texts(at.warning)
    assert any("Cannot write the run database" in text and "no such table: step_chunks" in text for text in warnings), warnings
