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
FLUSH_SECONDS = 0.5  # at most this long between commits while steps arrive
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
    """One SQLite file of runs. Each thread that uses it gets its own connection."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                self._mark_interrupted(connection)
        except (OSError, sqlite3.Error) as error:
            raise DatabaseError(
                f"Cannot use the run database at {str(self.path)!r}: {error}. "
                "Pick another path (CLI --db, the CLIPWATCH_DB variable, or the UI's settings)."
            ) from error

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        connection.execute("PRAGMA busy_timeout=10000")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
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
        return RunWriter(self, run_id)

    def rename_run(self, run_id: int, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
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


class RunWriter:
    """Streams one run's chunks and events to the database from a thread of its own.

    `append(rows)` and `event(...)` only enqueue (the training thread never waits on disk);
    the writer commits what has arrived at least every FLUSH_SECONDS. A write error is kept in
    `error` and writing stops; training goes on in memory.
    """

    def __init__(self, database: RunDatabase, run_id: int):
        self.database, self.run_id = database, run_id
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._steps_written = 0
        self._clips_written = 0
        self._thread = threading.Thread(target=self._run, name="clipwatch-writer", daemon=True)
        self._thread.start()

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

    def _run(self) -> None:
        try:
            connection = self.database._connect()
        except sqlite3.Error as error:
            self.error = f"Cannot write the run database {str(self.database.path)!r}: {error}"
            return
        pending: list = []
        last_commit = time.monotonic()
        finished = None
        while finished is None:
            try:
                item = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                item = None
            if item is not None:
                if item[0] == "finish":
                    finished = item[1]
                else:
                    pending.append(item)
            due = time.monotonic() - last_commit >= FLUSH_SECONDS
            if finished is not None or (pending and due):
                if self.error is None:
                    try:
                        self._commit(connection, pending, finished)
                    except sqlite3.Error as error:
                        self.error = (
                            f"Writing the run database {str(self.database.path)!r} failed: "
                            f"{error}. The run goes on in memory only."
                        )
                pending, last_commit = [], time.monotonic()
        connection.close()

    def _commit(self, connection, pending, finished) -> None:
        chunks = [payload for kind, payload in pending if kind == "rows"]
        event_rows = [payload for kind, payload in pending if kind == "event"]
        connection.execute("BEGIN")
        try:
            self._write(connection, chunks, event_rows, finished)
            evaluation_rows = [payload for kind, payload in pending if kind == "evaluation"]
            connection.executemany(
                "INSERT INTO evaluations (run_id, step, time_s, name, value) VALUES (?, ?, ?, ?, ?)",
                evaluation_rows,
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

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
            self._steps_written += int(sum(len(c["step"]) for c in chunks))
            self._clips_written += int(sum(int(c["clipped"].sum()) for c in chunks))
            updates["steps"] = int(last["step"][-1])
            updates["final_loss"] = float(last["loss"][-1])
            updates["clip_rate"] = self._clips_written / max(self._steps_written, 1)
        if finished is not None:
            updates["state"], updates["error"] = finished
        assignments = ", ".join(f"{key} = ?" for key in updates)
        connection.execute(
            f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), self.run_id)
        )
