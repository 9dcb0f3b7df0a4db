"""Run history on both backends (a SQLite file, a PostgreSQL database): round trips, SIGKILL
durability, concurrent readers, bad paths."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import wait_until

from training import Trainer
from training.persistence import DatabaseError, RunDatabase

ROOT = Path(__file__).resolve().parent.parent



def finished_run(database, **kwargs):
    trainer = Trainer(database=database, **kwargs)
    trainer.start()
    wait_until(lambda: trainer.status.state in ("stopped", "failed"), what='trainer.status.state in ("stopped", "failed")')
    return trainer


def test_a_run_is_written_and_read_back_identically(database_location):
    database = RunDatabase(database_location)
    trainer = Trainer(task="seed", policy="global_norm", clip_threshold=0.3, database=database,
                      run_name="baseline", max_steps=60_000)
    trainer.start()
    wait_until(lambda: trainer.status.step >= 500, what='trainer.status.step >= 500')
    trainer.set_clip_threshold(0.1)
    trainer.set_policy("autoclip", percentile=25)
    wait_until(lambda: trainer.status.state == "stopped", what='trainer.status.state == "stopped"')
    run_id = trainer.status.run_id
    pd.testing.assert_frame_equal(
        database.metrics(run_id), trainer.metrics().assign(policy=lambda f: f.policy.astype(str))
    )
    pd.testing.assert_frame_equal(database.layer_norms(run_id), trainer.layer_norms())
    pd.testing.assert_frame_equal(database.events(run_id), trainer.events())
    info = database.run_info(run_id)
    assert info["name"] == "baseline" and info["state"] == "stopped" and info["steps"] == 60_000
    assert info["config"]["clip_threshold"] == 0.3 and info["task"] == "seed"
    listed = database.list_runs().set_index("run_id").loc[run_id]
    assert listed.clip_rate == pytest.approx(trainer.metrics().clipped.mean())
    assert listed.final_loss == pytest.approx(float(trainer.metrics().loss.iloc[-1]))


def test_rename_and_delete(database_location):
    database = RunDatabase(database_location)
    run_id = finished_run(database, task="seed", max_steps=50).status.run_id
    database.rename_run(run_id, "  keep me  ")
    assert database.run_info(run_id)["name"] == "keep me"
    with pytest.raises(ValueError, match="name=''"):
        database.rename_run(run_id, "")
    database.delete_run(run_id)
    assert database.list_runs().empty
    # Issue #22: reading a deleted run says it is missing (was an empty frame for metrics).
    for read in (database.metrics, database.run_info):
        with pytest.raises(ValueError, match=f"run_id={run_id}"):
            read(run_id)


def persisted_steps(location):
    """Steps committed so far to the database at `location` (0 before it exists)."""
    if not str(location).startswith("postgresql") and not Path(location).exists():
        return 0
    try:
        runs = RunDatabase(location).list_runs()
    except DatabaseError:
        return 0
    return int(runs.steps.sum())


def test_sigkill_loses_at_most_the_last_second_and_the_run_shows_interrupted(database_location):
    path = database_location
    process = subprocess.Popen(
        [sys.executable, "-m", "training", "--task", "seed", "--steps", "100000000", "--db", str(path)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def persisted():
            return persisted_steps(path)

        wait_until(lambda: persisted() > 20_000, timeout=120, what='persisted_steps() > 20_000')
        committed = persisted()
        wait_until(lambda: persisted() > committed, what="another commit")  # mid-run, past the first
        killed_at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    database = RunDatabase(path)  # a new process opens it: the dead run is marked
    runs = database.list_runs()
    assert runs.state.tolist() == ["interrupted"]
    metrics = database.metrics(int(runs.run_id.iloc[0]))
    assert metrics.step.tolist() == list(range(1, len(metrics) + 1))  # no gaps
    # Steps are written in time order without gaps, so this means every step older than one
    # second at the kill is in the database.
    assert metrics.time_s.iloc[-1] >= killed_at - 1.0, killed_at - metrics.time_s.iloc[-1]


def test_a_reader_reads_while_the_writer_writes(database_location):
    database = RunDatabase(database_location)
    trainer = Trainer(task="seed", database=database)
    trainer.start()
    problems, reads = [], []
    try:
        wait_until(lambda: trainer.status.step > 1000, what="1,000 steps")  # past the compile
        run_id = trainer.status.run_id

        def read():
            reader = RunDatabase(database_location)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    metrics = reader.metrics(run_id)
                    reader.list_runs()
                except Exception as error:  # any failure is the test's finding
                    problems.append(repr(error))
                    return
                steps = metrics.step.to_numpy()
                if len(steps) and not (np.diff(steps) == 1).all():
                    problems.append("gap in steps")
                reads.append(len(steps))

        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        trainer.stop()
    assert not problems, problems[:3]
    assert len(reads) > 4 and reads[-1] > reads[0]  # it saw the run grow


def test_an_unusable_path_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseError, match="Cannot use the run database at .*a_file/runs.db"):
        RunDatabase(blocker / "runs.db")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(DatabaseError, match="corrupt.db.*Pick another path"):
        RunDatabase(corrupt)


def test_the_environment_variable_sets_the_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPWATCH_DB", str(tmp_path / "from_env.db"))
    assert RunDatabase().path == tmp_path / "from_env.db"
    assert (tmp_path / "from_env.db").exists()


def test_send_command_checks_the_kind_and_the_run_and_queues_in_order(database_location):
    database = RunDatabase(database_location)
    # A live run (commands to an ended run are refused since issue #22): recorded by this process.
    writer = database.start_run(Trainer(task="seed").config, ["w"], "live")
    run_id = writer.run_id
    with pytest.raises(ValueError, match="Unknown command kind 'explode'. Allowed: clip_threshold"):
        database.send_command(run_id, "explode", 1.0)
    with pytest.raises(ValueError, match="No run with run_id=999"):
        database.send_command(999, "clip_threshold", 0.5)
    with pytest.raises(ValueError, match=r"clip_threshold=\[1\]"):  # the trainer's own validator
        database.send_command(run_id, "clip_threshold", [1])
    first = database.send_command(run_id, "clip_threshold", 0.5)
    second = database.send_command(run_id, "policy", "autoclip", percentile=20)
    assert [c["id"] for c in database.pending_commands(run_id)] == [first, second]
    assert database.pending_commands(run_id, after_id=first)[0]["parameters"] == {"percentile": 20}
    database.acknowledge_commands([(first, 41, 123.0, None), (second, None, 124.0, "refused")])
    assert database.pending_commands(run_id) == []
    frame = database.commands(run_id)
    assert list(frame.columns) == ["id", "run", "kind", "value", "parameters", "created",
                                   "applied_step", "applied_time", "error"]
    assert frame.applied_step.tolist()[0] == 41 and frame.error.isna().tolist() == [True, False]
    writer.finish("stopped")  # a live run is not deleted
    database.delete_run(run_id)
    assert database.commands(run_id).empty
