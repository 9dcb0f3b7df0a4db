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
import queue
import sqlite3
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from training.policies import (
    validate_clip_threshold,
    validate_policy_name,
    validate_policy_params,
    validate_positive,
)

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("runs") / "clipwatch.db"
ENVIRONMENT_VARIABLE = "CLIPWATCH_DB"
# The columns of `list_runs()`, in order (also the empty table shown without a database).
RUN_LIST_COLUMNS = (
    "run_id", "name", "task", "policy", "clip_threshold", "learning_rate", "steps",
    "final_loss", "clip_rate", "state", "error", "created_at",
)  # fmt: skip
BUSY_SECONDS = 10.0  # how long a read, rename or delete waits for another process's write lock
FLUSH_SECONDS = 0.5  # at most this long between commits while steps arrive (and between retries)
# The writer waits this long for another process's write lock before it reports the wait and
# retries (the page's own reads and renames wait up to 10 s).
WRITER_BUSY_SECONDS = 1.0
# Steps a writer holds in memory while the database cannot be written: about 90 MB for `seed`.
MAX_PENDING_STEPS = 2_000_000
NO_PAGE_CAP = 4_294_967_294  # SQLite's largest max_page_count
LIVE_STATES = ("idle", "running", "paused")
# Whose file this is, in SQLite's header (PRAGMA application_id): the bytes "CLPW".
APPLICATION_ID = int.from_bytes(b"CLPW", "big")  # 0x434C5057
# PRAGMA user_version of the schema below; 0 is an unstamped file made before version 1 (the
# same tables and columns, recognised by them).
SCHEMA_VERSION = 1
# How long `start_run` (and stamping a file) waits for another process's write lock, retrying
# every `writer_busy_seconds` with a logged message, before it gives up.
START_WAIT_SECONDS = 600.0
REPORT_WAIT_EVERY_SECONDS = 10.0
MAX_RUN_NAME_LENGTH = 200  # characters, after stripping surrounding spaces
# Reorder how the text around them displays (a name could show reversed in History).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHOWN_NAME_LENGTH = 10_000  # a refused name is shown whole up to this many characters, then cut

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    task TEXT NOT NULL,
    policy TEXT NOT NULL,
    clip_threshold REAL NOT NULL,
    learning_rate REAL NOT NULL,
    batch_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    variable_names_json TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    steps INTEGER NOT NULL DEFAULT 0,
    final_loss REAL,
    clip_rate REAL,
    pid INTEGER NOT NULL,
    policy_names_json TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS step_chunks (
    run_id INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    step_count INTEGER NOT NULL,
    step BLOB, time_s BLOB, loss BLOB, grad_norm BLOB, clipped_grad_norm BLOB,
    clip_threshold BLOB, clipped BLOB, finite BLOB, learning_rate BLOB, policy BLOB,
    layer_norms BLOB,
    PRIMARY KEY (run_id, first_step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time_s REAL NOT NULL,
    kind TEXT NOT NULL,
    old TEXT,
    new TEXT
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, step);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value,
    parameters TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    applied_step INTEGER,
    applied_time REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS commands_by_run ON commands (run, id);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time_s REAL NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS evaluations_by_run ON evaluations (run_id, step);
"""
_SCHEMA_STATEMENTS = tuple(part.strip() for part in _SCHEMA.split(";") if part.strip())
# Every table holding a run's rows, and its column naming the run (a deleted run leaves none).
RUN_TABLES = (
    ("step_chunks", "run_id"), ("events", "run_id"), ("evaluations", "run_id"),
    ("commands", "run"), ("runs", "run_id"),
)  # fmt: skip
_SQLITE_HEADER = b"SQLite format 3\x00"


def _table_columns(connection: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Each table's column names, in order (SQLite's own tables left out)."""
    names = connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {
        name: tuple(column for (column,) in connection.execute("SELECT name FROM pragma_table_info(?)", (name,)))
        for (name,) in names
    }


with contextlib.closing(sqlite3.connect(":memory:")) as _memory:
    _memory.executescript(_SCHEMA)
    _TABLE_COLUMNS = _table_columns(_memory)  # what a Clipwatch file holds (and nothing else)

# What `send_command` accepts; the process that applies a command checks its value (it knows
# the run's state, e.g. which policy parameters can change without a rebuild).
COMMAND_KINDS = ("clip_threshold", "policy", "learning_rate", "pause", "resume", "stop", "spike")
COMMAND_COLUMNS = (
    "id", "run", "kind", "value", "parameters", "created", "applied_step", "applied_time", "error",
)  # fmt: skip
STEP_DTYPES = {
    "step": "<i8", "time_s": "<f8", "loss": "<f4", "grad_norm": "<f4",
    "clipped_grad_norm": "<f4", "clip_threshold": "<f4", "clipped": "|b1", "finite": "|b1",
    "learning_rate": "<f4", "policy": "|i1",
}  # fmt: skip
STEP_FIELDS = tuple(STEP_DTYPES)
# Checked where a command is sent (the same validators as the trainer's own controls), so a bad
# value is refused at once, naming it, and nothing is queued.
_COMMAND_VALUE_CHECKS = {
    "clip_threshold": validate_clip_threshold,
    "learning_rate": lambda value: validate_positive("learning_rate", value),
    "spike": lambda value: validate_positive("factor", value),
    "policy": validate_policy_name,
}


class DatabaseError(RuntimeError):
    """The run database cannot be opened or written; the message says where and why."""


def is_storable_text(value: Any) -> bool:
    """Whether SQLite can store `value` as TEXT: a str that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: Any) -> str:
    """`value`'s repr, cut when very long (a million-character name makes no message)."""
    if not isinstance(value, str) or len(value) <= _SHOWN_NAME_LENGTH:
        return repr(value)
    return f"{repr(value)[:200]}... ({len(value):,} characters)"


def validate_run_name(value: Any) -> str:
    """A run's name, stripped of surrounding spaces; ValueError naming the value otherwise.

    Allowed: text of 1 to MAX_RUN_NAME_LENGTH characters (after stripping) that SQLite can
    store, with no control characters (NUL, newlines, tabs...), line or paragraph separators,
    or bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069: they reverse how a
    name displays).
    """
    allowed = (
        f"non-empty text of at most {MAX_RUN_NAME_LENGTH} characters, without control characters "
        "(NUL, newlines, tabs), line separators or bidirectional overrides (U+202A-U+202E, "
        "U+2066-U+2069)"
    )
    if not is_storable_text(value) or not value.strip() or len(value.strip()) > MAX_RUN_NAME_LENGTH:
        raise ValueError(f"A run's name must be {allowed}. Received: name={_shown(value)}")
    bad = next(
        (c for c in value if c in BIDI_CONTROLS or c in "\u2028\u2029" or unicodedata.category(c) == "Cc"),
        None,
    )
    if bad is not None:
        raise ValueError(
            f"A run's name must be {allowed}; it holds {bad!r}. Received: name={_shown(value)}"
        )
    return value.strip()


def _delete_rows(connection: sqlite3.Connection, run_id: int) -> None:
    """Delete every row of run `run_id`, in every table (inside the caller's transaction)."""
    for table, column in RUN_TABLES:
        connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))


