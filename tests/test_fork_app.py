"""The Live tab's "Fork and sweep" section (issue #21) with Streamlit's AppTest, on a real Trainer.

Fork from here draws the branch on the parent's charts, named by its settings; a bad override is
refused with the value as typed and nothing is sent; Discard ends a branch and Adopt makes the
run continue from it (an "adopt" event, the sidebar following); Sweep thresholds shows "Loss by
clip threshold" with its charts, and "Use this threshold" sets the run's threshold as a command.
Where forking cannot work (a viewer, streamed data) one line says so instead of the controls.
"""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from support import wait_until
from test_app import APP, control, errors, manager, restore_the_switch_interval, start_run  # noqa: F401

from dashboard import fork_view
from dashboard.live_run import RunSettings
from dashboard.run_manager import RunManager, get_run_manager

SNAPSHOT_EVERY = 50  # kept snapshots come quickly, so "Fork from step" has choices


@pytest.fixture
def app(manager) -> AppTest:
    manager.trainer_options["snapshot_every"] = SNAPSHOT_EVERY
    return AppTest.from_file(APP, default_timeout=60).run()


def fork(at: AppTest, threshold: str = "", learning_rate: str = "") -> AppTest:
    at.text_input(key=fork_view.FORK_THRESHOLD).input(threshold)
    at.text_input(key=fork_view.FORK_LEARNING_RATE).input(learning_rate)
    return at.button(key="fork_button").click().run()


def forks(manager: RunManager):
    return manager.fork_snapshot().forks


def chart_specs(at: AppTest) -> list[str]:
    """Each drawn chart's Vega-Lite spec as text (its datasets travel apart, as Arrow)."""
    return [json.dumps(json.loads(chart.proto.spec), ensure_ascii=False) for chart in at.get("vega_lite_chart")]


def texts(at: AppTest) -> str:
    return " ".join(element.value for element in [*at.markdown, *at.caption, *at.info])


def test_fork_draws_the_branch_on_the_parents_charts_named_by_its_settings(app, manager):
    start_run(app, manager)
    assert fork_view.ALONGSIDE in texts(app)
    fork(app, threshold="0.3")
    assert not app.exception and not errors(app), errors(app)
    branch = wait_until(lambda: next((b for b in forks(manager) if b.step > b.fork_step), None), what="the branch's first step")
    assert branch.clip_threshold == 0.3 and branch.label == "clip 0.3"
    app.run()
    name = f"Branch {branch.branch_id} · clip 0.3 · from step {branch.fork_step:,}"
    drawn = [spec for spec in chart_specs(app) if name in spec]
    assert len(drawn) == 3, "the branch is drawn on the gradient-norm, loss and clip-rate charts"
    assert name in texts(app)  # the list of branches, with its buttons
    assert not app.button(key=f"adopt.1.{branch.branch_id}").disabled


@pytest.mark.parametrize(("typed", "named"), [("-1", "clip_threshold=-1"), ("abc", "clip_threshold='abc'"), ("1e999", "clip_threshold=1e999")])
def test_a_bad_branch_threshold_is_refused_by_name_and_nothing_is_sent(app, manager, typed, named):
    start_run(app, manager)
    fork(app, threshold=typed)
    assert not app.exception
    assert any(named in message for message in errors(app)), errors(app)
    assert manager.trainer.branches() == []


def test_a_bad_branch_learning_rate_is_refused_by_name(app, manager):
    start_run(app, manager)
    fork(app, learning_rate="0")
    assert any("learning_rate=0" in message for message in errors(app)), errors(app)
    assert manager.trainer.branches() == []


