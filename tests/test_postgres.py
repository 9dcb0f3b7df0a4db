"""The run database on a PostgreSQL server: what only a server has (reaching it, its schema
table, hosts and heartbeats, LISTEN/NOTIFY, restarts, turning read-only) and what a URL must
never show (its password), beside the lineage columns both backends keep.

The server is the session's throwaway cluster (tests/postgres_server.py); the behaviour both
backends share is tested by the parametrized persistence suites.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from postgres_server import free_port
from support import wait_until
from test_database_defects import CONFIG, execute, live_run, run_cli, step_rows
from test_keras import acknowledged, running_run, start_example
from training import Trainer
from training.persistence import (
    HEARTBEAT_LAPSED_SECONDS, SCHEMA_TEMPLATE, SCHEMA_VERSION, SQLITE_TYPES, APPLICATION_ID, DatabaseError,
    RunDatabase, redacted,
)  # fmt: skip
from training.runs.postgres_backend import POSTGRES_TYPES

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SECRET = "Tr0ub4dor-and-3"  # a password that must appear nowhere
PACE = 2000  # steps per second for the restart test: a run that outlasts a restart


def with_password(url: str) -> str:
    """The URL with SECRET as the user's password (the test cluster trusts loopback, so the
    server never asks for it: only what Clipwatch shows of it is tested)."""
    return url.replace("://postgres@", f"://postgres:{SECRET}@", 1)


# --- reaching the server ------------------------------------------------------------------------


def test_an_unreachable_server_is_one_clear_error_naming_host_and_port_without_the_password():
    port = free_port()  # nothing listens there
    url = f"postgresql://ana:{SECRET}@127.0.0.1:{port}/runs?connect_timeout=5"
    with pytest.raises(DatabaseError, match=rf"Cannot reach the PostgreSQL server at host 127\.0\.0\.1, port {port}") as refused:
        RunDatabase(url)
    assert SECRET not in str(refused.value) and "ana:***@" in str(refused.value)

    result = run_cli("--task", "seed", "--steps", "5", "--db", url)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"host 127.0.0.1, port {port}" in errors[0], result.stderr[-2000:]
    assert SECRET not in result.stdout + result.stderr


# --- the schema version and the lineage columns ---------------------------------------------------


def first_version_statements(types):
    """Version 1's tables (before the lineage, host and heartbeat columns)."""
    return [part for part in SCHEMA_TEMPLATE.format(**types).split(";") if part.strip()]


OLD_RUN = (
    "INSERT INTO runs (name, task, policy, clip_threshold, learning_rate, batch_size, seed,"
    " config_json, variable_names_json, state, created_at, updated_at, pid)"
    " VALUES ('kept', 'seed', 'global_norm', 1, 0.1, 64, 0, '{}', '[]', 'stopped', 0, 0, 1)"
)


def test_a_server_database_is_versioned_an_older_one_upgraded_a_newer_one_refused(postgres_server):
    older = postgres_server.make_database()
    with psycopg.connect(older, autocommit=True) as connection:
        for statement in first_version_statements(POSTGRES_TYPES):
            connection.execute(statement)
        connection.execute("CREATE TABLE clipwatch_schema (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO clipwatch_schema VALUES (1)")
        connection.execute(OLD_RUN)
    runs = RunDatabase(older).list_runs()
    assert runs.name.tolist() == ["kept"] and runs[["host", "parent_run_id", "fork_step"]].isna().all(axis=None)
    with psycopg.connect(older) as connection:
        assert connection.execute("SELECT version FROM clipwatch_schema").fetchone() == (SCHEMA_VERSION,)
        connection.execute("UPDATE clipwatch_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(DatabaseError, match=rf"schema version {SCHEMA_VERSION + 1}; this one knows versions up to {SCHEMA_VERSION}"):
        RunDatabase(older)

    theirs = postgres_server.make_database()  # another application's `runs` table
    with psycopg.connect(theirs) as connection:
        connection.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, title TEXT)")
    with pytest.raises(DatabaseError, match=r"tables named as Clipwatch's \(runs\) .*left unchanged"):
        RunDatabase(theirs)
    with psycopg.connect(theirs) as connection:
        tables = connection.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        assert [name for (name,) in tables] == ["runs"]


