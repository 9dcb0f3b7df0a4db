"""Headless tests of the page with Streamlit's AppTest, driving a real Trainer on the seed task.

Each test gets a fresh shared RunManager (st.cache_resource is cleared) and stops its run at
the end. AppTest runs the script in this process, so the test reads the very manager and
trainer the page steers.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import live_view, step_range
from dashboard.run_manager import RunManager, get_run_manager
from dashboard.step_range import StepRange
from support import step_domains, wait_until

from training.interpreter_lock import SWITCH_INTERVAL_SECONDS
from training.policies import POLICY_PARAMETERS

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app.py")
CONTROL_LABELS = ("Task", "Policy", "Clip threshold", "Learning rate", "Speed")
BUTTON_LABELS = ("Start", "Pause", "Resume", "Stop", "Inject spike")


@pytest.fixture(autouse=True)
def restore_the_switch_interval():
    """app.py sets the process's switch interval; the tests after these keep their own."""
    default = sys.getswitchinterval()
    yield
    sys.setswitchinterval(default)


@pytest.fixture
def manager() -> RunManager:
    st.cache_resource.clear()  # a fresh shared run for this test
    manager = get_run_manager()
    yield manager
    manager.stop()
    st.cache_resource.clear()


@pytest.fixture
def app(manager) -> AppTest:
    return AppTest.from_file(APP, default_timeout=60).run()


def control(at: AppTest, label: str):
    """The sidebar widget labelled `label` (its key changes whenever the page resets it)."""
    widgets = [*at.sidebar.selectbox, *at.sidebar.text_input, *at.sidebar.number_input, *at.sidebar.select_slider]
    matches = [widget for widget in widgets if widget.label == label]
    assert len(matches) == 1, f"{len(matches)} widgets labelled {label!r}"
    return matches[0]


def errors(at: AppTest) -> list[str]:
    return [element.value for element in at.error]


def metric(at: AppTest, label: str) -> str:
    return next(element.value for element in at.metric if element.label == label)


def start_run(at: AppTest, manager: RunManager, steps: int = 20) -> None:
    at.button(key="start").click().run()
    assert not at.exception and not errors(at), errors(at)
    wait_until(lambda: manager.trainer.status.step >= steps, what=f"{steps} steps")
    at.run()  # the page as it is now: the run's buttons (Pause, Inject spike) apply once it steps


def clip_threshold_events(manager: RunManager):
    events = manager.trainer.events()
    return events[events["kind"] == "clip_threshold"]


def test_page_renders_every_control_with_no_exception(app):
    assert not app.exception
    assert app.title[0].value == "Clipwatch"
    labels = [widget.label for widget in app.sidebar.selectbox] + [
        widget.label for widget in (*app.sidebar.text_input, *app.sidebar.number_input, *app.sidebar.select_slider)
    ]
    for label in CONTROL_LABELS:
        assert label in labels
    assert sorted(button.label for button in app.sidebar.button) == sorted(BUTTON_LABELS)
    assert control(app, "Speed").value == 300
    assert control(app, "Speed").options[-1] == "Full"
    assert metric(app, "State") == "No run"
    assert "No run yet" in app.info[0].value
    assert app.sidebar.button(key="pause").disabled and not app.sidebar.button(key="start").disabled


def test_policy_parameters_appear_under_their_policy(app):
    control(app, "Policy").select("autoclip").run()
    labels = [widget.label for widget in app.sidebar.text_input]
    assert "Percentile" in labels and "Window" in labels
    control(app, "Policy").select("agc").run()
    assert "Clip factor" in [widget.label for widget in app.sidebar.text_input]
    control(app, "Policy").select("zclip").run()
    assert "Z threshold" in [widget.label for widget in app.sidebar.text_input]
    assert not app.exception


def test_start_runs_the_seed_task_and_the_page_shows_it(app, manager):
    start_run(app, manager, steps=30)
    trainer = manager.trainer
    assert trainer.config.task == "seed"
    assert trainer.status.state == "running"
    assert trainer.config.max_steps_per_second == 300  # the Speed control's default
    app.run()
    assert not app.exception
    assert metric(app, "State") == "Running"
    assert int(metric(app, "Step").replace(",", "")) >= 30
    assert metric(app, "Threshold") == "1"
    drawn = app.get("vega_lite_chart")
    assert len(drawn) == 5
    assert "Gradient norm (global L2)" in drawn[0].proto.spec
    assert app.sidebar.button(key="start").disabled
    assert not app.sidebar.button(key="stop").disabled


