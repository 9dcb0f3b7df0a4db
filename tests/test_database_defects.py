"""The run database's defects of issue #22: files that are not ours left alone, live runs kept,
names and command values checked where they enter, a busy or read-only file said plainly, and
runs stopped before their first step leaving no History row."""

import contextlib
import logging
import math
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import wait_until
from postgres_server import BACKENDS, fresh_location
from test_persistence_faults import without_root_file_rights

from training import POLICY_NAMES, Trainer
from training.persistence import (
    APPLICATION_ID,
    BIDI_CONTROLS,
    BUSY_SECONDS,
    MAX_RUN_NAME_LENGTH,
    SCHEMA_VERSION,
    STEP_FIELDS,
    DatabaseError,
    RunDatabase,
    SCHEMA,
)
from training.policies import validate_positive

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Trainer(task="seed").config  # a run's settings, for runs recorded without training


def live_run(database, name="live"):
    """A run in state running, recorded by this (live) process: its writer, its id."""
    writer = database.start_run(CONFIG, ["w"], name, POLICY_NAMES)
    return writer, writer.run_id


def ended_run(database, state="stopped", name="ended"):
    writer, run_id = live_run(database, name)
    writer.finish(state)
    return run_id


def step_rows(first, count):
    """One chunk's rows, as the recorder hands them to a writer."""
    steps = np.arange(first, first + count, dtype=np.int64)
    rows = {name: np.zeros(count, np.float32) for name in STEP_FIELDS}
    rows.update(step=steps, time_s=time.time() + steps * 1e-3, clipped=np.zeros(count, bool),
                finite=np.ones(count, bool), policy=np.zeros(count, np.int8),
                layer_norms=np.ones((count, 1), np.float32))  # fmt: skip
    return rows


def execute(database, statement, parameters=()):
    """One statement (`?` placeholders) in a transaction of its own, as another process would
    write it, on either backend."""
    if not isinstance(database, RunDatabase):  # a SQLite file's path
        with contextlib.closing(sqlite3.connect(database)) as connection, connection:
            connection.execute(statement, parameters)
        return
    with database.backend.transaction() as connection:
        database.backend.execute(connection, statement, parameters)


def rows_of_run(database, run_id):
    """How many rows mention `run_id`, in every table that has a run column (either backend)."""
    backend = database.backend
    with backend.connection() as connection:
        counts = {}
        for table, columns in backend.table_columns(connection).items():
            column = "run_id" if "run_id" in columns else "run" if "run" in columns else None
            if column:
                counts[table] = backend.execute(
                    connection, f"SELECT count(*) FROM {table} WHERE {column} = ?", (run_id,)).fetchone()[0]  # fmt: skip
    return counts