def test_discard_ends_a_branch_and_adopt_makes_the_run_continue_from_another(app, manager):
    start_run(app, manager)
    fork(app, threshold="0.3")
    fork(app, threshold="2")
    first, second = wait_until(lambda: [b for b in forks(manager) if b.state == "running"] if len(
        [b for b in forks(manager) if b.state == "running"]) == 2 else None, what="two running branches")  # fmt: skip
    app.run()
    app.button(key=f"discard.1.{second.branch_id}").click().run()
    wait_until(lambda: manager.trainer.branches()[1].state == "discarded", what="the discarded branch")
    app.run()
    assert f"branch {second.branch_id} (clip 2) discarded" in texts(app)

    app.button(key=f"adopt.1.{first.branch_id}").click().run()
    assert not app.exception and not errors(app), errors(app)
    wait_until(lambda: manager.trainer.config.clip_threshold == 0.3, what="the adopted threshold")
    events = manager.trainer.events()
    adopted = events[events["kind"] == "adopt"]
    assert len(adopted) == 1 and f"branch {first.branch_id}" in adopted["new"].iloc[0]
    app.run()
    assert control(app, "Clip threshold").value == "0.3"  # the sidebar follows the adopted settings
    assert f"branch {first.branch_id} (clip 0.3) adopted" in texts(app)


def test_sweep_thresholds_shows_loss_by_clip_threshold_and_uses_one(app, manager):
    start_run(app, manager)
    key = next(widget.key for widget in app.text_input if widget.label == "Thresholds to sweep")
    assert app.text_input(key=key).value  # prefilled with the default thresholds
    app.text_input(key=key).input("0.3, 1, 3")
    app.text_input(key=fork_view.SWEEP_STEPS).input("40")
    app.button(key="sweep_button").click().run()
    assert not app.exception and not errors(app), errors(app)
    wait_until(lambda: (manager.fork_snapshot().sweep or {}).get("done"), what="the sweep to finish", timeout=120)
    app.run()
    assert [element.value for element in app.subheader] == ["Loss by clip threshold"]
    specs = chart_specs(app)
    assert any("Clip threshold (log scale)" in spec for spec in specs)
    assert any("baseline" in spec and "clip 0.3" in spec for spec in specs)  # each branch's loss curve
    result = manager.fork_snapshot().sweep
    assert [row["clip_threshold"] for row in result["sweep"]] == [0.3, 1.0, 3.0]
    downloads = [element.proto.label for element in app.get("download_button")]
    assert {"Sweep table (CSV)", "Chart (PNG)", "Chart (SVG)"} <= set(downloads), downloads

    use = [button for button in app.button if button.label == "Use this threshold"]
    assert len(use) == 3
    use[0].click().run()
    assert not app.exception and not errors(app), errors(app)
    wait_until(lambda: manager.trainer.config.clip_threshold == 0.3, what="the swept threshold in force")
    events = manager.trainer.events()
    assert events[events["kind"] == "clip_threshold"][["old", "new"]].values.tolist() == [["1", "0.3"]]


def test_a_bad_sweep_list_is_refused_by_name(app, manager):
    start_run(app, manager)
    key = next(widget.key for widget in app.text_input if widget.label == "Thresholds to sweep")
    app.text_input(key=key).input("0.3, x")
    app.button(key="sweep_button").click().run()
    assert any("clip_threshold='x'" in message for message in errors(app)), errors(app)
    assert manager.trainer.branches() == []


def test_a_streamed_data_run_says_why_it_cannot_fork_instead_of_the_control(app, manager):
    manager.trainer_options["data"] = "stream"
    start_run(app, manager)
    wait_until(lambda: manager.trainer.fork_refusal, what="the run's fork refusal")
    app.run()
    assert "replayable data" in texts(app)
    assert not [button for button in app.button if button.key == "fork_button"]


def test_a_viewer_sees_one_line_instead_of_the_fork_control(monkeypatch):
    monkeypatch.setenv("CLIPWATCH_OPERATOR_KEY", "a key for this test")
    st.cache_resource.clear()  # a fresh shared run, and an operator gate that reads the key
    shared = get_run_manager()
    try:
        shared.start(RunSettings())
        wait_until(lambda: shared.trainer.status.step > 0, what="the first steps")
        at = AppTest.from_file(APP, default_timeout=60).run()  # a session without the key: a viewer
        assert not at.exception
        assert fork_view.VIEW_ONLY in texts(at)
        assert not [button for button in at.button if button.key in ("fork_button", "sweep_button")]
    finally:
        shared.stop()
        st.cache_resource.clear()