def test_changing_the_clip_threshold_reaches_the_running_trainer(app, manager):
    start_run(app, manager)
    control(app, "Clip threshold").input("0.25").run()
    assert not app.exception and not errors(app)
    wait_until(lambda: manager.trainer.config.clip_threshold == 0.25, what="the new threshold")
    changes = clip_threshold_events(manager)
    assert changes[["old", "new"]].values.tolist() == [["1", "0.25"]]
    # The trainer clips with it: steps after the change record 0.25 as their threshold.
    wait_until(
        lambda: (manager.trainer.metrics()["clip_threshold"] == 0.25).any(), what="0.25 in metrics"
    )
    app.run()
    assert metric(app, "Threshold") == "0.25"
    assert "clip_threshold" in app.get("table")[0].value["Command"].tolist()


@pytest.mark.parametrize("bad_value", [-1.0, 0.0])
def test_a_refused_threshold_shows_the_trainers_message_and_changes_nothing(app, manager, bad_value):
    start_run(app, manager)
    control(app, "Clip threshold").input("0.5").run()
    wait_until(lambda: manager.trainer.config.clip_threshold == 0.5, what="the first change")

    control(app, "Clip threshold").input(repr(bad_value)).run()
    assert not app.exception
    assert errors(app) == [
        "`clip_threshold` must be a finite number greater than 0. "
        f"Received: clip_threshold={bad_value!r}"
    ]
    step = manager.trainer.status.step  # a wrongly sent command would apply at a chunk boundary:
    wait_until(lambda: manager.trainer.status.step > step + 50, what="50 more steps")  # wait past one
    assert manager.trainer.config.clip_threshold == 0.5
    assert manager.settings.clip_threshold == 0.5
    assert clip_threshold_events(manager)["new"].tolist() == ["0.5"]
    assert control(app, "Clip threshold").value == "0.5"  # the control went back

    control(app, "Learning rate").input("0.02").run()  # the next command
    assert errors(app) == []  # clears the message


def test_a_refused_value_before_a_run_is_reported_too(app, manager):
    control(app, "Learning rate").input("-0.5").run()
    assert errors(app) == [
        "`learning_rate` must be a finite number greater than 0. Received: learning_rate=-0.5"
    ]
    assert control(app, "Learning rate").value == "0.01"
    assert manager.trainer is None


def test_learning_rate_policy_and_its_parameters_change_live(app, manager):
    start_run(app, manager)
    control(app, "Learning rate").input("0.005").run()
    control(app, "Policy").select("autoclip").run()
    control(app, "Percentile").input("50.0").run()
    control(app, "Percentile").input("150.0").run()
    percentile = POLICY_PARAMETERS["autoclip"]["percentile"]
    assert errors(app) == [f"`percentile` must be {percentile.allowed()}. Received: percentile=150.0"]
    trainer = manager.trainer
    wait_until(
        lambda: trainer.config.policy == "autoclip"
        and trainer.config.policy_params["autoclip"]["percentile"] == 50.0
        and trainer.config.learning_rate == 0.005,
        what="the live changes",
    )
    kinds = trainer.events()["kind"].tolist()
    assert "learning_rate" in kinds and "policy" in kinds and "autoclip.percentile" in kinds


def test_pause_resume_stop_and_a_new_start_replaces_the_trainer(app, manager):
    start_run(app, manager)
    first = manager.trainer
    app.sidebar.button(key="pause").click().run()
    wait_until(lambda: first.status.state == "paused", what="paused")
    app.run()  # the page follows the run's new state
    assert metric(app, "State") == "Paused"
    assert not app.sidebar.button(key="resume").disabled
    app.sidebar.button(key="resume").click().run()
    wait_until(lambda: first.status.state == "running", what="running again")
    app.sidebar.button(key="stop").click().run()
    assert first.status.state == "stopped"
    assert metric(app, "State") == "Stopped"
    assert app.sidebar.button(key="pause").disabled

    control(app, "Clip threshold").input("0.2").run()  # configures the next run
    app.sidebar.button(key="start").click().run()
    assert manager.trainer is not first and manager.run_number == 2
    assert manager.trainer.config.clip_threshold == 0.2
    with pytest.raises(RuntimeError, match="stopped"):
        first.set_clip_threshold(0.3)  # the old run is over