def default_path() -> Path:
    return Path(os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PATH)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return  # a new database
        if header and header != _SQLITE_HEADER:
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
        tables = _table_columns(connection)
        theirs = sorted(name for name, columns in tables.items() if _TABLE_COLUMNS.get(name) != columns)
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
        for statement in _SCHEMA_STATEMENTS:
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
        dead = [(run_id,) for run_id, pid in rows if not _pid_alive(pid)]
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
            if state in LIVE_STATES and _pid_alive(pid):
                raise ValueError(
                    f"Run {run_id} is live (state {state!r}, recorded by process {pid}): stop it "
                    "first, then delete it."
                )
            _delete_rows(connection, run_id)

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
        if kind not in COMMAND_KINDS:
            raise ValueError(
                f"Unknown command kind {kind!r}. Allowed: {', '.join(COMMAND_KINDS)}"
            )
        if kind in _COMMAND_VALUE_CHECKS:
            value = _COMMAND_VALUE_CHECKS[kind](value)  # ValueError naming the value as given
        elif value is not None:
            raise ValueError(f"A {kind!r} command takes no value. Received: value={value!r}")
        if kind == "policy":
            checked = validate_policy_params(value, params)
            params = {key: checked[key] for key in params}  # plain numbers, as JSON stores them
        elif params:
            raise ValueError(
                f"A {kind!r} command takes no parameters (only 'policy' does). Received: "
                + ", ".join(f"{key}={param!r}" for key, param in params.items())
            )
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
        with contextlib.closing(self._connect()) as connection:
            self._run_row(connection, run_id, "run_id")
            return pd.read_sql_query(
                "SELECT step, time_s, kind, old, new FROM events WHERE run_id = ? ORDER BY rowid",
                connection,
                params=(run_id,),
            )

    def evaluations(self, run_id: int) -> pd.DataFrame:
        """The run's validation results: `step, time_s, name, value`."""
        with contextlib.closing(self._connect()) as connection:
            self._run_row(connection, run_id, "run_id")
            return pd.read_sql_query(
                "SELECT step, time_s, name, value FROM evaluations WHERE run_id = ? ORDER BY rowid",
                connection,
                params=(run_id,),
            )

    def layer_norms(self, run_id: int) -> pd.DataFrame:
        names = self.run_info(run_id)["variable_names"]
        columns = self._columns(run_id, ("step", "layer_norms"))
        frame = pd.DataFrame(columns["layer_norms"].reshape(-1, len(names)), columns=names)
        frame.insert(0, "step", columns["step"].astype(np.int64))
        return frame


