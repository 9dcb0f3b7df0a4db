"""Faults while a run records: the file deleted, made read-only, the disk full, a write lock
held by another process, the training thread raising. In each, training goes on, the warning
says why, every step stays in memory, and the writer resumes with no gap in the steps.

Each test prints one line of figures (run with -s): steps written before the fault, steps
trained while it lasted, steps written after it, and steps lost (always 0).
"""

import ctypes
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from support import wait_until

from training import Trainer
from training.persistence import RunDatabase

ROOT = Path(__file__).resolve().parent.parent
PACE = 2000  # steps per second: enough steps per fault, little CPU on a shared machine
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # linux/prctl.h, capability.h


def figures(name, before, during, after, lost):
    print(f"\nfault {name}: written before {before}, trained during {during}, written after {after}, lost {lost}")


def check_every_step_recorded(database, trainer):
    """All steps 1..N are in the database and in memory, none missing or twice."""
    recorded = database.metrics(trainer.status.run_id)["step"].to_numpy()
    in_memory = trainer.metrics()["step"].to_numpy()
    assert recorded[0] == 1 and (np.diff(recorded) == 1).all(), "a gap or a repeat in the database"
    assert (in_memory == np.arange(1, len(in_memory) + 1)).all(), "a gap in memory"
    assert recorded[-1] == in_memory[-1] == trainer.status.step
    return len(recorded)


@pytest.fixture
def recording(tmp_path):
    """A paced `seed` run recording into tmp_path/runs.db; stopped at the end."""
    made = []

    def start(**database_options):
        database = RunDatabase(tmp_path / "runs.db", **database_options)
        trainer = Trainer(task="seed", database=database)
        trainer.set_max_steps_per_second(PACE)
        trainer.start()
        made.append(trainer)
        wait_until(lambda: trainer.writer and trainer.writer.status.last_step_written >= 500,
                   what="the first commits")  # fmt: skip
        return database, trainer

    yield start
    for trainer in made:
        trainer.stop()


def run_through_fault(trainer, start_fault, end_fault, reason):
    """Start a fault, wait until the writer reports it and training has gone on, end it, and
    wait until the held steps are written. Returns (before, during, after)."""
    writer = trainer.writer
    before = writer.status.last_step_written
    start_fault()
    wait_until(lambda: writer.status.state == "waiting", what="the writer to report the fault")
    assert reason in writer.status.error
    wait_until(lambda: trainer.status.warning == writer.status.error, what="the warning on the status")
    fault_step = trainer.status.step
    wait_until(lambda: trainer.status.step >= fault_step + 1000, what="training to go on")
    assert writer.status.last_step_written == before or writer.status.state == "waiting"
    end_fault()
    ended_at = trainer.status.step
    during = ended_at - before  # trained from the last commit before the fault to its end
    wait_until(lambda: writer.status.state == "writing" and writer.status.last_step_written > ended_at,
               what="the writer to resume")  # fmt: skip
    wait_until(lambda: "none lost" in trainer.status.warning, what="the warning to say it recovered")
    assert reason in trainer.status.warning
    trainer.stop()
    assert trainer.status.state == "stopped" and trainer.status.error is None
    after = writer.status.last_step_written - before - during
    return before, during, after


def test_a_deleted_file_is_rebuilt_from_the_open_copy_with_every_step(recording):
    database, trainer = recording()
    other = database.start_run(trainer.config, ["w"], "an earlier run")  # another run in the file
    other.finish("stopped")
    before = trainer.writer.status.last_step_written
    os.remove(database.path)
    wait_until(lambda: database.path.exists() and trainer.writer.status.last_step_written > before + 500,
               what="the file to be rebuilt and written")  # fmt: skip
    warning = wait_until(lambda: trainer.status.warning, what="the warning on the status")
    assert "was deleted" in warning and "none lost" in warning
    trainer.stop()
    recorded = check_every_step_recorded(RunDatabase(database.path), trainer)
    assert "an earlier run" in RunDatabase(database.path).list_runs()["name"].tolist()
    figures("deleted", before, "none held (rebuilt at the next commit)", recorded - before, trainer.status.step - recorded)


def test_a_full_disk_holds_the_steps_until_there_is_room(recording):
    database, trainer = recording()

    def fill():  # no room for one more page
        with sqlite3.connect(database.path) as connection:
            database.max_pages = connection.execute("PRAGMA page_count").fetchone()[0]

    def make_room():
        database.max_pages = None

    before, during, after = run_through_fault(trainer, fill, make_room, "database or disk is full")
    recorded = check_every_step_recorded(database, trainer)
    figures("disk full", before, during, after, trainer.status.step - recorded)