def test_a_second_session_watches_and_follows_the_same_run(app, manager):
    start_run(app, manager)
    second = AppTest.from_file(APP, default_timeout=60).run()
    assert metric(second, "State") == "Running"
    control(app, "Clip threshold").input("0.3").run()
    second.run()  # the second tab's next refresh
    assert control(second, "Clip threshold").value == "0.3"
    assert second.sidebar.button(key="start").disabled
    # Either tab steers the one run: the second stops it and the first sees that.
    second.sidebar.button(key="stop").click().run()
    assert manager.state == "stopped" and manager.run_number == 1
    app.run()
    assert metric(app, "State") == "Stopped"


def test_apply_suggested_threshold_sets_the_percentile_of_recent_norms(app, manager):
    start_run(app, manager, steps=200)
    app.run()
    button = app.button(key="apply_suggested")
    assert button.label == "Apply suggested threshold"
    suggestion = [
        element.value for element in app.markdown if element.value.startswith("Suggested threshold")
    ]
    assert len(suggestion) == 1
    shown = re.match(r"Suggested threshold \(p90 of recent norms\): \*\*([0-9.e+-]+)\*\*", suggestion[0])
    assert shown, suggestion[0]
    button.click().run()
    assert not app.exception and not errors(app)
    value = manager.settings.clip_threshold
    assert value == float(shown.group(1))
    assert 0 < value < 1  # a p90 of the seed task's norms, not the default threshold 1
    wait_until(lambda: manager.trainer.config.clip_threshold == value, what="the suggestion applied")
    assert float(control(app, "Clip threshold").value) == value
    assert clip_threshold_events(manager)["new"].tolist() == [f"{value:.6g}"]


def test_inject_spike_is_recorded_and_shows_in_the_gradient_norm(app, manager):
    start_run(app, manager, steps=50)
    control(app, "Spike factor").set_value(1000.0).run()
    app.sidebar.button(key="inject_spike").click().run()
    trainer = manager.trainer
    wait_until(lambda: "spike" in trainer.events()["kind"].tolist(), what="the spike event")
    spike_step = int(trainer.events().query("kind == 'spike'")["step"].iloc[0])
    wait_until(lambda: trainer.status.step > spike_step + 5, what="steps after the spike")
    norms = trainer.metrics()
    typical = norms["grad_norm"].median()
    assert norms["grad_norm"].max() > 100 * typical
    assert norms.loc[norms["grad_norm"].idxmax(), "clipped"]


def test_a_run_that_stops_itself_shows_why(app, manager):
    control(app, "Policy").select("none").run()
    control(app, "Learning rate").input("1e30").run()
    control(app, "Speed").set_value("Full").run()
    app.button(key="start").click().run()
    wait_until(lambda: manager.state == "failed", what="the run to fail")
    app.run()
    assert not app.exception
    assert metric(app, "State") == "Failed"
    assert any("consecutive non-finite steps" in message for message in errors(app))


def test_a_run_that_raises_shows_the_message_and_the_traceback(app, manager):
    def broken_sink(rows):
        raise OSError(f"disk full while writing {len(rows['step'])} rows")

    manager.trainer_options["sinks"] = (broken_sink,)
    app.button(key="start").click().run()
    wait_until(lambda: manager.state == "failed", what="the run to fail")
    app.run()
    assert any("OSError: disk full while writing" in message for message in errors(app))
    expander = app.expander[0]
    assert expander.label == "Traceback"
    assert "broken_sink" in expander.code[0].value


def test_a_rerun_leaves_keras_global_state_alone_and_the_config_skips_the_full_collection(manager):
    """Streamlit would clear Keras' session (a full collection, a new global-state tracker, an
    empty kernel cache) and run `gc.collect(2)` after every run, fragment reruns included: each
    holds the GIL ~0.3 s and starved a trainer tracing its step (dashboard/runtime.py)."""
    import tomllib

    from keras.src.backend.common import global_state

    keras_state = global_state.GLOBAL_STATE_TRACKER
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    app.run()  # a second run: the clean-up would have followed the first
    assert global_state.GLOBAL_STATE_TRACKER is keras_state
    with open(os.path.join(os.path.dirname(APP), ".streamlit", "config.toml"), "rb") as config:
        assert tomllib.load(config)["runner"]["postScriptGC"] is False


def test_the_page_switches_threads_often_so_its_charts_do_not_hold_up_a_trace(manager):
    """At Python's default 5 ms, the script thread drawing charts made a trace wait up to 5 ms
    after each of its thousands of calls (training/interpreter_lock.py)."""
    sys.setswitchinterval(0.005)
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)


