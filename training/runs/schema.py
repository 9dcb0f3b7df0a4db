"""The run database's schema and the facts every part of it shares (paths, limits, states).

See `training.runs.database` for what each table holds."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path



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

SCHEMA = """
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
SCHEMA_STATEMENTS = tuple(part.strip() for part in SCHEMA.split(";") if part.strip())
# Every table holding a run's rows, and its column naming the run (a deleted run leaves none).
RUN_TABLES = (
    ("step_chunks", "run_id"), ("events", "run_id"), ("evaluations", "run_id"),
    ("commands", "run"), ("runs", "run_id"),
)  # fmt: skip
SQLITE_HEADER = b"SQLite format 3\x00"


def table_columns(connection: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Each table's column names, in order (SQLite's own tables left out)."""
    names = connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {
        name: tuple(column for (column,) in connection.execute("SELECT name FROM pragma_table_info(?)", (name,)))
        for (name,) in names
    }


with contextlib.closing(sqlite3.connect(":memory:")) as _memory:
    _memory.executescript(SCHEMA)
    TABLE_COLUMNS = table_columns(_memory)  # what a Clipwatch file holds (and nothing else)

# What `send_command` accepts; the process that applies a command checks its value (it knows
# the run's state, e.g. which policy parameters can change without a rebuild).
COMMAND_COLUMNS = (
    "id", "run", "kind", "value", "parameters", "created", "applied_step", "applied_time", "error",
)  # fmt: skip
STEP_DTYPES = {
    "step": "<i8", "time_s": "<f8", "loss": "<f4", "grad_norm": "<f4",
    "clipped_grad_norm": "<f4", "clip_threshold": "<f4", "clipped": "|b1", "finite": "|b1",
    "learning_rate": "<f4", "policy": "|i1",
}  # fmt: skip
STEP_FIELDS = tuple(STEP_DTYPES)
class DatabaseError(RuntimeError):
    """The run database cannot be opened or written; the message says where and why."""


def delete_rows(connection: sqlite3.Connection, run_id: int) -> None:
    """Delete every row of run `run_id`, in every table (inside the caller's transaction)."""
    for table, column in RUN_TABLES:
        connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))


def default_path() -> Path:
    return Path(os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PATH)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


