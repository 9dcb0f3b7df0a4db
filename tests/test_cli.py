"""The headless CLI, run as a user would: a subprocess, a CSV file, a JSON summary."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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


def test_cli_policy_parameters_reach_the_run(tmp_path):
    csv_path = tmp_path / "agc.csv"
    result = run_cli("--policy", "agc", "--clip-factor", "0.02", "--steps", "300", "--csv", str(csv_path))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(csv_path)
    assert (frame.clip_threshold == 0.02).all() and (frame.policy == "agc").all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip-threshold", "0"], "clip_threshold=0.0"),
        (["--clip-threshold", "nan"], "clip_threshold=nan"),
        (["--policy", "clipall"], "invalid choice: 'clipall'"),
        (["--task", "mnist"], "invalid choice: 'mnist'"),
        (["--policy", "global_norm", "--percentile", "5"], "--percentile does not apply to policy 'global_norm'"),
        (["--policy", "autoclip", "--percentile", "150"], "percentile=150"),
        (["--steps", "0"], "--steps must be an integer >= 1. Received: 0"),
        (["--learning-rate", "-1"], "learning_rate=-1.0"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_clear_message(args, message):
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


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