def folder_snapshot(folder):
    """Every file in `folder` with its bytes: what "left unchanged" compares."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def run_cli(*args, **options):
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, **options)  # fmt: skip


# --- 1. files that are not Clipwatch databases ---------------------------------------------------


def another_apps_runs_table(path):
    """Another application's SQLite file with a `runs` table of its own, one run 'running'
    under a process that has ended (what Clipwatch used to mark 'interrupted')."""
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE runs (run_id INTEGER PRIMARY KEY, state TEXT, pid INTEGER, error TEXT)")
        connection.execute("INSERT INTO runs VALUES (1, 'running', 999999999, NULL)")


def a_different_runs_schema(path):
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, title TEXT)")
        connection.execute("INSERT INTO runs VALUES (1, 'not a training run')")


def clipwatch_tables_under_another_application_id(path):
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(SCHEMA)
        connection.execute("PRAGMA application_id = 1234")


def clipwatch_tables_and_one_more(path):
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(SCHEMA)
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")


def not_sqlite(path):
    path.write_bytes(b"name,total\nwidget,3\n" * 50)


FOREIGN_FILES = {
    "another app's runs table": another_apps_runs_table,
    "a different runs schema": a_different_runs_schema,
    "another application_id": clipwatch_tables_under_another_application_id,
    "a table that is not Clipwatch's": clipwatch_tables_and_one_more,
    "not SQLite": not_sqlite,
}


@pytest.mark.parametrize("make", FOREIGN_FILES.values(), ids=FOREIGN_FILES.keys())
def test_a_foreign_file_is_refused_and_left_byte_for_byte_unchanged(tmp_path, make):
    path = tmp_path / "theirs.db"
    make(path)
    before = folder_snapshot(tmp_path)
    with pytest.raises(DatabaseError, match=r"Cannot use the run database at '.*theirs\.db': it is not a Clipwatch database"):
        RunDatabase(path)
    assert folder_snapshot(tmp_path) == before  # no WAL switch, no -wal file, no tables, no row marked


@pytest.mark.parametrize("make", [another_apps_runs_table, a_different_runs_schema], ids=["their runs", "other schema"])
def test_the_cli_refuses_a_foreign_file_and_leaves_it_unchanged(tmp_path, make):
    path = tmp_path / "theirs.db"
    make(path)
    before = folder_snapshot(tmp_path)
    result = run_cli("--task", "seed", "--steps", "5", "--db", str(path))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert re.search(r"error: Cannot use the run database at '.*theirs\.db': it is not a Clipwatch database", result.stderr)
    assert folder_snapshot(tmp_path) == before


def test_a_newer_schema_is_refused_naming_both_versions(tmp_path):
    path = tmp_path / "newer.db"
    RunDatabase(path)
    execute(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = folder_snapshot(tmp_path)
    with pytest.raises(DatabaseError, match=rf"newer\.db.*schema version {SCHEMA_VERSION + 1}; this one knows versions up to {SCHEMA_VERSION}"):
        RunDatabase(path)
    assert folder_snapshot(tmp_path) == before


def stamp(path):
    """The file's (application_id, user_version)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return tuple(connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("application_id", "user_version"))


def test_new_files_and_files_made_before_the_stamp_are_stamped_and_opened(tmp_path):
    new = RunDatabase(tmp_path / "new.db")
    assert stamp(new.path) == (APPLICATION_ID, SCHEMA_VERSION) and APPLICATION_ID == 0x434C5057
    old = tmp_path / "old.db"  # what Clipwatch wrote before the stamp: its tables, no stamp
    with contextlib.closing(sqlite3.connect(old)) as connection, connection:
        connection.executescript(SCHEMA)
        connection.execute(
            "INSERT INTO runs (name, task, policy, clip_threshold, learning_rate, batch_size, seed,"
            " config_json, variable_names_json, state, created_at, updated_at, pid)"
            " VALUES ('kept', 'seed', 'global_norm', 1, 0.1, 64, 0, '{}', '[]', 'stopped', 0, 0, 1)"
        )
    assert stamp(old) == (0, 0)
    assert RunDatabase(old).list_runs().name.tolist() == ["kept"]
    assert stamp(old) == (APPLICATION_ID, SCHEMA_VERSION)
    assert RunDatabase(old).list_runs().name.tolist() == ["kept"]  # and opens again, stamped


# --- 2. deleting: never a live run, never an orphan row ----------------------------------------


def test_a_live_run_is_not_deleted_and_an_ended_one_leaves_no_row(database_location):
    database = RunDatabase(database_location)
    writer, run_id = live_run(database)
    writer.append(step_rows(1, 10))
    writer.event(3, time.time(), "clip_threshold", "1.0", "0.5")
    writer.evaluations([(10, time.time(), "val_loss", 0.25)])
    database.send_command(run_id, "clip_threshold", 0.5)
    wait_until(lambda: writer.status.steps_written == 10, what="the steps written")
    with pytest.raises(ValueError, match=rf"Run {run_id} is live \(state 'running', recorded by process {os.getpid()}\): stop it first"):
        database.delete_run(run_id)
    assert database.list_runs().run_id.tolist() == [run_id] and len(database.metrics(run_id)) == 10
    writer.finish("stopped")
    database.delete_run(run_id)
    counts = rows_of_run(database, run_id)
    assert set(counts) == {"runs", "step_chunks", "events", "evaluations", "commands"}
    assert not any(counts.values()), counts


