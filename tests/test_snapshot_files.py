"""Snapshots on disk (issue #21): a killed run is forked later from its nearest saved snapshot, as
a new branch with lineage; files are written atomically; a corrupt or foreign file is named."""

import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support import REPO, run_cli_in_process, wait_until

from training.runs.snapshot_files import SnapshotFileError, read_snapshot, saved_steps, write_snapshot

COMPARED = ["loss", "grad_norm", "clipped_grad_norm", "clipped"]


def cli(*args, cwd):
    """The CLI as a user runs it from their own folder: its `main`, in this process (the killed
    parent below is a real process)."""
    return run_cli_in_process(*args, cwd=cwd)


def complete_rows(path):
    """The CSV's complete lines: a killed writer may have cut the last one (read with it, a cut
    "Fa" made the whole `clipped` column strings)."""
    text = path.read_text()
    return pd.read_csv(io.StringIO(text[: text.rfind("\n") + 1]))


def test_a_killed_run_is_forked_from_its_nearest_snapshot_and_continues_it_exactly(tmp_path):
    database, snapshots = tmp_path / "runs.db", tmp_path / "snapshots" / "run-1"
    parent = subprocess.Popen(
        [sys.executable, "-m", "training", "--task", "seed", "--steps", "100000000", "--db", str(database),
         "--snapshot-every", "2000", "--csv", str(tmp_path / "parent.csv")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(saved_steps(tmp_path / "snapshots", 1)) >= 4, timeout=180, what="four snapshot files")
    finally:
        parent.send_signal(signal.SIGKILL)  # no flush, no goodbye
        parent.communicate(timeout=60)
    kept = saved_steps(tmp_path / "snapshots", 1)
    assert len(kept) <= 10 and kept == sorted(kept)  # the newest snapshots_kept files
    recorded = complete_rows(tmp_path / "parent.csv").set_index("step")
    # The CSV's recorder runs a chunk or two behind the training thread: fork where it has 300 more.
    fork_at = max(step for step in kept if step + 300 <= recorded.index.max())
    result = cli("--fork-from", "1", "--at-step", str(fork_at + 1), "--steps", "300", "--db", str(database),
                 "--csv", str(tmp_path / "child.csv"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # --at-step between two snapshots: the fork says which one it took, and the summary names it.
    assert (f"--at-step {fork_at + 1}: no snapshot was saved at that step; forking from the nearest one before it, "
            f"step {fork_at:,}.") in result.stderr  # fmt: skip
    assert summary["fork_step"] == fork_at
    child = pd.read_csv(tmp_path / "child.csv")
    assert child.step.tolist() == list(range(fork_at + 1, fork_at + 301))
    recorded = recorded.loc[child.step]
    for column in COMPARED:
        np.testing.assert_array_equal(child[column].to_numpy(), recorded[column].to_numpy(), err_msg=column)

    from training.persistence import RunDatabase

    runs = RunDatabase(str(database)).list_runs().set_index("run_id")
    assert runs.loc[summary["run_id"], "parent_run_id"] == 1 and runs.loc[summary["run_id"], "fork_step"] == fork_at
    # The folder holds the kept snapshots and at most the one write the kill cut short: a
    # `.writing-` file, which is never read as a snapshot (`saved_steps` above did not list it).
    leftovers = set(os.listdir(snapshots)) - {f"step-{step}.npz" for step in kept}
    assert len(leftovers) <= 1 and all(name.startswith(".writing-") for name in leftovers), leftovers


def test_a_fork_from_a_recorded_run_obeys_its_own_threshold(tmp_path):
    database = tmp_path / "runs.db"
    assert cli("--steps", "1500", "--db", str(database), "--snapshot-every", "500", cwd=tmp_path).returncode == 0
    result = cli("--fork-from", "1", "--clip-threshold", "0.05", "--steps", "200", "--db", str(database),
                 "--csv", str(tmp_path / "child.csv"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    child = pd.read_csv(tmp_path / "child.csv")
    assert np.allclose(child.clip_threshold, 0.05) and (child.clipped_grad_norm <= 0.05 * (1 + 1e-5)).all()
    assert child.step.iloc[0] - 1 == max(saved_steps(tmp_path / "snapshots", 1))  # the latest snapshot
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # The summary says where the branch began; its rate counts the 200 steps trained here only.
    assert summary["fork_step"] == child.step.iloc[0] - 1 and summary["steps"] == summary["fork_step"] + 200


def snapshot_like(step):
    return {"step": step, "values": [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, np.int64)],
            "policy": "global_norm", "policy_params": {"global_norm": {}}, "knob_values": np.ones(7, np.float32)}  # fmt: skip


def test_files_round_trip_are_written_atomically_and_keep_the_newest(tmp_path):
    for step in (10, 20, 30):
        write_snapshot(tmp_path, 3, snapshot_like(step), kept=2)
    assert saved_steps(tmp_path, 3) == [20, 30]
    (tmp_path / "run-3" / ".writing-abc.npz").write_bytes(b"PK\x03\x04 torn")  # a writer killed midway
    assert saved_steps(tmp_path, 3) == [20, 30]  # its half file is not a snapshot
    back = read_snapshot(tmp_path / "run-3" / "step-30.npz")
    assert back["step"] == 30 and back["policy"] == "global_norm"
    for ours, theirs in zip(back["values"], snapshot_like(30)["values"]):
        np.testing.assert_array_equal(ours, theirs)
        assert ours.dtype == theirs.dtype


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a zip at all", "cannot be read as a Clipwatch snapshot"),
        ("foreign", "is not a Clipwatch snapshot (it has no header)"),
        ("newer", "is a version 99 snapshot; this Clipwatch reads version 1"),
    ],
)
def test_a_corrupt_or_foreign_file_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "step-5.npz"
    if content == "foreign":
        np.savez(path, weights=np.zeros(3))
    elif content == "newer":
        np.savez(path, header=np.array(json.dumps({"magic": "clipwatch-snapshot", "version": 99})))
    else:
        path.write_bytes(content)
    with pytest.raises(SnapshotFileError, match=re.escape(message)) as caught:
        read_snapshot(path)
    assert str(path) in str(caught.value)


def test_the_cli_names_a_missing_snapshot_and_a_missing_database(tmp_path, monkeypatch):
    database = tmp_path / "runs.db"
    assert cli("--steps", "50", "--db", str(database), cwd=tmp_path).returncode == 0  # no --snapshot-every
    result = cli("--fork-from", "1", "--db", str(database), cwd=tmp_path)
    assert result.returncode == 2 and "Run 1 has no saved snapshot in " in result.stderr  # was "at or before step None"
    result = cli("--fork-from", "1", "--at-step", "20", "--db", str(database), cwd=tmp_path)
    assert result.returncode == 2 and "Run 1 has no saved snapshot at or before step 20 in " in result.stderr
    monkeypatch.setenv("HOME", str(tmp_path))  # "~/runs.db" is that database (it was "no run database")
    result = cli("--fork-from", "1", "--db", "~/runs.db", cwd=tmp_path)
    assert result.returncode == 2 and "Run 1 has no saved snapshot in " in result.stderr
    result = cli("--fork-from", "1", "--db", str(tmp_path / "elsewhere.db"), cwd=tmp_path)
    assert result.returncode == 2 and "there is no run database at" in result.stderr
    assert not (tmp_path / "elsewhere.db").exists()
