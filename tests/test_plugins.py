"""Task plug-ins: loading from a file, a module and module:ATTRIBUTE; every kind of broken
plug-in gets one message naming its file; discovery in CLIPWATCH_TASKS and examples/tasks."""

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from support import TINY_PLUGIN, write_plugin

from training import plugins
from training.plugins import PluginError, check_data_matches_model, discover_tasks, load_task
from training.tasks import Task, get_task


@pytest.fixture
def package(tmp_path, monkeypatch):
    """An importable package `user_tasks` in a temporary folder on sys.path."""
    folder = tmp_path / "user_tasks"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield folder
    for name in [name for name in sys.modules if name.startswith("user_tasks")]:
        del sys.modules[name]


def test_a_file_a_module_and_module_attribute_load_the_same_task(tmp_path, package):
    by_path = load_task(str(write_plugin(tmp_path, "tiny.py")))
    assert by_path.name == "tiny_sum" and by_path.source == str((tmp_path / "tiny.py").resolve())
    write_plugin(package, "tiny.py")
    by_module = load_task("user_tasks.tiny")
    assert by_module.name == "tiny_sum" and by_module.source.endswith(os.path.join("user_tasks", "tiny.py"))
    (package / "other.py").write_text(
        "from user_tasks.tiny import TASK\nimport dataclasses\n"
        "SMALLER = dataclasses.replace(TASK, name='tiny_small', batch_size=8)\n"
    )
    by_attribute = load_task("user_tasks.other:SMALLER")
    assert (by_attribute.name, by_attribute.batch_size) == ("tiny_small", 8)
    assert get_task("tiny_small") is by_attribute  # loaded plug-ins are found by name


