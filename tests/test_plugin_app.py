"""The page with task plug-ins (AppTest, real trainers): the Task select lists built-in tasks and
discovered plug-ins; a broken plug-in's message shows under it and the previous task stays (the
six of issue #22 too: a KeyboardInterrupt at a plug-in's import leaves the page up); a plug-in
with validation data draws its validation loss; an XLA fallback shows as a warning."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest
from support import TINY_PLUGIN, wait_until, write_plugin
from test_app import app, manager  # noqa: F401  (the page, and a fresh shared run, as there)
from test_broken_plugins import BROKEN
from test_xla_fallback import NO_XLA_MODEL

VALIDATED = TINY_PLUGIN.format(name="tiny_validated").replace(
    "clip_threshold=0.5)", "clip_threshold=0.5,\n            make_validation_data=make_data, evaluation_interval=50)"
)
WIDE = TINY_PLUGIN.format(name="tiny_wide").replace("keras.Input((4,))", "keras.Input((5,))")


@pytest.fixture(autouse=True)
def plugin_folder(tmp_path, monkeypatch):
    """The plug-ins the page finds (set before test_app's `manager` and `app` fixtures run)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    write_plugin(folder, "validated.py", VALIDATED)
    write_plugin(folder, "wide.py", WIDE)
    write_plugin(folder, "no_xla.py", NO_XLA_MODEL)
    write_plugin(folder, "broken.py", "import os\nimport no_such_module_for_clipwatch\n")
    monkeypatch.setenv("CLIPWATCH_TASKS", str(folder))
    return folder


def task_select(at: AppTest):
    return next(widget for widget in at.sidebar.selectbox if widget.label == "Task")


def errors(at: AppTest) -> list[str]:
    return [element.value for element in at.error]


def test_the_task_select_lists_built_in_tasks_and_plugins_with_descriptions(app):
    options = task_select(app).options
    assert options[:3] == ["seed", "exploding_rnn", "digits"]
    assert {"tiny_validated", "tiny_wide", "no_xla", "char_lstm", "transformer_reverse",
            "broken.py (cannot be used)"} <= set(options)  # fmt: skip
    task_select(app).select("char_lstm").run()
    assert not app.exception and not errors(app)
    assert task_select(app).value == "char_lstm"
    assert any("Char-level LSTM" in caption.value for caption in app.sidebar.caption)


@pytest.mark.parametrize(
    "option, message",
    [
        ("broken.py (cannot be used)", "broken.py, line 2: ModuleNotFoundError: No module named 'no_such_module_for_clipwatch'"),
        ("tiny_wide", "wide.py: the data does not match the model: make_data gives examples of shape (4,), "
                      "the model takes inputs of shape (5,)"),
    ],
)  # fmt: skip
def test_a_broken_plugin_says_why_next_to_the_select_and_the_previous_task_stays(app, manager, option, message):
    task_select(app).select("exploding_rnn").run()
    task_select(app).select(option).run()
    assert not app.exception
    assert any(message in error for error in app.sidebar.error.values), errors(app)
    assert task_select(app).value == "exploding_rnn"
    app.button(key="start").click().run()
    wait_until(lambda: manager.trainer is not None and manager.trainer.status.step > 0, what="a step")
    assert manager.trainer.config.task == "exploding_rnn"


@pytest.fixture
def six_broken(plugin_folder):
    """Issue #22's broken plug-ins in the page's plug-in folder: (Task option, its file) each
    (written before the page first runs: a KeyboardInterrupt at import once stopped it)."""
    options = []
    for number, (source, _) in enumerate(BROKEN.values()):
        name = f"tiny_broken_{number}"
        path = write_plugin(plugin_folder, f"broken_{number}.py", source.replace('"tiny_broken"', f'"{name}"'))
        imports = f'name="{name}"' in path.read_text()
        options.append((name if imports else f"{path.name} (cannot be used)", path))
    return options


def test_issue_22s_broken_plugins_say_why_next_to_the_select_and_the_previous_task_stays(six_broken, app):
    assert not app.exception
    for (option, path), (_, message) in zip(six_broken, BROKEN.values()):
        task_select(app).select("exploding_rnn").run()
        task_select(app).select(option).run()
        assert not app.exception, option
        expected = re.escape(f"Task plug-in {path.resolve()}") + message
        assert any(re.search(expected, error) for error in app.sidebar.error.values), (option, errors(app))
        assert task_select(app).value == "exploding_rnn", option


def test_a_plugin_with_validation_data_shows_its_validation_loss(app, manager):
    task_select(app).select("tiny_validated").run()
    assert not errors(app)
    threshold = next(widget for widget in app.sidebar.text_input if widget.label == "Clip threshold")
    assert threshold.value == "0.5"  # the plug-in's default (a text field since #22)
    app.button(key="start").click().run()
    wait_until(lambda: len(manager.trainer.evaluations()) >= 2, what="two evaluations")
    app.run()
    assert not app.exception
    assert manager.trainer.config.task == "tiny_validated" and manager.trainer.config.learning_rate == 0.05
    value = next(element.value for element in app.metric if element.label == "Val loss")
    assert float(value) > 0
    loss_chart = next(chart for chart in app.get("vega_lite_chart") if "val_loss" in chart.proto.spec)
    assert "Validation loss" in loss_chart.proto.spec


def test_an_xla_fallback_shows_as_a_warning(app, manager):
    task_select(app).select("no_xla").run()
    app.button(key="start").click().run()
    wait_until(lambda: "xla_fallback" in manager.trainer.events().kind.tolist(), what="the fallback event")
    app.run()
    warnings = [element.value for element in app.warning]
    assert any(text.startswith("Running without XLA: XLA cannot compile op PyFunc") for text in warnings), warnings
