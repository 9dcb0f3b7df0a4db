"""Run history in an embedded SQLite database (WAL mode).

Every run's config, per-step metrics, per-layer norms, events and final state are written by a
writer thread of the run's own, in one transaction at least every 0.5 s (`FLUSH_SECONDS`) (never one per step),
so a SIGKILL loses at most the last second. A run whose process died while it was running shows
as "interrupted" the next time the database is opened.

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

import dataclasses
import json
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_PATH = Path("runs") / "clipwatch.db"
ENVIRONMENT_VARIABLE = "CLIPWATCH_DB"
# The columns of `list_runs()`, in order (also the empty table shown without a database).
RUN_LIST_COLUMNS = (
    "run_id", "name", "task", "policy", "clip_threshold", "learning_rate", "steps",
    "final_loss", "clip_rate", "state", "error", "created_at",
)  # fmt: skip
FLUSH_SECONDS = 0.5  # at most this long between commits while steps arrive (and between retries)
# The writer waits this long for another process's write lock before it reports the wait and
# retries (the page's own reads and renames wait up to 10 s).
WRITER_BUSY_SECONDS = 1.0
# Steps a writer holds in memory while the database cannot be written: about 90 MB for `seed`.
MAX_PENDING_STEPS = 2_000_000
NO_PAGE_CAP = 4_294_967_294  # SQLite's largest max_page_count
LIVE_STATES = ("idle", "running", "paused")

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
            with self._connect() as connection:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                self._mark_interrupted(connection)
        except (OSError, ValueError, sqlite3.Error) as error:  # ValueError: a NUL in the path
            raise DatabaseError(
                f"Cannot use the run database at {str(self.path)!r}: {error}. "
                "Pick another path (CLI --db, the CLIPWATCH_DB variable, or the UI's settings)."
            ) from error

    def _connect(self, busy_seconds: float = 10.0) -> sqlite3.Connection:
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
        with self._connect() as connection:
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
        return RunWriter(self, run_id, busy_seconds=self.writer_busy_seconds)

    def rename_run(self, run_id: int, name: str) -> None:
        if not is_storable_text(name) or not name.strip():
            raise ValueError(f"A run's name must be non-empty text. Received: name={name!r}")
        with self._connect() as connection:
            connection.execute("UPDATE runs SET name = ? WHERE run_id = ?", (name.strip(), run_id))

    def delete_run(self, run_id: int) -> None:
        with self._connect() as connection:
            connection.execute("BEGIN")
            for table in ("step_chunks", "events", "evaluations", "runs"):
                connection.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            connection.execute("DELETE FROM commands WHERE run = ?", (run_id,))
            connection.execute("COMMIT")

    # --- the command channel (another process applies what is sent here) ----------------------

    def send_command(self, run_id: int, kind: str, value: Any = None, **params: Any) -> int:
        """Queue a command for the process recording run `run_id`; return the command's id.

        The recording process polls this table, applies commands in order between steps and
        acknowledges each one (`applied_step`: the first step that uses it, `applied_time`), or
        fills `error` and changes nothing (a bad value). Kinds: COMMAND_KINDS.
        """
        if kind not in COMMAND_KINDS:
            raise ValueError(
                f"Unknown command kind {kind!r}. Allowed: {', '.join(COMMAND_KINDS)}"
            )
        if isinstance(value, (bool, np.bool_)) or not (
            value is None or isinstance(value, (str, int, float, np.integer, np.floating))
        ):
            raise ValueError(
                f"A command's value must be a number, a text or None. Received: value={value!r}"
            )
        value = value.item() if isinstance(value, np.generic) else value
        with self._connect() as connection:
            if connection.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ValueError(f"No run with run_id={run_id!r} in {str(self.path)!r}")
            cursor = connection.execute(
                "INSERT INTO commands (run, kind, value, parameters, created) VALUES (?, ?, ?, ?, ?)",
                (run_id, kind, value, json.dumps(params), time.time()),
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
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            row = connection.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"No run with run_id={run_id!r} in {str(self.path)!r}")
        info = dict(row)
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
        with self._connect() as connection:
            row = connection.execute(
                "SELECT policy_names_json FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        policy_names = np.asarray(json.loads(row[0]) if row else [], dtype=object)
        columns = self._columns(run_id, STEP_FIELDS)
        frame = pd.DataFrame(
            {name: columns[name].astype(np.dtype(STEP_DTYPES[name]).newbyteorder("=")) for name in STEP_FIELDS}
        )
        frame["policy"] = policy_names[columns["policy"].astype(np.int64)] if len(frame) else ""
        frame["policy"] = frame["policy"].astype(str)
        return frame

    def events(self, run_id: int) -> pd.DataFrame:
        with self._connect() as connection:
            return pd.read_sql_query(
                "SELECT step, time_s, kind, old, new FROM events WHERE run_id = ? ORDER BY rowid",
                connection,
                params=(run_id,),
            )

    def evaluations(self, run_id: int) -> pd.DataFrame:
        """The run's validation results: `step, time_s, name, value`."""
        with self._connect() as connection:
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

    def finish(self, state: str, error: str | None = None, timeout: float = 5.0) -> None:
        """Write what is queued, record the final state, and end the writer thread."""
        self._queue.put(("finish", (state, error)))
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
        connection.execute("BEGIN IMMEDIATE")  # take the write lock first: waits busy_seconds
        try:
            self._write(connection, chunks, event_rows, finished)
            evaluation_rows = [payload for kind, payload in pending if kind == "evaluation"]
            connection.executemany(
                "INSERT INTO evaluations (run_id, step, time_s, name, value) VALUES (?, ?, ?, ?, ?)",
                evaluation_rows,
            )
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

    def _write(self, connection, chunks, event_rows, finished) -> None:
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
        updates = {"updated_at": time.time()}
        if last is not None:
            steps = self._status.steps_written + int(sum(len(c["step"]) for c in chunks))
            clips = self._clips_written + int(sum(int(c["clipped"].sum()) for c in chunks))
            updates["steps"] = int(last["step"][-1])
            updates["final_loss"] = float(last["loss"][-1])
            updates["clip_rate"] = clips / max(steps, 1)
        if finished is not None:
            updates["state"], updates["error"] = finished
        assignments = ", ".join(f"{key} = ?" for key in updates)
        connection.execute(
            f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), self.run_id)
        )
