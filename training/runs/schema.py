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
    "final_loss", "clip_rate", "state", "error", "created_at", "host", "parent_run_id", "fork_step",
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
# The schema's version (SQLite: PRAGMA user_version; PostgreSQL: the clipwatch_schema table);
# 0 is an unstamped SQLite file made before version 1 (the same tables, recognised by them).
# Version 2 added the lineage, host and heartbeat columns of runs (ADDED_COLUMNS).
SCHEMA_VERSION = 2
# A live run's writer writes its heartbeat (runs.last_seen) at least this often, even while
# nothing is recorded (paused); a run on another host whose heartbeat is older than
# HEARTBEAT_LAPSED_SECONDS has lost its process (a PID means nothing on another host).
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_LAPSED_SECONDS = 60.0
# How long `start_run` (and stamping a file) waits for another process's write lock, retrying
# every `writer_busy_seconds` with a logged message, before it gives up.
START_WAIT_SECONDS = 600.0
REPORT_WAIT_EVERY_SECONDS = 10.0

# The tables, written once for both databases: each backend fills in its own column types
# (`SqliteStore.TYPES`, `PostgresStore.TYPES`). `{row_order}` is PostgreSQL's insertion order
# column (SQLite has its rowid).
SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS runs (
    run_id {identity},
    name TEXT NOT NULL,
    task TEXT NOT NULL,
    policy TEXT NOT NULL,
    clip_threshold {real} NOT NULL,
    learning_rate {real} NOT NULL,
    batch_size {integer} NOT NULL,
    seed {integer} NOT NULL,
    config_json TEXT NOT NULL,
    variable_names_json TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    steps {integer} NOT NULL DEFAULT 0,
    final_loss {real},
    clip_rate {real},
    pid {integer} NOT NULL,
    policy_names_json TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS step_chunks (
    run_id {integer} NOT NULL,
    first_step {integer} NOT NULL,
    step_count {integer} NOT NULL,
    step {blob}, time_s {blob}, loss {blob}, grad_norm {blob}, clipped_grad_norm {blob},
    clip_threshold {blob}, clipped {blob}, finite {blob}, learning_rate {blob}, policy {blob},
    layer_norms {blob},
    PRIMARY KEY (run_id, first_step)
){without_rowid};
CREATE TABLE IF NOT EXISTS events (
    {row_order}run_id {integer} NOT NULL,
    step {integer} NOT NULL,
    time_s {real} NOT NULL,
    kind TEXT NOT NULL,
    old TEXT,
    new TEXT
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, step);
CREATE TABLE IF NOT EXISTS commands (
    id {identity},
    run {integer} NOT NULL,
    kind TEXT NOT NULL,
    value {any},
    parameters TEXT NOT NULL DEFAULT '{{}}',
    created {real} NOT NULL,
    applied_step {integer},
    applied_time {real},
    error TEXT
);
CREATE INDEX IF NOT EXISTS commands_by_run ON commands (run, id);
CREATE TABLE IF NOT EXISTS evaluations (
    {row_order}run_id {integer} NOT NULL,
    step {integer} NOT NULL,
    time_s {real} NOT NULL,
    name TEXT NOT NULL,
    value {real}
);
CREATE INDEX IF NOT EXISTS evaluations_by_run ON evaluations (run_id, step);
"""
# Columns added since version 1, by the version that added them: (table, column, type token).
# Opening an older database adds the ones it lacks (nullable: old rows read as None).
ADDED_COLUMNS = {
    2: (
        ("runs", "parent_run_id", "integer"),  # lineage: the run this one was forked from
        ("runs", "fork_step", "integer"),  # ...and the step of it this one starts after
        ("runs", "host", "text"),  # the machine recording it (its pid means something only there)
        ("runs", "last_seen", "real"),  # the writer's heartbeat (time.time())
    ),
}


def render_schema(types: dict[str, str]) -> tuple[str, ...]:
    """The statements that create the current schema in a database whose types are `types`."""
    statements = [part.strip() for part in SCHEMA_TEMPLATE.format(**types).split(";") if part.strip()]
    for version in sorted(ADDED_COLUMNS):
        statements += [added_column_statement(types, *added) for added in ADDED_COLUMNS[version]]
    return tuple(statements)


def added_column_statement(types: dict[str, str], table: str, column: str, type_token: str) -> str:
    return f"ALTER TABLE {table} ADD COLUMN {column} {types[type_token]}"


SQLITE_TYPES = {
    "identity": "INTEGER PRIMARY KEY AUTOINCREMENT", "integer": "INTEGER", "real": "REAL",
    "blob": "BLOB", "text": "TEXT", "any": "", "without_rowid": " WITHOUT ROWID", "row_order": "",
}  # fmt: skip
SCHEMA_STATEMENTS = render_schema(SQLITE_TYPES)
SCHEMA = ";\n".join(SCHEMA_STATEMENTS) + ";\n"  # SQLite's, for `executescript`
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


def sqlite_table_columns(statements) -> dict[str, tuple[str, ...]]:
    """The tables and columns that `statements` make in an empty SQLite database."""
    with contextlib.closing(sqlite3.connect(":memory:")) as memory:
        for statement in statements:
            memory.execute(statement)
        return table_columns(memory)


TABLE_COLUMNS = sqlite_table_columns(SCHEMA_STATEMENTS)  # what a Clipwatch file holds (and nothing else)
# What files made before the stamp hold (version 1's tables): recognised as Clipwatch's too.
FIRST_TABLE_COLUMNS = sqlite_table_columns(
    part for part in SCHEMA_TEMPLATE.format(**SQLITE_TYPES).split(";") if part.strip()
)

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


def delete_rows(backend, connection, run_id: int) -> None:
    """Delete every row of run `run_id`, in every table (inside the caller's transaction)."""
    for table, column in RUN_TABLES:
        backend.execute(connection, f"DELETE FROM {table} WHERE {column} = ?", (run_id,))


def default_path() -> Path | str:
    """$CLIPWATCH_DB (a file's path, or a PostgreSQL URL: then the URL's text), else runs/clipwatch.db."""
    from .locations import is_server_location  # a leaf module: no cycle

    setting = os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PATH
    return setting if is_server_location(setting) else Path(setting)


def has_died(host: str | None, pid: int, last_seen: float | None, this_host: str, now: float) -> bool:
    """Whether a live run's process has ended: on this host (or a run recorded before hosts
    were), its PID is gone; on another, its heartbeat lapsed (HEARTBEAT_LAPSED_SECONDS)."""
    if host is None or host == this_host:
        return not pid_alive(pid)
    return last_seen is None or now - last_seen > HEARTBEAT_LAPSED_SECONDS


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


