"""Broken plug-ins that used to exit 1 with a traceback-sized message (issue #22): the CLI exits 2
with one short line naming the file and what was wrong, and the page's path (discovery, then the
check on choosing a task) refuses them with the same message. A Ctrl-C outside the plug-in's own
import still stops the process."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY_PLUGIN, run_cli_in_process, write_plugin

from training import plugins
from training.plugins import PluginError, load_task

ROOT = Path(__file__).resolve().parent.parent
TINY = TINY_PLUGIN.format(name="tiny_broken")
MESSAGE_LIMIT = 300  # characters of the CLI's error line, with the plug-in's path counted as its name

# kind -> (the plug-in's source, what the message says after the file's path)
BROKEN = {
    "build_model returns 42": (
        TINY.replace("    import keras\n\n    keras.utils.set_random_seed(seed)\n", "    return 42\n"),
        r": build_model must return a Keras model\. Received: 42 \(int\)",
    ),
    "build_model raises": (
        TINY.replace("    import keras\n\n", "    raise RuntimeError('weights file missing')\n"),
        r", line 7: RuntimeError: weights file missing",
    ),
    "make_data has 0 rows": (
        TINY.replace("size=(256, 4)", "size=(0, 4)"),
        r": make_data returned 0 rows; it needs at least one example",
    ),
    "unknown loss name": (
        TINY.replace('build_loss="mse"', 'build_loss="not_a_loss"'),
        r": Task field `build_loss` must be a Keras loss name such as 'mse', a loss object or a loss "
        r"function\. Received: build_loss='not_a_loss'",
    ),
    "KeyboardInterrupt at import": ("import os\nraise KeyboardInterrupt\n", r", line 2: KeyboardInterrupt$"),
    "BaseException subclass at import": (
        "class GiveUp(BaseException):\n    pass\n\n\nraise GiveUp('no licence for this data')\n",
        r", line 5: GiveUp: no licence for this data",
    ),
}


@pytest.fixture
def broken(tmp_path, request):
    """The plug-in of this kind, alone in a plug-in folder: (its path, the message's end)."""
    source, message = BROKEN[request.param]
    folder = tmp_path / "plugins"
    folder.mkdir()
    return write_plugin(folder, "broken.py", source), message


def refusal(call) -> PluginError:
    """The `PluginError` `call()` raises: a KeyboardInterrupt escaping fails this test instead of
    stopping the test run."""
    try:
        with pytest.raises(PluginError) as raised:
            call()
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped instead of a PluginError")
    return raised.value


def refusal_free_catalogue():
    """The page's Task select options (`task_catalogue`), failing the test if a KeyboardInterrupt
    escapes discovery."""
    try:
        return plugins.task_catalogue()
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the page's task catalogue")


@pytest.mark.parametrize("broken", list(BROKEN), indirect=True)
def test_the_cli_exits_2_with_one_short_line_naming_the_file(tmp_path, broken, request):
    path, message = broken
    arguments = ("--task", str(path), "--steps", "5", "--no-db")
    if request.node.callspec.params["broken"] == "KeyboardInterrupt at import":  # in a real process
        result = subprocess.run(
            [sys.executable, "-m", "training", *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=240,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    else:  # the CLI's `main` in this process: the same exit code and streams, without a TensorFlow import
        result = run_cli_in_process(*arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(error_lines) == 1 and error_lines[0] == result.stderr.strip().splitlines()[-1], result.stderr
    line = error_lines[0]
    assert re.search(re.escape(f"Task plug-in {path.resolve()}") + message, line), line
    assert len(line.replace(str(path.resolve()), path.name)) <= MESSAGE_LIMIT, line
    assert "is not a built-in task" not in line  # it was found: the built-in list is beside the point
    assert not result.stdout  # no run started: no summary


@pytest.mark.parametrize("broken", list(BROKEN), indirect=True)
def test_load_task_and_the_pages_choice_refuse_it_with_the_same_message(broken, monkeypatch):
    path, message = broken
    expected = re.escape(f"Task plug-in {path.resolve()}") + message
    remembered = plugins.registered("tiny_broken")  # discovery in an earlier case may have listed it
    error = refusal(lambda: load_task(str(path)))
    assert re.fullmatch(expected, str(error)), str(error)
    assert plugins.registered("tiny_broken") is remembered  # a refused plug-in changes nothing

    # The page: the Task select lists what discovery found; choosing a plug-in checks it once.
    monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, str(path.parent))
    catalogue = refusal_free_catalogue()
    if "tiny_broken" in catalogue:  # it imports: the check on choosing it refuses it
        page_error = str(refusal(lambda: plugins.check_task_once(catalogue["tiny_broken"].task)))
    else:
        page_error = catalogue["broken.py (cannot be used)"].error
    assert page_error == str(error)


def test_only_the_plugins_import_is_guarded_a_ctrl_c_while_it_builds_still_stops(tmp_path):
    source = TINY.replace("    import keras\n\n", "    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):  # load_task builds the model: not a PluginError
        load_task(str(write_plugin(tmp_path, "slow_build.py", source)))


def test_a_long_error_message_is_cut_to_its_first_line(tmp_path):
    source = "raise RuntimeError('first line ' + 'x' * 500 + '\\nsecond line')\n"
    error = refusal(lambda: load_task(str(write_plugin(tmp_path, "noisy.py", source))))
    assert re.fullmatch(r"Task plug-in .*noisy\.py, line 1: RuntimeError: first line x+…", str(error))
    assert len(str(error).replace(str(tmp_path / "noisy.py"), "noisy.py")) <= MESSAGE_LIMIT


def test_an_empty_dataset_is_refused_without_reading_it(tmp_path):
    import tensorflow as tf

    task = load_task(str(write_plugin(tmp_path, "tiny.py")))
    model = task.build_model(0)
    empty = tf.data.Dataset.from_tensor_slices((tf.zeros((0, 4)), tf.zeros((0, 1))))
    with pytest.raises(PluginError, match=r"tiny\.py: make_data returned an empty tf\.data\.Dataset"):
        plugins.check_data_matches_model(task, model, empty)
    unknown = tf.data.Dataset.from_tensor_slices((tf.zeros((8, 4)), tf.zeros((8, 1)))).filter(lambda x, y: True)
    plugins.check_data_matches_model(task, model, unknown)  # its size is unknown until read: accepted