@pytest.mark.parametrize("hold_seconds", [3.0, 10.0])
def test_a_write_lock_held_by_another_process_holds_the_steps_until_it_is_released(recording, hold_seconds):
    database, trainer = recording()
    holder = []

    def lock():
        holder.append(subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3, sys, time\n"
             "connection = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "connection.execute('BEGIN IMMEDIATE')\n"
             "print('locked', flush=True)\n"
             "time.sleep(float(sys.argv[2]))\n"
             "connection.execute('COMMIT')\n",
             str(database.path), str(hold_seconds)],
            stdout=subprocess.PIPE, text=True,
        ))  # fmt: skip
        assert holder[0].stdout.readline().strip() == "locked"

    def released():
        assert holder[0].wait(timeout=hold_seconds + 60) == 0

    try:
        before, during, after = run_through_fault(trainer, lock, released, "held its write lock")
    finally:
        if holder and holder[0].poll() is None:
            holder[0].kill()
            holder[0].wait()
    recorded = check_every_step_recorded(database, trainer)
    figures(f"write lock {hold_seconds:g} s", before, during, after, trainer.status.step - recorded)


def test_the_training_thread_raising_keeps_every_step_it_made(tmp_path):
    class FailingSink:
        """Raises in the training thread once the run passes 3,000 steps."""

        def __call__(self, rows):
            if rows["step"][-1] > 3000:
                raise RuntimeError("a sink broke")

    database = RunDatabase(tmp_path / "runs.db")
    trainer = Trainer(task="seed", database=database, sinks=(FailingSink(),))
    trainer.set_max_steps_per_second(PACE)
    trainer.start()
    wait_until(lambda: trainer.status.state == "failed", what="the run to fail")
    assert trainer.status.error == "RuntimeError: a sink broke"
    run = database.list_runs().iloc[0]
    assert run.state == "failed" and run.error == "RuntimeError: a sink broke"
    recorded = database.metrics(trainer.status.run_id)["step"].to_numpy()
    in_memory = trainer.metrics()["step"].to_numpy()
    assert (recorded == np.arange(1, len(recorded) + 1)).all()
    assert recorded.tolist() == in_memory.tolist() and recorded[-1] > 3000  # the failing chunk too
    figures("thread raised", 0, 0, len(recorded), len(in_memory) - len(recorded))


def without_root_file_rights():
    """Drop root's right to write files whatever their mode (CAP_DAC_OVERRIDE, and
    CAP_DAC_READ_SEARCH) from the bounding set, so the child's root is bound by chmod."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_a_file_made_read_only_holds_the_steps_until_it_is_writable(tmp_path):
    """In a process of its own that cannot override file modes (root otherwise writes anyway)."""
    path = tmp_path / "runs.db"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "recording_process.py"), str(path), str(PACE)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=without_root_file_rights if os.geteuid() == 0 else None,
    )  # fmt: skip
    latest = {}

    def read_reports():
        for line in process.stdout:
            latest.update(json.loads(line))

    reader = threading.Thread(target=read_reports, daemon=True)
    reader.start()
    try:
        wait_until(lambda: latest.get("written", 0) >= 500, timeout=180, what="the first commits")
        before = latest["written"]
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        wait_until(lambda: latest["writer"] == "waiting" and latest["warning"], what="the warning")
        assert "the file is read-only" in latest["warning"]
        fault_step = latest["step"]
        wait_until(lambda: latest["step"] >= fault_step + 1000, what="training to go on")
        assert latest["writer"] == "waiting"
        path.chmod(0o644)
        ended_at = latest["step"]
        during = ended_at - before
        wait_until(lambda: latest["writer"] == "writing" and latest["written"] > ended_at, what="the writer to resume")
        process.stdin.close()
        wait_until(lambda: latest["final"], what="the process to stop its run")
        assert process.wait(timeout=60) == 0
        assert "none lost" in latest["warning"] and "the file is read-only" in latest["warning"]
        database = RunDatabase(path)
        run_id = int(database.list_runs().run_id.iloc[0])
        recorded = database.metrics(run_id)["step"].to_numpy()
        assert (recorded == np.arange(1, len(recorded) + 1)).all()
        assert recorded[-1] == latest["step"] == latest["stored_last"]
        assert latest["stored"] == latest["stored_last"] and latest["stored_first"] == 1  # all in memory
        figures("read-only", before, during, len(recorded) - before - during, latest["step"] - len(recorded))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
