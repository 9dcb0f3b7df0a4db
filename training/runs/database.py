"""Run history in a run database: an embedded SQLite file (the default) or a PostgreSQL server.

`RunDatabase(location)` takes a file's path or a PostgreSQL connection string
(`postgresql://user@host:port/dbname`, `postgres://...`, or `host=... dbname=...`; see
`training.runs.locations`) and gives the same tables, methods and results on both: the SQL
below is written once and run through the backend (`sqlite_backend`, `postgres_backend`).

Every run's config, per-step metrics, per-layer norms, events and final state are written by a
writer thread of the run's own, in one transaction at least every 0.5 s (`FLUSH_SECONDS`) (never one per step),
so a SIGKILL loses at most the last second. A run whose process died while it was running shows
as "interrupted" the next time the database is opened: on the host that records it, its PID is
gone; from another host, its heartbeat (`runs.last_seen`, written every HEARTBEAT_SECONDS)
lapsed.

The schema (see also README.md; version SCHEMA_VERSION, stored in both):

    runs(run_id INTEGER PRIMARY KEY, name, task, policy, clip_threshold, learning_rate,
         batch_size, seed, config_json, variable_names_json, state, error, created_at,
         updated_at, steps, final_loss, clip_rate, pid, policy_names_json,
         parent_run_id, fork_step, host, last_seen)
        parent_run_id, fork_step: lineage (a run forked from another at a step), else NULL.
    step_chunks(run_id, first_step, step_count, step, time_s, loss, grad_norm,
                clipped_grad_norm, clip_threshold, clipped, finite, learning_rate, policy,
                layer_norms)                                   PRIMARY KEY (run_id, first_step)
        One row per commit (about 0.5 s of steps); every per-step column is a little-endian
        numpy array as a BLOB / bytea (dtypes in STEP_DTYPES; policy: int8 codes into
        runs.policy_names_json; layer_norms: float32 [step_count, variables] in the order of
        runs.variable_names_json). Binding a dozen values per step cost the writer a quarter of
        a core at 75k steps/s; a blob per column costs about a twentieth of that.
    events(run_id, step, time_s, kind, old, new)
    commands(id, run, kind, value, parameters, created, applied_step, applied_time, error)
        The command channel to a run recorded by another process (see `send_command`).
    evaluations(run_id, step, time_s, name, value)     validation results (val_loss, val_<metric>)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

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
    LIVE_STATES, RUN_LIST_COLUMNS, WRITER_BUSY_SECONDS, DatabaseError, delete_rows, has_died, default_path,
    COMMAND_COLUMNS, STEP_DTYPES, STEP_FIELDS,
)  # fmt: skip
from .backend import Backend
from .locations import is_server_location, redacted  # noqa: F401  (redacted: shown locations)
from .sqlite_backend import SqliteBackend
from .writer import RunWriter, WriterStatus  # noqa: F401


def open_backend(location, max_pages: int | None, writer_busy_seconds: float, read_only: bool = False) -> Backend:
    """The backend for `location`: a PostgreSQL connection string, else a SQLite file's path."""
    if is_server_location(location):
        from .postgres_backend import PostgresBackend  # imports psycopg: only when asked for

        return PostgresBackend(location, read_only)
    return SqliteBackend(location, max_pages, writer_busy_seconds, read_only)


INTERRUPTED_ERROR = "The process running it ended without stopping it."


