"""training.runs.command_relay: a headless CLI run, steered from another process through the
run database (a SQLite file, or a PostgreSQL server as from another machine)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from support import wait_until
from test_keras import acknowledged

from training.persistence import RunDatabase

ROOT = Path(__file__).resolve().parent.parent


def test_a_cli_run_is_steered_and_stopped_by_commands_from_another_process(database_location):
    process = subprocess.Popen(
        [sys.executable, "-m", "training", "--task", "seed", "--steps", "100000000", "--db", str(database_location)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        database = wait_until(lambda: _opened(database_location), timeout=120, what="the CLI's database")

        def recording():
            assert process.poll() is None, process.communicate()[1][-3000:]
            runs = database.list_runs()
            runs = runs[(runs.state == "running") & (runs.steps > 0)]
            return int(runs.run_id.iloc[0]) if len(runs) else None

        run_id = wait_until(recording, timeout=180, what="the CLI's run to record steps")
        threshold = acknowledged(database, database.send_command(run_id, "clip_threshold", 0.05))
        assert threshold["error"] is None and threshold["applied_step"] > 1
        policy = acknowledged(database, database.send_command(run_id, "policy", "autoclip", percentile=20))
        assert policy["error"] is None and policy["applied_step"] >= threshold["applied_step"]
        stop = acknowledged(database, database.send_command(run_id, "stop"))
        assert stop["error"] is None
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # a failure above: do not leave it training
            process.kill()
        process.wait()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["state"] == "stopped" and summary["run_id"] == run_id
    metrics = database.metrics(run_id)
    assert database.run_info(run_id)["state"] == "stopped" and len(metrics) == summary["steps"]
    before = metrics.step < threshold["applied_step"]
    fixed = ~before & (metrics.step < policy["applied_step"])  # then autoclip sets its own
    assert (metrics.clip_threshold[before] == np.float32(1.0)).all()
    assert (metrics.clip_threshold[fixed] == np.float32(0.05)).all()
    assert (metrics.policy[metrics.step >= policy["applied_step"]] == "autoclip").all()
    assert (metrics.policy[metrics.step < policy["applied_step"]] == "global_norm").all()
    events = database.events(run_id)
    assert ("clip_threshold", "0.05") in set(zip(events.kind, events.new))


def _opened(location):
    """The run database once the CLI has made it (None before)."""
    if not str(location).startswith("postgresql") and not Path(location).exists():
        return None
    return RunDatabase(location)
