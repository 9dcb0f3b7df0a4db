"""training.runs.copying and `python -m training.runs copy`: runs moved between any two
databases (file to server, server to file), ids remapped, every row and the lineage kept."""

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from postgres_server import fresh_location
from support import wait_until
from test_database_defects import CONFIG, live_run, step_rows

from training.persistence import RunDatabase
from training.runs.copying import copy_runs

ROOT = Path(__file__).resolve().parent.parent
SECRET = "c0py-s3cret"


def recorded_run(database, name, first_step=1, steps=30, **lineage):
    """An ended run with steps in two chunks, an event, an evaluation and a command."""
    writer = database.start_run(CONFIG, ["w"], name, ("global_norm",), **lineage)
    database.send_command(writer.run_id, "clip_threshold", 0.25)
    writer.append(step_rows(first_step, steps // 2))
    wait_until(lambda: writer.status.steps_written == steps // 2, what="the first chunk written")
    writer.append(step_rows(first_step + steps // 2, steps - steps // 2))
    writer.event(first_step + 3, time.time(), "clip_threshold", "1.0", "0.25")
    writer.evaluations([(first_step + steps - 1, time.time(), "val_loss", 0.5)])
    writer.finish("stopped")
    return writer.run_id


def without_ids(frame):
    return frame.drop(columns=[column for column in ("id", "run") if column in frame]).reset_index(drop=True)


@pytest.mark.parametrize("source_kind, target_kind", [("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_runs_are_copied_with_new_ids_every_row_and_their_lineage(source_kind, target_kind, tmp_path, request):
    source = RunDatabase(fresh_location(source_kind, tmp_path / "source", request))
    target = RunDatabase(fresh_location(target_kind, tmp_path / "target", request))
    recorded_run(target, "already there")  # so the copies' ids differ from the source's
    parent = recorded_run(source, "parent")
    child = recorded_run(source, "child", first_step=21, parent_run_id=parent, fork_step=20)
    live, _ = live_run(source, "still live")  # not copied: its process writes the source
    try:
        copied = copy_runs(source, target)
    finally:
        live.finish("stopped")
    assert copied == {parent: 2, child: 3}  # after the target's own run 1
    for old, new in copied.items():
        pd.testing.assert_frame_equal(target.metrics(new), source.metrics(old))
        pd.testing.assert_frame_equal(target.events(new), source.events(old))
        pd.testing.assert_frame_equal(target.evaluations(new), source.evaluations(old))
        pd.testing.assert_frame_equal(without_ids(target.commands(new)), without_ids(source.commands(old)))
        kept = {key: value for key, value in source.run_info(old).items() if key not in ("run_id", "parent_run_id")}
        assert {key: target.run_info(new)[key] for key in kept} == kept
    assert target.run_info(copied[child])["parent_run_id"] == copied[parent]
    assert target.run_info(copied[child])["fork_step"] == 20


def test_the_copy_command_copies_one_run_with_its_ancestors_and_shows_no_password(tmp_path, request):
    source_path = tmp_path / "laptop.db"
    source = RunDatabase(source_path)
    parent = recorded_run(source, "parent")
    child = recorded_run(source, "child", parent_run_id=parent, fork_step=10)
    recorded_run(source, "unrelated")
    target_url = fresh_location("postgresql", tmp_path, request).replace("://postgres@", f"://postgres:{SECRET}@")
    result = subprocess.run(
        [sys.executable, "-m", "training.runs", "copy", str(source_path), target_url, "--run", str(child)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [f"run {parent} -> 1: parent", f"run {child} -> 2: child"]
    assert SECRET not in result.stdout + result.stderr and "postgres:***@" in result.stderr
    assert RunDatabase(target_url).list_runs().name.tolist() == ["child", "parent"]

    missing = subprocess.run(
        [sys.executable, "-m", "training.runs", "copy", str(source_path), target_url, "--run", "99"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "No run with run_id=99 in" in missing.stderr
    assert SECRET not in missing.stderr


def test_a_refused_copy_creates_no_database(tmp_path, monkeypatch, capsys):
    """Found by probing: a mistyped SOURCE became a new, empty database ("copied 0 run(s)", exit 0),
    and a refused --run left an empty TARGET behind."""
    from training.runs.__main__ import main

    monkeypatch.chdir(tmp_path)
    recorded_run(RunDatabase(tmp_path / "source.db"), "kept")
    cases = {
        ("copy", "sourse.db", "target.db"): "SOURCE: there is no run database at 'sourse.db': nothing to copy.",
        ("copy", "--run", "999", "source.db", "target.db"): "No run with run_id=999 in 'source.db'",
        ("copy", "", "target.db"): "SOURCE needs a SQLite file's path or a PostgreSQL URL, not empty text. Received: ''",
        ("copy", "source.db", " "): "TARGET needs a SQLite file's path or a PostgreSQL URL, not empty text. Received: ' '",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit:
            main(list(argv))
        assert exit.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message), argv
        assert sorted(path.name for path in tmp_path.iterdir()) == ["source.db"], argv


def test_a_copy_into_its_own_source_is_refused_however_the_file_is_named(tmp_path, monkeypatch, capsys):
    """Found by probing: `copy a.db x/../a.db` (or a symlink to a.db) copied every run into SOURCE
    itself, doubling it: only the same spelling was refused."""
    import hashlib

    from training.runs.__main__ import main

    monkeypatch.chdir(tmp_path)
    recorded_run(RunDatabase(tmp_path / "source.db"), "kept")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.db").symlink_to(tmp_path / "source.db")
    before = hashlib.sha256((tmp_path / "source.db").read_bytes()).hexdigest()
    for target in ("folder/../source.db", "link.db", str(tmp_path / "source.db")):
        with pytest.raises(SystemExit) as exit:
            main(["copy", "source.db", target])
        assert exit.value.code == 2
        assert "SOURCE and TARGET are the same database file" in capsys.readouterr().err, target
    assert hashlib.sha256((tmp_path / "source.db").read_bytes()).hexdigest() == before
    assert len(RunDatabase(tmp_path / "source.db").list_runs()) == 1


def test_a_branch_of_a_live_run_is_left_out_saying_why_and_never_copied_without_its_parent(tmp_path, monkeypatch, capsys):
    """Found by probing: with its parent still live, a default copy copied the ended branches
    with no parent (lineage cut, fork step kept), and a refused `--run BRANCH` had already
    created TARGET."""
    from training.runs.__main__ import main

    monkeypatch.chdir(tmp_path)
    source = RunDatabase(tmp_path / "source.db")
    parent_writer, parent = live_run(source, "parent")
    branch = recorded_run(source, "branch", parent_run_id=parent, fork_step=10)
    other = recorded_run(source, "unrelated")
    assert main(["copy", "source.db", "target.db"]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [f"run {other} -> 1: unrelated"]
    assert f"left out 1 ended run(s) forked from a live run (their lineage would be cut): {branch}" in printed.err
    with pytest.raises(SystemExit) as exit:
        main(["copy", "--run", str(branch), "source.db", "new.db"])
    assert exit.value.code == 2 and f"Run {parent} is live" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()
    parent_writer.finish("stopped")