class RunDatabase:
    """One run database: a SQLite file or a PostgreSQL database (see the module).

    Args:
        location: a SQLite file's path, or a PostgreSQL connection string (default:
            `default_path()`: $CLIPWATCH_DB, else runs/clipwatch.db).
        max_pages: (SQLite) cap the file at this many pages (SQLite's `max_page_count`, 4 KiB
            each), e.g. so a demo cannot fill a disk; a write past it fails as on a full disk. A
            writer reads it before each commit, so raising it (or None: no cap) lets a waiting
            writer go on.
        writer_busy_seconds: (SQLite) how long a run's writer waits for another process's
            write lock before it reports the wait and retries.
        read_only: only read it (a copy's source): a SQLite file is opened read-only, so a
            file or folder the user may only read works and nothing in it changes; a PostgreSQL
            session is made read-only, and a database without Clipwatch's tables is refused, not
            set up. Runs whose process died are shown as interrupted, not marked so in it. A
            store of an older schema is refused, not upgraded.
    """

    def __init__(
        self,
        location: str | os.PathLike | None = None,
        *,
        max_pages: int | None = None,
        writer_busy_seconds: float = WRITER_BUSY_SECONDS,
        read_only: bool = False,
    ):
        if location is None:
            location = default_path()
        self.backend = open_backend(location, max_pages, writer_busy_seconds, read_only)
        self.writer_busy_seconds = writer_busy_seconds
        self.location = self.backend.shown  # what may be shown: a password is never in it
        self.errors = self.backend.errors  # the driver's exceptions, for callers that catch them
        self.read_only = read_only
        self.backend.prepare()  # refuses a store that is not Clipwatch's, or a newer one
        if read_only:
            return
        try:
            self.mark_interrupted()
        except self.errors as error:  # locked: the next opening marks them
            log.info("Not marking dead runs of %r now: %s", self.location, error)

    @property
    def path(self) -> Path | None:
        """The SQLite file (None for a server database)."""
        return getattr(self.backend, "path", None)

    @property
    def max_pages(self) -> int | None:
        return getattr(self.backend, "max_pages", None)

    @max_pages.setter
    def max_pages(self, pages: int | None) -> None:
        self.backend.max_pages = pages

    def _execute(self, connection, statement: str, parameters=()):
        return self.backend.execute(connection, statement, parameters)

    def _refuse_writing(self, what: str) -> None:
        """A database opened read-only is never written: one clear refusal, not the driver's
        "attempt to write a readonly database" (or a write that a read-only session refuses)."""
        if self.read_only:
            raise ValueError(
                f"The run database at {self.location!r} was opened read-only (read_only=True), so it cannot "
                f"{what}. Open it without read_only to change it."
            )

    def mark_interrupted(self) -> None:
        """Mark as interrupted the live runs whose process has died (also done on opening), so
        a script killed while the app watches stops showing as live."""
        self._refuse_writing("mark dead runs interrupted")
        with self.backend.connection() as connection:
            self._mark_interrupted(connection)

    def _mark_interrupted(self, connection) -> None:
        self.backend.execute_many(
            connection,
            f"UPDATE runs SET state = 'interrupted', error = '{INTERRUPTED_ERROR}' WHERE run_id = ?",
            [(run_id,) for run_id in self._dead_runs(connection)],
        )

    def _dead_runs(self, connection) -> list[int]:
        """The live runs whose process has ended (what opening marks interrupted)."""
        _, rows = self.backend.rows(
            connection,
            f"SELECT run_id, host, pid, last_seen FROM runs WHERE state IN ({','.join('?' * len(LIVE_STATES))})",
            LIVE_STATES,
        )
        this_host, now = socket.gethostname(), time.time()
        return [int(run_id) for run_id, host, pid, last_seen in rows if has_died(host, pid, last_seen, this_host, now)]

    # --- writing -------------------------------------------------------------------------------

    def start_run(
        self,
        config,
        variable_names: list[str],
        name: str | None = None,
        policy_names: tuple[str, ...] = (),
        *,
        parent_run_id: int | None = None,
        fork_step: int | None = None,
    ) -> "RunWriter":
        """Record a new run and return the writer that streams its steps.

        `parent_run_id` and `fork_step` (both None, or both set): the run this one was forked
        from and the step of it this one starts after (lineage, as `list_runs()` shows it).
        """
        self._refuse_writing("record a new run")
        if (parent_run_id is None) != (fork_step is None):
            raise ValueError(
                "A forked run names both its parent run and the step it forks at, or neither. "
                f"Received: parent_run_id={parent_run_id!r}, fork_step={fork_step!r}"
            )
        now = time.time()
        config_json = json.dumps(dataclasses.asdict(config))

        def insert(connection) -> int:
            cursor = self._execute(
                connection,
                "INSERT INTO runs (name, task, policy, clip_threshold, learning_rate, batch_size,"
                " seed, config_json, variable_names_json, state, created_at, updated_at, pid,"
                " policy_names_json, parent_run_id, fork_step, host, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
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
                    parent_run_id,
                    fork_step,
                    socket.gethostname(),
                    now,
                ),
            )
            (run_id,) = cursor.fetchone()
            if not name:
                self._execute(
                    connection,
                    "UPDATE runs SET name = ? WHERE run_id = ?",
                    (f"run {run_id}: {config.task} / {config.policy}", run_id),
                )
            return run_id

        # Another process may hold the write lock for longer than a busy timeout (a long
        # transaction, a backup): wait for it with a message, as the writer does, not fail.
        run_id = self.backend.write_transaction("record a new run", insert)
        return RunWriter(self, run_id, busy_seconds=self.writer_busy_seconds)

    def rename_run(self, run_id: int, name: str) -> None:
        """Rename a run (see `validate_run_name`); ValueError for a bad name or a missing run."""
        self._refuse_writing("rename a run")
        name = validate_run_name(name)
        with self.backend.transaction() as connection:
            self._run_row(connection, run_id, "run_id")
            self._execute(connection, "UPDATE runs SET name = ? WHERE run_id = ?", (name, run_id))

    def delete_run(self, run_id: int) -> None:
        """Delete a run and every row of it, in every table.

        Refused (ValueError) for a missing run and for a live one (its state idle, running or
        paused and its process alive): stop it first, or its process would go on recording it.
        """
        self._refuse_writing("delete a run")
        with self.backend.transaction() as connection:
            state, host, pid, last_seen = self._run_row(connection, run_id, "state, host, pid, last_seen")
            if state in LIVE_STATES and not has_died(host, pid, last_seen, socket.gethostname(), time.time()):
                recorder = f"process {pid}" if host in (None, socket.gethostname()) else f"process {pid} on {host}"
                raise ValueError(
                    f"Run {run_id} is live (state {state!r}, recorded by {recorder}): stop it "
                    "first, then delete it."
                )
            delete_rows(self.backend, connection, run_id)

    def _run_row(self, connection, run_id: Any, columns: str) -> tuple:
        """The run's `columns`, or the ValueError every method raises for a missing run."""
        row = None
        if isinstance(run_id, (int, np.integer)) and not isinstance(run_id, (bool, np.bool_)):
            row = self._execute(connection, f"SELECT {columns} FROM runs WHERE run_id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise ValueError(f"No run with run_id={run_id!r} in {self.location!r}")
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
        self._refuse_writing("queue a command")
        command = check_command(kind, value, params, kinds=COMMAND_KINDS)  # ValueError naming it
        value, params = command.value, command.params  # plain numbers, as JSON stores them
        with self.backend.transaction() as connection:
            self._mark_interrupted(connection)  # a run whose process died has ended too
            (state,) = self._run_row(connection, run_id, "state")
            if state not in LIVE_STATES:
                # Nobody would ever apply it: refuse now rather than leave it pending forever.
                raise ValueError(
                    f"Run {run_id} has ended (state {state!r}): commands go only to a live run "
                    f"({', '.join(LIVE_STATES)}). Received: {kind}"
                    + ("" if value is None else f"={value!r}")
                )
            cursor = self._execute(
                connection,
                "INSERT INTO commands (run, kind, value, parameters, created) VALUES (?, ?, ?, ?, ?) RETURNING id",
                (int(run_id), kind, self.backend.encode_value(value), json.dumps(params, allow_nan=False), time.time()),
            )
            (command_id,) = cursor.fetchone()
            self.backend.notify_command(connection, int(run_id))
            return command_id

    def wait_for_commands(self, run_id: int, timeout: float, stop: threading.Event) -> None:
        """Return when a command for `run_id` may have arrived, `stop` is set, or after
        `timeout` seconds: a server database wakes the reader as the command commits
        (LISTEN/NOTIFY); a file is polled."""
        self.backend.wait_for_command(int(run_id), timeout, stop)

    def pending_commands(self, run_id: int, after_id: int = 0) -> list[dict[str, Any]]:
        """Commands for `run_id` with id > `after_id` that are not yet applied nor refused."""
        with self.backend.connection() as connection:
            _, rows = self.backend.rows(
                connection,
                "SELECT id, kind, value, parameters, created FROM commands WHERE run = ? AND id > ?"
                " AND applied_time IS NULL AND error IS NULL ORDER BY id",
                (run_id, after_id),
            )
        return [
            {"id": id_, "kind": kind, "value": self.backend.decode_value(value),
             "parameters": json.loads(parameters), "created": created}
            for id_, kind, value, parameters, created in rows
        ]  # fmt: skip

    def acknowledge_commands(self, acknowledgements: list[tuple]) -> None:
        """Record (id, applied_step, applied_time, error) for each applied or refused command."""
        self._refuse_writing("acknowledge commands")
        with self.backend.connection() as connection:
            self.backend.execute_many(
                connection,
                "UPDATE commands SET applied_step = ?, applied_time = ?, error = ? WHERE id = ?",
                [(step, applied_time, error, id_) for id_, step, applied_time, error in acknowledgements],
            )

    def command(self, command_id: int) -> dict[str, Any]:
        """One command's row (COMMAND_COLUMNS), e.g. to wait for its acknowledgement."""
        command = self._command_where("id = ?", command_id)
        if command is None:
            raise ValueError(f"No command with id={command_id!r} in {self.location!r}")
        return command

    def last_command(self, run_id: int) -> dict[str, Any] | None:
        """Run `run_id`'s latest command (as `command` gives it), whoever sent it; None if none.
        One query: the attached page asks on every refresh."""
        return self._command_where("run = ? ORDER BY id DESC LIMIT 1", run_id)

    def _command_where(self, condition: str, value: Any) -> dict[str, Any] | None:
        with self.backend.connection() as connection:
            row = self._execute(
                connection, f"SELECT {', '.join(COMMAND_COLUMNS)} FROM commands WHERE {condition}", (value,)
            ).fetchone()
        if row is None:
            return None
        command = dict(zip(COMMAND_COLUMNS, row))
        command["parameters"] = json.loads(command["parameters"])
        command["value"] = self.backend.decode_value(command["value"])
        return command

    def commands(self, run_id: int) -> pd.DataFrame:
        frame = self._frame(
            f"SELECT {', '.join(COMMAND_COLUMNS)} FROM commands WHERE run = ? ORDER BY id", (run_id,)
        )
        frame["value"] = frame["value"].map(self.backend.decode_value)
        return frame

    # --- reading -------------------------------------------------------------------------------

    def _frame(self, statement: str, parameters=(), connection=None) -> pd.DataFrame:
        """A query's rows as a DataFrame (typed as `pandas.read_sql_query` types them)."""
        if connection is None:
            with self.backend.connection() as connection:
                return self._frame(statement, parameters, connection)
        columns, rows = self.backend.rows(connection, statement, parameters)
        return pd.DataFrame.from_records(rows, columns=columns, coerce_float=True)

    def list_runs(self) -> pd.DataFrame:
        runs = self._frame(f"SELECT {', '.join(RUN_LIST_COLUMNS)} FROM runs ORDER BY run_id DESC")
        if self.read_only:  # what opening marks in a database it may write, shown without writing
            with self.backend.connection() as connection:
                dead = runs.run_id.isin(self._dead_runs(connection))
            runs.loc[dead, "state"], runs.loc[dead, "error"] = "interrupted", INTERRUPTED_ERROR
        return runs

    def run_info(self, run_id: int) -> dict[str, Any]:
        with self.backend.connection() as connection:
            row = self._run_row(connection, run_id, "*")
            names = self.backend.table_columns(connection)["runs"]
        info = dict(zip(names, row))
        info.pop("row_order", None)
        info["config"] = json.loads(info.pop("config_json"))
        info["variable_names"] = json.loads(info.pop("variable_names_json"))
        info["policy_names"] = json.loads(info.pop("policy_names_json"))
        if self.read_only and info["state"] in LIVE_STATES:  # as list_runs shows it
            with self.backend.connection() as connection:
                if run_id in self._dead_runs(connection):
                    info["state"], info["error"] = "interrupted", INTERRUPTED_ERROR
        return info

    def _columns(self, run_id: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        with self.backend.connection() as connection:
            _, rows = self.backend.rows(
                connection,
                f"SELECT step_count, {', '.join(names)} FROM step_chunks WHERE run_id = ? ORDER BY first_step",
                (run_id,),
            )
        return {
            name: np.concatenate(
                [np.frombuffer(row[1 + i], dtype) for row in rows] or [np.zeros(0, dtype)]
            )
            for i, (name, dtype) in enumerate((n, STEP_DTYPES.get(n, "<f4")) for n in names)
        }

    def metrics(self, run_id: int) -> pd.DataFrame:
        """Every recorded step of the run, with the columns of `Trainer.metrics()`."""
        with self.backend.connection() as connection:
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
        with self.backend.connection() as connection:
            self._run_row(connection, run_id, "run_id")
            return self._frame(
                f"SELECT {columns} FROM {table} WHERE run_id = ? ORDER BY {self.backend.INSERTION_ORDER}",
                (run_id,),
                connection,
            )

    def layer_norms(self, run_id: int) -> pd.DataFrame:
        names = self.run_info(run_id)["variable_names"]
        columns = self._columns(run_id, ("step", "layer_norms"))
        frame = pd.DataFrame(columns["layer_norms"].reshape(-1, len(names)), columns=names)
        frame.insert(0, "step", columns["step"].astype(np.int64))
        return frame