def test_a_version_1_sqlite_file_gains_the_new_columns(tmp_path):
    import contextlib
    import sqlite3

    path = tmp_path / "version1.db"
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        for statement in first_version_statements(SQLITE_TYPES):
            connection.execute(statement)
        connection.execute(OLD_RUN)
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute("PRAGMA user_version = 1")
    runs = RunDatabase(path).list_runs()
    assert runs.name.tolist() == ["kept"] and runs[["host", "parent_run_id", "fork_step"]].isna().all(axis=None)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_lineage_is_set_at_start_and_listed(database_location):
    database = RunDatabase(database_location)
    parent = database.start_run(CONFIG, ["w"], "parent")
    parent.finish("stopped")
    child = database.start_run(CONFIG, ["w"], "child", parent_run_id=parent.run_id, fork_step=120)
    child.finish("stopped")
    runs = database.list_runs().set_index("name")
    assert runs.loc["child", "parent_run_id"] == parent.run_id and runs.loc["child", "fork_step"] == 120
    assert runs.loc["parent", ["parent_run_id", "fork_step"]].isna().all()
    assert runs.loc["child", "host"] == socket.gethostname()
    with pytest.raises(ValueError, match=r"parent_run_id=1, fork_step=None"):
        database.start_run(CONFIG, ["w"], "half a fork", parent_run_id=1)


# --- liveness across hosts ----------------------------------------------------------------------


def test_a_run_on_another_host_is_interrupted_when_its_heartbeat_lapses(database_location):
    database = RunDatabase(database_location)
    lapsed_writer, lapsed = live_run(database, "lapsed")
    lapsed_writer.finish("running")  # its record says running, from another machine...
    beating_writer, beating = live_run(database, "beating")
    beating_writer.finish("running")
    now = time.time()
    execute(database, "UPDATE runs SET host = 'gpu-box', last_seen = ? WHERE run_id = ?",
            (now - HEARTBEAT_LAPSED_SECONDS - 1, lapsed))  # fmt: skip
    execute(database, "UPDATE runs SET host = 'gpu-box', last_seen = ? WHERE run_id = ?", (now, beating))
    states = RunDatabase(database_location).list_runs().set_index("name").state
    assert states["lapsed"] == "interrupted" and states["beating"] == "running"  # its PID is not looked at
    with pytest.raises(ValueError, match=r"recorded by process \d+ on gpu-box\): stop it first"):
        database.delete_run(beating)


def test_the_writer_beats_while_nothing_is_recorded(database_location):
    database = RunDatabase(database_location)
    writer, run_id = live_run(database)
    writer.append(step_rows(1, 5))
    wait_until(lambda: writer.status.steps_written == 5, what="the steps written")
    seen = database.run_info(run_id)["last_seen"]
    updated = database.run_info(run_id)["updated_at"]
    try:
        wait_until(lambda: database.run_info(run_id)["last_seen"] > seen, timeout=60, what="a heartbeat")
        assert database.run_info(run_id)["updated_at"] == updated  # a beat is not a change of the run
    finally:
        writer.finish("stopped")


# --- commands across processes -------------------------------------------------------------------


def test_a_command_wakes_the_reader_at_once(postgres_server):
    database = RunDatabase(postgres_server.make_database())
    writer, run_id = live_run(database)
    stop, listening, woke = threading.Event(), threading.Event(), threading.Event()

    def read():
        database.wait_for_commands(run_id, 0.01, stop)  # sets up LISTEN on this thread
        listening.set()
        database.wait_for_commands(run_id, 600, stop)  # polling alone would wait all of this
        woke.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(60)
        RunDatabase(database.backend.location).send_command(run_id, "clip_threshold", 0.5)  # another connection
        wait_until(woke.is_set, timeout=60, what="the NOTIFY to wake the reader")
    finally:
        stop.set()
        writer.finish("stopped")


def page_text(at: AppTest) -> str:
    """Everything the page holds, as text (each element's message)."""
    found = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            found.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return "\n".join(found)


