"""The page's defects of issue #22 (AppTest, real RunManager and Trainers): what the page shows.

* A number field shows the value in effect: a value out of range or not a number (Window
  `99999999999999999999999`, `1e999`, `abc`) is refused with a message naming it as typed and
  the range allowed, and the field goes back to the value in effect.
* The error on screen is about the current input: a new bad value replaces the last message,
  a good one clears it.
* One Start is one run: while a run is starting only Stop applies, and Start, Stop, Start,
  Stop pressed quickly leave no History row without a step.
* A database that is not Clipwatch's: every tab says so in one message, and the file is
  byte-for-byte unchanged.
"""

from __future__ import annotations

import sqlite3

import hypothesis.internal.conjecture.optimiser  # noqa: F401  (imported now: see below)
import pytest
import streamlit as st
from hypothesis import assume, given, settings
from hypothesis import strategies
from streamlit.testing.v1 import AppTest
from support import TINY_PLUGIN, wait_until, write_plugin
from test_app import APP, app, errors, manager  # noqa: F401  (the page, and a fresh shared run)

from dashboard.page import TABS
from dashboard.run_manager import get_run_manager
from training.policies import POLICY_PARAMETERS
from training.trainer import validate_learning_rate

POSITIVE = "a finite number greater than 0"  # what the clip threshold and learning rate allow
# (policy to pick first or None, the field's label, its parameter, what it allows, a value out of range)
FIELDS = [
    (None, "Clip threshold", "clip_threshold", POSITIVE, "-1"),
    (None, "Learning rate", "learning_rate", POSITIVE, "0"),
    *[
        (policy, name.replace("_", " ").capitalize(), name, parameter.allowed(), too_far)
        for policy, name, too_far in (
            ("autoclip", "percentile", "150"),
            ("autoclip", "window", "99999999999999999999999"),
            ("agc", "clip_factor", "-0.5"),
            ("agc", "eps", "0"),
            ("zclip", "z_threshold", "1e39"),
            ("zclip", "alpha", "1"),
            ("zclip", "warmup_steps", "0"),
            ("zclip", "eps", "-1e-6"),
        )
        for parameter in [POLICY_PARAMETERS[policy][name]]
    ],
]


def field(at: AppTest, label: str):
    """The sidebar's text field labelled `label` (its key changes whenever the page resets it)."""
    matches = [widget for widget in at.sidebar.text_input if widget.label == label]
    assert len(matches) == 1, f"{len(matches)} text fields labelled {label!r}"
    return matches[0]


def type_into(at: AppTest, label: str, text: str) -> AppTest:
    """Type `text` into the field and press Enter (the page runs its callback)."""
    return field(at, label).input(text).run()


def pick_policy(at: AppTest, policy: str | None) -> None:
    if policy is not None:
        next(widget for widget in at.sidebar.selectbox if widget.label == "Policy").select(policy).run()


# --- a number field shows the value in effect ---------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "label", "name", "allowed", "too_far"), FIELDS, ids=[f"{label}.{policy}" for policy, label, *_ in FIELDS]
)
def test_a_refused_value_is_named_with_its_range_and_the_field_shows_the_value_in_effect(
    app, policy, label, name, allowed, too_far
):
    pick_policy(app, policy)
    in_effect = field(app, label).value
    for typed, shown in ((too_far, too_far), ("1e999", "1e999"), ("abc", "'abc'"), ("", "''"), (" 1e999 ", "1e999")):
        type_into(app, label, typed)
        assert not app.exception
        assert len(errors(app)) == 1, (typed, errors(app))
        message = errors(app)[0]
        assert allowed in message, (typed, message)
        assert message.endswith(f"Received: {name}={shown}"), (typed, message)
        assert field(app, label).value == in_effect, typed  # back at the value in effect


