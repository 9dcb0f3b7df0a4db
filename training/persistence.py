"""Run history in an embedded SQLite database (WAL mode).

Every run's config, per-step metrics, per-layer norms, events and final state are written by a
writer thread of the run's own, in one transaction at least once a second (never one per step),
so a SIGKILL loses at most the last second. A run whose process died while it was running shows
as "interrupted" the next time the database is opened.

The schema (see also README.md):

    runs(run_id INTEGER PRIMARY KEY, name, task, policy, clip_threshold, learning_rate,
         batch_size, seed, config_json, variable_names_json, state, error, created_at,
         updated_at, steps, final_loss, clip_rate, pid)
    steps(run_id, step, time_s, loss, grad_norm, clipped_grad_norm, clip_threshold, clipped,
          finite, learning_rate, policy, layer_norms BLOB)    PRIMARY KEY (run_id, step)
        layer_norms: float32 array, one pre-clip norm per trainable variable, in the order of
        runs.variable_names_json (numpy.frombuffer(blob, numpy.float32))
    events(run_id, step, time_s, kind, old, new)
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
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time_s REAL, loss REAL, grad_norm REAL, clipped_grad_norm REAL, clip_threshold REAL,
    clipped INTEGER, finite INTEGER, learning_rate REAL, policy TEXT, layer_norms BLOB,
    PRIMARY KEY (run_id, step)
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
"""
STEP_FIELDS = (
    "step", "time_s", "loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped",
    "finite", "learning_rate", "policy",
)  # fmt: skip


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

    def start_run(self, config, variable_names: list[str], name: str | None = None) -> "RunWriter":
        """Record a new run and return the writer that streams its steps."""
        now = time.time()
        config_json = json.dumps(dataclasses.asdict(config))
        with self._connect() as connection:
            cursor = connection.execute(
                "INSERT INTO runs (name, task, policy, clip_threshold, learning_rate, batch_size,"
                " seed, config_json, variable_names_json, state, created_at, updated_at, pid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
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
            for table in ("steps", "events", "runs"):
                connection.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            connection.execute("COMMIT")

    # --- reading -------------------------------------------------------------------------------

    def list_runs(self) -> pd.DataFrame:
        with self._connect() as connection:
            return pd.read_sql_query(
                "SELECT run_id, name, task, policy, clip_threshold, learning_rate, steps,"
                " final_loss, clip_rate, state, error, created_at FROM runs ORDER BY run_id DESC",
                connection,
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
        return info

    def metrics(self, run_id: int) -> pd.DataFrame:
        with self._connect() as connection:
            frame = pd.read_sql_query(
                f"SELECT {', '.join(STEP_FIELDS)} FROM steps WHERE run_id = ? ORDER BY step",
                connection,
                params=(run_id,),
            )
        for name in ("loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "learning_rate"):
            frame[name] = frame[name].astype(np.float32)
        frame["clipped"] = frame["clipped"].astype(bool)
        frame["finite"] = frame["finite"].astype(bool)
        return frame

    def events(self, run_id: int) -> pd.DataFrame:
        with self._connect() as connection:
            return pd.read_sql_query(
                "SELECT step, time_s, kind, old, new FROM events WHERE run_id = ? ORDER BY rowid",
                connection,
                params=(run_id,),
            )

    def layer_norms(self, run_id: int) -> pd.DataFrame:
        names = self.run_info(run_id)["variable_names"]
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT step, layer_norms FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
            ).fetchall()
        values = (
            np.frombuffer(b"".join(blob for _, blob in rows), np.float32).reshape(len(rows), len(names))
            if rows
            else np.zeros((0, len(names)), np.float32)
        )
        frame = pd.DataFrame(values, columns=names)
        frame.insert(0, "step", np.array([step for step, _ in rows], np.int64))
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

    def append(self, rows: dict[str, np.ndarray], policy_names: tuple[str, ...]) -> None:
        self._queue.put(("rows", rows, policy_names))

    def event(self, step: int, time_s: float, kind: str, old: str, new: str) -> None:
        self._queue.put(("event", (self.run_id, step, time_s, kind, old, new), None))

    def finish(self, state: str, error: str | None = None, timeout: float = 5.0) -> None:
        """Write what is queued, record the final state, and end the writer thread."""
        self._queue.put(("finish", (state, error), None))
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
        step_rows, event_rows = [], []
        last = None
        for kind, payload, policy_names in pending:
            if kind == "event":
                event_rows.append(payload)
                continue
            rows = payload
            names = np.asarray(policy_names)[rows["policy"]]
            columns = [rows[name].tolist() for name in STEP_FIELDS[:-1]]
            layer_norms = map(bytes, np.ascontiguousarray(rows["layer_norms"], np.float32))
            step_rows.extend(zip([self.run_id] * len(names), *columns, names.tolist(), layer_norms))
            last = rows
        connection.execute("BEGIN")
        try:
            self._write(connection, step_rows, event_rows, last, finished)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _write(self, connection, step_rows, event_rows, last, finished) -> None:
        if step_rows:
            connection.executemany(
                f"INSERT INTO steps (run_id, {', '.join(STEP_FIELDS)}, layer_norms) "
                f"VALUES ({', '.join('?' * (len(STEP_FIELDS) + 2))})",
                step_rows,
            )
        if event_rows:
            connection.executemany(
                "INSERT INTO events (run_id, step, time_s, kind, old, new) VALUES (?, ?, ?, ?, ?, ?)",
                event_rows,
            )
        updates = {"updated_at": time.time()}
        if last is not None:
            self._steps_written += len(step_rows)
            self._clips_written += sum(row[7] for row in step_rows)  # row[7] is `clipped`
            updates["steps"] = int(last["step"][-1])
            updates["final_loss"] = float(last["loss"][-1])
            updates["clip_rate"] = self._clips_written / max(self._steps_written, 1)
        if finished is not None:
            updates["state"], updates["error"] = finished
        assignments = ", ".join(f"{key} = ?" for key in updates)
        connection.execute(
            f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), self.run_id)
        )