def test_the_writer_of_a_deleted_run_adds_no_orphan_chunks(database_location):
    database = RunDatabase(database_location)
    writer, run_id = live_run(database)
    writer.append(step_rows(1, 10))
    wait_until(lambda: writer.status.steps_written == 10, what="the first steps written")
    # The run shows as ended (another process marked it interrupted) while its writer goes on.
    execute(database, "UPDATE runs SET state = 'interrupted' WHERE run_id = ?", (run_id,))
    database.delete_run(run_id)
    writer.append(step_rows(11, 10))
    wait_until(lambda: writer.status.state == "failed", what="the writer to give up on the deleted run",
               state=lambda: writer.status)  # fmt: skip
    assert "the run was deleted from the database" in writer.status.error
    writer.finish("stopped")
    assert not any(rows_of_run(database, run_id).values())


def test_reading_a_missing_run_names_it(database_location):
    database = RunDatabase(database_location)
    for read in (database.metrics, database.events, database.evaluations, database.layer_norms, database.run_info):
        with pytest.raises(ValueError, match=rf"No run with run_id=999 in '{re.escape(database.location)}'"):
            read(999)
    # Chunks left without their run (by an earlier Clipwatch) read as a missing run, not IndexError.
    writer, run_id = live_run(database)
    writer.append(step_rows(1, 5))
    writer.finish("stopped")
    execute(database, "DELETE FROM runs WHERE run_id = ?", (run_id,))
    with pytest.raises(ValueError, match=f"No run with run_id={run_id} "):
        database.metrics(run_id)


# --- 3. run names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["\x00", "a\x00b", "evil\u202etxt.exe", "\u2066isolated\u2069", "two\nlines", "tab\there", "\x7f",
     "x" * (MAX_RUN_NAME_LENGTH + 1)],
    ids=["NUL", "inner NUL", "RLO", "isolate", "newline", "tab", "DEL", "201 characters"],
)  # fmt: skip
def test_rename_refuses_names_that_would_not_display_as_typed(database_location, name):
    database = RunDatabase(database_location)
    run_id = ended_run(database, name="before")
    with pytest.raises(ValueError, match=re.escape(f"Received: name={name!r}")) as refused:
        database.rename_run(run_id, name)
    assert f"at most {MAX_RUN_NAME_LENGTH} characters" in str(refused.value)
    assert database.run_info(run_id)["name"] == "before"


@pytest.mark.parametrize("name", ["evil\u202etxt.exe", "a\x00b", "x" * (MAX_RUN_NAME_LENGTH + 1)], ids=["RLO", "NUL", "201"])
def test_a_name_given_at_start_is_checked_as_a_rename_is(tmp_path, name):
    # The CLI's --name and the page's runs go through Trainer(run_name=...): the same rule.
    with pytest.raises(ValueError, match=re.escape(f"Received: name={name!r}")):
        Trainer(task="seed", run_name=name, database=RunDatabase(tmp_path / "runs.db"))
    result = subprocess.run(
        [sys.executable, "-m", "training", "--steps", "5", "--db", str(tmp_path / "cli.db"), "--name", name],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    ) if "\x00" not in name else None  # a NUL cannot be passed in argv at all
    if result is not None:
        assert result.returncode == 2, result.stderr
        assert "A run's name must be" in result.stderr
        assert not (tmp_path / "cli.db").exists()


def test_a_million_character_name_is_refused_with_a_short_message(database_location):
    database = RunDatabase(database_location)
    run_id = ended_run(database, name="before")
    with pytest.raises(ValueError, match=r"Received: name='xxxx.*\.\.\. \(1,000,000 characters\)") as refused:
        database.rename_run(run_id, "x" * 1_000_000)
    assert len(str(refused.value)) < 1000
    assert database.run_info(run_id)["name"] == "before"