@dataclasses.dataclass(frozen=True)
class WriterStatus:
    """What a `RunWriter` has done, for the page and the tests."""

    state: str  # "writing"; "waiting" (a fault: steps held in memory, retried); "finished"; "failed"
    steps_written: int  # steps committed to the database
    last_step_written: int  # the newest of them (0: none yet)
    pending_steps: int  # steps received and not yet committed (all of them are in memory)
    error: str | None = None  # the current fault (None once writing works again)
    faults: int = 0  # how many faults it has met
    notice: str | None = None  # the last fault it recovered from, and that nothing was lost

    @property
    def warning(self) -> str | None:
        """What the page should show: the current fault, else the last one recovered from."""
        return self.error or self.notice


class _Fault(Exception):
    """The database cannot be written right now; the message says why."""


class _FinalFault(_Fault):
    """The database cannot be written by this writer again."""


class RunWriter:
    """Streams one run's chunks and events to the database from a thread of its own.

    `append(rows)` and `event(...)` only enqueue (the training thread never waits on disk);
    the writer commits what has arrived at least every FLUSH_SECONDS, as one transaction.

    Faults do not lose steps: when a commit cannot be made (the file deleted, made read-only,
    the disk full, another process holding the write lock for more than `busy_seconds`), the
    writer keeps every uncommitted step in memory, says why in `status.error` (and `error`),
    and retries every FLUSH_SECONDS; the first commit that works writes all of them, so the
    recorded steps have no gap. A deleted file is rebuilt at its path from the copy the writer
    still has open (SQLite's backup), so the run's earlier steps and the other runs come back
    too. It gives up, and says so, only when `max_pending_steps` steps wait (memory stays
    bounded), when the file was replaced by another, or when a finishing run still cannot be
    written after `finish_seconds`.
    """

    def __init__(
        self,
        database: RunDatabase,
        run_id: int,
        busy_seconds: float = WRITER_BUSY_SECONDS,
        max_pending_steps: int = MAX_PENDING_STEPS,
        finish_seconds: float = 5.0,
    ):
        self.database, self.run_id = database, run_id
        self.busy_seconds, self.max_pending_steps = busy_seconds, max_pending_steps
        self.finish_seconds = finish_seconds
        self._status = WriterStatus("writing", 0, 0, 0)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._clips_written = 0
        self._connection: sqlite3.Connection | None = None
        self._file_identity: tuple[int, int] | None = None
        self._fault_reason, self._fault_first_step = "", 0
        self._thread = threading.Thread(target=self._run, name="clipwatch-writer", daemon=True)
        self._thread.start()

    @property
    def status(self) -> WriterStatus:
        return self._status

    @property
    def error(self) -> str | None:
        """Why the database cannot be written right now (None while writing works)."""
        return self._status.error

    def append(self, rows: dict[str, np.ndarray]) -> None:
        self._queue.put(("rows", rows))

    def event(self, step: int, time_s: float, kind: str, old: str, new: str) -> None:
        self._queue.put(("event", (self.run_id, step, time_s, kind, old, new)))

    def evaluations(self, rows: list[tuple[int, float, str, float]]) -> None:
        """Queue validation results `(step, time_s, name, value)`."""
        for row in rows:
            self._queue.put(("evaluation", (self.run_id, *row)))

    def finish(
        self, state: str, error: str | None = None, timeout: float = 5.0, discard_if_empty: bool = False
    ) -> None:
        """Write what is queued, record the final state, and end the writer thread.

        `discard_if_empty`: a run that ends "stopped" before its first step is not worth a
        History row; delete it (every row of it) instead.
        """
        self._queue.put(("finish", (state, error, discard_if_empty)))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _set_status(self, **changes: Any) -> None:
        self._status = dataclasses.replace(self._status, **changes)

    def _run(self) -> None:
        pending: list = []  # received and not yet committed, in order
        pending_steps = 0
        last_attempt = time.monotonic()
        finished, finish_deadline = None, None
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                item = None
            if item is not None and item[0] == "finish":
                finished, finish_deadline = item[1], time.monotonic() + self.finish_seconds
            elif item is not None and self._status.state != "failed":
                pending.append(item)
                if item[0] == "rows":
                    pending_steps += len(item[1]["step"])
                    self._set_status(pending_steps=pending_steps)
            due = time.monotonic() - last_attempt >= FLUSH_SECONDS
            if self._status.state == "failed":
                pending, pending_steps = [], 0
                if finished is not None:
                    break
                continue
            if not (finished is not None or (pending and due)):
                continue
            last_attempt = time.monotonic()
            try:
                self._commit(self._writable_connection(), pending, finished)
            except (_Fault, sqlite3.Error, OSError) as error:
                out_of_time = finished is not None and time.monotonic() > finish_deadline
                self._fault(error, pending_steps, out_of_time)
            else:
                pending, pending_steps = [], 0
                notice = self._status.notice
                if self._status.state == "waiting":
                    notice = (
                        f"The run database could not be written from step {self._fault_first_step} "
                        f"({self._fault_reason}); those steps were held in memory and are written "
                        f"now (up to step {self._status.last_step_written}), none lost."
                    )
                self._set_status(
                    state="finished" if finished is not None else "writing",
                    pending_steps=0,
                    error=None,
                    notice=notice,
                )
                if finished is not None:
                    break
        if self._connection is not None:
            self._connection.close()

    def _fault(self, error: Exception, pending_steps: int, out_of_time: bool) -> None:
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            reason = f"another process has held its write lock for over {self.busy_seconds:g} s"
        else:
            reason = str(error)
        if isinstance(error, _FinalFault):
            give_up = f"{reason}."
        elif pending_steps > self.max_pending_steps:
            give_up = f"{reason}, and {pending_steps:,} steps waited (the limit is {self.max_pending_steps:,})."
        elif out_of_time:
            give_up = f"{reason}, still {self.finish_seconds:g} s after the run ended."
        else:
            give_up = None
        path, first = str(self.database.path), self._status.last_step_written + 1
        faults = self._status.faults + (self._status.state != "waiting")  # a new fault, or the same
        self._fault_reason, self._fault_first_step = reason, first
        if give_up is None:
            self._set_status(
                state="waiting",
                faults=faults,
                error=f"Cannot write the run database {path!r}: {reason}. Training goes on; "
                f"steps from {first} on are held in memory and written as soon as it can be "
                "written again.",
            )
        else:
            self._set_status(
                state="failed",
                faults=faults,
                pending_steps=0,
                error=f"Gave up writing the run database {path!r}: {give_up} Steps from {first} "
                "on are not in it; the run goes on in memory only.",
            )
        if not isinstance(error, _Fault) and self._connection is not None:
            # After a failed write, start the next attempt on a fresh connection.
            self._connection.close()
            self._connection = None

    def _writable_connection(self) -> sqlite3.Connection:
        """The writer's connection, after checking the file is still there and writable."""
        path = self.database.path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            stat = None
        identity = None if stat is None else (stat.st_dev, stat.st_ino)
        if self._file_identity is not None and identity != self._file_identity:
            if identity is not None:
                raise _FinalFault("the file was replaced by another one; not mixing two databases")
            self._rebuild_deleted_file()
        elif not os.access(path, os.W_OK):
            raise _Fault("the file is read-only")
        if self._connection is None:
            self._connection = self.database._connect(busy_seconds=self.busy_seconds)
            stat = os.stat(path)
            self._file_identity = (stat.st_dev, stat.st_ino)
        # The cap can change while the run records (room made on the disk): apply it each time.
        self._connection.execute(f"PRAGMA max_page_count={int(self.database.max_pages or NO_PAGE_CAP)}")
        return self._connection

    def _rebuild_deleted_file(self) -> None:
        """Copy the deleted database (still open through our connection) back to its path."""
        path = self.database.path
        if self._connection is None:
            raise _FinalFault("the file was deleted while no copy of it was open")
        path.parent.mkdir(parents=True, exist_ok=True)
        rebuilt = path.with_name(path.name + ".rebuilding")
        copy = sqlite3.connect(rebuilt)
        try:
            self._connection.backup(copy)
        finally:
            copy.close()
        self._connection.close()  # its checkpoint goes to the deleted file, not the new one
        self._connection = None
        os.replace(rebuilt, path)
        self._set_status(
            faults=self._status.faults + 1,
            notice=f"The run database file {str(path)!r} was deleted after step "
            f"{self._status.last_step_written}; it was rebuilt at its path from the copy still "
            "open, with every run and step it held, none lost.",
        )

    def _commit(self, connection, pending, finished) -> None:
        chunks = [payload for kind, payload in pending if kind == "rows"]
        event_rows = [payload for kind, payload in pending if kind == "event"]
        evaluation_rows = [payload for kind, payload in pending if kind == "evaluation"]
        connection.execute("BEGIN IMMEDIATE")  # take the write lock first: waits busy_seconds
        try:
            self._write(connection, chunks, event_rows, evaluation_rows, finished)
        except BaseException:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # e.g. the disk is full: the transaction is gone with the connection
            raise
        connection.execute("COMMIT")
        if chunks:
            self._clips_written += int(sum(int(c["clipped"].sum()) for c in chunks))
            self._set_status(
                steps_written=self._status.steps_written + sum(len(c["step"]) for c in chunks),
                last_step_written=int(chunks[-1]["step"][-1]),
            )

    def _write(self, connection, chunks, event_rows, evaluation_rows, finished) -> None:
        if finished is not None:
            state, error, discard_if_empty = finished
            if discard_if_empty and state == "stopped" and self._status.steps_written == 0 and not chunks:
                _delete_rows(connection, self.run_id)  # stopped before its first step
                return
        last = chunks[-1] if chunks else None
        if chunks:
            # Everything that arrived since the last commit becomes one row of column blobs.
            columns = {name: np.concatenate([c[name] for c in chunks]) for name in STEP_FIELDS}
            layer_norms = np.concatenate([c["layer_norms"] for c in chunks]).astype("<f4")
            blobs = [np.ascontiguousarray(columns[name], STEP_DTYPES[name]).tobytes() for name in STEP_FIELDS]
            connection.execute(
                f"INSERT INTO step_chunks (run_id, first_step, step_count, {', '.join(STEP_FIELDS)},"
                f" layer_norms) VALUES ({', '.join('?' * (len(STEP_FIELDS) + 4))})",
                (self.run_id, int(columns["step"][0]), len(columns["step"]), *blobs, layer_norms.tobytes()),
            )
        if event_rows:
            connection.executemany(
                "INSERT INTO events (run_id, step, time_s, kind, old, new) VALUES (?, ?, ?, ?, ?, ?)",
                event_rows,
            )
        connection.executemany(
            "INSERT INTO evaluations (run_id, step, time_s, name, value) VALUES (?, ?, ?, ?, ?)",
            evaluation_rows,
        )
        updates = {"updated_at": time.time()}
        if last is not None:
            steps = self._status.steps_written + int(sum(len(c["step"]) for c in chunks))
            clips = self._clips_written + int(sum(int(c["clipped"].sum()) for c in chunks))
            updates["steps"] = int(last["step"][-1])
            updates["final_loss"] = float(last["loss"][-1])
            updates["clip_rate"] = clips / max(steps, 1)
        if finished is not None:
            updates["state"], updates["error"] = state, error
        assignments = ", ".join(f"{key} = ?" for key in updates)
        updated = connection.execute(
            f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), self.run_id)
        )
        if updated.rowcount == 0:  # rolled back: its chunks must not outlive the run as orphans
            raise _FinalFault("the run was deleted from the database")