BROKEN = {
    "syntax": ("x = (1,\n", r"broken\.py: SyntaxError in .*broken\.py, line 1"),
    "import": (
        "import os\nimport no_such_module_for_clipwatch\n",
        r"broken\.py, line 2: ModuleNotFoundError: No module named 'no_such_module_for_clipwatch'",
    ),
    "no TASK": ("TASKS = 1\n", r"broken\.py: defines no `TASK`"),
    "not a Task": ("TASK = {'name': 'x'}\n", r"broken\.py: `TASK` must be a training.tasks.Task. Received: dict"),
    "wrong field": (
        TINY_PLUGIN.format(name="tiny_sum").replace("clip_threshold=0.5", "clip_threshold=0.5, batch_size='32'"),
        r"broken\.py, line 2\d: ValueError: Task field `batch_size` must be an integer >= 1. "
        r"Received: batch_size='32'",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_plugin_says_why_in_one_message_naming_its_file(tmp_path, kind):
    source, message = BROKEN[kind]
    path = write_plugin(tmp_path, "broken.py", source)
    with pytest.raises(PluginError, match=message) as raised:
        load_task(str(path))
    assert str(path.resolve()) in str(raised.value)
    assert "Traceback" not in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_missing_files_modules_and_attributes_are_named(tmp_path, package):
    with pytest.raises(PluginError, match=r"file '.*nowhere\.py' does not exist"):
        load_task(str(tmp_path / "nowhere.py"))
    (tmp_path / "tasks.py").mkdir()  # a folder where a file was meant: said so, not "does not exist"
    for folder in (str(tmp_path), str(tmp_path / "tasks.py")):
        with pytest.raises(PluginError, match=f"plug-in '{re.escape(folder)}' is a folder: name the .py file in it"):
            load_task(folder)
    with pytest.raises(PluginError, match=r"module 'no_such_package\.tasks' cannot be found"):
        load_task("no_such_package.tasks")
    write_plugin(package, "tiny.py")
    with pytest.raises(PluginError, match=r"tiny\.py: defines no `OTHER`.*it has TASK"):
        load_task("user_tasks.tiny:OTHER")


def test_a_plugin_named_like_a_built_in_task_is_refused(tmp_path):
    with pytest.raises(PluginError, match="its name 'seed' is a built-in task's"):
        load_task(str(write_plugin(tmp_path, "clash.py", name="seed")))


def test_data_that_does_not_fit_the_model_is_named(tmp_path):
    task = load_task(str(write_plugin(tmp_path, "tiny.py")))
    model = task.build_model(0)
    inputs, targets = task.make_data(0)
    check_data_matches_model(task, model, (inputs, targets))  # fits: no error
    with pytest.raises(PluginError, match=r"tiny\.py: the data does not match the model: make_data "
                       r"gives examples of shape \(3,\), the model takes inputs of shape \(4,\)"):
        check_data_matches_model(task, model, (inputs[:, :3], targets))
    with pytest.raises(PluginError, match="returned 256 input rows but 10 target rows"):
        check_data_matches_model(task, model, (inputs, targets[:10]))
    with pytest.raises(PluginError, match="must return \\(inputs, targets\\) arrays or a tf.data.Dataset"):
        check_data_matches_model(task, model, inputs)
    import tensorflow as tf

    batched = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(8)
    with pytest.raises(PluginError, match="should yield single examples"):
        check_data_matches_model(task, model, batched, "make_data")


def test_task_fields_are_checked_where_a_task_is_made():
    fields = dict(name="t", description="", build_model=lambda seed: None,
                  make_data=lambda seed: None, build_loss="mse")  # fmt: skip
    Task(**fields)
    for name, bad in [("learning_rate", 0.0), ("learning_rate", float("nan")), ("optimizer", "sgdd"),
                      ("jit_compile", "yes"), ("metrics", [3]), ("evaluation_interval", 0),
                      ("build_model", "model")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"Task field `{name}` must be .* Received: {name}="):
            Task(**{**fields, name: bad})


def plugin_folders(tmp_path, monkeypatch, first_files, second_files):
    """Two plug-in folders named by CLIPWATCH_TASKS; `*_files`: (file name, source or None, name)."""
    folders = tmp_path / "first", tmp_path / "second"
    for folder, files in zip(folders, (first_files, second_files)):
        folder.mkdir()
        for file_name, source, name in files:
            write_plugin(folder, file_name, source, name=name)
    monkeypatch.setenv("CLIPWATCH_TASKS", os.pathsep.join(str(folder) for folder in folders))
    return folders


def test_discovery_lists_plugin_folders_and_the_examples(tmp_path, monkeypatch):
    plugin_folders(
        tmp_path, monkeypatch, [("tiny_a.py", None, "tiny_a")],
        [("tiny_b.py", None, "tiny_b"), ("broken.py", "TASK = None\n", ""),
         ("_helper.py", "raise RuntimeError('never imported')\n", "")],
    )  # fmt: skip
    found = discover_tasks()
    tasks = {entry.task.name: entry for entry in found if entry.task is not None}
    assert {"tiny_a", "tiny_b", "char_lstm", "transformer_reverse"} <= set(tasks)
    assert tasks["char_lstm"].task.description
    errors = [entry for entry in found if entry.error]
    assert [os.path.basename(entry.path) for entry in errors] == ["broken.py"]
    assert "`TASK` must be a training.tasks.Task" in errors[0].error
    assert plugins.registered("tiny_b") is tasks["tiny_b"].task


def test_a_tilde_folder_of_no_user_is_skipped_like_a_missing_one(tmp_path, monkeypatch):
    """CLIPWATCH_TASKS="~nosuchuser/tasks" stopped the page with "Could not determine home
    directory."; it is a folder that is not there, and the next folder's plug-ins still load."""
    (second,) = plugin_folders(tmp_path, monkeypatch, [], [("tiny_b.py", None, "tiny_b")])[1:]
    monkeypatch.setenv("CLIPWATCH_TASKS", os.pathsep.join(["~no-such-user-of-clipwatch/tasks", str(second)]))
    assert plugins.plugin_folders()[:2] == [Path("~no-such-user-of-clipwatch/tasks"), second]
    assert "tiny_b" in plugins.task_catalogue()


def test_a_changed_file_is_loaded_again(tmp_path):
    path = write_plugin(tmp_path, "tiny.py")
    assert load_task(str(path)).learning_rate == 0.05
    path.write_text(TINY_PLUGIN.format(name="tiny_sum").replace("learning_rate=0.05", "learning_rate=0.5"))
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    assert load_task(str(path)).learning_rate == 0.5
    assert np.isclose(get_task("tiny_sum").learning_rate, 0.5)


def test_check_task_builds_once_and_names_the_failing_line(tmp_path):
    plugins.check_task(load_task(str(write_plugin(tmp_path, "tiny.py"))))  # fits: no error
    mismatched = TINY_PLUGIN.format(name="tiny_sum").replace("keras.Input((4,))", "keras.Input((5,))")
    with pytest.raises(PluginError, match=r"shape \(4,\), the model takes inputs of shape \(5,\)"):
        plugins.check_task(load_task(str(write_plugin(tmp_path, "wide.py", mismatched))))
    failing = TINY_PLUGIN.format(name="tiny_sum").replace(
        "    inputs = np.random", "    raise OSError('data folder missing')\n    inputs = np.random"
    )
    with pytest.raises(PluginError, match=r"failing\.py, line 18: OSError: data folder missing"):
        plugins.check_task(load_task(str(write_plugin(tmp_path, "failing.py", failing))))


def test_the_catalogue_lists_built_ins_then_plugins_and_broken_files_with_their_error(tmp_path, monkeypatch):
    first, _ = plugin_folders(
        tmp_path, monkeypatch, [("mine.py", None, "tiny_mine")],
        [("same_name.py", None, "tiny_mine"), ("broken.py", "import no_such_module_for_clipwatch\n", "")],
    )  # fmt: skip
    catalogue = plugins.task_catalogue()
    labels = list(catalogue)
    assert labels[:3] == ["seed", "exploding_rnn", "digits"]
    assert {"tiny_mine", "char_lstm", "transformer_reverse", "broken.py (cannot be used)",
            "same_name.py (cannot be used)"} <= set(labels)  # fmt: skip
    assert catalogue["tiny_mine"].task.source == str((first / "mine.py").resolve())
    assert get_task("tiny_mine").source == str((first / "mine.py").resolve())  # the first folder wins
    assert "is taken by" in catalogue["same_name.py (cannot be used)"].error
    broken = catalogue["broken.py (cannot be used)"]
    assert broken.task is None and "line 1: ModuleNotFoundError" in broken.error
    assert catalogue["char_lstm"].description.startswith("Char-level LSTM")