def test_rename_and_delete_of_a_missing_run_raise_as_send_command_does(database_location):
    database = RunDatabase(database_location)
    for act in (lambda: database.rename_run(999, "a name"), lambda: database.delete_run(999),
                lambda: database.send_command(999, "stop")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"No run with run_id=999 in '{re.escape(database.location)}'"):
            act()


name_characters = st.one_of(
    st.characters(), st.sampled_from(sorted(BIDI_CONTROLS) + ["\x00", "\n", "\u2028", " ", "\u200f"])
)


@settings(max_examples=150)
@given(name=st.one_of(st.text(name_characters, max_size=MAX_RUN_NAME_LENGTH + 20),
                      st.text(st.sampled_from("ab "), min_size=MAX_RUN_NAME_LENGTH - 2, max_size=MAX_RUN_NAME_LENGTH + 3)))  # fmt: skip
def test_every_accepted_name_round_trips_and_every_refused_one_changes_nothing(tmp_path_factory, name):
    path = tmp_path_factory.getbasetemp() / "names.db"
    database = RunDatabase(path)
    if database.list_runs().empty:
        ended_run(database, name="first")
    run_id = int(database.list_runs().run_id.iloc[0])
    before = database.list_runs()
    try:
        database.rename_run(run_id, name)
    except ValueError as error:
        assert repr(name) in str(error)
        assert database.list_runs().equals(before)
        return
    listed = database.list_runs().set_index("run_id").name[run_id]
    assert listed == name.strip() and 1 <= len(listed) <= MAX_RUN_NAME_LENGTH
    assert not any(c in BIDI_CONTROLS or c in "\u2028\u2029" or c < " " or "\x7f" <= c <= "\x9f" for c in name)


# --- 4. command values, checked where they are sent ------------------------------------------


@pytest.mark.parametrize(
    "kind, value, params, message",
    [
        ("clip_threshold", math.nan, {}, "clip_threshold=nan"),
        ("clip_threshold", math.inf, {}, "clip_threshold=inf"),
        ("clip_threshold", 10**400, {}, "clip_threshold=1000000"),
        ("clip_threshold", True, {}, "clip_threshold=True"),
        ("clip_threshold", "0.5", {}, "clip_threshold='0.5'"),
        ("clip_threshold", b"0.5", {}, "clip_threshold=b'0.5'"),
        ("clip_threshold", object, {}, "clip_threshold=<class 'object'>"),
        ("learning_rate", -1.0, {}, "learning_rate=-1.0"),
        ("learning_rate", np.float64("nan"), {}, r"learning_rate=np\.float64\(nan\)"),
        ("spike", 0, {}, "factor=0"),
        ("policy", "clipall", {}, "Unknown clipping policy 'clipall'"),
        ("policy", "autoclip", {"percentile": math.nan}, "percentile=nan"),
        ("policy", "autoclip", {"percentile": object}, "percentile=<class 'object'>"),
        ("policy", "autoclip", {"window": 10**20}, "window=100000000000000000000"),
        ("policy", "autoclip", {"percentile": True}, "percentile=True"),
        ("pause", 1, {}, "takes no value. Received: value=1"),
        ("stop", None, {"now": 1}, "takes no parameters .*Received: now=1"),
        ("clip_threshold", 0.5, {"percentile": 20}, "takes no parameters .*Received: percentile=20"),
    ],
)  # fmt: skip
def test_a_bad_command_value_is_refused_naming_it_and_nothing_is_queued(database_location, kind, value, params, message):
    database = RunDatabase(database_location)
    writer, run_id = live_run(database)
    try:
        with pytest.raises(ValueError, match=message):
            database.send_command(run_id, kind, value, **params)
        assert database.commands(run_id).empty
    finally:
        writer.finish("stopped")