def test_a_window_far_beyond_its_range_is_refused_and_the_run_uses_the_window_the_field_shows(app, manager):
    pick_policy(app, "autoclip")
    type_into(app, "Window", "99999999999999999999999")
    assert errors(app) == [
        f"`window` must be {POLICY_PARAMETERS['autoclip']['window'].allowed()}. "
        "Received: window=99999999999999999999999"
    ]
    assert field(app, "Window").value == "1000"
    type_into(app, "Window", "5.0")  # a whole number written as a float is that integer
    assert errors(app) == [] and field(app, "Window").value == "5"
    app.button(key="start").click().run()
    assert not app.exception and errors(app) == []
    assert manager.trainer.config.policy_params["autoclip"]["window"] == 5

    type_into(app, "Window", "99999999999999999999999")  # during the run: refused, nothing sent
    assert "Received: window=99999999999999999999999" in errors(app)[0]
    assert field(app, "Window").value == "5"
    assert manager.settings.policy_params["window"] == 5
    assert "autoclip.window" not in manager.trainer.events()["kind"].tolist()


# --- the error on screen is about the current input ---------------------------------------------


def test_a_new_bad_value_replaces_the_last_message_and_a_good_one_clears_it(app):
    type_into(app, "Learning rate", "-1")
    assert errors(app) == [f"`learning_rate` must be {POSITIVE}. Received: learning_rate=-1"]
    type_into(app, "Learning rate", "1e999")
    assert errors(app) == [f"`learning_rate` must be {POSITIVE}. Received: learning_rate=1e999"]
    type_into(app, "Clip threshold", "nan")  # another field's refusal replaces it too
    assert errors(app) == [f"`clip_threshold` must be {POSITIVE}. Received: clip_threshold=nan"]
    type_into(app, "Learning rate", " 2e-2 ")
    assert errors(app) == []
    assert field(app, "Learning rate").value == "0.02" and field(app, "Clip threshold").value == "1"  # as in effect


TYPED = strategies.one_of(
    strategies.floats().map(repr),
    strategies.floats(allow_nan=False, allow_infinity=False).map(lambda number: f"{number:e}"),
    strategies.text(alphabet="0123456789.eE+-_ naif", max_size=12),
    strategies.sampled_from(["1e999", "-1e999", "1e-45", "3.5e38", " 0.5 ", "", "5", "1_0"]),
)


def reads_as_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def accepted(text: str) -> float | None:
    """What Python reads in `text`, if it is a learning rate the trainer takes (None if not)."""
    try:
        return validate_learning_rate(float(text))
    except ValueError:
        return None


# Hypothesis imports its optimiser lazily, mid-test; pytest parses the module to rewrite it while
# TensorFlow's autograph parses source on the page's warm-up thread, and Python 3.11's AST
# constructor is not thread-safe ("SystemError: AST constructor recursion depth mismatch", seen
# once in two runs). So it is imported above, at collection, while no other thread runs.
@settings(max_examples=25)  # each example is a run of the whole page
@given(typed=TYPED)
def test_whatever_is_typed_the_field_shows_the_value_in_effect_and_the_error_is_about_it(app, typed):
    before = field(app, "Learning rate").value
    assume(typed != before)  # the same text again is no new input: the browser sends nothing
    type_into(app, "Learning rate", typed)
    assert not app.exception
    value = accepted(typed)
    if value is not None:
        assert errors(app) == []
        assert float(field(app, "Learning rate").value) == value
    else:
        shown = typed.strip()
        named = shown if reads_as_a_number(shown) else repr(shown)  # as typed; text quoted
        assert len(errors(app)) == 1 and errors(app)[0].endswith(f"Received: learning_rate={named}"), errors(app)
        assert field(app, "Learning rate").value == before


# --- one Start is one run ----------------------------------------------------------------------

# A tiny plug-in whose data waits for a file when a trainer builds it (the page's own check of the
# plug-in, on the script thread, does not wait): a run stays "starting" until the test says.
GATED_PLUGIN = TINY_PLUGIN.format(name="tiny_gated").replace(
    "def make_data(seed):\n",
    "def make_data(seed):\n"
    "    import os, threading, time\n"
    "    while threading.current_thread().name == 'clipwatch-trainer' and not os.path.exists(GATE):\n"
    "        time.sleep(0.01)\n",
)