def test_a_script_on_the_server_is_steered_from_another_process_and_shown_without_its_password(
    postgres_server, tmp_path, monkeypatch, caplog
):
    url = with_password(postgres_server.make_database())
    database = RunDatabase(url)
    process = start_example("attach_fit.py", url, "--steps", "100000000", cwd=tmp_path)
    caplog.set_level(logging.DEBUG)
    try:
        run_id = running_run(database, process)
        command = acknowledged(database, database.send_command(run_id, "clip_threshold", 0.01))
        assert command["error"] is None and command["applied_step"] > 1
        wait_until(lambda: "clip_threshold" in database.events(run_id).kind.tolist(), what="the change's event written")

        monkeypatch.setenv("CLIPWATCH_DB", url)
        st.cache_resource.clear()
        at = AppTest.from_file(APP, default_timeout=90).run()
        at.session_state["section"] = "History"
        at.run()
        assert not at.exception
        history = at.dataframe[0].value
        assert history.set_index("Id").loc[run_id, "Host"] == socket.gethostname()
        field = next(widget for widget in at.sidebar.text_input if widget.label == "Database path")
        assert field.value == redacted(url) and field.disabled
        assert SECRET not in page_text(at)
        acknowledged(database, database.send_command(run_id, "stop"))
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        from dashboard.run_manager import get_run_manager

        get_run_manager().stop_all()
        st.cache_resource.clear()
    assert SECRET not in caplog.text
    assert SECRET not in stdout + stderr
    assert database.run_info(run_id)["state"] == "stopped"


# --- a server restart mid-run ---------------------------------------------------------------------


def test_a_server_restart_mid_run_loses_no_step(postgres_server):
    url = postgres_server.make_database()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "recording_process.py"), url, str(PACE)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    latest, warnings = {}, []

    def read_reports():
        for line in process.stdout:
            latest.update(json.loads(line))
            if latest.get("warning"):
                warnings.append(latest["warning"])

    threading.Thread(target=read_reports, daemon=True).start()
    try:
        wait_until(lambda: latest.get("written", 0) >= 500, timeout=180, what="the first commits")
        before = latest["written"]
        postgres_server.restart()
        restarted_at = latest["step"]
        wait_until(lambda: latest["written"] > restarted_at + 1000, timeout=120, what="the writer to write past the restart",
                   state=lambda: latest)  # fmt: skip
        process.stdin.close()
        wait_until(lambda: latest["final"], what="the process to stop its run")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    database = RunDatabase(url)
    run_id = int(database.list_runs().run_id.iloc[0])
    recorded = database.metrics(run_id)["step"].to_numpy()
    assert (recorded == np.arange(1, len(recorded) + 1)).all(), "a gap or a repeat in the database"
    assert recorded[-1] == latest["step"] == latest["stored_last"]
    assert all(SECRET not in warning for warning in warnings)
    if warnings:  # the restart cut the writer's connection mid-commit: it said so, then recovered
        assert "none lost" in latest["warning"], warnings[-3:]
    print(f"\nserver restart: written before {before}, at the restart step {restarted_at}, "
          f"recorded {len(recorded)}, lost {latest['step'] - len(recorded)}; warnings: {sorted(set(warnings))[:2]}")


def test_a_read_only_server_holds_the_steps_and_says_why_until_it_is_writable(postgres_server):
    url = postgres_server.make_database()
    name = url.rsplit("/", 1)[1]
    database = RunDatabase(url)

    def read_only(on: bool) -> None:
        """New sessions of the database read-only (or not), and the current ones cut, as a
        failover to a standby would do."""
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    trainer = Trainer(task="seed", database=database)
    trainer.set_max_steps_per_second(PACE)
    trainer.start()
    try:
        writer = wait_until(lambda: trainer.writer, what="the run's writer")
        wait_until(lambda: writer.status.last_step_written >= 500, timeout=120, what="the first commits")
        before = writer.status.last_step_written
        read_only(True)
        # The writer's first error can be the cut connection; the page's warning (the trainer's,
        # copied between chunks) follows until both name the server's reason.
        wait_until(lambda: "read-only transaction" in (writer.status.error or "")
                   and trainer.status.warning == writer.status.error, what="the reason, from the server")  # fmt: skip
        assert writer.status.state == "waiting"
        held_from = trainer.status.step
        wait_until(lambda: trainer.status.step >= held_from + 1000, what="training to go on")
        read_only(False)
        ended_at = trainer.status.step
        wait_until(lambda: writer.status.state == "writing" and writer.status.last_step_written > ended_at,
                   what="the writer to write what it held")  # fmt: skip
        wait_until(lambda: "none lost" in (trainer.status.warning or ""), what="the page's warning to say none was lost")
    finally:
        trainer.stop()
    recorded = database.metrics(trainer.status.run_id)["step"].to_numpy()
    assert (recorded == np.arange(1, trainer.status.step + 1)).all(), "a gap or a repeat in the database"
    print(f"\nread-only server: written before {before}, held from about {held_from} to {ended_at}, "
          f"recorded {len(recorded)}, lost {trainer.status.step - len(recorded)}")
