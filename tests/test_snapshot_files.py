"""Snapshots on disk (issue #21): a killed run is forked later from its nearest saved snapshot, as
a new branch with lineage; files are written atomically; a corrupt or foreign file is named."""

import io
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support import REPO, run_cli_in_process, wait_until

from training.persistence import RunDatabase
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
    database, snapshots = tmp_path / "runs.db", tmp_path / "snapshots" / "runs.db" / "run-1"
    parent = subprocess.Popen(
        [sys.executable, "-m", "training", "--task", "seed", "--steps", "100000000", "--db", str(database),
         "--snapshot-every", "2000", "--csv", str(tmp_path / "parent.csv")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(saved_steps(tmp_path / "snapshots" / "runs.db", 1)) >= 4, timeout=180, what="four snapshot files")
    finally:
        parent.send_signal(signal.SIGKILL)  # no flush, no goodbye
        parent.communicate(timeout=60)
    kept = saved_steps(tmp_path / "snapshots" / "runs.db", 1)
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
    assert child.step.iloc[0] - 1 == max(saved_steps(tmp_path / "snapshots" / "runs.db", 1))  # the latest snapshot
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


def test_a_run_steered_mid_run_is_forked_from_the_cli_with_the_settings_in_force_then_swept(tmp_path):
    """Found by probing: the CLI's fork filled every setting not given from the run's first
    config, so a run whose threshold and learning rate were changed mid-run was forked with the
    old ones and the branch differed at 1,999 of 2,000 steps. And `--fork-from` with `--sweep`
    swept from step --steps, counted from 0, not from the snapshot: every branch failed and
    the summary's sweep was all nulls, exit 0."""
    from training import Trainer

    database = tmp_path / "runs.db"
    # Paced: snapshot files come at most four a second, so an unpaced run (~0.1 s) saved too few.
    parent = Trainer(task="seed", clip_threshold=1.0, max_steps=4_000, database=str(database),
                     snapshot_folder=str(tmp_path / "snapshots"), persist_every=500)  # fmt: skip
    parent.set_max_steps_per_second(4_000)
    parent.start()
    wait_until(lambda: parent.status.step > 0, what="the parent's first chunk")
    parent.pause()
    parent.set_clip_threshold(0.05)
    parent.set_learning_rate(0.05)
    parent.resume()
    wait_until(lambda: parent.status.state in ("stopped", "failed"), timeout=300, what="the parent's end")
    assert parent.status.state == "stopped", parent.status.error
    result = cli("--fork-from", "1", "--at-step", "3000", "--steps", "300", "--sweep", "0.1,1", "--sweep-steps", "50",
                 "--db", str(database), "--snapshot-folder", str(tmp_path / "snapshots"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    fork_step = summary["fork_step"]
    changed_at = RunDatabase(database).events(1).query("kind == 'learning_rate'").step.max()
    assert changed_at < fork_step <= 3_000  # forked from a step after the change
    runs = RunDatabase(database)
    theirs = runs.metrics(1).set_index("step").loc[fork_step + 1 : fork_step + 300]
    ours = runs.metrics(summary["run_id"]).set_index("step").loc[fork_step + 1 : fork_step + 300]
    assert len(ours) == len(theirs) == 300
    for column in [*COMPARED, "clip_threshold", "learning_rate"]:
        np.testing.assert_array_equal(ours[column].to_numpy(), theirs[column].to_numpy(), err_msg=column)
    assert [row["clip_threshold"] for row in summary["sweep"]] == [0.1, 1.0]
    for row in summary["sweep"]:
        assert row["run_id"] is not None and math.isfinite(row["final_loss"]), summary["sweep"]
        assert runs.run_info(row["run_id"])["fork_step"] == fork_step + 300


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a zip at all", "cannot be read as a Clipwatch snapshot"),
        ("foreign", "is not a Clipwatch snapshot (it has no header)"),
        ("newer", "is a version 99 snapshot; this Clipwatch reads version 1"),
        ("no policy", "cannot be read as a Clipwatch snapshot: KeyError: 'policy'"),
        ("a step that is not a number", "cannot be read as a Clipwatch snapshot: ValueError"),
    ],
)
def test_a_corrupt_or_foreign_file_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "step-5.npz"
    header = {"magic": "clipwatch-snapshot", "version": 1, "step": 5, "policy": "none", "policy_params": {}, "variables": 0}
    if content == "foreign":
        np.savez(path, weights=np.zeros(3))
    elif content == "newer":
        np.savez(path, header=np.array(json.dumps({"magic": "clipwatch-snapshot", "version": 99})))
    elif content == "no policy":  # found by probing: a bare KeyError, without the file's name
        np.savez(path, header=np.array(json.dumps({key: value for key, value in header.items() if key != "policy"})),
                 knob_values=np.zeros(7, np.float32))  # fmt: skip
    elif content == "a step that is not a number":
        np.savez(path, header=np.array(json.dumps({**header, "step": "x"})), knob_values=np.zeros(7, np.float32))
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


@pytest.mark.parametrize("arguments", [("--snapshot-every", "0", "--db", "new.db", "--csv", "out.csv"),
                                       ("--snapshot-every", "-3", "--db", "new.db"),
                                       ("--snapshot-every", "5", "--no-db", "--csv", "out.csv")])  # fmt: skip
def test_a_refused_snapshot_cadence_writes_no_file(tmp_path, arguments):
    """Found by probing: these exited 2 only after the run database and the CSV were made, and
    left them behind; the README promises a refusal writes nothing."""
    result = cli("--steps", "50", *arguments, cwd=tmp_path)
    assert result.returncode == 2 and "--snapshot-every" in result.stderr.strip().splitlines()[-1]
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_two_databases_in_one_folder_keep_their_snapshots_apart_and_a_foreign_file_is_refused(tmp_path):
    """Found by probing: snapshot files went to snapshots/run-<id>/ beside the database, so two
    databases in one folder shared run-1's files: the second overwrote the first's step 0,
    pruned its files, and a fork took the other database's snapshot (a failed run, or a silent
    fork from a step the run never reached). Named explicitly for both, one folder still did."""
    for name, seed in (("first.db", "0"), ("second.db", "5")):
        result = cli("--db", name, "--steps", "600", "--seed", seed, "--snapshot-every", "200", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in (tmp_path / "snapshots").iterdir()) == ["first.db", "second.db"]
    first = read_snapshot(tmp_path / "snapshots" / "first.db" / "run-1" / "step-0.npz")
    second = read_snapshot(tmp_path / "snapshots" / "second.db" / "run-1" / "step-0.npz")
    assert any(not np.array_equal(a, b) for a, b in zip(first["values"], second["values"]))  # seeds 0 and 5
    forked = cli("--db", "first.db", "--fork-from", "1", "--at-step", "0", "--steps", "20", cwd=tmp_path)
    assert forked.returncode == 0 and json.loads(forked.stdout.strip().splitlines()[-1])["fork_step"] == 0

    # One folder named for both: the second database's run 1 is refused before it writes a file
    # (found by probing: it overwrote the first's files and pruned them).
    assert cli("--db", "third.db", "--steps", "600", "--snapshot-every", "200", "--snapshot-folder", "shared",
               cwd=tmp_path).returncode == 0  # fmt: skip
    before = {path.name: path.read_bytes() for path in (tmp_path / "shared" / "run-1").iterdir()}
    assert before
    fourth = cli("--db", "fourth.db", "--steps", "600", "--seed", "5", "--snapshot-every", "200", "--snapshot-folder",
                 "shared", cwd=tmp_path)  # fmt: skip
    assert fourth.returncode == 1
    assert "the run failed: SnapshotFileError: shared/run-1 already holds snapshot files (steps 0, " in fourth.stderr
    assert "Give this database its own snapshot folder (CLI --snapshot-folder" in fourth.stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "shared" / "run-1").iterdir()} == before
    assert RunDatabase(tmp_path / "fourth.db").run_info(1)["state"] == "failed"
    # A fork checks the file it reads is its own run's: fourth.db's run 1 is not third.db's.
    refused = cli("--db", "fourth.db", "--fork-from", "1", "--at-step", "0", "--steps", "20", "--snapshot-folder", "shared",
                  cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2
    assert "was saved by another run 1, not this database's" in refused.stderr.strip().splitlines()[-1]
    assert len(RunDatabase(tmp_path / "fourth.db").list_runs()) == 1  # the refusal recorded no run
