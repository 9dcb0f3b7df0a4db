"""Persistence cost (issue #5): steps per second of the seed trainer with full monitoring, with
and without a run database (`Trainer(..., database=RunDatabase(path))`), and (issue #19) with a
PostgreSQL run database on a local server beside the SQLite one.

The server is a throwaway cluster started for the section (tests/postgres_server.py, with
fsync on, as a real server runs), or the one $CLIPWATCH_BENCHMARK_POSTGRES names (a URL to an
empty database); without PostgreSQL binaries the section measures SQLite only and says why.

The two trainers are measured interleaved, like the throughput contenders, and the cost is the
paired per-repeat ratio. The database lives in a temporary directory, deleted afterwards.

Its writer thread commits every `FLUSH_SECONDS`, so two things keep the comparison fair: each
window opens only after a settle of that long (the writer is in step, committing as it would in
a long run), and after every window of the persisted trainer the next measurement waits until
the database holds every step, so a backlog of commits never lands in the other trainer's
window. That wait is reported: about `FLUSH_SECONDS` means the writer keeps up.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchmarks.throughput import (
    MONITORED,
    SETTLE_SECONDS,
    TrainerRun,
    ratios,
    warm_up_all,
    measure_interleaved,
    summarize,
)
from training.persistence import FLUSH_SECONDS, RunDatabase

WITHOUT_DATABASE = MONITORED
WITH_DATABASE = "Clipwatch, full monitoring + run database"
WITH_SERVER = "Clipwatch, full monitoring + PostgreSQL run database (local server)"
SERVER_VARIABLE = "CLIPWATCH_BENCHMARK_POSTGRES"
CATCH_UP_POLL_SECONDS = 0.01
STOP_TIMEOUT_SECONDS = 30.0  # the writer's last commit must end before its directory goes
Log = Callable[[str], None]


class PersistedTrainerRun(TrainerRun):
    """A `TrainerRun` that writes to `database`, and after each window waits until it is written."""

    def __init__(self, label: str, task_name: str, seed: int, database: RunDatabase, sinks: tuple = ()):
        super().__init__(label, task_name, None, seed, database=database, sinks=sinks)
        self.database = database
        self.catch_up_seconds: list[float] = []

    def warm_up(self, seconds: float, timeout: float) -> float:
        step_seconds = super().warm_up(seconds, timeout)
        self._catch_up(timeout)
        return step_seconds

    def measure(self, seconds: float, timeout: float = 600.0) -> float:
        steps_per_second = super().measure(seconds, timeout)
        self.catch_up_seconds.append(self._catch_up(timeout))
        return steps_per_second

    def steps_in_database(self) -> int:
        return int(self.database.run_info(self.trainer.status.run_id)["steps"])

    def _catch_up(self, timeout: float) -> float:
        """Wait (paused) until the database holds every step trained; return how long it took."""
        started = time.perf_counter()
        step = self.trainer.status.step
        while self.steps_in_database() < step:
            warning = self.trainer.status.warning
            if warning:
                raise RuntimeError(f"{self.label}: {warning}")
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{self.label}: the database did not reach step {step} in {timeout:g} s")
            time.sleep(CATCH_UP_POLL_SECONDS)
        return time.perf_counter() - started

    def close(self) -> None:
        self.trainer.stop(timeout=STOP_TIMEOUT_SECONDS)


@contextlib.contextmanager
def local_server(log: Log):
    """A URL to an empty PostgreSQL database for the server contender (None: there is none)."""
    if os.environ.get(SERVER_VARIABLE):
        yield os.environ[SERVER_VARIABLE]
        return
    from tests.postgres_server import PostgresServer, binaries_missing

    missing = binaries_missing()
    if missing:
        log(f"  no PostgreSQL contender: {missing}")
        yield None
        return
    server = PostgresServer(fsync=True).start()
    try:
        yield server.make_database()
    finally:
        server.remove()


def run_persistence(
    repeats: int,
    window_seconds: float,
    warm_up_seconds: float,
    log: Log,
    min_chunks: int = 1,
    task_name: str = "seed",
    seed: int = 0,
    timeout: float = 600.0,
) -> dict:
    """Steps per second without a run database, with SQLite and with PostgreSQL; paired ratios."""
    with tempfile.TemporaryDirectory(prefix="clipwatch-benchmark-") as directory, local_server(log) as server_url:
        database = RunDatabase(Path(directory) / "runs.db")
        plain = TrainerRun(WITHOUT_DATABASE, task_name, None, seed)
        persisted = PersistedTrainerRun(WITH_DATABASE, task_name, seed, database)
        contenders = [plain, persisted]
        if server_url is not None:
            contenders.append(PersistedTrainerRun(WITH_SERVER, task_name, seed, RunDatabase(server_url)))
        for contender in contenders:
            contender.min_chunks = min_chunks
            contender.settle_seconds = FLUSH_SECONDS + SETTLE_SECONDS
            contender.start()  # paused until its warm-up
        try:
            warm_up_all(contenders, warm_up_seconds, timeout, log)
            samples = measure_interleaved(contenders, repeats, window_seconds, log)
            steps_in_database = persisted.steps_in_database()
            steps_trained = persisted.trainer.status.step
            chunk_steps = {contender.label: contender.trainer.status.chunk_steps for contender in contenders}
        finally:
            for contender in contenders:
                contender.close()
        database_bytes = sum(path.stat().st_size for path in Path(directory).iterdir())
    rows = {label: summarize(values) for label, values in samples.items()}
    ratios(rows, {"vs_without_database": WITHOUT_DATABASE})
    for label, row in rows.items():
        row["chunk_steps"] = chunk_steps[label]
    catch_up = persisted.catch_up_seconds
    log(
        f"  {WITH_DATABASE}: x{rows[WITH_DATABASE]['vs_without_database']:.3f}; database caught up "
        f"{statistics.median(catch_up):.2f} s (median) after each window"
    )
    if WITH_SERVER in rows:
        log(f"  {WITH_SERVER}: x{rows[WITH_SERVER]['vs_without_database']:.3f} of the in-memory rate")
    return {
        "task": task_name,
        "repeats": repeats,
        "window_seconds": window_seconds,
        "flush_seconds": FLUSH_SECONDS,
        "rows": rows,
        "catch_up_seconds": {"median": statistics.median(catch_up), "max": max(catch_up), "samples": catch_up},
        "steps_trained": steps_trained,
        "steps_in_database": steps_in_database,
        "database_mb": database_bytes / 1e6,
        "database_path": str(Path(directory) / "runs.db"),  # deleted with its directory
    }