def test_numbers_beyond_sqlite_integers_are_stored_as_the_number_sent(database_location):
    database = RunDatabase(database_location)
    writer, run_id = live_run(database)
    try:
        command = database.command(database.send_command(run_id, "clip_threshold", 10**20))
        assert command["value"] == 10**20  # was OverflowError: too big for SQLite's INTEGER
        command = database.command(database.send_command(run_id, "policy", "autoclip", percentile=np.float32(20)))
        assert command["parameters"] == {"percentile": 20.0}  # was TypeError: not JSON
    finally:
        writer.finish("stopped")


command_values = st.one_of(
    st.floats(), st.integers(min_value=-(10**30), max_value=10**30), st.sampled_from([10**400, 2**63, 2**64]),
    st.booleans(), st.none(), st.text(max_size=5), st.binary(max_size=3), st.fractions(),
    st.builds(np.float32, st.floats(width=32)), st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
)  # fmt: skip


@pytest.fixture(scope="module", params=BACKENDS)
def commanded(tmp_path_factory, request):
    """One live run for the hypothesis search, per backend (its writer finished after the module)."""
    database = RunDatabase(fresh_location(request.param, tmp_path_factory.mktemp("commands"), request))
    writer, run_id = live_run(database)
    yield database, run_id
    writer.finish("stopped")


@settings(max_examples=150)
@given(kind=st.sampled_from(["clip_threshold", "learning_rate", "spike"]), value=command_values)
def test_an_accepted_command_value_is_stored_exactly_and_a_refused_one_stores_nothing(commanded, kind, value):
    database, run_id = commanded
    before = len(database.commands(run_id))
    try:
        command_id = database.send_command(run_id, kind, value)
    except ValueError as error:
        assert repr(value) in str(error)
        assert len(database.commands(run_id)) == before
        return
    stored = database.command(command_id)["value"]
    number = validate_positive(kind, value)  # what the trainer's own control accepts
    assert stored == number == float(value) and type(stored) is float


# --- 5. commands to a run that has ended ---------------------------------------------------------


@pytest.mark.parametrize("state", ["finished", "stopped", "failed", "interrupted"])
def test_a_command_to_an_ended_run_is_refused_at_once(database_location, state):
    database = RunDatabase(database_location)
    run_id = ended_run(database, state)
    for kind, value in (("stop", None), ("clip_threshold", 0.5)):
        with pytest.raises(ValueError, match=rf"Run {run_id} has ended \(state '{state}'\)"):
            database.send_command(run_id, kind, value)
    assert database.commands(run_id).empty


def test_a_command_to_a_run_whose_process_died_is_refused(database_location):
    database = RunDatabase(database_location)
    writer, run_id = live_run(database)
    writer.finish("running")  # its record says running...
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    # ...by a process that has ended
    execute(database, "UPDATE runs SET pid = ? WHERE run_id = ?", (int(dead.stdout), run_id))
    with pytest.raises(ValueError, match=rf"Run {run_id} has ended \(state 'interrupted'\)"):
        database.send_command(run_id, "stop")


# --- 6. a write lock held by another process when a run starts --------------------------------


