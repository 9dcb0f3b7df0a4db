"""Run history in an embedded SQLite database (WAL mode).

Every run's config, per-step metrics, per-layer norms, events and final state are written by a
writer thread of the run's own, in one transaction at least every 0.5 s (`FLUSH_SECONDS`) (never one per step),
so a SIGKILL loses at most the last second. A run whose process died while it was running shows
as "interrupted" the next time the database is opened.

A file is recognised before anything is written to it: Clipwatch stamps its databases with
SQLite's `application_id` (APPLICATION_ID, "CLPW") and `user_version` (SCHEMA_VERSION). An
empty file is stamped; an unstamped file with exactly Clipwatch's tables (made before the stamp)
is stamped and used; anything else (another application's `runs` table, a newer schema, not
SQLite at all) is refused with a `DatabaseError` and left byte-for-byte unchanged.

The schema (see also README.md):

    runs(run_id INTEGER PRIMARY KEY, name, task, policy, clip_threshold, learning_rate,
         batch_size, seed, config_json, variable_names_json, state, error, created_at,
         updated_at, steps, final_loss, clip_rate, pid)
    step_chunks(run_id, first_step, step_count, step, time_s, loss, grad_norm,
                clipped_grad_norm, clip_threshold, clipped, finite, learning_rate, policy,
                layer_norms)                                   PRIMARY KEY (run_id, first_step)
        One row per commit (about 0.5 s of steps); every per-step column is a little-endian
        numpy array as a BLOB (dtypes in STEP_DTYPES; policy: int8 codes into
        runs.policy_names_json; layer_norms: float32 [step_count, variables] in the order of
        runs.variable_names_json). Binding a dozen values per step cost the writer a quarter of
        a core at 75k steps/s; a blob per column costs about a twentieth of that.
    events(run_id, step, time_s, kind, old, new)
    commands(id, run, kind, value, parameters, created, applied_step, applied_time, error)
        The command channel to a run recorded by another process (see `send_command`).
    evaluations(run_id, step, time_s, name, value)     validation results (val_loss, val_<metric>)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..clipping.commands import SENT_COMMAND_KINDS as COMMAND_KINDS
from ..clipping.commands import check_command

from .names import (  # noqa: F401  (re-exported: the names' old home)
    BIDI_CONTROLS, MAX_RUN_NAME_LENGTH, validate_run_name,
)  # fmt: skip

log = logging.getLogger("training.persistence")  # the name users configure

from .schema import *  # noqa: F401,F403  (the schema's names are the database's, as they always were)
from .schema import (
    APPLICATION_ID, BUSY_SECONDS, LIVE_STATES, REPORT_WAIT_EVERY_SECONDS, RUN_LIST_COLUMNS, RUN_TABLES, SCHEMA_STATEMENTS,
    SCHEMA_VERSION, SQLITE_HEADER, START_WAIT_SECONDS, WRITER_BUSY_SECONDS, DatabaseError, delete_rows, pid_alive,
    table_columns, default_path, NO_PAGE_CAP, COMMAND_COLUMNS, STEP_DTYPES, STEP_FIELDS, TABLE_COLUMNS,
)  # fmt: skip
from .writer import RunWriter, WriterStatus  # noqa: F401


class RunDatabase:
    """One SQLite file of runs. Each thread that uses it gets its own connection.

    Args:
        path: the file (default: `default_path()`).
        max_pages: cap the file at this many pages (SQLite's `max_page_count`, 4 KiB each), e.g.
            so a demo cannot fill a disk; a write past it fails as on a full disk. A writer reads
            it before each commit, so raising it (or None: no cap) lets a waiting writer go on.
        writer_busy_seconds: how long a run's writer waits for another process's write lock
            before it reports the wait and retries.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        max_pages: int | None = None,
        writer_busy_seconds: float = WRITER_BUSY_SECONDS,
    ):
        self.path = Path(path) if path is not None else default_path()
        self.max_pages, self.writer_busy_seconds = max_pages, writer_busy_seconds
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._check_header()
            if self.path.exists() and not os.access(self.path, os.W_OK):  # as the writer checks
                raise DatabaseError(self._cannot_use("the file is read-only"))
            with contextlib.closing(self._connect()) as connection:
                version = self._recognise(connection)  # refuses a foreign file: nothing written yet
                connection.execute("PRAGMA journal_mode=WAL")
                if version != SCHEMA_VERSION:
                    self._in_transaction("set up the database", self._stamp)
                try:
                    self._mark_interrupted(connection)
                except sqlite3.OperationalError as error:  # locked: the next opening marks them
                    log.info("Not marking dead runs of %r now: %s", str(self.path), error)
        except DatabaseError:
            raise
        except (OSError, ValueError, sqlite3.Error) as error:  # ValueError: a NUL in the path
            raise DatabaseError(self._cannot_use(str(error))) from error

    def _cannot_use(self, reason: str) -> str:
        return (
            f"Cannot use the run database at {str(self.path)!r}: {reason}. "
            "Pick another path (CLI --db, the CLIPWATCH_DB variable, or the UI's settings)."
        )

    def _not_ours(self, reason: str) -> DatabaseError:
        return DatabaseError(
            self._cannot_use(f"it is not a Clipwatch database ({reason}); it was left unchanged")
        )

    def _check_header(self) -> None:
        """Refuse a file that is not SQLite at all, before SQLite opens it."""
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            return  # a new database
        if header and header != SQLITE_HEADER:
            raise self._not_ours("it is not an SQLite file")

    def _recognise(self, connection: sqlite3.Connection) -> int | None:
        """The file's schema version (None: a new, empty file); DatabaseError if it is not ours."""
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if application_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise DatabaseError(self._cannot_use(
                    f"it was made by a newer Clipwatch (schema version {version}; this one knows "
                    f"versions up to {SCHEMA_VERSION}). Upgrade Clipwatch to open it"
                ))  # fmt: skip
            return version
        if application_id != 0:
            raise self._not_ours(
                f"its application_id is {application_id:#010x}, Clipwatch's is {APPLICATION_ID:#010x}"
            )
        if connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0 and version == 0:
            return None
        tables = table_columns(connection)
        theirs = sorted(name for name, columns in tables.items() if TABLE_COLUMNS.get(name) != columns)
        if version != 0 or theirs or "runs" not in tables:
            described = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
            raise self._not_ours(
                f"user_version {version} without Clipwatch's application_id" if version != 0
                else f"tables Clipwatch does not make: {described}" if theirs
                else "no runs table"
            )  # fmt: skip
        return 0  # made by Clipwatch before the stamp

    def _stamp(self, connection: sqlite3.Connection) -> None:
        """Create the tables (in a new or unstamped file) and stamp the file as Clipwatch's."""
        if self._recognise(connection) == SCHEMA_VERSION:  # another process stamped it meanwhile
            return
        for statement in SCHEMA_STATEMENTS:
            connection.execute(statement)
        connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _in_transaction(self, what: str, write: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `write(connection)` in one write transaction and return its result.

        While another process holds the write lock, wait for it as a run's writer does: try for
        `writer_busy_seconds`, log that we wait (then every REPORT_WAIT_EVERY_SECONDS), retry,
        and give up with a DatabaseError after START_WAIT_SECONDS.
        """
        started = time.monotonic()
        next_report = 0.0
        while True:
            with contextlib.closing(self._connect(busy_seconds=self.writer_busy_seconds)) as connection:
                try:
                    connection.execute("BEGIN IMMEDIATE")  # the write lock first: waits busy_seconds
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) and "busy" not in str(error):
                        raise
                else:
                    try:
                        result = write(connection)
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
                    if next_report > 0:
                        log.warning("The run database %r is free again: done (%s).", str(self.path), what)
                    return result
            waited = time.monotonic() - started
            if waited > START_WAIT_SECONDS:
                raise DatabaseError(self._cannot_use(
                    f"another process has held its write lock for over {START_WAIT_SECONDS:g} s"
                ))  # fmt: skip
            if waited >= next_report:
                log.warning(
                    "Waiting for the run database %r to %s: another process has held its write "
                    "lock for %.0f s; retrying.", str(self.path), what, waited,
                )  # fmt: skip
                next_report = waited + REPORT_WAIT_EVERY_SECONDS

    def _connect(self, busy_seconds: float = BUSY_SECONDS) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=busy_seconds, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
        connection.execute(f"PRAGMA max_page_count={int(self.max_pages or NO_PAGE_CAP)}")
        return connection

    def mark_interrupted(self) -> None:
        """Mark as interrupted the live runs whose process has died (also done on opening), so
        a script killed while the app watches stops showing as live."""
        with self._connect() as connection:
            self._mark_interrupted(connection)

    @staticmethod
    def _mark_interrupted(connection: sqlite3.Connection) -> None:
        rows = connection.execute(
            f"SELECT run_id, pid FROM runs WHERE state IN ({','.join('?' * len(LIVE_STATES))})",
            LIVE_STATES,
        ).fetchall()
        dead = [(run_id,) for run_id, pid in rows if not pid_alive(pid)]
        if dead:
            connection.executemany(
                "UPDATE runs SET state = 'interrupted', "
                "error = 'The process running it ended without stopping it.' WHERE run_id = ?",
                dead,
            )

    # --- writing -------------------------------------------------------------------------------

    def start_run(
        self,
        config,
        variable_names: list[str],
        name: str | None = None,
        policy_names: tuple[str, ...] = (),
    ) -> "RunWriter":
        """Record a new run and return the writer that streams its steps."""
        now = time.time()
        config_json = json.dumps(dataclasses.asdict(config))

        def insert(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                "INSERT INTO runs (name, task, policy, clip_threshold, learning_rate, batch_size,"
                " seed, config_json, variable_names_json, state, created_at, updated_at, pid,"
                " policy_names_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    name or "",
                    config.task,
                    config.policy,
                    config.clip_threshold,
                    config.learning_rate,
                    config.batch_size,
                    config.seed,
                    config_json,
                    json.dumps(variable_names),
                    now,
                    now,
                    os.getpid(),
                    json.dumps(list(policy_names)),
                ),
            )
            run_id = cursor.lastrowid
            if not name:
                connection.execute(
                    "UPDATE runs SET name = ? WHERE run_id = ?",
                    (f"run {run_id}: {config.task} / {config.policy}", run_id),
                )
            return run_id

        # Another process may hold the write lock for longer than a busy timeout (a long
        # transaction, a backup): wait for it with a message, as the writer does, not fail.
        run_id = self._in_transaction("record a new run", insert)
        return RunWriter(self, run_id, busy_seconds=self.writer_busy_seconds)

    def rename_run(self, run_id: int, name: str) -> None:
        """Rename a run (see `validate_run_name`); ValueError for a bad name or a missing run."""
        name = validate_run_name(name)
        with self._transaction() as connection:
            self._run_row(connection, run_id, "run_id")
            connection.execute("UPDATE runs SET name = ? WHERE run_id = ?", (name, run_id))

    def delete_run(self, run_id: int) -> None:
        """Delete a run and every row of it, in every table.

        Refused (ValueError) for a missing run and for a live one (its state idle, running or
        paused and its process alive): stop it first, or its process would go on recording it.
        """
        with self._transaction() as connection:
            state, pid = self._run_row(connection, run_id, "state, pid")
            if state in LIVE_STATES and pid_alive(pid):
                raise ValueError(
                    f"Run {run_id} is live (state {state!r}, recorded by process {pid}): stop it "
                    "first, then delete it."
                )
            delete_rows(connection, run_id)

    @contextlib.contextmanager
    def _transaction(self, busy_seconds: float = BUSY_SECONDS):
        """A connection inside one write transaction: committed on success, else rolled back."""
        with contextlib.closing(self._connect(busy_seconds)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _run_row(self, connection: sqlite3.Connection, run_id: Any, columns: str) -> tuple:
        """The run's `columns`, or the ValueError every method raises for a missing run."""
        row = None
        if isinstance(run_id, (int, np.integer)) and not isinstance(run_id, (bool, np.bool_)):
            row = connection.execute(
                f"SELECT {columns} FROM runs WHERE run_id = ?", (int(run_id),)
            ).fetchone()
        if row is None:
            raise ValueError(f"No run with run_id={run_id!r} in {str(self.path)!r}")
        return row

    # --- the command channel (another process applies what is sent here) ----------------------

    def send_command(self, run_id: int, kind: str, value: Any = None, **params: Any) -> int:
        """Queue a command for the process recording run `run_id`; return the command's id.

        The recording process polls this table, applies commands in order between steps and
        acknowledges each one (`applied_step`: the first step that uses it, `applied_time`), or
        fills `error` and changes nothing (a value its state refuses). Kinds: COMMAND_KINDS.

        Checked here first, with the trainer's own validators: a bad value or parameter, a
        missing run, or a run that has ended raises ValueError naming it, and queues nothing.
        """
        command = check_command(kind, value, params, kinds=COMMAND_KINDS)  # ValueError naming it
        value, params = command.value, command.params  # plain numbers, as JSON stores them
        with self._transaction() as connection:
            self._mark_interrupted(connection)  # a run whose process died has ended too
            (state,) = self._run_row(connection, run_id, "state")
            if state not in LIVE_STATES:
                # Nobody would ever apply it: refuse now rather than leave it pending forever.
                raise ValueError(
                    f"Run {run_id} has ended (state {state!r}): commands go only to a live run "
                    f"({', '.join(LIVE_STATES)}). Received: {kind}"
                    + ("" if value is None else f"={value!r}")
                )
            cursor = connection.execute(
                "INSERT INTO commands (run, kind, value, parameters, created) VALUES (?, ?, ?, ?, ?)",
                (int(run_id), kind, value, json.dumps(params, allow_nan=False), time.time()),
            )
            return cursor.lastrowid

    def pending_commands(self, run_id: int, after_id: int = 0) -> list[dict[str, Any]]:
        """Commands for `run_id` with id > `after_id` that are not yet applied nor refused."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT id, kind, value, parameters, created FROM commands WHERE run = ? AND id > ?"
                " AND applied_time IS NULL AND error IS NULL ORDER BY id",
                (run_id, after_id),
            ).fetchall()
        return [
            {"id": id_, "kind": kind, "value": value, "parameters": json.loads(parameters),
             "created": created}
            for id_, kind, value, parameters, created in rows
        ]  # fmt: skip

    def acknowledge_commands(self, acknowledgements: list[tuple]) -> None:
        """Record (id, applied_step, applied_time, error) for each applied or refused command."""
        with self._connect() as connection:
            connection.executemany(
                "UPDATE commands SET applied_step = ?, applied_time = ?, error = ? WHERE id = ?",
                [(step, applied_time, error, id_) for id_, step, applied_time, error in acknowledgements],
            )

    def command(self, command_id: int) -> dict[str, Any]:
        """One command's row (COMMAND_COLUMNS), e.g. to wait for its acknowledgement."""
        with self._connect() as connection:
            row = connection.execute(
                f"SELECT {', '.join(COMMAND_COLUMNS)} FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
        if row is None:
            raise ValueError(f"No command with id={command_id!r} in {str(self.path)!r}")
        command = dict(zip(COMMAND_COLUMNS, row))
        command["parameters"] = json.loads(command["parameters"])
        return command

    def commands(self, run_id: int) -> pd.DataFrame:
        with self._connect() as connection:
            return pd.read_sql_query(
                f"SELECT {', '.join(COMMAND_COLUMNS)} FROM commands WHERE run = ? ORDER BY id",
                connection,
                params=(run_id,),
            )

    # --- reading -------------------------------------------------------------------------------

    def list_runs(self) -> pd.DataFrame:
        with self._connect() as connection:
            return pd.read_sql_query(
                f"SELECT {', '.join(RUN_LIST_COLUMNS)} FROM runs ORDER BY run_id DESC", connection
            )

    def run_info(self, run_id: int) -> dict[str, Any]:
        with contextlib.closing(self._connect()) as connection:
            connection.row_factory = sqlite3.Row
            info = dict(self._run_row(connection, run_id, "*"))
        info["config"] = json.loads(info.pop("config_json"))
        info["variable_names"] = json.loads(info.pop("variable_names_json"))
        info["policy_names"] = json.loads(info.pop("policy_names_json"))
        return info

    def _columns(self, run_id: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        with self._connect() as connection:
            rows = connection.execute(
                f"SELECT step_count, {', '.join(names)} FROM step_chunks WHERE run_id = ?"
                " ORDER BY first_step",
                (run_id,),
            ).fetchall()
        return {
            name: np.concatenate(
                [np.frombuffer(row[1 + i], dtype) for row in rows] or [np.zeros(0, dtype)]
            )
            for i, (name, dtype) in enumerate((n, STEP_DTYPES.get(n, "<f4")) for n in names)
        }

    def metrics(self, run_id: int) -> pd.DataFrame:
        """Every recorded step of the run, with the columns of `Trainer.metrics()`."""
        with contextlib.closing(self._connect()) as connection:
            (policy_names_json,) = self._run_row(connection, run_id, "policy_names_json")
        policy_names = np.asarray(json.loads(policy_names_json), dtype=object)
        columns = self._columns(run_id, STEP_FIELDS)
        frame = pd.DataFrame(
            {name: columns[name].astype(np.dtype(STEP_DTYPES[name]).newbyteorder("=")) for name in STEP_FIELDS}
        )
        frame["policy"] = policy_names[columns["policy"].astype(np.int64)] if len(frame) else ""
        frame["policy"] = frame["policy"].astype(str)
        return frame

    def events(self, run_id: int) -> pd.DataFrame:
        return self._rows_of(run_id, "events", "step, time_s, kind, old, new")

    def evaluations(self, run_id: int) -> pd.DataFrame:
        """The run's validation results: `step, time_s, name, value`."""
        return self._rows_of(run_id, "evaluations", "step, time_s, name, value")

    def _rows_of(self, run_id: int, table: str, columns: str) -> pd.DataFrame:
        """`columns` of run `run_id`'s rows in `table` (a constant name), in the order written;
        ValueError naming the run if there is none."""
        with contextlib.closing(self._connect()) as connection:
            self._run_row(connection, run_id, "run_id")
            return pd.read_sql_query(
                f"SELECT {columns} FROM {table} WHERE run_id = ? ORDER BY rowid", connection, params=(run_id,)
            )

    def layer_norms(self, run_id: int) -> pd.DataFrame:
        names = self.run_info(run_id)["variable_names"]
        columns = self._columns(run_id, ("step", "layer_norms"))
        frame = pd.DataFrame(columns["layer_norms"].reshape(-1, len(names)), columns=names)
        frame.insert(0, "step", columns["step"].astype(np.int64))
        return frame
