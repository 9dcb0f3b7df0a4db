"""A run's writer: streams its chunks and events to the run database from a thread of its own."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import FinalWriteFault, WriteFault
from .schema import (
    FLUSH_SECONDS, HEARTBEAT_SECONDS, MAX_PENDING_STEPS, STEP_DTYPES, STEP_FIELDS, WRITER_BUSY_SECONDS, delete_rows,
)  # fmt: skip

if TYPE_CHECKING:
    from .database import RunDatabase

log = logging.getLogger("training.persistence")


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


class RunWriter:
    """Streams one run's chunks and events to the database from a thread of its own.

    `append(rows)` and `event(...)` only enqueue (the training thread never waits on disk);
    the writer commits what has arrived at least every FLUSH_SECONDS, as one transaction.

    While nothing arrives (a paused run) it still commits the run's heartbeat
    (`runs.last_seen`) every HEARTBEAT_SECONDS, so another host can tell it is alive.

    Faults do not lose steps: when a commit cannot be made (a SQLite file deleted, made
    read-only, the disk full, another process holding the write lock for more than
    `busy_seconds`; a PostgreSQL server restarting, unreachable, full or read-only), the
    writer keeps every uncommitted step in memory, says why in `status.error` (and `error`),
    and retries every FLUSH_SECONDS on a fresh connection; the first commit that works writes
    all of them, so the recorded steps have no gap. A deleted file is rebuilt at its path from
    the copy the writer still has open (SQLite's backup), so the run's earlier steps and the
    other runs come back too. It gives up, and says so, only when `max_pending_steps` steps wait
    (memory stays bounded), when the file was replaced by another, or when a finishing run
    still cannot be written after `finish_seconds`.
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
        self._link = database.backend.writer_link(busy_seconds)
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
        last_attempt = last_commit = time.monotonic()
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
            heartbeat_due = time.monotonic() - last_commit >= HEARTBEAT_SECONDS
            if not (finished is not None or ((pending or heartbeat_due) and due)):
                continue
            last_attempt = time.monotonic()
            try:
                self._commit(self._writable_connection(), pending, finished)
            except (WriteFault, OSError, *self.database.errors) as error:
                out_of_time = finished is not None and time.monotonic() > finish_deadline
                self._fault(error, pending_steps, out_of_time)
            else:
                pending, pending_steps, last_commit = [], 0, time.monotonic()
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
        self._link.discard()

    def _fault(self, error: Exception, pending_steps: int, out_of_time: bool) -> None:
        reason = str(error) if isinstance(error, (WriteFault, OSError)) else self._link.reason(error)
        if isinstance(error, FinalWriteFault):
            give_up = f"{reason}."
        elif pending_steps > self.max_pending_steps:
            give_up = f"{reason}, and {pending_steps:,} steps waited (the limit is {self.max_pending_steps:,})."
        elif out_of_time:
            give_up = f"{reason}, still {self.finish_seconds:g} s after the run ended."
        else:
            give_up = None
        path, first = self.database.location, self._status.last_step_written + 1
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
        if not isinstance(error, WriteFault):
            self._link.discard()  # after a failed write, start the next attempt on a fresh connection

    def _writable_connection(self):
        """The writer's connection, checked (and repaired: a deleted SQLite file rebuilt)."""
        connection, notice = self._link.connection(self._status.last_step_written)
        if notice is not None:
            self._set_status(faults=self._status.faults + 1, notice=notice)
        return connection

    def _commit(self, connection, pending, finished) -> None:
        chunks = [payload for kind, payload in pending if kind == "rows"]
        event_rows = [payload for kind, payload in pending if kind == "event"]
        evaluation_rows = [payload for kind, payload in pending if kind == "evaluation"]
        backend = self.database.backend
        backend.execute(connection, backend.BEGIN)  # SQLite: the write lock first (waits busy_seconds)
        try:
            self._write(connection, chunks, event_rows, evaluation_rows, finished)
        except BaseException:
            try:
                backend.execute(connection, "ROLLBACK")
            except backend.errors:
                pass  # e.g. the disk is full: the transaction is gone with the connection
            raise
        backend.execute(connection, "COMMIT")
        if chunks:
            self._clips_written += int(sum(int(c["clipped"].sum()) for c in chunks))
            self._set_status(
                steps_written=self._status.steps_written + sum(len(c["step"]) for c in chunks),
                last_step_written=int(chunks[-1]["step"][-1]),
            )

    def _write(self, connection, chunks, event_rows, evaluation_rows, finished) -> None:
        backend = self.database.backend
        if finished is not None:
            state, error, discard_if_empty = finished
            if discard_if_empty and state == "stopped" and self._status.steps_written == 0 and not chunks:
                delete_rows(backend, connection, self.run_id)  # stopped before its first step
                return
        last = chunks[-1] if chunks else None
        if chunks:
            # Everything that arrived since the last commit becomes one row of column blobs.
            columns = {name: np.concatenate([c[name] for c in chunks]) for name in STEP_FIELDS}
            layer_norms = np.concatenate([c["layer_norms"] for c in chunks]).astype("<f4")
            blobs = [np.ascontiguousarray(columns[name], STEP_DTYPES[name]).tobytes() for name in STEP_FIELDS]
            backend.execute(
                connection,
                f"INSERT INTO step_chunks (run_id, first_step, step_count, {', '.join(STEP_FIELDS)},"
                f" layer_norms) VALUES ({', '.join('?' * (len(STEP_FIELDS) + 4))})",
                (self.run_id, int(columns["step"][0]), len(columns["step"]), *blobs, layer_norms.tobytes()),
            )
        backend.execute_many(
            connection,
            "INSERT INTO events (run_id, step, time_s, kind, old, new) VALUES (?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        backend.execute_many(
            connection,
            "INSERT INTO evaluations (run_id, step, time_s, name, value) VALUES (?, ?, ?, ?, ?)",
            evaluation_rows,
        )
        now = time.time()
        updates = {"last_seen": now}  # the heartbeat; a commit with nothing new is only that
        if chunks or event_rows or evaluation_rows or finished is not None:
            updates["updated_at"] = now
        if last is not None:
            steps = self._status.steps_written + int(sum(len(c["step"]) for c in chunks))
            clips = self._clips_written + int(sum(int(c["clipped"].sum()) for c in chunks))
            updates["steps"] = int(last["step"][-1])
            updates["final_loss"] = float(last["loss"][-1])
            updates["clip_rate"] = clips / max(steps, 1)
        if finished is not None:
            updates["state"], updates["error"] = state, error
        assignments = ", ".join(f"{key} = ?" for key in updates)
        updated = backend.execute(
            connection, f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), self.run_id)
        )
        if updated.rowcount == 0:  # rolled back: its chunks must not outlive the run as orphans
            raise FinalWriteFault("the run was deleted from the database")