def test_start_run_waits_for_a_write_lock_held_past_the_busy_timeout(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="training.persistence")
    database = RunDatabase(tmp_path / "runs.db")
    holder = sqlite3.connect(database.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    locked_at = time.monotonic()

    def waiting_reported():
        return any("another process has held its write lock" in r.getMessage() for r in caplog.records)

    def release_once_waited_past_the_busy_timeout():
        wait_until(lambda: waiting_reported() and time.monotonic() - locked_at > BUSY_SECONDS + 1.0,
                   timeout=BUSY_SECONDS + 120, what="start_run to report its wait past the busy timeout")  # fmt: skip
        holder.execute("COMMIT")

    releaser = threading.Thread(target=release_once_waited_past_the_busy_timeout)
    releaser.start()
    try:
        writer = database.start_run(CONFIG, ["w"], "after the lock")  # was: OperationalError, locked
    finally:
        releaser.join()
        holder.close()
    waited = time.monotonic() - locked_at
    writer.finish("stopped")
    assert waited > BUSY_SECONDS
    assert database.run_info(writer.run_id)["name"] == "after the lock"
    message = next(r.getMessage() for r in caplog.records if "held its write lock" in r.getMessage())
    assert message.startswith(f"Waiting for the run database {str(database.path)!r} to record a new run")
    print(f"\nstart_run waited {waited:.1f} s behind the lock (busy timeout {BUSY_SECONDS:g} s)")


# --- 7. a read-only database file --------------------------------------------------------------


def test_the_cli_refuses_a_read_only_database_with_exit_2(tmp_path):
    path = tmp_path / "readonly.db"
    run_id = ended_run(RunDatabase(path), name="kept")
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    before = folder_snapshot(tmp_path)
    # Root writes files whatever their mode, so as root the CLI runs without root's file rights
    # (CAP_DAC_OVERRIDE dropped, as test_persistence_faults does): then chmod binds it. Running it
    # as `nobody` (subprocess user=) does not work here: the interpreter lives under /root (mode
    # 0700), which nobody cannot enter.
    result = run_cli("--task", "seed", "--steps", "5", "--db", str(path),
                     preexec_fn=without_root_file_rights if os.geteuid() == 0 else None)  # fmt: skip
    path.chmod(0o644)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert re.search(r"error: Cannot use the run database at '.*readonly\.db': the file is read-only", result.stderr)
    assert folder_snapshot(tmp_path) == before
    assert RunDatabase(path).run_info(run_id)["name"] == "kept"


# --- 8. a run stopped before its first step ----------------------------------------------------


def test_a_run_stopped_before_its_first_step_leaves_no_history_row(database_location, trainers):
    database = RunDatabase(database_location)
    kept = ended_run(database, name="an earlier run")
    trainer = trainers(task="seed", database=database)
    trainer.start()
    trainer.stop(timeout=120)  # at once: before its first step
    assert trainer.status.state == "stopped" and trainer.status.step == 0
    run_id = wait_until(lambda: trainer.status.run_id, what="the run's id")
    assert database.list_runs().run_id.tolist() == [kept]
    assert not any(rows_of_run(database, run_id).values())


def test_a_tilde_path_is_in_the_home_folder_and_an_unknown_user_is_refused(tmp_path, monkeypatch):
    """`CLIPWATCH_DB=~/runs.db` or `LiveClipping(database="~/runs.db")` made a folder named "~" in
    the working folder (only a shell expands it); `~name` for no user of this machine says why."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    database = RunDatabase("~/runs.db")
    ended_run(database, name="kept")
    assert database.path == tmp_path / "home" / "runs.db" and database.path.is_file()
    assert database.location == str(tmp_path / "home" / "runs.db") and not (tmp_path / "~").exists()
    with pytest.raises(DatabaseError, match=r"'~no-such-user-of-clipwatch' names no user of this machine"):
        RunDatabase("~no-such-user-of-clipwatch/runs.db")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["home"]


def test_a_run_id_taken_from_list_runs_reads_the_run(tmp_path):
    """Found by probing: list_runs() gives numpy ids, and metrics(numpy_id) returned no row at all
    (sqlite3 bound an int64 as bytes) while metrics(int(id)) returned the run's steps."""
    database = RunDatabase(tmp_path / "runs.db")
    writer = database.start_run(CONFIG, ["w"], "numpy id", ("global_norm",))
    writer.append(step_rows(1, 20))
    wait_until(lambda: writer.status.steps_written == 20, what="the steps written")
    writer.finish("stopped")
    run_id = database.list_runs()["run_id"].iloc[0]
    assert isinstance(run_id, np.integer)
    assert len(database.metrics(run_id)) == 20 and database.run_info(run_id)["name"] == "numpy id"
    assert len(database.metrics(np.int32(run_id))) == 20
