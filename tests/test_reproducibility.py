"""Same seed, same run: a run's numbers are a function of its seed and settings alone.

Before issue #21, two runs of one command started at once differed from a step the clock chose
(the quick step -> full step swap, whose step depends on how long the full step's compile took
under the machine's load). A fork is only a fork if this holds, so it is tested the way it
broke: two processes at once, on a machine that is busy with both of them.
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
from support import REPO, wait_until

COMPARED = ["step", "loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped", "finite"]


def test_two_runs_of_one_command_started_at_once_are_bit_identical(tmp_path):
    steps = 300_000
    processes, paths = [], []
    for side in ("a", "b"):
        path = tmp_path / f"{side}.csv"
        environment = {**os.environ, "CLIPWATCH_XLA_CACHE": str(tmp_path / f"xla-{side}")}  # both compile
        environment.pop("TF_NUM_INTRAOP_THREADS", None)  # TensorFlow's own thread pools, as users run it
        command = [sys.executable, "-m", "training", "--task", "seed", "--steps", str(steps), "--no-db", "--csv", str(path)]
        processes.append(subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        paths.append(path)
    for process in processes:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-2000:]
    first, second = (pd.read_csv(path, usecols=COMPARED) for path in paths)
    assert len(first) == len(second) == steps
    for column in COMPARED:
        differ = np.flatnonzero(first[column].to_numpy() != second[column].to_numpy())
        assert len(differ) == 0, f"{column} first differs at step {first.step.iloc[differ[0]]}"


def test_the_two_sides_of_a_race_with_equal_settings_are_bit_identical(trainers):
    """The A/B race starts two trainers in one process at once (dashboard/race): with equal
    settings they must not tell apart, whichever swaps to its full step first."""
    sides = [trainers(task="exploding_rnn", policy="global_norm", clip_threshold=1.0, max_steps=3000) for _ in range(2)]
    for side in sides:
        side.start()
    wait_until(lambda: all(side.status.state in ("stopped", "failed") for side in sides), timeout=600, what="both sides")
    assert [side.status.state for side in sides] == ["stopped", "stopped"], [side.status.error for side in sides]
    first, second = (side.metrics() for side in sides)
    assert len(first) == len(second) == 3000
    for column in COMPARED:
        np.testing.assert_array_equal(first[column].to_numpy(), second[column].to_numpy(), err_msg=column)
