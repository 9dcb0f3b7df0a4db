"""The headless CLI, run as a user would: a subprocess, a CSV file, a JSON summary. The first test
runs the real process; the rest call the same `main` in this process (support.run_cli_in_process:
no interpreter and TensorFlow import per run), which reports exit codes, stdout and stderr alike."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import TINY_PLUGIN, run_cli_in_process, write_plugin

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["step", "time_s", "loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped", "finite", "learning_rate", "policy"]


def run_cli(*args, timeout=180):
    if "--db" not in args:
        args = (*args, "--no-db")  # keep the repository's runs/ folder clean
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_cli_writes_every_step_and_a_json_summary(tmp_path):
    csv_path = tmp_path / "out.csv"
    result = run_cli("--task", "seed", "--policy", "global_norm", "--clip-threshold", "0.2",
                     "--steps", "2000", "--seed", "0", "--csv", str(csv_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"steps", "final_loss", "clip_rate", "nonfinite_steps", "steps_per_second"}
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == COLUMNS
    assert frame.step.tolist() == list(range(1, 2001))
    assert summary["steps"] == 2000 and summary["nonfinite_steps"] == 0
    assert summary["clip_rate"] == pytest.approx(frame.clipped.mean())
    assert summary["final_loss"] == pytest.approx(frame.loss.iloc[-1], rel=1e-6)
    assert (frame.clip_threshold == 0.2).all() and (frame.policy == "global_norm").all()
    clipped = frame[frame.clipped]
    assert (clipped.clipped_grad_norm <= 0.2 * (1 + 1e-5)).all()
    assert "\r[" not in result.stderr  # no progress bar when stderr is not a terminal


def run_cli_here(*args):
    return run_cli_in_process(*args, *(() if "--db" in args else ("--no-db",)), cwd=ROOT)


def test_cli_policy_parameters_reach_the_run(tmp_path):
    csv_path = tmp_path / "agc.csv"
    result = run_cli_here("--policy", "agc", "--clip-factor", "0.02", "--steps", "300", "--csv", str(csv_path))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(csv_path)
    assert (frame.clip_threshold == 0.02).all() and (frame.policy == "agc").all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip-threshold", "0"], "clip_threshold=0.0"),
        (["--clip-threshold", "nan"], "clip_threshold=nan"),
        (["--policy", "clipall"], "invalid choice: 'clipall'"),
        (["--task", "mnist"], "--task 'mnist' is not a built-in task (seed, exploding_rnn, digits). Task plug-in module 'mnist' cannot be found"),
        (["--policy", "global_norm", "--percentile", "5"], "--percentile does not apply to policy 'global_norm'"),
        (["--policy", "autoclip", "--percentile", "150"], "percentile=150"),
        (["--steps", "0"], "--steps must be an integer >= 1. Received: 0"),
        (["--learning-rate", "-1"], "learning_rate=-1.0"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_clear_message(args, message):
    result = run_cli_here(*args)
    assert result.returncode == 2
    assert message in result.stderr


VALIDATED = TINY_PLUGIN.format(name="tiny_sum") + """
import dataclasses
WITH_VALIDATION = dataclasses.replace(TASK, make_validation_data=make_data, metrics=["mae"],
                                      evaluation_interval=100)
