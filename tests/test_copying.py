"""training.runs.copying and `python -m training.runs copy`: runs moved between any two
databases (file to server, server to file), ids remapped, every row and the lineage kept."""

import contextlib
import os
import sqlite3
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


def test_a_read_only_source_is_copied_and_left_as_it_was(tmp_path):
    """Found by probing: a database the user may only read (a colleague's file, an archive on a
    read-only mount) was refused as a copy's SOURCE ("the file is read-only. Pick another path
    (CLI --db, ...)"): the copy opened it to write, as a run's database. A copy only reads it."""
    from test_persistence_faults import without_root_file_rights

    archive = tmp_path / "archive"
    archive.mkdir()
    source = RunDatabase(archive / "source.db")
    run_id = recorded_run(source, "kept")
    expected = without_ids(source.metrics(run_id))
    before = {path.name: path.read_bytes() for path in archive.iterdir()}
    (archive / "source.db").chmod(0o444)
    archive.chmod(0o555)  # no -wal or -shm file can be made beside it either
    try:
        # Root writes whatever the modes say: the copy runs without root's file rights.
        copied = subprocess.run(
            [sys.executable, "-m", "training.runs", "copy", str(archive / "source.db"), str(tmp_path / "mine.db")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            preexec_fn=without_root_file_rights if os.geteuid() == 0 else None,
        )  # fmt: skip
        after = {path.name: path.read_bytes() for path in archive.iterdir()}
    finally:
        archive.chmod(0o755)
        (archive / "source.db").chmod(0o644)
    assert copied.returncode == 0, copied.stderr[-2000:]
    assert copied.stdout.splitlines() == [f"run {run_id} -> 1: kept"]
    pd.testing.assert_frame_equal(without_ids(RunDatabase(tmp_path / "mine.db").metrics(1)), expected)
    assert after == before  # byte for byte, and no file added


def test_a_source_is_only_read_an_older_one_is_refused_and_a_dead_run_in_it_stays_as_recorded(tmp_path, monkeypatch, capsys):
    """Opened to copy, a source is never upgraded, switched or marked: an older schema is refused
    saying why (it was upgraded in place), and a run whose process died stays as the file says."""
    from training.runs.__main__ import main
    from training.runs.schema import SCHEMA_VERSION

    monkeypatch.chdir(tmp_path)
    source = RunDatabase(tmp_path / "source.db")
    kept = recorded_run(source, "kept")
    # A run whose process is gone, not yet marked (as after a crash, before anything opened it).
    with contextlib.closing(sqlite3.connect(source.path)) as connection:
        connection.execute("UPDATE runs SET state = 'running', pid = 999999999 WHERE run_id = ?", (kept,))
        connection.commit()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert main(["copy", "source.db", "target.db", "--run", str(kept)]) == 0
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name != "target.db"} == before
    assert source.run_info(kept)["state"] == "running"  # not marked in the source...
    copied = RunDatabase(tmp_path / "target.db").run_info(1)  # ...copied as what it is
    assert copied["state"] == "interrupted" and copied["error"] == "The process running it ended without stopping it."

    with contextlib.closing(sqlite3.connect(source.path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(SystemExit) as exit:
        main(["copy", "source.db", "other.db"])
    assert exit.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"its schema is version {SCHEMA_VERSION - 1}, older than this Clipwatch's {SCHEMA_VERSION}" in message
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # no other.db either


def test_a_refused_source_or_target_is_named_as_such_without_the_run_database_advice(tmp_path, monkeypatch, capsys):
    """A copy's refusal said "Pick another path (CLI --db, ...)": advice for a run's database,
    not for the copy, whose SOURCE and TARGET are its own arguments."""
    from training.runs.__main__ import main

    monkeypatch.chdir(tmp_path)
    recorded_run(RunDatabase(tmp_path / "ours.db"), "kept")
    with contextlib.closing(sqlite3.connect(tmp_path / "theirs.db")) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    for argv, side in ((["theirs.db", "new.db"], "SOURCE"), (["ours.db", "theirs.db"], "TARGET")):
        with pytest.raises(SystemExit) as exit:
            main(["copy", *argv])
        assert exit.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith(f"python -m training.runs: error: {side}: Cannot use the run database at "), message
        assert "theirs.db" in message and "it is not a Clipwatch database" in message and "--db" not in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ours.db", "theirs.db"]


def test_a_server_source_is_only_read_and_an_empty_or_older_one_is_refused_unchanged(tmp_path, monkeypatch, capsys, request):
    """Found by probing: a PostgreSQL SOURCE was opened as a run's database. A mistyped database
    name got Clipwatch's tables created in it ("copied 0 run(s)"), an older schema was upgraded
    in place, and a run whose process died was marked interrupted in the source."""
    import psycopg
    from test_database_defects import execute

    from training.runs.__main__ import main
    from training.runs.postgres_backend import VERSION_TABLE
    from training.runs.schema import SCHEMA_VERSION

    monkeypatch.chdir(tmp_path)
    server = request.getfixturevalue("postgres_server")
    empty = fresh_location("postgresql", tmp_path, request)

    def tables(url):
        with psycopg.connect(url) as connection:
            rows = connection.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            return sorted(name for (name,) in rows)

    with pytest.raises(SystemExit) as exit:
        main(["copy", empty, "target.db"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("it holds no Clipwatch runs (no Clipwatch tables); it was left unchanged.")
    assert tables(empty) == [] and not (tmp_path / "target.db").exists()

    source_url = fresh_location("postgresql", tmp_path, request)
    source = RunDatabase(source_url)
    kept = recorded_run(source, "kept")
    execute(source, "UPDATE runs SET state = 'running', pid = 999999999 WHERE run_id = ?", (kept,))
    read_only = RunDatabase(source_url, read_only=True)
    assert read_only.run_info(kept)["state"] == "interrupted"  # shown as list_runs shows it
    with pytest.raises(Exception, match="read-only transaction"):  # the server refuses a write on it
        with read_only.backend.connection() as connection:
            read_only.backend.execute(connection, "DELETE FROM runs")
    assert main(["copy", source_url, "target.db"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"run {kept} -> 1: kept"]
    assert RunDatabase(tmp_path / "target.db").run_info(1)["state"] == "interrupted"
    with psycopg.connect(source_url) as connection:
        assert connection.execute("SELECT state FROM runs WHERE run_id = %s", (kept,)).fetchone() == ("running",)
    # The same database spelled another way (a host name for its address) is refused: every
    # run would have been copied into SOURCE itself (only the same spelling was).
    with pytest.raises(SystemExit) as exit:
        main(["copy", source_url, source_url.replace("@127.0.0.1:", "@localhost:")])
    assert exit.value.code == 2 and "SOURCE and TARGET are the same database" in capsys.readouterr().err
    assert len(RunDatabase(source_url, read_only=True).list_runs()) == 1

    execute(source, f"UPDATE {VERSION_TABLE} SET version = ?", (SCHEMA_VERSION - 1,))
    with pytest.raises(SystemExit) as exit:
        main(["copy", source_url, "other.db"])
    assert exit.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"SOURCE: Cannot use the run database at {server.url(source_url.rsplit('/', 1)[1])!r}" in message
    assert f"its schema is version {SCHEMA_VERSION - 1}, older than this Clipwatch's {SCHEMA_VERSION}" in message
    with psycopg.connect(source_url) as connection:
        assert connection.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone() == (SCHEMA_VERSION - 1,)
    assert not (tmp_path / "other.db").exists()


def test_a_source_damaged_midway_stops_the_copy_with_one_message_and_the_runs_before_it_whole(tmp_path, monkeypatch, capsys):
    """Found by probing: a SQLite error while reading a run (a damaged archive) ended the copy
    with a Python traceback, and the runs copied before it had not been printed."""
    from training.runs.__main__ import main

    monkeypatch.chdir(tmp_path)
    source = RunDatabase(tmp_path / "source.db")
    first = recorded_run(source, "first", steps=1000)
    writer = source.start_run(CONFIG, ["w"], "second", ("global_norm",))
    for chunk in range(8):  # its step column's bytes are its own (steps 5001...)
        writer.append(step_rows(5001 + 500 * chunk, 500))
        wait_until(lambda: writer.status.steps_written == 500 * (chunk + 1), what="a chunk written")  # one row each
    writer.finish("stopped")
    second = writer.run_id
    del source, writer
    with contextlib.closing(sqlite3.connect(tmp_path / "source.db")) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        # One page in the middle of the second run's last chunk: an overflow page holding only
        # that chunk's bytes (found by them: SQLite's dbstat is not always built in). Reading
        # the first run never touches it (its key search stops before the last chunk).
        (last_chunk,) = connection.execute(
            "SELECT step FROM step_chunks WHERE run_id = ? ORDER BY first_step DESC LIMIT 1", (second,)).fetchone()
    data = bytearray((tmp_path / "source.db").read_bytes())
    at = data.find(bytes(last_chunk)[len(last_chunk) // 2 : len(last_chunk) // 2 + 64])
    assert at > 0 and data.count(bytes(last_chunk)[len(last_chunk) // 2 : len(last_chunk) // 2 + 64]) == 1
    page = at // page_size
    data[page * page_size : (page + 1) * page_size] = b"\xff" * page_size
    (tmp_path / "source.db").write_bytes(bytes(data))

    with pytest.raises(SystemExit) as exit:
        main(["copy", "source.db", "target.db"])
    assert exit.value.code == 2
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [f"run {first} -> 1: first"], printed.err[-2000:]
    message = printed.err.strip().splitlines()[-1]
    assert "the copy stopped on a database error ('source.db' to 'target.db'): DatabaseError: " in message, message
    assert "The runs printed above were copied whole; no other run was." in message
    assert RunDatabase(tmp_path / "target.db").list_runs().name.tolist() == ["first"]


def test_a_database_opened_read_only_refuses_every_write_saying_so(tmp_path):
    """Found by probing: rename_run and delete_run on a RunDatabase(read_only=True) failed with
    the driver's "attempt to write a readonly database" (sqlite3.OperationalError), and
    mark_interrupted wrote to it whenever it had a dead run to mark."""
    import hashlib

    from test_database_defects import live_run

    database = RunDatabase(tmp_path / "runs.db")
    ended = recorded_run(database, "kept")
    writer, live = live_run(database, "live")
    try:
        read_only = RunDatabase(tmp_path / "runs.db", read_only=True)
        before = hashlib.sha256((tmp_path / "runs.db").read_bytes()).hexdigest()
        writes = {
            "rename a run": lambda: read_only.rename_run(ended, "renamed"),
            "delete a run": lambda: read_only.delete_run(ended),
            "queue a command": lambda: read_only.send_command(live, "clip_threshold", 0.5),
            "mark dead runs interrupted": read_only.mark_interrupted,
            "record a new run": lambda: read_only.start_run(CONFIG, ["w"], "new"),
            "acknowledge commands": lambda: read_only.acknowledge_commands([]),
        }
        for what, write in writes.items():
            with pytest.raises(ValueError, match=rf"opened read-only \(read_only=True\), so it cannot {what}\. "):
                write()
        assert hashlib.sha256((tmp_path / "runs.db").read_bytes()).hexdigest() == before
        assert database.list_runs().name.tolist() == ["live", "kept"] and len(database.commands(live)) == 0
    finally:
        writer.finish("stopped")