# --- the step charts' window and zoom (issue #20) ------------------------------------------------


def shown_caption(at: AppTest) -> tuple[int, int]:
    """The steps the zoom bar says the charts show ("Showing steps 4,001–5,000")."""
    text = next(element.value for element in at.caption if "steps" in element.value and "–" in element.value)
    first, last = re.search(r"steps ([0-9,]+)–([0-9,]+)", text).groups()
    return int(first.replace(",", "")), int(last.replace(",", ""))


def test_the_window_crops_the_live_charts_and_a_zoom_survives_refreshes_until_reset(app, manager):
    control(app, "Speed").set_value(1000).run()
    app.button(key="start").click().run()
    wait_until(lambda: manager.trainer.store is not None and manager.trainer.store.total_steps >= 1_500, what="1,500 steps")
    app.run()
    charts = ("gradient_norm_panel", "loss_panel", "clip_rate_panel", "layer_panel")
    domains = step_domains(app, "live.chart.")
    assert sorted(domains) == sorted(charts)  # every chart over steps takes the brush; the histogram not
    assert all(domain[0] == 1 for domain in domains.values())  # the whole run

    # The window: the newest 1,000 steps, following the run.
    app.selectbox(key="live.steps_shown").select("Last 1,000 steps").run()
    assert not app.exception
    first, last = shown_caption(app)
    assert last - first == 999 and last >= 1_500
    for name, (start, end) in step_domains(app, "live.chart.").items():
        assert start == first and last - 2 <= end <= last + 1, (name, start, end)
    specs = {chart.proto.id: chart.proto.spec for chart in app.get("vega_lite_chart") if "live.chart." in chart.proto.id}
    wait_until(lambda: manager.trainer.store.total_steps > last + 300, what="300 more steps")
    app.run()
    # New rows, the same specs: the browser replaces the data and keeps a brush being dragged.
    assert {chart.proto.id: chart.proto.spec for chart in app.get("vega_lite_chart") if "live.chart." in chart.proto.id} == specs
    moved_first, moved_last = shown_caption(app)
    assert moved_first > first + 300 and moved_last - moved_first == 999
    assert all(domain[0] == moved_first for domain in step_domains(app, "live.chart.").values())

    # A zoom. AppTest cannot drag a brush, so the test writes the zoom where the brush's callback
    # writes it (panels._on_brush -> step_range.apply_selection, unit-tested on Streamlit's own
    # payload in tests/test_step_range.py).
    app.session_state[live_view.zoom_place(1).zoom_key] = step_range.zoom_entry(1, StepRange(200, 400))
    app.run()
    assert shown_caption(app) == (200, 400)
    assert any("Zoomed to steps 200–400" in element.value for element in app.caption)
    assert any("one point per step" in element.value for element in app.caption)  # the ring's steps, one by one
    zoomed = step_domains(app, "live.chart.")
    assert zoomed.pop("layer_panel") == [200, 401]  # its cells end where the next step starts
    assert all(domain == [200, 400] for domain in zoomed.values()), zoomed
    drawn = {chart.proto.id: chart.proto.spec for chart in app.get("vega_lite_chart") if "live.chart." in chart.proto.id}
    assert not app.button(key="live.reset_zoom").disabled

    # Refreshes while new steps arrive keep it, and send the browser the very same charts (their
    # brushes and keys stay put).
    step = manager.trainer.store.total_steps
    wait_until(lambda: manager.trainer.store.total_steps > step + 300, what="300 more steps")
    app.run()
    assert manager.trainer.status.state == "running"
    assert shown_caption(app) == (200, 400)
    assert {chart.proto.id: chart.proto.spec for chart in app.get("vega_lite_chart") if "live.chart." in chart.proto.id} == drawn

    # Reset zoom: back to the window.
    app.button(key="live.reset_zoom").click().run()
    assert live_view.zoom_place(1).zoom_key not in app.session_state
    assert shown_caption(app)[1] - shown_caption(app)[0] == 999
    assert app.button(key="live.reset_zoom").disabled
    # Another window drops a zoom too; "All steps" draws the whole run again.
    app.session_state[live_view.zoom_place(1).zoom_key] = step_range.zoom_entry(1, StepRange(200, 400))
    app.run()
    app.selectbox(key="live.steps_shown").select("All steps").run()
    assert live_view.zoom_place(1).zoom_key not in app.session_state
    assert all(domain[0] == 1 for domain in step_domains(app, "live.chart.").values())