"""


@pytest.fixture
def plugin_package(tmp_path):
    folder = tmp_path / "user_tasks"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    write_plugin(folder, "tiny.py", VALIDATED)
    return tmp_path


@pytest.mark.parametrize("spec", ["path", "user_tasks.tiny", "user_tasks.tiny:WITH_VALIDATION"])
def test_cli_trains_a_plugin_from_a_file_a_module_or_an_attribute(plugin_package, spec):
    csv_path = plugin_package / "out.csv"
    task = str(plugin_package / "user_tasks" / "tiny.py") if spec == "path" else spec
    result = run_cli_in_process("--task", task, "--steps", "300", "--clip-threshold", "0.3", "--csv", str(csv_path),
                                "--no-db", cwd=ROOT, path=(plugin_package,))  # PYTHONPATH: the user's package
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == COLUMNS and frame.step.tolist() == list(range(1, 301))
    assert (frame.clipped_grad_norm <= frame.clip_threshold * (1 + 1e-5)).all()
    assert ((frame.grad_norm > frame.clip_threshold) == frame.clipped).all() and frame.clipped.any()
    assert summary["steps"] == 300 and summary["state"] == "stopped"
    if spec.endswith("WITH_VALIDATION"):
        assert summary["val_loss"] > 0 and summary["val_mae"] > 0
    else:
        assert "val_loss" not in summary


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = (1,\n", r"broken\.py: SyntaxError in .*broken\.py, line 1"),
        ("import no_such_module_for_clipwatch\n", r"broken\.py, line 1: ModuleNotFoundError"),
        ("TASK_ = 1\n", r"broken\.py: defines no `TASK`"),
        (TINY_PLUGIN.format(name="tiny_sum").replace("learning_rate=0.05", "learning_rate=-1"),
         r"broken\.py, line \d+: ValueError: Task field `learning_rate` must be a finite number > 0"),
        (TINY_PLUGIN.format(name="tiny_sum").replace("keras.Input((4,))", "keras.Input((5,))"),
         r"broken\.py: the data does not match the model: make_data gives examples of shape \(4,\), "
         r"the model takes inputs of shape \(5,\)"),
    ],
    ids=["syntax", "import", "no TASK", "wrong field", "data shape"],
)
def test_cli_a_broken_plugin_exits_2_with_one_message(tmp_path, source, message):
    path = write_plugin(tmp_path, "broken.py", source)
    result = run_cli_here("--task", str(path), "--steps", "10")
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.search(message, last_line), last_line
    assert "Traceback" not in result.stderr


def test_csv_sink_writes_what_csv_writer_writes():
    """The sink joins its lines itself (half the cost): the text must be csv.writer's, float32
    values in their shortest round-trip form."""
    import csv
    import io

    import numpy as np

    from training.cli import CsvSink
    from training.policies import POLICY_NAMES

    rows = {
        "step": np.array([1, 2, 3], np.int64),
        "time_s": np.array([1.7e9 + 0.125, 1.7e9 + 1 / 3, 1e-5]),
        "loss": np.array([0.2, np.nan, np.inf], np.float32),
        "grad_norm": np.array([1e30, 1e-30, -0.0], np.float32),
        "clipped_grad_norm": np.array([1.0, 0.3, 7.5], np.float32),
        "clip_threshold": np.array([0.2, 0.2, np.inf], np.float32),
        "clipped": np.array([True, False, True]),
        "finite": np.array([True, False, False]),
        "learning_rate": np.array([0.01, 0.01, 0.003], np.float32),
        "policy": np.array([0, 1, 6], np.int8),
    }
    ours = io.StringIO()
    CsvSink(ours)(rows)
    reference = io.StringIO()
    writer = csv.writer(reference)
    writer.writerow(COLUMNS)
    for index in range(3):
        writer.writerow(
            [
                POLICY_NAMES[rows[name][index]] if name == "policy"
                else str(rows[name][index]) if rows[name].dtype == np.float32
                else rows[name][index].item()
                for name in COLUMNS
            ]
        )  # fmt: skip
    assert ours.getvalue() == reference.getvalue()


def test_the_cli_switches_threads_often_so_its_csv_does_not_hold_up_training(tmp_path, capsys):
    """At Python's default 5 ms, the recorder formatting CSV made the training thread wait up to
    5 ms each time it took the GIL back (training/interpreter_lock.py)."""
    from training import cli
    from training.interpreter_lock import SWITCH_INTERVAL_SECONDS

    default = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        code = cli.main(["--task", "seed", "--steps", "20", "--no-db", "--csv", str(tmp_path / "out.csv")])
        assert code == 0
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)
    finally:
        sys.setswitchinterval(default)