def test_while_a_run_is_starting_only_stop_applies_and_a_late_click_starts_or_pauses_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    gate = tmp_path / "open"
    write_plugin(folder, "gated.py", f"GATE = {str(gate)!r}\n{GATED_PLUGIN}")
    monkeypatch.setenv("CLIPWATCH_TASKS", str(folder))
    st.cache_resource.clear()
    manager = get_run_manager()
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        other_tab = AppTest.from_file(APP, default_timeout=60).run()  # drawn before any run
        next(widget for widget in at.sidebar.selectbox if widget.label == "Task").select("tiny_gated").run()
        assert not errors(at), errors(at)
        at.button(key="start").click().run()
        first = manager.trainer
        assert first.status.state == "running" and first.status.step == 0  # building its data
        assert not at.button(key="stop").disabled
        for command in ("start", "pause", "resume", "inject_spike"):
            assert at.button(key=command).disabled, command
        # The other tab's Start, drawn enabled before this Start, is clicked late: no second run.
        other_tab.button(key="start").click().run()
        assert manager.trainer is first and manager.run_number == 1
        assert errors(other_tab) == ["Run 1 is still starting (no step yet): press Stop before starting a new run."]

        gate.touch()
        wait_until(lambda: first.status.step > 0, timeout=120, what="the first steps")
        at.run()
        other_tab.run()  # drawn while run 1 trains: its Pause is enabled
        assert not at.button(key="pause").disabled and not at.button(key="inject_spike").disabled
        assert at.button(key="start").disabled and not other_tab.button(key="pause").disabled

        at.button(key="stop").click().run()
        gate.unlink()  # the next run waits again
        at.button(key="start").click().run()
        second = manager.trainer
        assert second is not first and second.status.step == 0
        other_tab.button(key="pause").click().run()  # a late Pause meant for run 1
        assert errors(other_tab) == ["Run 2 is starting (no step yet): Pause applies to a run that trains."]
        gate.touch()
        wait_until(lambda: second.status.step > 0, timeout=120, what="run 2's first steps")
        assert second.status.state == "running"  # the late Pause did not reach it
        assert "pause" not in second.events()["kind"].tolist()
    finally:
        gate.touch()
        manager.stop_all(timeout=120)
        st.cache_resource.clear()


def test_start_stop_start_stop_pressed_quickly_leave_no_run_without_steps(app, manager):
    trainers = []
    for _ in range(2):
        app.button(key="start").click().run()
        trainers.append(manager.trainer)
        app.button(key="stop").click().run()
        assert not app.exception and errors(app) == []
    assert manager.run_number == 2 and trainers[0] is not trainers[1]
    for trainer in trainers:
        trainer.stop(timeout=120)  # waits for its thread: what it recorded is final
    runs = manager.list_runs()
    trained = [trainer.status.run_id for trainer in trainers if trainer.status.step > 0]
    assert sorted(runs["run_id"].tolist()) == sorted(trained), runs[["run_id", "steps", "state"]]
    assert (runs["steps"] > 0).all()


# --- a database that is not Clipwatch's ---------------------------------------------------------


@pytest.fixture
def foreign_database(tmp_path, monkeypatch):
    """Another application's SQLite file with its own `runs` table (a running row, too)."""
    path = tmp_path / "their.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT, state TEXT, started REAL)")
    connection.execute("INSERT INTO runs (job, state, started) VALUES ('nightly', 'running', 1.5)")
    connection.commit()
    connection.close()
    monkeypatch.setenv("CLIPWATCH_DB", str(path))
    return path


def test_a_database_that_is_not_clipwatchs_is_named_on_every_tab_and_left_unchanged(foreign_database):
    before = foreign_database.read_bytes()
    files = sorted(foreign_database.parent.iterdir())
    st.cache_resource.clear()
    manager = get_run_manager()
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        for tab in TABS:
            at.session_state["section"] = tab
            at.run()
            assert not at.exception, (tab, [element.value for element in at.exception])
            refusals = [message for message in errors(at) if "not a Clipwatch database" in message]
            assert len(refusals) == 1 and str(foreign_database) in refusals[0], (tab, errors(at))
            assert errors(at) == refusals, tab  # that one message, and no other error
        at.session_state["section"] = "Live"
        at.run()
        at.button(key="start").click().run()  # a run goes on in memory only
        wait_until(lambda: manager.trainer.status.step > 0, timeout=120, what="the run's first steps")
        assert manager.trainer.status.run_id is None
    finally:
        manager.stop_all(timeout=120)
        st.cache_resource.clear()
    assert foreign_database.read_bytes() == before
    assert sorted(foreign_database.parent.iterdir()) == files  # no -wal, -shm or journal either
